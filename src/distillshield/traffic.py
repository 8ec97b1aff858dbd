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

Endpoint = Literal["/v1/chat/completions", "/v1/completions", "/v1/messages"]
ENDPOINTS: tuple[str, ...] = ("/v1/chat/completions", "/v1/completions", "/v1/messages")


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
    label: str | None = Field(
        None, description="simulator ground truth, e.g. 'attack:hydra'; ignored by analysis"
    )
    label_meta: dict[str, Any] | None = Field(
        None, description="ground-truth metadata: cluster_id, campaign_id..."
    )

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


def iter_jsonl(
    source: str | Path | IO[bytes], errors: list[LineError] | None = None
) -> Iterator[TrafficRecord]:
    """Yield valid records from a JSONL file or binary stream.

    Bad lines are appended to `errors` (with line numbers) and skipped; blank lines are ignored.
    """
    if isinstance(source, (str, Path)):
        with open(source, "rb") as fh:
            yield from iter_jsonl(fh, errors)
        return
    for i, raw in enumerate(source, start=1):
        if not raw.strip():
            continue
        rec = parse_line(raw, i)
        if isinstance(rec, LineError):
            if errors is not None:
                errors.append(rec)
            continue
        yield rec


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
