"""The RateLimiter protocol.

A request RESERVES its estimated token cost (prompt estimate + max_tokens) and one concurrency slot in
every scope (key, account, org) before the upstream call, atomically across scopes; after the call it
SETTLES the reservation to the real usage, and RELEASES the slot on every path (success, error, client
disconnect, cancelled stream); FINISH does both in one step, at the end of a request that has its usage.
Parallel requests therefore cannot overshoot a token limit.

Windows: requests and tokens per minute are exact sliding 60-second windows; tokens per day is a
quota per UTC calendar day. Every decision also reports the tightest scope's windows (`RateStatus`), which
the gateway turns into the rate-limit headers of each API (headers.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Window:
    """A sliding window as a client sees it: its limit, what is left, and reset_s, the seconds until it is
    back to its full limit (when the newest entry it counts leaves it; 0 when it counts none)."""

    limit: int
    remaining: int
    reset_s: float


@dataclass(frozen=True)
class RateStatus:
    """The tightest scope's request and token windows (None: no scope limits them) at wall-clock time `at`
    (seconds since the epoch; the back end's clock, Redis server time for Redis)."""

    at: float
    requests: Window | None = None
    tokens: Window | None = None


@dataclass(frozen=True)
class ScopeCount:
    """One scope's windows before a request is decided: requests and tokens counted, and the seconds until the
    newest counted request, and the newest reservation holding tokens, leave the window (0.0 when none)."""

    requests: int
    tokens: int
    requests_reset: float
    tokens_reset: float


def rate_status(
    scopes: tuple[Scope, ...], counts: list[ScopeCount], at: float, taken: int | None, full_for: float = 0.0
) -> RateStatus:
    """The RateStatus of a decision, the same for every back end.

    taken: the tokens of the admitted request (it then counts in every window, and as the newest entry holds
    each window for the whole WINDOW_S), or None for a refusal (the windows as they are). full_for > 0: the
    request and token windows are treated as full for that long (Redis lost its data: redis.py). The tightest
    scope wins: the least remaining, and on a tie the later reset.
    """
    best_req: Window | None = None
    best_tok: Window | None = None
    for s, c in zip(scopes, counts, strict=True):
        lim = s.limits
        if lim.rpm:
            n, reset = (c.requests + 1, WINDOW_S) if taken is not None else (c.requests, c.requests_reset)
            w = _window(lim.rpm, lim.rpm - n, reset, full_for)
            if best_req is None or (w.remaining, -w.reset_s) < (best_req.remaining, -best_req.reset_s):
                best_req = w
        if lim.tpm:
            if taken is not None:
                n, reset = c.tokens + taken, WINDOW_S if taken > 0 else c.tokens_reset
            else:
                n, reset = c.tokens, c.tokens_reset
            w = _window(lim.tpm, lim.tpm - n, reset, full_for)
            if best_tok is None or (w.remaining, -w.reset_s) < (best_tok.remaining, -best_tok.reset_s):
                best_tok = w
    return RateStatus(at, best_req, best_tok)


def _window(limit: int, remaining: int, reset: float, full_for: float) -> Window:
    if full_for > 0:
        return Window(limit, 0, max(reset, full_for))
    return Window(limit, max(0, remaining), max(0.0, reset))


@dataclass
class Reservation:
    """What a request holds: its scopes, tokens reserved, the windows after it (`rate`), and back-end
    bookkeeping."""

    scopes: tuple[Scope, ...]
    tokens: int
    rate: RateStatus | None = None
    handle: Any = None
    settled: bool = False
    released: bool = False


class LimitExceeded(Exception):
    """A limit stops this request. retry_after is None when waiting cannot help (request too large); rate:
    the tightest scope's windows when it was refused (for the rate-limit headers of the 429)."""

    def __init__(
        self,
        scope: Scope,
        limit: str,
        limit_value: int,
        retry_after: float | None,
        message: str,
        rate: RateStatus | None = None,
    ) -> None:
        super().__init__(message)
        self.scope = scope
        self.limit = limit
        self.limit_value = limit_value
        self.retry_after = retry_after
        self.message = message
        self.rate = rate

    def headers(self) -> dict[str, str]:
        h = {"x-ratelimit-scope": self.scope.kind, "x-ratelimit-limit": self.limit}
        if self.retry_after is not None:
            h["retry-after"] = str(max(1, math.ceil(self.retry_after)))
            h["retry-after-ms"] = str(max(1, int(self.retry_after * 1000)))
        return h


Reason = Literal["concurrent", "requests", "too_large", "tokens", "tokens_per_day", "refill"]


def limit_exceeded(
    scope: Scope,
    reason: Reason,
    retry_after: float | None,
    *,
    tokens: int = 0,
    in_flight: int = 0,
    token_sum: int = 0,
    rate: RateStatus | None = None,
) -> LimitExceeded:
    """The LimitExceeded every back end raises for `reason`, so the messages are the same everywhere.

    tokens: what the refused request asked for; in_flight and token_sum: the scope's state when refused;
    rate: the windows for the 429's headers. "refill": the shared store lost the windows (redis.py).
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
            rate,
        )
    if reason == "requests":
        return LimitExceeded(
            scope,
            "requests",
            lim.rpm or 0,
            retry_after,
            f"{who} reached its limit of {lim.rpm} requests per minute",
            rate,
        )
    if reason == "too_large":
        return LimitExceeded(
            scope,
            "tokens",
            lim.tpm or 0,
            None,
            f"this request may use up to {tokens} tokens (prompt estimate + max_tokens), "
            f"more than {who}'s limit of {lim.tpm} tokens per minute; lower max_tokens",
            rate,
        )
    if reason == "tokens":
        return LimitExceeded(
            scope,
            "tokens",
            lim.tpm or 0,
            retry_after,
            f"{who} reached its limit of {lim.tpm} tokens per minute "
            f"({token_sum} used or reserved, this request needs up to {tokens})",
            rate,
        )
    if reason == "refill":
        wait = math.ceil(retry_after or 0.0)
        return LimitExceeded(
            scope,
            "requests" if lim.rpm else "tokens",
            (lim.rpm or 0) if lim.rpm else (lim.tpm or 0),
            retry_after,
            f"the rate limiter's Redis lost its data (restart or flush), so the last minute's requests are "
            f"unknown; {who}'s request and token windows count as full for {wait} s more",
            rate,
        )
    return LimitExceeded(
        scope,
        "tokens_per_day",
        lim.tpd or 0,
        retry_after,
        f"{who} reached its quota of {lim.tpd} tokens per day (resets at 00:00 UTC)",
        rate,
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

    def refill_s(self) -> float:
        """Seconds left of a period in which the request and token windows count as full because the shared
        store lost them (redis.py), as last seen by this process; 0.0 when there is none."""
        ...

    async def close(self) -> None: ...


def estimate_tokens(prompt_text: str, max_tokens: int, n: int = 1, messages: int = 1) -> int:
    """An upper-leaning estimate of a request's token cost, before the model has seen it.

    ~3 UTF-8 bytes per token errs high for English (about 4 characters per token) and roughly right
    for CJK; a few tokens per message cover the chat template. The settle corrects it afterwards.
    """
    prompt = math.ceil(len(prompt_text.encode("utf-8")) / 3) + 4 * messages + 3
    return prompt + max_tokens * n
