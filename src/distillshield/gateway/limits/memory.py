"""In-process rate limiter: exact sliding windows, for one gateway process.

Hand-written because no library offers reserve-then-settle token accounting with exact sliding
windows across several scopes at once. Atomicity comes from the event loop: reserve() checks every
scope and commits to every scope without awaiting in between.
"""

from __future__ import annotations

import time
from array import array
from dataclasses import dataclass

from distillshield.gateway.limits.base import (
    DAY_S,
    WINDOW_S,
    LimitExceeded,
    Reservation,
    Scope,
    ScopeCount,
    limit_exceeded,
    rate_status,
)

_COMPACT_AT = 4096  # drop expired entries from the front of the arrays once this many have accumulated


class _State:
    """One scope's sliding windows, as arrays of floats and ints with a moving front.

    The windows hold an entry per request of the last minute (tens of thousands per scope on a busy
    gateway). Kept as objects, or even as floats in a deque, every full garbage collection had to visit
    each of them and stalled the event loop for tens of milliseconds; `array` buffers are not visited at
    all. Reservation number k (counted from the scope's first) is at index `tok_front + k - base` while
    it is in the window, i.e. while k >= base.
    """

    __slots__ = (
        "req_ts",
        "req_front",
        "tok_ts",
        "tok_n",
        "tok_front",
        "base",
        "token_sum",
        "in_flight",
        "day",
        "day_tokens",
    )

    def __init__(self) -> None:
        self.req_ts = array("d")  # request start times; the window is req_ts[req_front:]
        self.req_front = 0
        self.tok_ts = array("d")  # reservations: start times ...
        self.tok_n = array("q")  # ... and tokens (reserved, or used once settled); window: [tok_front:]
        self.tok_front = 0
        self.base = 0  # the number of the reservation at tok_front
        self.token_sum = 0
        self.in_flight = 0
        self.day = -1
        self.day_tokens = 0

    @property
    def requests(self) -> int:
        return len(self.req_ts) - self.req_front

    def prune(self, now: float) -> None:
        horizon = now - WINDOW_S
        ts, front, end = self.req_ts, self.req_front, len(self.req_ts)
        while front < end and ts[front] <= horizon:
            front += 1
        if front >= _COMPACT_AT and 2 * front >= end:
            del ts[:front]
            front = 0
        self.req_front = front
        ts, n, front, end = self.tok_ts, self.tok_n, self.tok_front, len(self.tok_ts)
        start = front
        while front < end and ts[front] <= horizon:
            self.token_sum -= n[front]
            front += 1
        self.base += front - start
        if front >= _COMPACT_AT and 2 * front >= end:
            del ts[:front]
            del n[:front]
            front = 0
        self.tok_front = front

    def count(self, now: float) -> ScopeCount:
        """The windows as they are (call prune first): what they count and when their newest entries leave."""
        req_reset = self.req_ts[-1] + WINDOW_S - now if self.requests else 0.0
        tok_reset = 0.0
        for i in range(len(self.tok_ts) - 1, self.tok_front - 1, -1):  # newest first; usually the first one
            if self.tok_n[i] > 0:
                tok_reset = self.tok_ts[i] + WINDOW_S - now
                break
        return ScopeCount(self.requests, self.token_sum, req_reset, tok_reset)

    def roll_day(self, wall: float) -> None:
        day = int(wall // DAY_S)
        if day != self.day:
            self.day, self.day_tokens = day, 0


@dataclass
class _Handle:
    entries: list[tuple[_State, int]]  # each scope's state and the reservation's number in it
    day: int


class MemoryRateLimiter:
    """The embedded default RateLimiter."""

    def __init__(self) -> None:
        self._states: dict[str, _State] = {}
        self._mono = time.monotonic
        self._wall = time.time

    def _state(self, key: str) -> _State:
        st = self._states.get(key)
        if st is None:
            st = self._states[key] = _State()
        return st

    async def reserve(self, scopes: tuple[Scope, ...], tokens: int) -> Reservation:
        now, wall = self._mono(), self._wall()
        states = []
        for scope in scopes:
            st = self._state(scope.key)
            st.prune(now)
            st.roll_day(wall)
            states.append(st)
        counts = [st.count(now) for st in states]
        try:
            for scope, st in zip(scopes, states, strict=True):
                self._check(scope, st, tokens, now, wall)
        except LimitExceeded as exc:
            exc.rate = rate_status(scopes, counts, wall, None)
            raise
        entries = []
        for st in states:  # every check passed: commit to every scope
            st.req_ts.append(now)
            entries.append((st, st.base + len(st.tok_ts) - st.tok_front))
            st.tok_ts.append(now)
            st.tok_n.append(tokens)
            st.token_sum += tokens
            st.in_flight += 1
            st.day_tokens += tokens
        return Reservation(
            scopes, tokens, rate_status(scopes, counts, wall, tokens), _Handle(entries, states[0].day if states else 0)
        )

    def _check(self, scope: Scope, st: _State, tokens: int, now: float, wall: float) -> None:
        lim = scope.limits
        if lim.concurrent is not None and st.in_flight >= lim.concurrent:
            raise limit_exceeded(scope, "concurrent", 1.0, in_flight=st.in_flight)
        if lim.rpm is not None and st.requests >= lim.rpm:
            oldest_needed = st.req_ts[len(st.req_ts) - lim.rpm]
            raise limit_exceeded(scope, "requests", oldest_needed + WINDOW_S - now)
        if lim.tpm is not None:
            if tokens > lim.tpm:
                raise limit_exceeded(scope, "too_large", None, tokens=tokens)
            if st.token_sum + tokens > lim.tpm:
                need = st.token_sum + tokens - lim.tpm
                wait = WINDOW_S
                for i in range(st.tok_front, len(st.tok_ts)):
                    need -= st.tok_n[i]
                    if need <= 0:
                        wait = st.tok_ts[i] + WINDOW_S - now
                        break
                raise limit_exceeded(scope, "tokens", wait, tokens=tokens, token_sum=st.token_sum)
        if lim.tpd is not None and st.day_tokens + tokens > lim.tpd:
            raise limit_exceeded(scope, "tokens_per_day", (st.day + 1) * DAY_S - wall)

    async def settle(self, reservation: Reservation, tokens_used: int) -> None:
        if reservation.settled:
            return
        reservation.settled = True
        handle: _Handle = reservation.handle
        diff = tokens_used - reservation.tokens
        for st, number in handle.entries:
            if number >= st.base:  # still in the window
                st.token_sum += diff
                st.tok_n[st.tok_front + number - st.base] = tokens_used
            if st.day == handle.day:
                st.day_tokens = max(0, st.day_tokens + diff)

    async def release(self, reservation: Reservation) -> None:
        if reservation.released:
            return
        reservation.released = True
        for st, _entry in reservation.handle.entries:
            st.in_flight -= 1

    async def finish(self, reservation: Reservation, tokens_used: int) -> None:
        await self.settle(reservation, tokens_used)  # neither awaits anything: atomic in the event loop
        await self.release(reservation)

    async def in_flight(self, scope_key: str) -> int:
        st = self._states.get(scope_key)
        return st.in_flight if st else 0

    async def ping(self) -> bool:
        return True  # in this process: up while the process is

    def refill_s(self) -> float:
        return 0.0  # the windows live and die with this process: never lost while it runs

    async def close(self) -> None:
        self._states.clear()
