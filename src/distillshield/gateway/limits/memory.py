"""In-process rate limiter: exact sliding windows, for one gateway process.

Hand-written because no library offers reserve-then-settle token accounting with exact sliding
windows across several scopes at once. Atomicity comes from the event loop: reserve() checks every
scope and commits to every scope without awaiting in between.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from distillshield.gateway.limits.base import (
    DAY_S,
    WINDOW_S,
    Reservation,
    Scope,
    limit_exceeded,
    rate_headers,
)


@dataclass
class _Entry:
    ts: float
    tokens: int
    in_window: bool = True


@dataclass
class _State:
    requests: deque[float] = field(default_factory=deque)  # start times in the window
    tokens: deque[_Entry] = field(default_factory=deque)  # reservations in the window
    token_sum: int = 0
    in_flight: int = 0
    day: int = -1
    day_tokens: int = 0

    def prune(self, now: float) -> None:
        horizon = now - WINDOW_S
        while self.requests and self.requests[0] <= horizon:
            self.requests.popleft()
        while self.tokens and self.tokens[0].ts <= horizon:
            old = self.tokens.popleft()
            old.in_window = False
            self.token_sum -= old.tokens

    def roll_day(self, wall: float) -> None:
        day = int(wall // DAY_S)
        if day != self.day:
            self.day, self.day_tokens = day, 0


@dataclass
class _Handle:
    entries: list[tuple[_State, _Entry]]
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
        remaining: dict[str, tuple[int | None, int | None]] = {}
        for scope in scopes:
            st = self._state(scope.key)
            st.prune(now)
            st.roll_day(wall)
            self._check(scope, st, tokens, now, wall)
            lim = scope.limits
            remaining[scope.key] = (
                lim.rpm - len(st.requests) - 1 if lim.rpm else None,
                lim.tpm - st.token_sum - tokens if lim.tpm else None,
            )
            states.append(st)
        entries = []
        for st in states:  # every check passed: commit to every scope
            st.requests.append(now)
            entry = _Entry(now, tokens)
            st.tokens.append(entry)
            st.token_sum += tokens
            st.in_flight += 1
            st.day_tokens += tokens
            entries.append((st, entry))
        return Reservation(
            scopes, tokens, rate_headers(scopes, remaining), _Handle(entries, states[0].day if states else 0)
        )

    def _check(self, scope: Scope, st: _State, tokens: int, now: float, wall: float) -> None:
        lim = scope.limits
        if lim.concurrent is not None and st.in_flight >= lim.concurrent:
            raise limit_exceeded(scope, "concurrent", 1.0, in_flight=st.in_flight)
        if lim.rpm is not None and len(st.requests) >= lim.rpm:
            oldest_needed = st.requests[len(st.requests) - lim.rpm]
            raise limit_exceeded(scope, "requests", oldest_needed + WINDOW_S - now)
        if lim.tpm is not None:
            if tokens > lim.tpm:
                raise limit_exceeded(scope, "too_large", None, tokens=tokens)
            if st.token_sum + tokens > lim.tpm:
                need = st.token_sum + tokens - lim.tpm
                wait = WINDOW_S
                for e in st.tokens:
                    need -= e.tokens
                    if need <= 0:
                        wait = e.ts + WINDOW_S - now
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
        for st, entry in handle.entries:
            if entry.in_window:
                st.token_sum += diff
            entry.tokens = tokens_used
            if st.day == handle.day:
                st.day_tokens = max(0, st.day_tokens + diff)

    async def release(self, reservation: Reservation) -> None:
        if reservation.released:
            return
        reservation.released = True
        for st, _entry in reservation.handle.entries:
            st.in_flight -= 1

    async def in_flight(self, scope_key: str) -> int:
        st = self._states.get(scope_key)
        return st.in_flight if st else 0

    async def close(self) -> None:
        self._states.clear()
