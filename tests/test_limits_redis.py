"""The Redis rate limiter, against a real Redis: the memory limiter's behaviour, shared exactly by replicas.

Clock control: Redis TIME cannot be patched, so the scripts take an optional clock override that only
tests set (`limiter._clock`, like MemoryRateLimiter's `_mono`/`_wall`); the tests marked "real time"
leave it unset and run on Redis server time. Each test uses its own key prefix (or a unique account id)
and deletes only its own keys.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import redis.asyncio as aioredis

from distillshield.config import LimitSet
from distillshield.gateway.errors import ApiError
from distillshield.gateway.limits import LimitExceeded, MemoryRateLimiter, Reservation, Scope
from distillshield.gateway.limits.redis import PREFIX, RedisRateLimiter
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


async def test_messages_headers_and_retry_after_match_memory(make: Make) -> None:
    """Both back ends give the same LimitExceeded (limit, value, retry_after, message) and headers."""
    day0 = 86_400.0 * 20_000

    async def run(lim: Any, clock: Clock) -> list[Any]:
        out: list[Any] = []
        cases: list[tuple[float, tuple[Scope, ...], list[int]]] = [
            (1000.0, (Scope("key", "c", LimitSet(concurrent=1)),), [1, 1]),
            (1000.0, (Scope("key", "r", LimitSet(rpm=1, tpm=50)),), [1, 1]),
            (1000.0, (Scope("key", "big", LimitSet(tpm=100)),), [101]),
            (1000.0, (Scope("key", "t", LimitSet(tpm=100, rpm=9)),), [60, 50]),
            (day0 + 86_000, (Scope("org", "d", LimitSet(tpd=100)),), [90, 20]),
        ]
        for t, scopes, asks in cases:
            for i, n in enumerate(asks):
                clock.t = t + 5 * i
                try:
                    res = await lim.reserve(scopes, n)
                    out.append(res.headers)
                except LimitExceeded as e:
                    out.append((e.scope.key, e.limit, e.limit_value, e.retry_after, e.message, e.headers()))
        return out

    mem_clock, redis_clock = Clock(), Clock()
    mem = MemoryRateLimiter()
    mem._mono = mem_clock  # type: ignore[method-assign]
    mem._wall = mem_clock  # type: ignore[method-assign]
    expected = await run(mem, mem_clock)
    got = await run(make(redis_clock), redis_clock)
    assert got == expected
    assert sum(isinstance(x, tuple) for x in got) == 5  # every kind of refusal was compared


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


async def test_two_replicas_reserve_settle_release_under_contention(make: Make) -> None:
    """Real time: reserve, hold a little, settle lower, release; in flight never exceeds the limit and
    the shared token sum equals exactly what the admitted requests settled to."""
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
        await lim.settle(r, used)
        settled += used
        held -= 1  # before the release: `held` never exceeds the slots Redis holds
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
    await lim.settle(await lim.reserve((Scope("key", "k", LimitSet(rpm=5)), Scope("org", "o", LimitSet())), 10), 5)
    r = aioredis.Redis.from_url(REDIS_URL)
    try:
        keys = sorted([k.decode() async for k in r.scan_iter(match=lim.prefix + "*")])
        assert keys == sorted(f"{lim.prefix}{sk}:{p}" for sk in ("key:k", "org:o") for p in "wtcd")
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
        caplog.clear()
    finally:
        await down.close()


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
