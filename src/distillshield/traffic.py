"""The public traffic format: one record type shared by gateway, simulator, analyser and evaluator.

JSON Lines, one request per line. See docs/traffic-format.md for the specification; this module is
its only implementation. Validate at the edges: `read_jsonl` reports bad lines with their numbers
instead of dying, `TrafficRecord.model_validate` checks one record.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

FORMAT_VERSION = "1"

Endpoint = Literal["/v1/chat/completions", "/v1/completions", "/v1/messages", "/v1/responses", "/v1/embeddings"]
ENDPOINTS: tuple[str, ...] = (
    "/v1/chat/completions", "/v1/completions", "/v1/messages", "/v1/responses", "/v1/embeddings",
)  # fmt: skip
RESPONSES_ROLES = ("user", "assistant", "system", "developer")
_RESPONSES_TEXT_PARTS = ("input_text", "output_text")


def responses_messages(request: dict[str, Any]) -> list[dict[str, str]]:
    """The conversation of an OpenAI Responses body (`/v1/responses`) as chat messages with text content.

    `instructions` comes first, as a system message; then `input`: a string is one user message, a list
    holds message items (`type` "message" or absent; content a string or parts, of which `input_text` and
    `output_text` carry text). Anything else (reasoning items passed back, tool calls, images) carries no
    prompt text and is left out. Lenient, for reading traffic: the gateway validates before it calls this.
    """
    out: list[dict[str, str]] = []
    instructions = request.get("instructions")
    if isinstance(instructions, str) and instructions:
        out.append({"role": "system", "content": instructions})
    given = request.get("input")
    if isinstance(given, str):
        out.append({"role": "user", "content": given})
        return out
    for item in given if isinstance(given, list) else ():
        if not isinstance(item, dict) or item.get("type", "message") != "message":
            continue
        role = item.get("role")
        if role not in RESPONSES_ROLES:
            continue
        content = item.get("content")
        if isinstance(content, list):
            texts = [
                p["text"]
                for p in content
                if isinstance(p, dict) and p.get("type") in _RESPONSES_TEXT_PARTS and isinstance(p.get("text"), str)
            ]
            content = "\n".join(texts)
        if isinstance(content, str):
            out.append({"role": role, "content": content})
    return out


def embedding_texts(request: dict[str, Any]) -> list[str]:
    """The input texts of an OpenAI embeddings body (`/v1/embeddings`): `input` as a string, or the strings of
    an `input` list (token-id arrays carry no text and are left out). Lenient, for reading traffic."""
    given = request.get("input")
    if isinstance(given, str):
        return [given]
    return [t for t in given if isinstance(t, str)] if isinstance(given, list) else []


class Usage(BaseModel):
    model_config = ConfigDict(extra="allow")

    prompt_tokens: int = Field(0, ge=0)
    completion_tokens: int = Field(0, ge=0)


class ResponseInfo(BaseModel):
    """What the gateway served: the text, why it stopped, and the token usage."""

    model_config = ConfigDict(extra="allow")

    text: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None


class TrafficRecord(BaseModel):
    """One API request as seen at the gateway.

    Required: ts, account_id, endpoint, request. Everything else is optional. Unknown top-level
    fields are kept (forward compatibility) but ignored by analysis.
    """

    model_config = ConfigDict(extra="allow")

    ts: float = Field(..., description="request start, Unix seconds")
    account_id: str = Field(..., min_length=1)
    endpoint: Endpoint
    request: dict[str, Any] = Field(..., description="the body as the client sent it")
    org_id: str | None = None
    key_id: str | None = None
    ip: str | None = None
    user_agent: str | None = None
    response: ResponseInfo | None = None
    status: int | None = Field(None, ge=100, le=599)
    latency_ms: float | None = Field(None, ge=0)
    batch_id: str | None = Field(
        None, description="the Batch API batch the request ran in (docs/batches-api.md); absent for live requests"
    )
    account_created_at: float | None = Field(
        None,
        ge=0,
        description="when the account was created, Unix seconds (the gateway's accounts table); detection reads "
        "accounts created together in waves from it (detect/cohort.py)",
    )
    label: str | None = Field(None, description="simulator ground truth, e.g. 'attack:hydra'; ignored by analysis")
    label_meta: dict[str, Any] | None = Field(None, description="ground-truth metadata: cluster_id, campaign_id...")

    @field_validator("ts")
    @classmethod
    def _ts_finite(cls, v: float) -> float:
        if not (v == v) or v in (float("inf"), float("-inf")) or v < 0:
            raise ValueError("ts must be a finite, non-negative Unix time in seconds")
        return v

    def to_json(self) -> bytes:
        """One JSON line (without the newline); None fields are omitted."""
        return orjson.dumps(self.model_dump(mode="json", exclude_none=True))


@dataclass(frozen=True)
class LineError:
    """A line of a traffic file that could not be read; the reader skips it and goes on."""

    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


def _describe(err: ValidationError) -> str:
    parts = []
    for e in err.errors()[:3]:
        loc = ".".join(str(p) for p in e["loc"]) or "record"
        parts.append(f"{loc}: {e['msg']}")
    return "; ".join(parts)


def parse_line(raw: bytes | str, line_no: int = 0) -> TrafficRecord | LineError:
    """Parse one line; returns a LineError that names the problem instead of raising."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return LineError(line_no, f"not valid JSON ({exc})")
    if not isinstance(obj, dict):
        return LineError(line_no, f"expected a JSON object, got {type(obj).__name__}")
    try:
        return TrafficRecord.model_validate(obj)
    except ValidationError as exc:
        return LineError(line_no, _describe(exc))


def iter_jsonl(source: str | Path | IO[bytes], errors: list[LineError] | None = None) -> Iterator[TrafficRecord]:
    """Yield valid records from a traffic file (JSONL, or Parquet: `iter_lines` tells them apart) or a
    JSONL binary stream.

    Bad lines are appended to `errors` (with line numbers) and skipped; blank lines are ignored.
    """
    for _, rec in iter_parsed(source):
        if isinstance(rec, LineError):
            if errors is not None:
                errors.append(rec)
            continue
        yield rec


def iter_parsed(source: str | Path | IO[bytes]) -> Iterator[tuple[int, TrafficRecord | LineError]]:
    """Every non-blank line of a traffic file (JSONL, or Parquet: `iter_lines` tells them apart) or of a
    JSONL binary stream, parsed: its number, and its record or the LineError that names what is wrong."""
    lines = iter_lines(source) if isinstance(source, (str, Path)) else enumerate(source, start=1)
    for i, raw in lines:
        if isinstance(raw, LineError):
            yield i, raw
        elif raw.strip():
            yield i, parse_line(raw, i)


def read_jsonl(source: str | Path | IO[bytes]) -> tuple[list[TrafficRecord], list[LineError]]:
    """Read a whole traffic file: the valid records, and the errors of the lines skipped."""
    errors: list[LineError] = []
    records = list(iter_jsonl(source, errors))
    return records, errors


def write_jsonl(records: Iterable[TrafficRecord], dest: str | Path | IO[bytes]) -> int:
    """Write records as JSON Lines; returns how many were written."""
    if isinstance(dest, (str, Path)):
        with open(dest, "wb") as fh:
            return write_jsonl(records, fh)
    n = 0
    for rec in records:
        dest.write(rec.to_json() + b"\n")
        n += 1
    return n


# -- Parquet: the same records, column by column ---------------------------------------------------------

# Scalar fields are typed columns; the nested ones are JSON text, so the schema does not change with what
# clients put in a request body. `extra` holds the unknown top-level fields (the simulator's `sim`, for one)
# as one JSON object. docs/traffic-format.md, "Parquet", is the specification.
PARQUET_COLUMNS: tuple[tuple[str, str], ...] = (
    ("ts", "float64"),
    ("account_id", "string"),
    ("endpoint", "string"),
    ("request", "json"),
    ("org_id", "string"),
    ("key_id", "string"),
    ("ip", "string"),
    ("user_agent", "string"),
    ("response", "json"),
    ("status", "int32"),
    ("latency_ms", "float64"),
    ("label", "string"),
    ("label_meta", "json"),
    ("extra", "json"),
)
PARQUET_ROW_GROUP = 16_384  # rows per row group: the unit a parallel reader takes at a time
_DECLARED = {name for name, _ in PARQUET_COLUMNS} - {"extra"}
_JSON_COLUMNS = {name for name, kind in PARQUET_COLUMNS if kind == "json"}


def parquet_schema() -> Any:
    """The pyarrow schema of a traffic Parquet file (JSON columns are strings)."""
    import pyarrow as pa

    types = {"float64": pa.float64(), "int32": pa.int32(), "string": pa.string(), "json": pa.string()}
    meta = {
        "distillshield.traffic_format": FORMAT_VERSION,
        "distillshield.json_columns": ",".join(name for name, _ in PARQUET_COLUMNS if name in _JSON_COLUMNS),
    }
    required = ("ts", "account_id", "endpoint", "request")
    fields = [pa.field(name, types[kind], nullable=name not in required) for name, kind in PARQUET_COLUMNS]
    return pa.schema(fields, metadata=meta)


class ParquetWriter:
    """Writes records to a traffic Parquet file, one row group per PARQUET_ROW_GROUP records."""

    def __init__(self, dest: str | Path, row_group: int = PARQUET_ROW_GROUP) -> None:
        import pyarrow.parquet as pq

        self.schema = parquet_schema()
        self.row_group = row_group
        self._writer = pq.ParquetWriter(str(dest), self.schema, compression="zstd")
        self._rows: list[dict[str, Any]] = []
        self.written = 0

    def write(self, rec: TrafficRecord) -> None:
        obj = rec.model_dump(mode="json", exclude_none=True)  # what to_json writes, field for field
        extra = {k: v for k, v in obj.items() if k not in _DECLARED}
        row: dict[str, Any] = {}
        for name, kind in PARQUET_COLUMNS:
            v = (extra or None) if name == "extra" else obj.get(name)
            row[name] = orjson.dumps(v).decode() if kind == "json" and v is not None else v
        self._rows.append(row)
        if len(self._rows) >= self.row_group:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if self._rows:
            table = pa.Table.from_pylist(self._rows, schema=self.schema)
            self._writer.write_table(table, row_group_size=self.row_group)
            self.written += len(self._rows)
            self._rows = []

    def close(self) -> None:
        self._flush()
        self._writer.close()

    def __enter__(self) -> ParquetWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_parquet(records: Iterable[TrafficRecord], dest: str | Path) -> int:
    """Write records as a traffic Parquet file; returns how many were written."""
    with ParquetWriter(dest) as w:
        for rec in records:
            w.write(rec)
    return w.written


def is_parquet(path: str | Path) -> bool:
    """Whether `path` is a Parquet file (its magic number at both ends), rather than JSONL."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
            fh.seek(-4, 2)
            return head == b"PAR1" and fh.read(4) == b"PAR1"
    except OSError:
        return False


def parquet_row_object(row: dict[str, Any], line_no: int) -> dict[str, Any] | LineError:
    """The JSON object a Parquet row stands for (JSON columns decoded, `extra` spread, nulls dropped)."""
    obj: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for name, v in row.items():
        if v is None:
            continue
        if name in _JSON_COLUMNS and isinstance(v, str):
            try:
                v = orjson.loads(v)
            except orjson.JSONDecodeError as exc:
                return LineError(line_no, f"{name}: not valid JSON ({exc})")
        if name == "extra":
            if not isinstance(v, dict):
                return LineError(line_no, f"extra: expected a JSON object, got {type(v).__name__}")
            extra = v
        else:
            obj[name] = v
    for k, v in extra.items():
        obj.setdefault(k, v)
    return obj


@dataclass(frozen=True)
class Chunk:
    """A part of a traffic file that can be read on its own: bytes [start, end) of a JSONL file (both at
    line starts) or row groups [start, end) of a Parquet file; its first line (row) has number `first_line`."""

    path: str
    parquet: bool
    start: int
    end: int
    first_line: int
    lines: int  # lines (rows) in the chunk, blank ones included


def split(path: str | Path, parts: int, min_bytes: int = 4 << 20) -> list[Chunk]:
    """Cut a traffic file into about `parts` chunks of whole lines (whole row groups for Parquet), in order."""
    path = str(path)
    if is_parquet(path):
        import pyarrow.parquet as pq

        meta = pq.ParquetFile(path).metadata
        rows = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        per = max(1, -(-len(rows) // max(1, parts)))
        chunks, line = [], 1
        for i in range(0, len(rows), per):
            n = sum(rows[i : i + per])
            chunks.append(Chunk(path, True, i, min(i + per, len(rows)), line, n))
            line += n
        return chunks
    size = Path(path).stat().st_size
    step = max(min_bytes, -(-size // max(1, parts)))
    chunks, start, line = [], 0, 1
    with open(path, "rb") as fh:
        while start < size:
            fh.seek(min(start + step, size))
            fh.readline()  # on to the next line start (or the end of the file)
            end = fh.tell()
            fh.seek(start)
            n, left, last = 0, end - start, b""
            while left > 0:  # count the chunk's lines in blocks, never holding the chunk
                block = fh.read(min(left, 8 << 20))
                n, left, last = n + block.count(b"\n"), left - len(block), block[-1:]
            n += last != b"\n"  # a last line without its newline
            chunks.append(Chunk(path, False, start, end, line, n))
            start, line = end, line + n
    return chunks


def iter_lines(source: str | Path | Chunk) -> Iterator[tuple[int, bytes | LineError]]:
    """The lines of a traffic file (JSONL or Parquet) or of one chunk of it, with their numbers, blank
    lines left out. A Parquet row comes as the JSON line it stands for (its number: row index + 1), or as
    a LineError when one of its JSON columns does not parse."""
    chunk = source if isinstance(source, Chunk) else None
    path = chunk.path if chunk is not None else str(source)
    parquet = chunk.parquet if chunk is not None else is_parquet(path)
    if parquet:
        yield from _parquet_lines(path, chunk)
        return
    with open(path, "rb") as fh:
        if chunk is not None:
            fh.seek(chunk.start)
        pos = chunk.start if chunk is not None else 0
        for i, raw in enumerate(fh, start=chunk.first_line if chunk is not None else 1):
            if chunk is not None and pos >= chunk.end:
                break
            pos += len(raw)
            if raw.strip():
                yield i, raw


def _parquet_lines(path: str, chunk: Chunk | None) -> Iterator[tuple[int, bytes | LineError]]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    groups = list(range(chunk.start, chunk.end)) if chunk is not None else None
    line = chunk.first_line if chunk is not None else 1
    for batch in pf.iter_batches(batch_size=4096, row_groups=groups):
        cols = {name: batch.column(j).to_pylist() for j, name in enumerate(batch.schema.names)}
        for k in range(batch.num_rows):
            obj = parquet_row_object({name: col[k] for name, col in cols.items()}, line)
            yield line, obj if isinstance(obj, LineError) else orjson.dumps(obj)
            line += 1
