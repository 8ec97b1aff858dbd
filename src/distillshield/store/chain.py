"""The audit log's sha256 hash chain: canonical records, linking, and verification.

Each row's hash is sha256(prev_hash || "\\n" || canonical(row)), where canonical(row) is the row's
fields (seq included, hashes excluded; `batch_id` and `account_created_at` only when set) as sorted-key
compact JSON. Editing a row breaks its own hash; deleting one leaves a gap in seq and a broken link;
reordering breaks the links.

The chain alone cannot show a rewrite by someone who recomputes every later hash; the Merkle tree over
the same canonical bytes (merkle.py) and its signed checkpoints (checkpoint.py) can.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

GENESIS = "0" * 64
CHAINED_FIELDS = (
    "seq",
    "ts",
    "request_id",
    "account_id",
    "org_id",
    "key_id",
    "ip",
    "user_agent",
    "endpoint",
    "model",
    "stream",
    "status",
    "latency_ms",
    "request",
    "response_text",
    "finish_reason",
    "prompt_tokens",
    "completion_tokens",
    "decision",
    "error",
    "batch_id",
    "account_created_at",
)
# Fields added after the log's first release: hashed only when set, so rows written before them (and live
# requests, where they are null) keep their hashes.
OPTIONAL_FIELDS = frozenset({"batch_id", "account_created_at"})


def canonical(row: Mapping[str, Any]) -> bytes:
    """The bytes that are hashed for one row."""
    rec = {k: v for k in CHAINED_FIELDS if (v := row.get(k)) is not None or k not in OPTIONAL_FIELDS}
    return orjson.dumps(rec, option=orjson.OPT_SORT_KEYS)


def link(prev_hash: str, row: Mapping[str, Any]) -> str:
    """The hash of `row` chained onto `prev_hash`."""
    return link_encoded(prev_hash, canonical(row))


def link_encoded(prev_hash: str, encoded: bytes) -> str:
    """`link` for a row already encoded by `canonical` (the writer encodes once for chain and tree)."""
    h = hashlib.sha256(prev_hash.encode("ascii"))
    h.update(b"\n")
    h.update(encoded)
    return h.hexdigest()


@dataclass
class ChainReport:
    """Outcome of a verification: ok, or the first bad row and what is wrong with it."""

    ok: bool
    rows: int
    head_seq: int | None
    head_hash: str | None
    first_bad_seq: int | None = None
    problem: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "rows": self.rows,
            "head_seq": self.head_seq,
            "head_hash": self.head_hash,
            "first_bad_seq": self.first_bad_seq,
            "problem": self.problem,
        }


class ChainVerifier:
    """Feed rows in seq order; stops at the first problem. Pure: no database access."""

    def __init__(self, start_seq: int = 1, start_hash: str = GENESIS) -> None:
        self.expected_seq = start_seq
        self.prev_hash = start_hash
        self.rows = 0
        self.bad_seq: int | None = None
        self.problem: str | None = None

    def feed(self, row: Mapping[str, Any]) -> bool:
        if self.problem is not None:
            return False
        seq = row["seq"]
        if seq != self.expected_seq:
            if seq > self.expected_seq:
                missing = (
                    f"row {self.expected_seq} is missing"
                    if seq == self.expected_seq + 1
                    else f"rows {self.expected_seq}-{seq - 1} are missing"
                )
                return self._fail(self.expected_seq, f"{missing} (deleted?); the log jumps to row {seq}")
            return self._fail(seq, f"row {seq} appears out of order after row {self.expected_seq - 1}")
        if row["prev_hash"] != self.prev_hash:
            return self._fail(
                seq, f"row {seq} does not link to the row before it (rows deleted, inserted or reordered)"
            )
        if link(self.prev_hash, row) != row["hash"]:
            return self._fail(seq, f"row {seq} was edited: its content does not match its hash")
        self.prev_hash = row["hash"]
        self.expected_seq += 1
        self.rows += 1
        return True

    def _fail(self, seq: int, problem: str) -> bool:
        self.bad_seq, self.problem = seq, problem
        return False

    def finish(self, head: tuple[int, str] | None) -> ChainReport:
        last_seq = self.expected_seq - 1
        if self.problem is None and head is not None:
            head_seq, head_hash = head
            if head_seq > last_seq:
                self._fail(last_seq + 1, f"rows {last_seq + 1}-{head_seq} are missing at the end of the log")
            elif head_seq < last_seq:
                self._fail(head_seq + 1, f"row {head_seq + 1} lies beyond the recorded chain head (appended?)")
            elif head_hash != self.prev_hash and last_seq > 0:
                self._fail(last_seq, f"row {last_seq} does not match the recorded chain head")
        return ChainReport(
            ok=self.problem is None,
            rows=self.rows,
            head_seq=last_seq if last_seq > 0 else None,
            head_hash=self.prev_hash if last_seq > 0 else None,
            first_bad_seq=self.bad_seq,
            problem=self.problem,
        )


def verify_rows(rows: Iterable[Mapping[str, Any]], head: tuple[int, str] | None = None) -> ChainReport:
    v = ChainVerifier()
    for row in rows:
        if not v.feed(row):
            break
    return v.finish(head)


async def averify_rows(rows: AsyncIterable[Mapping[str, Any]], head: tuple[int, str] | None = None) -> ChainReport:
    v = ChainVerifier()
    async for row in rows:
        if not v.feed(row):
            break
    return v.finish(head)
