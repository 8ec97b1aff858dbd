"""OpenAI Batch API shapes: the file upload, the input JSONL, the File and Batch objects and the output lines,
as the official SDK sends and parses them (`client.files.create(file=..., purpose="batch")`,
`client.batches.create(...)`, `client.files.content(id)`).

An input line is `{"custom_id": ..., "method": "POST", "url": "<the batch's endpoint>", "body": {...}}`. An
output line is `{"id": "batch_req_...", "custom_id": ..., "response": {"status_code", "request_id", "body"},
"error": null}`; a line that could not be run has `"response": null` and `"error": {"code", "message"}`.
"""

from __future__ import annotations

import email.parser
import email.policy
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from distillshield.gateway.errors import ApiError, bad_request
from distillshield.store.batches import BatchRecord, StoredFile

# Batch endpoint -> the pipeline's API name (gateway/pipeline.py ENDPOINT_OF).
BATCH_ENDPOINTS = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
    "/v1/responses": "responses",
}
MESSAGES = "/v1/messages"  # Anthropic's Message Batches run this endpoint (MessageBatchApi in gateway/batches.py)
RUNNABLE_ENDPOINTS = {**BATCH_ENDPOINTS, MESSAGES: "messages"}
COMPLETION_WINDOWS = ("24h",)
UPLOAD_PURPOSES = ("batch",)
MAX_METADATA = 16
_LINE_FIELDS = frozenset(("custom_id", "method", "url", "body"))


# -- the upload ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Upload:
    purpose: str
    filename: str
    content: bytes


def parse_upload(content_type: str | None, raw: bytes) -> Upload:
    """A `multipart/form-data` upload with a `purpose` field and a `file` part; 400 naming what is missing."""
    if not content_type or not content_type.lower().startswith("multipart/form-data"):
        raise ApiError(
            415, "upload the file as multipart/form-data with fields 'file' and 'purpose'", code="invalid_content_type"
        )
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + raw
    )
    if not msg.is_multipart():
        raise bad_request("the multipart body could not be read (boundary missing or wrong)", code="invalid_multipart")
    fields: dict[str, str] = {}
    upload: tuple[str, bytes] | None = None
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        if name == "file":
            upload = (part.get_filename() or "upload.jsonl", data)
        else:
            fields[name] = data.decode("utf-8", "replace")
    purpose = fields.get("purpose")
    if purpose is None:
        raise bad_request("missing required field 'purpose' (\"batch\")", param="purpose")
    if purpose not in UPLOAD_PURPOSES:
        raise bad_request(
            f"purpose '{purpose[:64]}' is not served here; this gateway takes Batch API files: purpose 'batch'",
            param="purpose",
        )
    if upload is None:
        raise bad_request("missing required file part 'file'", param="file")
    return Upload(purpose, upload[0], upload[1])


# -- the input file --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputLine:
    line: int  # 1-based line number in the input file
    custom_id: str
    body: dict[str, Any]


@dataclass(frozen=True)
class LineProblem:
    line: int
    custom_id: str | None
    code: str
    message: str


def parse_input(content: bytes, endpoint: str) -> tuple[list[InputLine], list[LineProblem]]:
    """The input file's requests, and the lines that are not one (each named by its line number)."""
    ok: list[InputLine] = []
    bad: list[LineProblem] = []
    seen: set[str] = set()
    for n, raw in enumerate(content.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            bad.append(LineProblem(n, None, "invalid_json", f"line {n} is not valid JSON: {exc}"))
            continue
        if not isinstance(obj, dict):
            bad.append(LineProblem(n, None, "invalid_request", f"line {n} is not a JSON object"))
            continue
        cid = obj.get("custom_id")
        custom_id = cid if isinstance(cid, str) else None
        problem = _line_problem(obj, endpoint)
        if problem is None and custom_id in seen:
            problem = ("duplicate_custom_id", f"custom_id '{custom_id}' is used by an earlier line")
        if problem is not None:
            bad.append(LineProblem(n, custom_id, problem[0], f"line {n}: {problem[1]}"))
            continue
        assert custom_id is not None
        seen.add(custom_id)
        ok.append(InputLine(n, custom_id, obj["body"]))
    return ok, bad


def _line_problem(obj: dict[str, Any], endpoint: str) -> tuple[str, str] | None:
    cid = obj.get("custom_id")
    if not isinstance(cid, str) or not cid:
        return "missing_custom_id", "custom_id must be a non-empty string"
    unknown = sorted(set(obj) - _LINE_FIELDS)
    if unknown:
        return "invalid_request", f"unknown field '{unknown[0]}' (a line has custom_id, method, url, body)"
    if obj.get("method") != "POST":
        return "invalid_method", 'method must be "POST"'
    if obj.get("url") != endpoint:
        return "mismatched_url", f"url must be the batch's endpoint, {endpoint}"
    if not isinstance(obj.get("body"), dict):
        return "invalid_body", "body must be a JSON object"
    return None


def count_lines(content: bytes) -> int:
    return sum(1 for raw in content.split(b"\n") if raw.strip())


# -- the create request ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CreateBatch:
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None


def parse_create(body: dict[str, Any]) -> CreateBatch:
    fid = body.get("input_file_id")
    if not isinstance(fid, str) or not fid:
        raise bad_request(
            'input_file_id is required: the id of a file uploaded with purpose "batch"', param="input_file_id"
        )
    endpoint = body.get("endpoint")
    if endpoint not in BATCH_ENDPOINTS:
        raise bad_request(
            f"endpoint must be one of {', '.join(BATCH_ENDPOINTS)}", param="endpoint", code="invalid_endpoint"
        )
    window = body.get("completion_window")
    if window not in COMPLETION_WINDOWS:
        raise bad_request('completion_window must be "24h"', param="completion_window")
    meta = body.get("metadata")
    if meta is not None:
        if (
            not isinstance(meta, dict)
            or len(meta) > MAX_METADATA
            or not all(
                isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 512 for k, v in meta.items()
            )
        ):
            raise bad_request(
                "metadata must be an object of at most 16 string values (keys up to 64, values up to 512 characters)",
                param="metadata",
            )
    unknown = sorted(set(body) - {"input_file_id", "endpoint", "completion_window", "metadata", "output_expires_after"})
    if unknown:
        raise bad_request(f"unknown parameter '{unknown[0]}'", param=unknown[0])
    return CreateBatch(fid, endpoint, window, meta)


# -- the objects the SDK parses --------------------------------------------------------------------------


def file_object(f: StoredFile) -> dict[str, Any]:
    return {
        "id": f.id,
        "object": "file",
        "bytes": f.bytes,
        "created_at": int(f.created_at),
        "filename": f.filename,
        "purpose": f.purpose,
        "status": "processed",
        "expires_at": None,
        "status_details": None,
    }


_TIMES = ("in_progress_at", "finalizing_at", "completed_at", "failed_at", "expired_at", "cancelling_at", "cancelled_at")


def batch_object(b: BatchRecord) -> dict[str, Any]:
    times = b.times or {}
    out: dict[str, Any] = {
        "id": b.id,
        "object": "batch",
        "endpoint": b.endpoint,
        "input_file_id": b.input_file_id,
        "completion_window": b.completion_window,
        "status": b.status,
        "output_file_id": b.output_file_id,
        "error_file_id": b.error_file_id,
        "created_at": int(b.created_at),
        "expires_at": int(times["expires_at"]) if "expires_at" in times else None,
        "request_counts": {k: b.request_counts[k] for k in ("total", "completed", "failed")},
        "metadata": b.user_metadata,
        "errors": {"object": "list", "data": b.errors} if b.errors else None,
    }
    for k in _TIMES:
        out[k] = int(times[k]) if k in times else None
    if b.usage is not None:
        out["usage"] = {
            "input_tokens": b.usage["input_tokens"],
            "output_tokens": b.usage["output_tokens"],
            "total_tokens": b.usage["input_tokens"] + b.usage["output_tokens"],
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        }
    return out


def page(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    """A cursor page as the SDK reads it (`after` = the last id)."""
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


# -- output lines ----------------------------------------------------------------------------------------


def _line_id() -> str:
    return "batch_req_" + secrets.token_hex(12)


def output_line(custom_id: str, request_id: str, status: int, body: Any) -> bytes:
    """One request's answer (any status): the output file takes 2xx lines, the error file the others."""
    return orjson.dumps(
        {
            "id": _line_id(),
            "custom_id": custom_id,
            "response": {"status_code": status, "request_id": request_id, "body": body},
            "error": None,
        }
    )


def error_line(custom_id: str | None, code: str, message: str, line: int | None = None) -> bytes:
    """A line that was not run: invalid, or cut off by a cancel or a block."""
    err: dict[str, Any] = {"code": code, "message": message}
    if line is not None:
        err["line"] = line
    return orjson.dumps({"id": _line_id(), "custom_id": custom_id, "response": None, "error": err})


# -- Anthropic's Message Batches (`client.messages.batches`) ---------------------------------------------

MAX_MESSAGE_REQUESTS = 100_000  # requests per Message Batch, as Anthropic's API
_ANTHROPIC_STATUS = {
    "cancelling": "canceling",
    "completed": "ended",
    "failed": "ended",
    "cancelled": "ended",
    "expired": "ended",
}


def parse_message_batch(body: dict[str, Any], most: int) -> bytes:
    """A Message Batch create body (`{"requests": [{"custom_id", "params"}, ...]}`) as the runner's input JSONL:
    one `/v1/messages` line per request. Structural problems are a 400 naming the place; a request whose params
    are wrong is answered in the results (errored), as Anthropic's API does."""
    unknown = sorted(set(body) - {"requests"})
    if unknown:
        raise bad_request(f"unknown parameter '{unknown[0]}'", param=unknown[0])
    requests = body.get("requests")
    if not isinstance(requests, list) or not requests:
        raise bad_request("requests must be a non-empty array of {custom_id, params}", param="requests")
    if len(requests) > most:
        raise bad_request(f"requests holds {len(requests)} items; a batch takes at most {most}", param="requests")
    lines, seen = [], set()
    for i, r in enumerate(requests):
        where = f"requests[{i}]"
        if not isinstance(r, dict) or sorted(r) != ["custom_id", "params"]:
            raise bad_request(f"{where} must be an object with exactly custom_id and params", param=where)
        cid, params = r["custom_id"], r["params"]
        if not isinstance(cid, str) or not 1 <= len(cid) <= 64:
            raise bad_request(f"{where}.custom_id must be a string of 1 to 64 characters", param=f"{where}.custom_id")
        if cid in seen:
            raise bad_request(f"{where}.custom_id '{cid}' is used by an earlier request", param=f"{where}.custom_id")
        if not isinstance(params, dict):
            raise bad_request(f"{where}.params must be a Messages API request body", param=f"{where}.params")
        seen.add(cid)
        lines.append(orjson.dumps({"custom_id": cid, "method": "POST", "url": MESSAGES, "body": params}))
    return b"\n".join(lines) + b"\n"


def _rfc3339(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def message_batch_object(b: BatchRecord) -> dict[str, Any]:
    status = _ANTHROPIC_STATUS.get(b.status, "in_progress")
    times = b.times or {}
    counts = b.request_counts
    ended = status == "ended"
    cancelled = counts.get("cancelled", 0) if ended else 0
    expired = counts.get("expired", 0) if ended else 0
    return {
        "id": b.id,
        "type": "message_batch",
        "processing_status": status,
        "request_counts": {
            "processing": 0 if ended else counts["total"],
            "succeeded": counts["completed"] if ended else 0,
            "errored": counts["failed"] - cancelled - expired if ended else 0,
            "canceled": cancelled,
            "expired": expired,
        },
        "created_at": _rfc3339(b.created_at),
        "expires_at": _rfc3339(times.get("expires_at")),
        "ended_at": _rfc3339(times.get(f"{b.status}_at")) if ended else None,
        "cancel_initiated_at": _rfc3339(times.get("cancelling_at") or times.get("cancelled_at")),
        "archived_at": None,
        # Relative: the SDK joins it to the base URL it was given, so it holds behind any proxy.
        "results_url": f"/v1/messages/batches/{b.id}/results" if ended else None,
    }


def message_result(line: dict[str, Any]) -> dict[str, Any]:
    """One line of an output or error file (OpenAI's batch output format) as a Message Batch result line."""
    response, error = line.get("response"), line.get("error") or {}
    if response is not None and 200 <= response["status_code"] < 300:
        result: dict[str, Any] = {"type": "succeeded", "message": response["body"]}
    elif response is not None:
        result = {"type": "errored", "error": response["body"]}
    elif error.get("code") == "batch_cancelled":
        result = {"type": "canceled"}
    elif error.get("code") == "batch_expired":
        result = {"type": "expired"}
    else:
        err = {"type": "invalid_request_error", "message": error.get("message") or "the request was not run"}
        result = {"type": "errored", "error": {"type": "error", "error": err}}
    return {"custom_id": line.get("custom_id"), "result": result}
