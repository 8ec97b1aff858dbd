"""The Redis rate limiter, against a real Redis: the memory limiter's behaviour, shared exactly by replicas.

Clock control: Redis TIME cannot be patched, so the scripts take an optional clock override that only
tests set (`limiter._clock`, like MemoryRateLimiter's `_mono`/`_wall`); the tests marked "real time"
leave it unset and run on Redis server time. Each test uses its own key prefix (or a unique account id)
and deletes only its own keys.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from distillshield.config import LimitSet
from distillshield.gateway.errors import ApiError
from distillshield.gateway.limits import LimitExceeded, MemoryRateLimiter, RateStatus, Reservation, Scope, Window
from distillshield.gateway.limits.redis import PREFIX, RELEASE_RETRY_DELAYS, RedisRateLimiter
from tests.conftest import REDIS_URL, RunningGateway, free_port, require_service
from tests.fakes import FakeUpstream

_url = urlsplit(REDIS_URL)
REDIS_HOST, REDIS_PORT = _url.hostname or "127.0.0.1", _url.port or 6379


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


async def delete_keys(pattern: str) -> None:
    r = aioredis.Redis.from_url(REDIS_URL)
    try:
        keys = [k async for k in r.scan_iter(match=pattern, count=1000)]
        if keys:
            await r.delete(*keys)
    finally:
        await r.aclose()


Make = Callable[..., RedisRateLimiter]


@pytest.fixture
async def make(caplog: pytest.LogCaptureFixture) -> AsyncIterator[Make]:
    """Build limiters (replicas) sharing one fresh key prefix; make(clock) sets the test clock.

    settle() and release() log Redis errors instead of raising: a test fails if any was logged.
    """
    require_service("Redis", REDIS_HOST, REDIS_PORT)
    prefix = f"{PREFIX}test:{uuid.uuid4().hex[:12]}:"
    made: list[RedisRateLimiter] = []

    def factory(clock: Clock | None = None, **kw: Any) -> RedisRateLimiter:
        lim = RedisRateLimiter(REDIS_URL, prefix=prefix, **kw)
        lim._clock = clock
        made.append(lim)
        return lim

    yield factory
    for lim in made:
        await lim.close()
    await delete_keys(prefix + "*")
    assert not [r.getMessage() for r in caplog.get_records("call") if r.name == "distillshield.limits"]


def scope(**limits: int) -> tuple[Scope, ...]:
    return (Scope("account", "a", LimitSet(**limits)),)


# -- the memory limiter's unit tests, on Redis --------------------------------------------------------


async def test_rpm_is_an_exact_sliding_window(make: Make) -> None:
    clock = Clock()
    lim = make(clock)
    s = scope(rpm=3)
    for i in range(3):
        clock.t = 1000.0 + i * 10
        await lim.release(await lim.reserve(s, 1))
    clock.t = 1025.0
    with pytest.raises(LimitExceeded) as exc:
        await lim.reserve(s, 1)
    # the first request (t=1000) leaves the window at t=1060
    assert exc.value.retry_after == pytest.approx(35.0)
    assert exc.value.headers()["retry-after"] == "35"
    clock.t = 1059.999
    with pytest.raises(LimitExceeded) as exc:
        await lim.reserve(s, 1)
    assert exc.value.retry_after == pytest.approx(0.001)
    clock.t = 1060.0  # start <= now - 60 s: out of the window, as in memory.py
    await lim.reserve(s, 1)


async def test_rpm_on_redis_server_time(make: Make) -> None:
    """Real time: the window follows Redis TIME."""
    lim = make()
    s = scope(rpm=2)
    await lim.reserve(s, 1)
    await lim.reserve(s, 1)
    with pytest.raises(LimitExceeded) as exc:
        await lim.reserve(s, 1)
    assert exc.value.limit == "requests" and 59.0 < exc.value.retry_after <= 60.0


async def test_tokens_reserved_then_settled_to_real_usage(make: Make) -> None:
    lim = make(Clock())
    s = scope(tpm=1000)
    r1 = await lim.reserve(s, 600)
    with pytest.raises(LimitExceeded):
        await lim.reserve(s, 500)  # 600 reserved + 500 > 1000, although nothing was used yet
    await lim.settle(r1, 100)  # the real usage was small: the window frees up at once
    r2 = await lim.reserve(s, 500)
    await lim.settle(r2, 500)
    await lim.settle(r2, 9999)  # settle is idempotent
    with pytest.raises(LimitExceeded) as exc:
        await lim.reserve(s, 401)
    assert exc.value.limit == "tokens"
    await lim.reserve(s, 400)


async def test_tokens_retry_after_waits_for_enough_old_reservations(make: Make) -> None:
    clock = Clock()
    lim = make(clock)
    s = scope(tpm=100)
    for i, n in enumerate((30, 30, 30)):
        clock.t = 1000.0 + i * 10
        await lim.reserve(s, n)
    clock.t = 1030.0
    with pytest.raises(LimitExceeded) as exc:
        await lim.reserve(s, 50)  # 90 + 50 - 100 = 40: the first two (t=1000, 1010) must leave
    assert exc.value.retry_after == pytest.approx(40.0)
    clock.t = 1070.0  # the first two left (t <= now - 60)
    await lim.reserve(s, 50)


async def test_settle_after_the_window_leaves_it_alone(make: Make) -> None:
    clock = Clock()
    lim = make(clock)
    s = scope(tpm=100)
    old = await lim.reserve(s, 90)
    clock.t += 61
    await lim.reserve(s, 90)
    await lim.settle(old, 0)  # left the window already: must not free tokens of the current one
    with pytest.raises(LimitExceeded):
        await lim.reserve(s, 11)


async def test_request_larger_than_tpm_says_waiting_cannot_help(make: Make) -> None:
    lim = make(Clock())
    with pytest.raises(LimitExceeded) as exc:
        await lim.reserve(scope(tpm=100), 101)
    assert exc.value.retry_after is None and "lower max_tokens" in exc.value.message
    assert "retry-after" not in exc.value.headers()


async def test_concurrency_slots_and_idempotent_release(make: Make) -> None:
    lim = make(Clock())
    s = scope(concurrent=2)
    a = await lim.reserve(s, 1)
    await lim.reserve(s, 1)
    with pytest.raises(LimitExceeded) as exc:
        await lim.reserve(s, 1)
    assert exc.value.limit == "concurrent" and exc.value.retry_after == 1.0
    await lim.release(a)
    await lim.release(a)
    assert await lim.in_flight("account:a") == 1
    await lim.reserve(s, 1)


async def test_tokens_per_day_resets_at_utc_midnight(make: Make) -> None:
    clock = Clock(86_400.0 * 20_000 + 86_000)  # 400 s before midnight UTC
    lim = make(clock)
    s = scope(tpd=1000)
    await lim.reserve(s, 900)
    with pytest.raises(LimitExceeded) as exc:
        await lim.reserve(s, 200)
    assert exc.value.limit == "tokens_per_day" and exc.value.retry_after == pytest.approx(400.0)
    clock.t += 401
    await lim.reserve(s, 200)


async def test_settle_corrects_the_day_counter(make: Make) -> None:
    lim = make(Clock(86_400.0 * 20_000 + 1000))
    s = scope(tpd=1000)
    r = await lim.reserve(s, 900)
    await lim.settle(r, 100)
    await lim.reserve(s, 900)  # 100 + 900 <= 1000
    with pytest.raises(LimitExceeded):
        await lim.reserve(s, 1)


async def test_all_scopes_or_none(make: Make) -> None:
    lim = make(Clock())
    key = Scope("key", "k", LimitSet(rpm=10))
    acct = Scope("account", "a", LimitSet(rpm=1))
    await lim.reserve((key, acct), 1)
    with pytest.raises(LimitExceeded) as exc:
        await lim.reserve((key, acct), 1)
    assert exc.value.scope.kind == "account"
    assert await lim.in_flight("key:k") == 1  # the refused request took nothing from the key scope
    r = aioredis.Redis.from_url(REDIS_URL)
    try:
        assert await r.zcard(f"{lim.prefix}key:k:w") == 1
        assert await r.hget(f"{lim.prefix}key:k:t", "s") == b"1"
    finally:
        await r.aclose()


async def on_both_back_ends(make: Make, run: Callable[[Any, Clock], Awaitable[Any]]) -> tuple[Any, Any]:
    """`run(limiter, clock)` on the memory back end, then on Redis, each on its own test clock: (memory's, Redis's)."""
    mem_clock, redis_clock = Clock(), Clock()
    mem = MemoryRateLimiter()
    mem._mono = mem_clock  # type: ignore[method-assign]
    mem._wall = mem_clock  # type: ignore[method-assign]
    return await run(mem, mem_clock), await run(make(redis_clock), redis_clock)


async def test_messages_headers_and_retry_after_match_memory(make: Make) -> None:
    """Both back ends give the same LimitExceeded (limit, value, retry_after, message, headers, windows) and the
    same windows (limit, remaining, reset) for admitted requests."""
    day0 = 86_400.0 * 20_000

    async def run(lim: Any, clock: Clock) -> list[Any]:
        out: list[Any] = []
        cases: list[tuple[float, tuple[Scope, ...], list[int]]] = [
            (1000.0, (Scope("key", "c", LimitSet(concurrent=1)),), [1, 1]),
            (1000.0, (Scope("key", "r", LimitSet(rpm=1, tpm=50)),), [1, 1]),
            (1000.0, (Scope("key", "big", LimitSet(tpm=100)),), [101]),
            (1000.0, (Scope("key", "t", LimitSet(tpm=100, rpm=9)),), [60, 50]),
            (day0 + 86_000, (Scope("org", "d", LimitSet(tpd=100)),), [90, 20]),
            (1000.0, (Scope("key", "zero", LimitSet(tpm=100, rpm=9)),), [30, 0]),  # no tokens: the resets are read
        ]
        for t, scopes, asks in cases:
            for i, n in enumerate(asks):
                clock.t = t + 5 * i
                try:
                    res = await lim.reserve(scopes, n)
                    out.append(res.rate)
                except LimitExceeded as e:
                    out.append((e.scope.key, e.limit, e.limit_value, e.retry_after, e.message, e.headers(), e.rate))
        return out

    expected, got = await on_both_back_ends(make, run)
    assert got == expected
    assert sum(isinstance(x, tuple) for x in got) == 5  # every kind of refusal was compared
    # windows compared: the admitted requests of scopes r and t, and their refusals
    assert sum(x.requests is not None and x.tokens is not None for x in got if isinstance(x, RateStatus)) == 4
    assert got[-1].tokens.reset_s == pytest.approx(55.0)  # the 30 tokens of t=1000, seen at 1005
    assert sum(x[-1].requests is not None and x[-1].tokens is not None for x in got if isinstance(x, tuple)) == 2


async def test_the_token_window_resets_with_the_newest_reservation_holding_tokens(make: Make) -> None:
    """Found past any number of newer reservations settled to zero tokens (the script reads pages of 1, 4, 16,
    ... entries from the newest), with the memory back end's answer."""

    async def run(lim: Any, clock: Clock) -> Any:
        s = (Scope("key", "z", LimitSet(tpm=1000)),)
        clock.t = 1000.0
        await lim.reserve(s, 990)  # holds its tokens
        for i in range(30):  # newer, settled to zero: they hold none
            clock.t = 1001.0 + i
            await lim.settle(await lim.reserve(s, 5), 0)
        clock.t = 1040.0
        with pytest.raises(LimitExceeded) as refused:
            await lim.reserve(s, 20)
        e = refused.value
        return e.limit, e.retry_after, e.headers(), e.rate

    expected, got = await on_both_back_ends(make, run)
    assert got == expected
    assert got[3].tokens.reset_s == pytest.approx(20.0)  # the 990 tokens of t=1000 leave the window at 1060


# -- replicas ------------------------------------------------------------------------------------------


async def _hammer(replicas: list[RedisRateLimiter], s: tuple[Scope, ...], n: int, tokens: int, **kw: Any) -> Any:
    async def one(i: int) -> Reservation | None:
        try:
            return await replicas[i % len(replicas)].reserve(s, tokens)
        except LimitExceeded:
            return None

    return await asyncio.gather(*[one(i) for i in range(n)])


async def test_two_replicas_enforce_rpm_tpm_and_concurrency_exactly(make: Make) -> None:
    """Real time: 200 concurrent reservations through two replicas (two limiters, two pools)."""
    replicas = [make(), make()]
    got = await _hammer(replicas, (Scope("account", "rpm", LimitSet(rpm=50)),), 200, 1)
    assert sum(r is not None for r in got) == 50
    got = await _hammer(replicas, (Scope("account", "tpm", LimitSet(tpm=1000)),), 200, 7)
    assert sum(r is not None for r in got) == 1000 // 7
    got = await _hammer(replicas, (Scope("account", "conc", LimitSet(concurrent=10)),), 200, 1)
    assert sum(r is not None for r in got) == 10  # nobody released: exactly 10 slots
    assert await replicas[0].in_flight("account:conc") == 10
    assert await replicas[1].in_flight("account:conc") == 10


@pytest.mark.parametrize("merged", [False, True], ids=["settle+release", "finish"])
async def test_two_replicas_reserve_settle_release_under_contention(make: Make, merged: bool) -> None:
    """Real time: reserve, hold a little, settle lower, release (as two calls, or as one finish()); in
    flight never exceeds the limit and the shared token sum equals exactly what the admitted requests
    settled to."""
    replicas = [make(), make()]
    conc, tpm = 8, 2000
    s = (Scope("key", "k", LimitSet(concurrent=conc * 2)), Scope("account", "mix", LimitSet(concurrent=conc, tpm=tpm)))
    held, peak, settled = 0, 0, 0
    rng = random.Random(7)

    async def one(i: int) -> bool:
        nonlocal held, peak, settled
        lim = replicas[i % 2]
        try:
            r = await lim.reserve(s, 40)
        except LimitExceeded:
            return False
        held += 1
        peak = max(peak, held)
        await asyncio.sleep(rng.random() * 0.01)
        used = rng.randint(1, 40)
        settled += used
        held -= 1  # before the release: `held` never exceeds the slots Redis holds
        if merged:
            await lim.finish(r, used)
        else:
            await lim.settle(r, used)
            await lim.release(r)
        return True

    ok = await asyncio.gather(*[one(i) for i in range(200)])
    assert 0 < sum(ok) < 200 and peak <= conc
    assert await replicas[0].in_flight("account:mix") == 0
    r = aioredis.Redis.from_url(REDIS_URL)
    try:
        assert int(await r.hget(f"{replicas[0].prefix}account:mix:t", "s")) == settled <= tpm
    finally:
        await r.aclose()


# -- finish(): settle and release in one script ----------------------------------------------------------


async def _state(lim: RedisRateLimiter, scope_key: str) -> dict[str, Any]:
    """A scope's keys, without the reservation ids (which differ between two runs of the same steps)."""
    r = aioredis.Redis.from_url(REDIS_URL)
    try:
        p = f"{lim.prefix}{scope_key}:"
        t = {k.decode(): int(v) for k, v in (await r.hgetall(p + "t")).items()}
        return {
            "window": await r.zcard(p + "w"),
            "sum": t.pop("s", None),
            "tokens": sorted(t.values()),
            "slots": await r.zcard(p + "c"),
            "day": {k.decode(): int(v) for k, v in (await r.hgetall(p + "d")).items()},
        }
    finally:
        await r.aclose()


def three_scopes(tag: str) -> tuple[Scope, ...]:
    return (
        Scope("key", tag, LimitSet(rpm=100, tpm=10_000, concurrent=10, tpd=100_000)),
        Scope("account", tag, LimitSet(tpm=20_000, concurrent=20)),
        Scope("org", tag, LimitSet()),
    )


async def test_finish_equals_settle_then_release(make: Make) -> None:
    """The same steps, once with settle() + release() and once with finish(), leave every scope's keys
    (window, token sum, per-reservation tokens, slots, day counter) in the same state: lower and higher
    usage than reserved, equal usage, a reservation that left the window, and the idempotent repeats."""
    clock = Clock()
    lim = make(clock, lease_s=600)  # the test clock jumps 61 s, with no renewal running: `held` keeps its slot

    async def steps(tag: str, merged: bool) -> None:
        s = three_scopes(tag)
        clock.t = 1000.0

        async def end(r: Reservation, used: int) -> None:
            if merged:
                await lim.finish(r, used)
            else:
                await lim.settle(r, used)
                await lim.release(r)
            assert r.settled and r.released

        old = await lim.reserve(s, 300)  # ends after it left the window
        clock.t = 1030.0
        for used in (120, 900, 300, 0):  # lower, higher, equal, nothing
            await end(await lim.reserve(s, 300), used)
        held = await lim.reserve(s, 50)
        clock.t = 1061.0
        await end(old, 7)  # out of the window: only the day counter and the slot change
        await end(old, 999)  # idempotent
        a, b = await lim.reserve(s, 40), await lim.reserve(s, 40)
        await lim.settle(a, 5)  # already settled: finish only releases
        await lim.release(b)  # already released: finish only settles
        if merged:
            await lim.finish(a, 6)
            await lim.finish(b, 9)
        else:
            await lim.settle(a, 6)
            await lim.release(a)
            await lim.settle(b, 9)
            await lim.release(b)
        assert held.released is False

    await steps("split", False)
    await steps("merged", True)
    for kind in ("key", "account", "org"):
        split, merged = await _state(lim, f"{kind}:split"), await _state(lim, f"{kind}:merged")
        assert split == merged, kind
        assert merged["slots"] == 1  # `held` only
        # 120 + 900 + 300 + 0 + 50 (held) + 5 + 9 in the window; the day: those and old's 7
        assert merged["sum"] == 1384 and merged["day"]["t"] == 1391


@pytest.mark.parametrize("pipelined", [True, False], ids=["pipelined", "alone"])
async def test_finish_is_one_round_trip(make: Make, pipelined: bool) -> None:
    lim = make(pipelined=pipelined)
    r = await lim.reserve(three_scopes("rt"), 100)
    trips = _count_round_trips(lim)
    await lim.finish(r, 40)
    assert trips == [1]
    assert await lim.in_flight("key:rt") == await lim.in_flight("account:rt") == 0
    assert (await _state(lim, "account:rt"))["sum"] == 40


# -- pipelining: concurrent requests' scripts go out together ----------------------------------------------


def _count_round_trips(lim: RedisRateLimiter) -> list[int]:
    """Spy on the limiter's round trips to Redis: one entry per round trip, the number of scripts it carried."""
    trips: list[int] = []
    execute = lim._redis.execute_command

    async def alone(*args: Any, **kw: Any) -> Any:  # redis-py's client, one command
        assert args[0] == "EVALSHA"
        trips.append(1)
        return await execute(*args, **kw)

    lim._redis.execute_command = alone  # type: ignore[method-assign]
    if lim._pipe is not None:
        batch = lim._pipe._execute

        async def together(items: list[Any]) -> list[Any]:  # the pipeline: one round trip for the batch
            trips.append(len(items))
            return await batch(items)

        lim._pipe._execute = together  # type: ignore[method-assign]
    return trips


@pytest.mark.parametrize("pipelined", [True, False], ids=["pipelined", "alone"])
async def test_concurrent_reserves_share_round_trips_and_stay_exact(make: Make, pipelined: bool) -> None:
    """64 concurrent reservations on one replica: pipelined, they go out in a few round trips (each script still
    atomic, so rpm is exact); alone, one round trip each."""
    lim = make(pipelined=pipelined)
    await lim.reserve(three_scopes("warm"), 1)  # the scripts are loaded
    trips = _count_round_trips(lim)
    s = (Scope("account", "burst", LimitSet(rpm=40, concurrent=50)),)

    async def one() -> Reservation | None:
        try:
            return await lim.reserve(s, 1)
        except LimitExceeded:
            return None

    got = await asyncio.gather(*[one() for _ in range(64)])
    assert sum(r is not None for r in got) == 40
    assert sum(trips) == 64
    if pipelined:
        assert len(trips) <= 8 and max(trips) > 1
    else:
        assert trips == [1] * 64
    assert await lim.in_flight("account:burst") == 40
    await asyncio.gather(*[lim.finish(r, 1) for r in got if r is not None])
    assert await lim.in_flight("account:burst") == 0


async def test_a_failing_call_fails_alone_in_its_batch(make: Make) -> None:
    """One script's error is that call's outcome; the rest of the pipeline answers normally."""
    lim = make()
    assert lim._pipe is not None
    check = lim._redis.register_script("if ARGV[1] == 'bad' then return redis.error_reply('bad input') end return 1")
    args = ["ok", "ok", "bad", "ok", "ok"]
    got = await asyncio.gather(*[lim._pipe.call(check, ["k"], [a]) for a in args], return_exceptions=True)
    assert [g if isinstance(g, int) else type(g).__name__ for g in got] == [1, 1, "ResponseError", 1, 1]
    assert "bad input" in str(got[2])


async def test_scripts_flushed_from_redis_are_loaded_again_for_a_batch(make: Make) -> None:
    """SCRIPT FLUSH (or a restarted Redis) between two batches: every call of the next batch still runs, once."""
    lim = make()
    await lim.reserve(three_scopes("flush"), 1)
    r = aioredis.Redis.from_url(REDIS_URL)
    try:
        await r.script_flush()
    finally:
        await r.aclose()
    got = await asyncio.gather(*[lim.reserve(three_scopes("flush"), 1) for _ in range(9)])
    assert await lim.in_flight("key:flush") == 10  # each counted once, none twice (10 is the key's limit)
    await asyncio.gather(*[lim.finish(x, 1) for x in got])


async def test_a_batch_whose_connection_redis_closed_is_sent_again_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Redis closes the connection a batch was about to go out on (a restart, a timeout, CLIENT KILL): the batch
    reconnects and is sent again, once; nothing fails and nothing counts twice."""
    from distillshield.gateway.limits import redis as limits_redis

    require_service("Redis", REDIS_HOST, REDIS_PORT)
    name = f"dslimtest{uuid.uuid4().hex[:8]}"
    prefix = f"{PREFIX}test:{uuid.uuid4().hex[:12]}:"
    lim = RedisRateLimiter(f"{REDIS_URL}?client_name={name}", prefix=prefix)
    admin = aioredis.Redis.from_url(REDIS_URL)
    real, attempts = limits_redis._round_trip, []

    async def killed_first(conn: Any, packed: list[bytes]) -> list[Any]:
        attempts.append(len(packed))
        if len(attempts) == 1:  # checked out healthy; Redis drops it before the batch goes out
            for c in await admin.client_list():
                if c.get("name") == name:
                    await admin.client_kill_filter(_id=c["id"])
            await asyncio.sleep(0.05)
        return await real(conn, packed)

    try:
        s = (Scope("account", "k", LimitSet(concurrent=100)),)
        first = await lim.reserve(s, 1)
        monkeypatch.setattr(limits_redis, "_round_trip", killed_first)
        second = await asyncio.gather(*[lim.reserve(s, 1) for _ in range(5)])
        assert len(attempts) == 2 and attempts[0] == attempts[1] == 5  # one batch, sent twice
        assert await lim.in_flight("account:k") == 6  # ... and counted once
        await asyncio.gather(*[lim.finish(r, 1) for r in [first, *second]])
        assert await lim.in_flight("account:k") == 0
    finally:
        await lim.close()
        await admin.aclose()
        await delete_keys(prefix + "*")


async def test_redis_down_fails_every_call_of_a_batch_with_503() -> None:
    port = free_port()  # nothing listens there
    down = RedisRateLimiter(f"redis://127.0.0.1:{port}/0")
    try:
        got = await asyncio.gather(*[down.reserve(scope(rpm=5), 1) for _ in range(6)], return_exceptions=True)
        assert all(isinstance(g, ApiError) and g.status == 503 for g in got), got
    finally:
        await down.close()


async def test_parallel_finish_cannot_overshoot_tokens_per_minute(make: Make) -> None:
    """Real time: 32 workers on two replicas reserve 50 tokens at a time against tpm=3000 (16 slots) and
    finish at once with the real usage (up to the estimate), so more get in, until a reservation is refused
    for tokens; the window never holds more than the limit, and its sum is exactly what was settled."""
    replicas = [make(), make()]
    tpm = 3000
    s = (Scope("key", "burst", LimitSet(tpm=tpm, concurrent=16)), Scope("org", "burst", LimitSet(tpm=tpm)))
    rng = random.Random(11)
    settled, admitted = 0, 0

    async def worker(i: int) -> None:
        nonlocal settled, admitted
        lim = replicas[i % 2]
        while True:
            try:
                r = await lim.reserve(s, 50)
            except LimitExceeded as exc:
                if exc.limit == "tokens":
                    return
                assert exc.limit == "concurrent"
                await asyncio.sleep(0)
                continue
            admitted += 1
            used = rng.randint(0, 50)
            settled += used
            await asyncio.sleep(0)
            await lim.finish(r, used)

    await asyncio.gather(*[worker(i) for i in range(32)])
    assert admitted > tpm // 50  # settling low let more in than the estimates alone would have
    for kind in ("key", "org"):
        st = await _state(replicas[0], f"{kind}:burst")
        assert st["sum"] == settled == sum(st["tokens"]) <= tpm and st["slots"] == 0


async def test_no_slot_is_held_after_many_cancelled_finishes(make: Make) -> None:
    """Real time: 200 requests hold a slot each; their finish() calls are cancelled at random points (before
    the script is sent, while it is in flight, after it answered). Every slot comes back exactly once:
    none is held afterwards, and the full concurrency is available again."""
    lim = make()
    s = (Scope("key", "cx", LimitSet(concurrent=200)), Scope("account", "cx", LimitSet(concurrent=200, tpm=10**6)))
    held = [await lim.reserve(s, 10) for _ in range(200)]
    assert await lim.in_flight("account:cx") == 200
    rng = random.Random(3)
    tasks = []
    for r in held:  # one at a time, so each is cancelled at its own point
        tasks.append(t := asyncio.create_task(lim.finish(r, 5)))
        for _ in range(rng.randint(1, 6)):  # at least once: finish() has started, as an awaited call has
            await asyncio.sleep(0)
        t.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert any(isinstance(x, asyncio.CancelledError) for x in results)
    assert all(r.released and r.settled for r in held)
    assert await lim.in_flight("key:cx") == await lim.in_flight("account:cx") == 0
    st = await _state(lim, "account:cx")
    # a finish cancelled before its script ran keeps the estimate (10): over-counting, never under
    assert st["slots"] == 0 and 5 * 200 <= st["sum"] <= 10 * 200
    again = [await lim.reserve(s, 1) for _ in range(200)]
    assert len(again) == 200


async def test_expired_slot_leases_are_reclaimed(make: Make) -> None:
    clock = Clock()
    crashed = make(clock, lease_s=30)
    survivor = make(clock, lease_s=30)
    s = scope(concurrent=1)
    await crashed.reserve(s, 1)  # this replica dies without releasing
    with pytest.raises(LimitExceeded):
        await survivor.reserve(s, 1)
    clock.t += 30.001
    assert await survivor.in_flight("account:a") == 0
    await survivor.reserve(s, 1)
    assert await survivor.in_flight("account:a") == 1


async def test_expired_slot_leases_are_reclaimed_on_server_time(make: Make) -> None:
    """Real time: a 0.3 s lease."""
    lim = make(lease_s=0.3)
    s = scope(concurrent=1)
    await lim.reserve(s, 1)
    with pytest.raises(LimitExceeded):
        await lim.reserve(s, 1)
    await asyncio.sleep(0.35)
    await lim.reserve(s, 1)


async def test_keys_are_namespaced_and_expire(make: Make) -> None:
    lim = make(lease_s=120)
    scopes = (Scope("key", "k", LimitSet(rpm=5)), Scope("org", "o", LimitSet()))
    await lim.settle(await lim.reserve(scopes, 10), 5)
    await lim.finish(await lim.reserve(scopes, 10), 3)  # the day counter's expiry is set with the day, and kept
    r = aioredis.Redis.from_url(REDIS_URL)
    try:
        keys = sorted([k.decode() async for k in r.scan_iter(match=lim.prefix + "*")])
        epoch = f"{lim.prefix}epoch"
        assert keys == sorted([epoch] + [f"{lim.prefix}{sk}:{p}" for sk in ("key:k", "org:o") for p in "wtcd"])
        assert await r.pttl(epoch) == -1  # the data-loss marker must outlive every idle period
        keys.remove(epoch)
        for k in keys:
            ttl = await r.pttl(k)
            limit = {"w": 61_000, "t": 61_000, "c": 121_000, "d": 90_000_000}[k[-1]]
            assert 0 < ttl <= limit, (k, ttl)
    finally:
        await r.aclose()


async def test_redis_down_gives_503_and_settle_release_do_not_raise(
    make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()  # nothing listens there
    down = RedisRateLimiter(f"redis://:hunter2@127.0.0.1:{port}/0")
    try:
        with pytest.raises(ApiError) as exc:
            await down.reserve(scope(rpm=1), 1)
        assert exc.value.status == 503 and exc.value.code == "limiter_unavailable"
        assert exc.value.message == f"rate limiter unavailable: cannot reach Redis at redis://127.0.0.1:{port}/0"
        assert "hunter2" not in exc.value.message
        # a reservation taken before Redis went away: settle and release log, never fail the request
        res = await make().reserve(scope(rpm=1), 10)
        await down.settle(res, 1)
        await down.release(res)
        assert res.settled and res.released
        logged = [r.getMessage() for r in caplog.records if r.name == "distillshield.limits"]
        assert len(logged) == 3 and "could not release" in logged[-1] and "hunter2" not in "".join(logged)
        assert down.pending_releases == 1  # retried in the background
    finally:
        await down.close()  # one last try, then says what it leaves to the leases
    logged = [r.getMessage() for r in caplog.records if r.name == "distillshield.limits"]
    assert len(logged) == 4 and "closing with 1 releases that failed" in logged[-1]
    caplog.clear()


# -- end to end: two gateways, one Redis ----------------------------------------------------------------


def chat(gw: RunningGateway, key: str) -> httpx.Response:
    body = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20}
    return httpx.post(
        f"{gw.base}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}, timeout=30
    )


async def test_two_gateways_share_an_account_rpm_limit(gateway_factory: Any) -> None:
    require_service("Redis", REDIS_HOST, REDIS_PORT)
    run_id, n = uuid.uuid4().hex[:12], 5
    account, org = f"acct-{run_id}", f"org-{run_id}"  # unique per run: runs sharing a Redis don't meet
    settings = {"limits__backend": "redis", "limits__redis_url": REDIS_URL}
    gws = [gateway_factory({"upstream": FakeUpstream()}, **settings) for _ in range(2)]
    try:
        keys = []
        for gw in gws:  # each gateway has its own database: the same account id in both
            r = gw.admin("POST", "/accounts", json={"id": account, "org_id": org, "limits": {"rpm": n}})
            assert r.status_code == 201, r.text
            keys.append(gw.admin("POST", "/keys", json={"account_id": account}).json()["key"])
        ok = [chat(gws[i % 2], keys[i % 2]) for i in range(n)]
        assert [r.status_code for r in ok] == [200] * n
        assert [r.headers["x-ratelimit-remaining-requests"] for r in ok] == [str(n - 1 - i) for i in range(n)]
        for gw, key in zip(gws, keys, strict=True):  # refused on both gateways
            r = chat(gw, key)
            assert r.status_code == 429, r.text
            assert 1 <= int(r.headers["retry-after"]) <= 60
            assert r.json()["error"]["code"] == "rate_limit_requests"
            assert f"account {account} reached its limit of {n} requests per minute" == r.json()["error"]["message"]
    finally:
        await delete_keys(f"{PREFIX}account:{account}:*")
        await delete_keys(f"{PREFIX}org:{org}:*")
        for key in keys:
            await delete_keys(f"{PREFIX}key:{key.split('-')[1]}:*")


def test_gateway_answers_503_when_redis_is_down(gateway_factory: Any) -> None:
    port = free_port()
    gw = gateway_factory(
        {"upstream": FakeUpstream()}, limits__backend="redis", limits__redis_url=f"redis://127.0.0.1:{port}/0"
    )
    r = chat(gw, gw.create_key("no-redis"))
    assert r.status_code == 503
    err = r.json()["error"]
    assert err["code"] == "limiter_unavailable"
    assert err["message"] == f"rate limiter unavailable: cannot reach Redis at redis://127.0.0.1:{port}/0"


def test_cancelled_streams_hold_no_slot_on_redis(gateway_factory: Any) -> None:
    """Clients that leave mid-stream: the gateway ends each reservation with one finish() on Redis, and
    no slot stays held (the account allows 3 at a time; 12 streams are cut off, then 3 more run)."""
    require_service("Redis", REDIS_HOST, REDIS_PORT)
    run_id = uuid.uuid4().hex[:12]
    account, org = f"acct-{run_id}", f"org-{run_id}"
    gw = gateway_factory(
        {"upstream": FakeUpstream(words=40, chunk_delay=0.02)}, limits__backend="redis", limits__redis_url=REDIS_URL
    )
    key = gw.create_key(account, org=org, limits={"concurrent": 3})
    body = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 40, "stream": True}
    headers = {"authorization": f"Bearer {key}"}
    try:
        for _ in range(4):
            with httpx.Client(timeout=30) as client:
                streams = [
                    client.stream("POST", f"{gw.base}/v1/chat/completions", json=body, headers=headers)
                    for _ in range(3)
                ]
                for cm in streams:
                    r = cm.__enter__()
                    assert r.status_code == 200, r.read()
                    next(r.iter_raw())  # the first chunk, then the client goes away
                for cm in streams:
                    cm.__exit__(None, None, None)
            for _ in range(100):
                if gw.run(gw.state.limiter.in_flight(f"account:{account}")) == 0:
                    break
                time.sleep(0.05)
            assert gw.run(gw.state.limiter.in_flight(f"account:{account}")) == 0
            assert gw.run(gw.state.limiter.in_flight(f"org:{org}")) == 0
        gw.flush_audit()
        assert gw.state.metrics.in_flight._value.get() == 0
    finally:
        patterns = [f"{PREFIX}account:{account}:*", f"{PREFIX}org:{org}:*", f"{PREFIX}key:{key.split('-')[1]}:*"]
        for pattern in patterns:
            asyncio.run(delete_keys(pattern))


# -- leases: renewed while the request lives, released with retries -----------------------------------------


async def test_a_live_reservation_keeps_its_slot_past_the_lease_by_renewal(make: Make) -> None:
    clock = Clock()
    lim, other = make(clock, lease_s=30), make(clock, lease_s=30)
    s = scope(concurrent=1)
    held = await lim.reserve(s, 1)
    for _ in range(4):  # 100 s, more than three leases: a long stream
        clock.t += 25
        assert await lim.renew_leases() == 1
        with pytest.raises(LimitExceeded):
            await other.reserve(s, 1)
    await lim.release(held)
    assert await lim.renew_leases() == 0  # released: renewed no more
    await other.reserve(s, 1)


async def test_renewal_never_brings_back_a_slot_that_is_gone(make: Make) -> None:
    """A release on the wire can overtake a renewal of the same slot (another connection), and a lease can be
    reclaimed while its renewal is late: the renewal must not put the slot back. Here the slot goes from Redis
    while the reservation is still live in `lim`."""
    clock = Clock()
    lim = make(clock, lease_s=30)
    held = await lim.reserve(scope(concurrent=5), 1)
    r = aioredis.Redis.from_url(REDIS_URL)
    try:
        assert await r.zrem(f"{lim.prefix}account:a:c", held.handle.id) == 1
    finally:
        await r.aclose()
    assert await lim.renew_leases() == 1
    assert await lim.in_flight("account:a") == 0


async def test_a_dropped_reservation_is_not_renewed(make: Make) -> None:
    """A reservation the gateway lost without releasing it (a bug) must not hold its slot forever."""
    clock = Clock()
    lim = make(clock, lease_s=30)
    await lim.reserve(scope(concurrent=5), 1)  # the result is dropped at once
    assert await lim.renew_leases() == 0
    clock.t += 30.001
    assert await lim.in_flight("account:a") == 0


class Sleeps:
    """The background task's sleep, stepped by the test: each sleep waits for step(); the monotonic clock
    moves by the slept time."""

    def __init__(self) -> None:
        self.asked: list[float] = []
        self.mono = Clock(0.0)
        self._gate: asyncio.Queue[None] = asyncio.Queue()

    async def __call__(self, seconds: float) -> None:
        self.asked.append(seconds)
        await self._gate.get()
        self.mono.t += seconds

    def step(self) -> None:
        self._gate.put_nowait(None)

    async def until(self, cond: Callable[[], Any]) -> None:
        for _ in range(500):
            if await cond() if asyncio.iscoroutinefunction(cond) else cond():
                return
            await asyncio.sleep(0.01)
        raise AssertionError("the background task did not get there")


def limiter_with_sleeps(make: Make, clock: Clock, **kw: Any) -> tuple[RedisRateLimiter, Sleeps]:
    sleeps = Sleeps()
    lim = make(clock, sleep=sleeps, **kw)
    lim._mono = sleeps.mono
    return lim, sleeps


def count_scripts(lim: RedisRateLimiter, *, fail: Callable[[], bool] = lambda: False) -> list[str]:
    """Record every command `lim` sends (alone, or in the request path's pipeline); while fail() is true, every
    command fails as if Redis were down."""
    sent: list[str] = []
    execute = lim._redis.execute_command

    async def wrapped(*args: Any, **kw: Any) -> Any:
        sent.append(str(args[0]))
        if fail():
            raise RedisConnectionError("Redis went away (test)")
        return await execute(*args, **kw)

    lim._redis.execute_command = wrapped  # type: ignore[method-assign]
    if lim._pipe is not None:
        batch = lim._pipe._execute

        async def piped(items: list[Any]) -> list[Any]:
            sent.extend("EVALSHA" for _ in items)
            if fail():
                raise RedisConnectionError("Redis went away (test)")
            return await batch(items)

        lim._pipe._execute = piped  # type: ignore[method-assign]
    return sent


async def test_one_background_task_renews_every_live_reservation_in_one_call(make: Make) -> None:
    clock = Clock()
    lim, sleeps = limiter_with_sleeps(make, clock, lease_s=30)
    s = (Scope("key", "k", LimitSet(concurrent=50)), Scope("account", "a", LimitSet(concurrent=50)))
    held = [await lim.reserve(s, 1) for _ in range(20)]
    await sleeps.until(lambda: sleeps.asked)
    assert sleeps.asked == [10.0]  # a third of the lease
    assert [t.get_name() for t in asyncio.all_tasks()].count("ratelimit-leases") == 1
    sent = count_scripts(lim)
    clock.t += 29
    sleeps.step()
    await sleeps.until(lambda: len(sleeps.asked) == 2)
    assert sent == ["EVALSHA"] and sleeps.asked == [10.0, 10.0]
    clock.t += 29  # past the leases taken at 1000, but not past the renewed ones
    assert await lim.in_flight("key:k") == await lim.in_flight("account:a") == 20
    assert all(not r.released for r in held)


async def test_a_failed_release_is_retried_by_the_background_task(make: Make, caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    lim, sleeps = limiter_with_sleeps(make, clock, lease_s=30)
    r = await lim.reserve(scope(concurrent=1), 1)
    await sleeps.until(lambda: sleeps.asked)
    down = True
    count_scripts(lim, fail=lambda: down)
    await lim.finish(r, 1)  # Redis is down: the request ends anyway
    assert r.released and lim.pending_releases == 1
    await sleeps.until(lambda: len(sleeps.asked) == 2)  # woken at once, to wait for the first retry only
    assert sleeps.asked[1] == RELEASE_RETRY_DELAYS[0]
    down = False
    assert await make(clock).in_flight("account:a") == 1  # still held, until the retry
    sleeps.step()
    await sleeps.until(lambda: lim.pending_releases == 0)
    assert await make(clock).in_flight("account:a") == 0  # given back within a second, not a lease
    logged = [x.getMessage() for x in caplog.records if x.name == "distillshield.limits"]
    assert len(logged) == 2 and "retrying in the background" in logged[1]
    caplog.clear()


async def test_a_release_that_keeps_failing_is_given_up_and_its_lease_runs_out(
    make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    lim, sleeps = limiter_with_sleeps(make, clock, lease_s=30)
    r = await lim.reserve(scope(concurrent=1), 1)
    await sleeps.until(lambda: sleeps.asked)
    down = True
    count_scripts(lim, fail=lambda: down)
    await lim.release(r)
    await sleeps.until(lambda: len(sleeps.asked) == 2)  # woken by the failed release: waits for its retry
    for _ in range(10):  # step the background task's sleeps until it gives up
        if lim.pending_releases == 0:
            break
        n = len(sleeps.asked)
        sleeps.step()
        await sleeps.until(lambda n=n: len(sleeps.asked) > n)
    assert lim.pending_releases == 0
    assert sleeps.mono.t == sum(RELEASE_RETRY_DELAYS)  # tried at once, then after each delay: then gave up
    logged = [x.getMessage() for x in caplog.records if x.name == "distillshield.limits"]
    assert "gave up releasing 1 reservations" in logged[-1]
    down = False
    other = make(clock)
    assert await other.in_flight("account:a") == 1
    clock.t += 30.001  # the lease, never renewed after the release: the slot is back
    assert await other.in_flight("account:a") == 0
    await other.reserve(scope(concurrent=1), 1)
    caplog.clear()


# -- a Redis that lost its data (restart without persistence, FLUSHDB) ------------------------------------------

FRESH_DB = 13  # FLUSHDB runs here only, never on the database other tests share


@pytest.fixture
async def fresh(caplog: pytest.LogCaptureFixture) -> AsyncIterator[tuple[Make, Callable[[], Awaitable[None]]]]:
    """Limiters on database FRESH_DB and a flush() of that database; a test fails on unexpected warnings."""
    require_service("Redis", REDIS_HOST, REDIS_PORT)
    url = f"redis://{REDIS_HOST}:{REDIS_PORT}/{FRESH_DB}"
    prefix = f"{PREFIX}test:{uuid.uuid4().hex[:12]}:"
    made: list[RedisRateLimiter] = []
    r = aioredis.Redis.from_url(url)

    def factory(clock: Clock | None = None, **kw: Any) -> RedisRateLimiter:
        lim = RedisRateLimiter(url, prefix=prefix, **kw)
        lim._clock = clock
        made.append(lim)
        return lim

    async def flush() -> None:
        await r.flushdb()

    try:
        yield factory, flush
    finally:
        for lim in made:
            await lim.close()
        await r.flushdb()
        await r.aclose()
    assert not [x.getMessage() for x in caplog.get_records("call") if x.name == "distillshield.limits"]


def duration_s(duration: str) -> float:
    """An OpenAI reset header ("20ms", "8.64s", "1m0s") in seconds."""
    m = re.fullmatch(r"(?:(\d+)m)?(\d+(?:\.\d+)?)(ms|s)", duration)
    assert m, duration
    minutes, value, unit = m.groups()
    return int(minutes or 0) * 60 + float(value) / (1000 if unit == "ms" else 1)


def limits_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [x.getMessage() for x in caplog.records if x.name == "distillshield.limits"]


async def test_a_flushed_redis_counts_every_window_as_full_until_it_would_have_refilled(
    fresh: tuple[Make, Callable[[], Awaitable[None]]], caplog: pytest.LogCaptureFixture
) -> None:
    make_fresh, flush = fresh
    clock = Clock()
    lim, replica = make_fresh(clock), make_fresh(clock)
    s = (Scope("key", "k", LimitSet(rpm=50)), Scope("account", "a", LimitSet(tpm=10_000)))
    for i in range(50):
        await (lim, replica)[i % 2].reserve(s, 10)  # both replicas know the epoch now
    with pytest.raises(LimitExceeded):
        await lim.reserve(s, 10)
    clock.t = 1010.0
    await flush()  # the 50 requests of this minute are gone from Redis
    admitted = 0
    for i in range(100):  # what used to be let through: 100 against rpm 50, at once
        try:
            await (lim, replica)[i % 2].reserve(s, 10)
            admitted += 1
        except LimitExceeded as exc:
            assert exc.retry_after == pytest.approx(60.0) and exc.headers()["retry-after"] == "60"
            assert "lost its data" in exc.message and exc.limit == "requests"
            assert exc.rate is not None and exc.rate.requests == Window(50, 0, 60.0)
            assert exc.rate.tokens == Window(10_000, 0, 60.0)
    assert admitted == 0
    logged = limits_logged(caplog)
    assert len(logged) == 2 and all("lost its data" in m and "count as full" in m for m in logged)  # one a replica
    newcomer = make_fresh(clock)  # a replica started during the period refuses too (the marker says so)
    clock.t = 1069.999
    with pytest.raises(LimitExceeded) as exc:
        await newcomer.reserve(s, 10)
    assert exc.value.retry_after == pytest.approx(0.001)
    assert lim.refill_s() == pytest.approx(0.001)
    clock.t = 1070.0  # 60 s after the loss was seen: every request the lost window held has left it
    got = [await (lim, replica, newcomer)[i % 3].reserve(s, 10) for i in range(50)]
    assert len(got) == 50 and lim.refill_s() == 0.0
    with pytest.raises(LimitExceeded) as exc:
        await lim.reserve(s, 10)
    assert exc.value.message == "key k reached its limit of 50 requests per minute"
    assert len(limits_logged(caplog)) == 3  # the newcomer's one line; nothing more
    caplog.clear()


async def test_a_replica_that_starts_on_the_empty_redis_cannot_hide_the_loss(
    fresh: tuple[Make, Callable[[], Awaitable[None]]], caplog: pytest.LogCaptureFixture
) -> None:
    make_fresh, flush = fresh
    clock = Clock()
    old = make_fresh(clock)
    s = scope(rpm=5)
    await old.reserve(s, 1)
    await flush()
    clock.t = 1005.0
    newcomer = make_fresh(clock)
    await newcomer.reserve(s, 1)  # writes the new marker: it cannot know Redis was flushed
    clock.t = 1006.0
    with pytest.raises(LimitExceeded) as exc:
        await old.reserve(s, 1)  # ... but this replica knew the old marker
    assert exc.value.retry_after == pytest.approx(59.0)  # from the new marker: 1005 + 60 - 1006
    with pytest.raises(LimitExceeded):
        await newcomer.reserve(s, 1)  # and now every replica treats the windows as full
    assert len(limits_logged(caplog)) == 2
    caplog.clear()


async def test_the_first_start_on_an_empty_redis_is_not_a_loss(
    fresh: tuple[Make, Callable[[], Awaitable[None]]],
) -> None:
    make_fresh, flush = fresh
    await flush()
    lim = make_fresh(Clock())
    for _ in range(3):
        await lim.reserve(scope(rpm=3), 1)
    assert lim.refill_s() == 0.0  # and the fixture checks that nothing was logged


async def test_the_open_policy_accepts_after_a_loss_and_says_so(
    fresh: tuple[Make, Callable[[], Awaitable[None]]], caplog: pytest.LogCaptureFixture
) -> None:
    make_fresh, flush = fresh
    clock = Clock()
    lim = make_fresh(clock, fresh_policy="open")
    s = scope(rpm=2)
    await lim.reserve(s, 1)
    await lim.reserve(s, 1)
    await flush()
    r = await lim.reserve(s, 1)
    assert r.rate is not None and r.rate.requests == Window(2, 1, 60.0)
    logged = limits_logged(caplog)
    assert len(logged) == 1 and "limits.redis_fresh_policy: open" in logged[0]
    caplog.clear()


def test_gateway_stays_ready_and_answers_429_with_reset_headers_after_redis_lost_its_data(
    gateway_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Decision (app.py, readyz): during the refill period the replica stays ready, its /readyz body says how
    long the windows count as full, and clients get 429s whose headers say when to come back."""
    require_service("Redis", REDIS_HOST, REDIS_PORT)
    url = f"redis://{REDIS_HOST}:{REDIS_PORT}/{FRESH_DB}"
    gw = gateway_factory({"upstream": FakeUpstream()}, limits__backend="redis", limits__redis_url=url)
    key = gw.create_key(f"acct-{uuid.uuid4().hex[:12]}")
    headers = {"authorization": f"Bearer {key}"}
    body = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20}

    async def flushdb() -> None:
        r = aioredis.Redis.from_url(url)
        try:
            await r.flushdb()
        finally:
            await r.aclose()

    try:
        assert httpx.post(f"{gw.base}/v1/chat/completions", json=body, headers=headers, timeout=30).status_code == 200
        ready = httpx.get(f"{gw.base}/readyz", timeout=30)
        assert ready.status_code == 200 and "limiter_refill_s" not in ready.json()
        asyncio.run(flushdb())
        r = httpx.post(f"{gw.base}/v1/chat/completions", json=body, headers=headers, timeout=30)
        assert r.status_code == 429 and "lost its data" in r.json()["error"]["message"]
        assert 59 <= int(r.headers["retry-after"]) <= 60
        assert r.headers["x-ratelimit-remaining-requests"] == "0"
        assert 59 <= duration_s(r.headers["x-ratelimit-reset-requests"]) <= 60
        m = httpx.post(
            f"{gw.base}/v1/messages",
            json={**body, "max_tokens": 20},
            headers={"x-api-key": key, "anthropic-version": "2023-06-01"},
            timeout=30,
        )
        assert m.status_code == 429 and m.headers["anthropic-ratelimit-tokens-remaining"] == "0"
        ready = httpx.get(f"{gw.base}/readyz", timeout=30)
        assert ready.status_code == 200 and ready.json()["ready"] is True
        assert 50 < ready.json()["limiter_refill_s"] <= 60
        assert any("lost its data" in x.getMessage() for x in caplog.records if x.name == "distillshield.limits")
    finally:
        asyncio.run(flushdb())
