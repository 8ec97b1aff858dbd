"""Audit log rows <-> public traffic records (the mapping behind `logs export` and `logs import`)."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from distillshield.traffic import ResponseInfo, TrafficRecord, Usage


def row_body(row: dict[str, Any]) -> dict[str, Any] | None:
    """An audit row's request body, or None when the row cannot be a traffic record: no account, or a
    body that is not a JSON object (unauthenticated or malformed requests: the format requires both)."""
    if not row.get("account_id") or not row.get("request"):
        return None
    try:
        body = orjson.loads(row["request"])
    except orjson.JSONDecodeError:
        return None
    return body if isinstance(body, dict) else None


def row_to_record(row: dict[str, Any]) -> TrafficRecord | None:
    """A traffic record for an audit row, or None where `row_body` gives None."""
    body = row_body(row)
    if body is None:
        return None
    response = None
    if row.get("response_text") is not None or row.get("finish_reason") is not None:
        usage = None
        if row.get("prompt_tokens") is not None or row.get("completion_tokens") is not None:
            usage = Usage(
                prompt_tokens=row.get("prompt_tokens") or 0,
                completion_tokens=row.get("completion_tokens") or 0,
            )
        response = ResponseInfo(
            text=row.get("response_text") or "", finish_reason=row.get("finish_reason"), usage=usage
        )
    return TrafficRecord(
        ts=row["ts"],
        account_id=row["account_id"],
        endpoint=row["endpoint"],
        request=body,
        org_id=row.get("org_id"),
        key_id=row.get("key_id"),
        ip=row.get("ip"),
        user_agent=row.get("user_agent"),
        response=response,
        status=row.get("status"),
        latency_ms=row.get("latency_ms"),
        batch_id=row.get("batch_id"),
        account_created_at=row.get("account_created_at"),
    )


def record_to_row(rec: TrafficRecord) -> dict[str, Any]:
    """An audit row for a traffic record. Ground-truth labels are not carried: the log holds what a
    gateway saw."""
    resp = rec.response
    usage = resp.usage if resp else None
    return {
        "ts": rec.ts,
        # The same record imported twice gets the same id, so `logs import` can skip what is already there.
        "request_id": "import-" + hashlib.blake2b(rec.to_json(), digest_size=16).hexdigest(),
        "account_id": rec.account_id,
        "org_id": rec.org_id,
        "key_id": rec.key_id,
        "ip": rec.ip,
        "user_agent": rec.user_agent,
        "endpoint": rec.endpoint,
        "model": rec.request.get("model") if isinstance(rec.request.get("model"), str) else None,
        "stream": bool(rec.request.get("stream") is True),
        "status": rec.status if rec.status is not None else 200,
        "latency_ms": rec.latency_ms if rec.latency_ms is not None else 0.0,
        "request": orjson.dumps(rec.request).decode(),
        "response_text": resp.text if resp else None,
        "finish_reason": resp.finish_reason if resp else None,
        "prompt_tokens": usage.prompt_tokens if usage else None,
        "completion_tokens": usage.completion_tokens if usage else None,
        "decision": None,
        "error": None,
        "batch_id": rec.batch_id,
        "account_created_at": rec.account_created_at,
    }
