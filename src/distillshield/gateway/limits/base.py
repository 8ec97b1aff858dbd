"""The RateLimiter protocol.

A request RESERVES its estimated token cost (prompt estimate + max_tokens) and one concurrency slot in
every scope (key, account, org) before the upstream call, atomically across scopes; after the call it
SETTLES the reservation to the real usage, and RELEASES the slot on every path (success, error, client
disconnect, cancelled stream); FINISH does both in one step, at the end of a request that has its usage.
Parallel requests therefore cannot overshoot a token limit.

Windows: requests and tokens per minute are exact sliding 60-second windows; tokens per day is a
quota per UTC calendar day.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from distillshield.config import LimitSet

WINDOW_S = 60.0
DAY_S = 86_400.0


@dataclass(frozen=True)
class Scope:
    """One thing limits apply to: kind is 'key', 'account' or 'org'."""

    kind: str
    id: str
    limits: LimitSet

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.id}"


@dataclass
class Reservation:
    """What a request holds: its scopes, tokens reserved, and back-end bookkeeping."""

    scopes: tuple[Scope, ...]
    tokens: int
    headers: dict[str, str] = field(default_factory=dict)
    handle: Any = None
    settled: bool = False
    released: bool = False


class LimitExceeded(Exception):
    """A limit stops this request. retry_after is None when waiting cannot help (request too large)."""

    def __init__(self, scope: Scope, limit: str, limit_value: int, retry_after: float | None, message: str) -> None:
        super().__init__(message)
        self.scope = scope
        self.limit = limit
        self.limit_value = limit_value
        self.retry_after = retry_after
        self.message = message

    def headers(self) -> dict[str, str]:
        h = {"x-ratelimit-scope": self.scope.kind, "x-ratelimit-limit": self.limit}
        if self.retry_after is not None:
            h["retry-after"] = str(max(1, math.ceil(self.retry_after)))
            h["retry-after-ms"] = str(max(1, int(self.retry_after * 1000)))
        return h


Reason = Literal["concurrent", "requests", "too_large", "tokens", "tokens_per_day"]


def limit_exceeded(
    scope: Scope,
    reason: Reason,
    retry_after: float | None,
    *,
    tokens: int = 0,
    in_flight: int = 0,
    token_sum: int = 0,
) -> LimitExceeded:
    """The LimitExceeded every back end raises for `reason`, so the messages are the same everywhere.

    tokens: what the refused request asked for; in_flight and token_sum: the scope's state when refused.
    """
    lim = scope.limits
    who = f"{scope.kind} {scope.id}"
    if reason == "concurrent":
        return LimitExceeded(
            scope,
            "concurrent",
            lim.concurrent or 0,
            retry_after,
            f"{who} has {in_flight} requests in flight; the limit is {lim.concurrent}",
        )
    if reason == "requests":
        return LimitExceeded(
            scope, "requests", lim.rpm or 0, retry_after, f"{who} reached its limit of {lim.rpm} requests per minute"
        )
    if reason == "too_large":
        return LimitExceeded(
            scope,
            "tokens",
            lim.tpm or 0,
            None,
            f"this request may use up to {tokens} tokens (prompt estimate + max_tokens), "
            f"more than {who}'s limit of {lim.tpm} tokens per minute; lower max_tokens",
        )
    if reason == "tokens":
        return LimitExceeded(
            scope,
            "tokens",
            lim.tpm or 0,
            retry_after,
            f"{who} reached its limit of {lim.tpm} tokens per minute "
            f"({token_sum} used or reserved, this request needs up to {tokens})",
        )
    return LimitExceeded(
        scope,
        "tokens_per_day",
        lim.tpd or 0,
        retry_after,
        f"{who} reached its quota of {lim.tpd} tokens per day (resets at 00:00 UTC)",
    )


class RateLimiter(Protocol):
    """Back ends implement these atomically: in-process (memory.py) or shared by replicas (Redis)."""

    async def reserve(self, scopes: tuple[Scope, ...], tokens: int) -> Reservation:
        """Take one request, `tokens` tokens and one concurrency slot in every scope, or raise LimitExceeded."""
        ...

    async def settle(self, reservation: Reservation, tokens_used: int) -> None:
        """Replace the reserved token count by the real one. Idempotent."""
        ...

    async def release(self, reservation: Reservation) -> None:
        """Give back the concurrency slot. Idempotent; call it in a finally."""
        ...

    async def finish(self, reservation: Reservation, tokens_used: int) -> None:
        """settle() then release(), as one atomic step (one round trip for a shared back end): how a request
        normally ends. Each half is skipped when already done, like the separate calls; afterwards the
        reservation is settled and released."""
        ...

    async def in_flight(self, scope_key: str) -> int:
        """Concurrency slots held now for 'kind:id' (admin and tests)."""
        ...

    async def ping(self) -> bool:
        """Whether the back end answers now (readiness: a gateway whose limiter is down serves only 503s)."""
        ...

    async def close(self) -> None: ...


def estimate_tokens(prompt_text: str, max_tokens: int, n: int = 1, messages: int = 1) -> int:
    """An upper-leaning estimate of a request's token cost, before the model has seen it.

    ~3 UTF-8 bytes per token errs high for English (about 4 characters per token) and roughly right
    for CJK; a few tokens per message cover the chat template. The settle corrects it afterwards.
    """
    prompt = math.ceil(len(prompt_text.encode("utf-8")) / 3) + 4 * messages + 3
    return prompt + max_tokens * n


def rate_headers(scopes: tuple[Scope, ...], remaining: dict[str, tuple[int | None, int | None]]) -> dict[str, str]:
    """OpenAI-style x-ratelimit-* headers for the tightest scope."""
    best_req: tuple[int, int] | None = None
    best_tok: tuple[int, int] | None = None
    for s in scopes:
        rr, rt = remaining.get(s.key, (None, None))
        if s.limits.rpm and rr is not None and (best_req is None or rr < best_req[1]):
            best_req = (s.limits.rpm, rr)
        if s.limits.tpm and rt is not None and (best_tok is None or rt < best_tok[1]):
            best_tok = (s.limits.tpm, rt)
    h: dict[str, str] = {}
    if best_req:
        h["x-ratelimit-limit-requests"] = str(best_req[0])
        h["x-ratelimit-remaining-requests"] = str(max(0, best_req[1]))
    if best_tok:
        h["x-ratelimit-limit-tokens"] = str(best_tok[0])
        h["x-ratelimit-remaining-tokens"] = str(max(0, best_tok[1]))
    return h
