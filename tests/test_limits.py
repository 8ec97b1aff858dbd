"""Rate limits and quotas: exact sliding windows, reserve/settle, concurrency release, 429 headers."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from distillshield.config import LimitSet
from distillshield.gateway.limits import LimitExceeded, MemoryRateLimiter, Scope
from tests.conftest import RunningGateway
from tests.fakes import FakeUpstream


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def limiter_at(clock: Clock) -> MemoryRateLimiter:
    lim = MemoryRateLimiter()
    lim._mono = clock  # type: ignore[method-assign]
    lim._wall = clock  # type: ignore[method-assign]
    return lim


def scope(**limits: int) -> tuple[Scope, ...]:
    return (Scope("account", "a", LimitSet(**limits)),)


async def test_rpm_is_an_exact_sliding_window() -> None:
    clock = Clock()
    lim = limiter_at(clock)
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
    clock.t = 1060.01
    await lim.reserve(s, 1)


async def test_tokens_reserved_then_settled_to_real_usage() -> None:
    clock = Clock()
    lim = limiter_at(clock)
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


async def test_request_larger_than_tpm_says_waiting_cannot_help() -> None:
    lim = limiter_at(Clock())
    with pytest.raises(LimitExceeded) as exc:
        await lim.reserve(scope(tpm=100), 101)
    assert exc.value.retry_after is None and "lower max_tokens" in exc.value.message


async def test_concurrency_slots_and_idempotent_release() -> None:
    lim = limiter_at(Clock())
    s = scope(concurrent=2)
    a = await lim.reserve(s, 1)
    await lim.reserve(s, 1)
    with pytest.raises(LimitExceeded) as exc:
        await lim.reserve(s, 1)
    assert exc.value.limit == "concurrent"
    await lim.release(a)
    await lim.release(a)
    assert await lim.in_flight("account:a") == 1
    await lim.reserve(s, 1)


async def test_tokens_per_day_resets_at_utc_midnight() -> None:
    clock = Clock(86_400.0 * 20_000 + 86_000)  # 400 s before midnight UTC
    lim = limiter_at(clock)
    s = scope(tpd=1000)
    await lim.reserve(s, 900)
    with pytest.raises(LimitExceeded) as exc:
        await lim.reserve(s, 200)
    assert exc.value.limit == "tokens_per_day" and exc.value.retry_after == pytest.approx(400.0)
    clock.t += 401
    await lim.reserve(s, 200)


async def test_all_scopes_or_none() -> None:
    lim = limiter_at(Clock())
    key = Scope("key", "k", LimitSet(rpm=10))
    acct = Scope("account", "a", LimitSet(rpm=1))
    await lim.reserve((key, acct), 1)
    with pytest.raises(LimitExceeded) as exc:
        await lim.reserve((key, acct), 1)
    assert exc.value.scope.kind == "account"
    assert await lim.in_flight("key:k") == 1  # the refused request took nothing from the key scope


def chat(gw: RunningGateway, key: str, max_tokens: int = 20, stream: bool = False) -> httpx.Response:
    body = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens}
    if stream:
        body["stream"] = True
    return httpx.post(
        f"{gw.base}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}, timeout=30
    )


def test_429_with_retry_after_and_ratelimit_headers(gateway_factory) -> None:
    gw = gateway_factory({"upstream": FakeUpstream()}, limits__account={"rpm": 3})
    key = gw.create_key("limited")
    ok = [chat(gw, key) for _ in range(3)]
    assert all(r.status_code == 200 for r in ok)
    assert ok[0].headers["x-ratelimit-limit-requests"] == "3"
    assert [r.headers["x-ratelimit-remaining-requests"] for r in ok] == ["2", "1", "0"]
    r = chat(gw, key)
    assert r.status_code == 429
    assert 1 <= int(r.headers["retry-after"]) <= 60
    assert r.json()["error"]["code"] == "rate_limit_requests"
    assert "3 requests per minute" in r.json()["error"]["message"]
    other = gw.create_key("unlimited-neighbour")
    assert chat(gw, other).status_code == 200  # limits are per account


def test_per_account_limit_overrides(gateway_factory) -> None:
    gw = gateway_factory({"upstream": FakeUpstream()}, limits__account={"rpm": 100})
    r = gw.admin("POST", "/accounts", json={"id": "tight", "limits": {"rpm": 1}})
    assert r.status_code == 201
    key = gw.admin("POST", "/keys", json={"account_id": "tight"}).json()["key"]
    assert chat(gw, key).status_code == 200
    assert chat(gw, key).status_code == 429


async def test_50_parallel_requests_cannot_overshoot_tpm(gateway_factory) -> None:
    tpm = 3000
    up = FakeUpstream(words=200, chunk_delay=0.0, prompt_tokens=10)
    gw = gateway_factory(
        {"upstream": up},
        limits__account={"tpm": tpm, "rpm": None, "concurrent": None},
        limits__key={"tpm": None, "rpm": None, "concurrent": None},
    )
    key = gw.create_key("parallel")
    body = {"model": "fake-model", "messages": [{"role": "user", "content": "go"}], "max_tokens": 200}
    async with httpx.AsyncClient(timeout=60) as client:
        rs = await asyncio.gather(
            *[
                client.post(f"{gw.base}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"})
                for _ in range(50)
            ]
        )
    ok = [r for r in rs if r.status_code == 200]
    refused = [r for r in rs if r.status_code == 429]
    assert len(ok) + len(refused) == 50
    used = sum(r.json()["usage"]["total_tokens"] for r in ok)
    assert used <= tpm
    assert 0 < len(ok) < 50 and refused[0].json()["error"]["code"] == "rate_limit_tokens"


async def test_1000_cancelled_streams_leave_no_slots(gateway_factory) -> None:
    up = FakeUpstream(words=1000, chunk_delay=0.005)
    gw = gateway_factory(
        {"upstream": up},
        limits__account={"concurrent": 200, "rpm": None, "tpm": None, "tpd": None},
        limits__key={"concurrent": 200, "rpm": None, "tpm": None},
    )
    key = gw.create_key("canceller")
    body = {
        "model": "fake-model",
        "messages": [{"role": "user", "content": "stream"}],
        "max_tokens": 1000,
        "stream": True,
    }
    sem = asyncio.Semaphore(100)

    async def one(client: httpx.AsyncClient) -> int:
        async with sem:
            got = 0
            async with client.stream(
                "POST",
                f"{gw.base}/v1/chat/completions",
                json=body,
                headers={"authorization": f"Bearer {key}"},
            ) as resp:
                assert resp.status_code == 200
                async for _line in resp.aiter_lines():
                    got += 1
                    if got >= 4:
                        break  # leaving the block closes the connection mid-stream
            return got

    limits = httpx.Limits(max_connections=100, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        results = await asyncio.gather(*[one(client) for _ in range(1000)])
    assert all(g >= 4 for g in results)

    async def held() -> tuple[int, int]:
        return await gw.state.limiter.in_flight("account:canceller"), await gw.state.limiter.in_flight(
            f"key:{key.split('-')[1]}"
        )

    for _ in range(200):  # the server notices each disconnect asynchronously
        if gw.run(held()) == (0, 0):
            break
        await asyncio.sleep(0.05)
    assert gw.run(held()) == (0, 0)
    assert up.closed_streams == 1000  # every upstream stream was closed, not left running
    rows = gw.request_rows()
    assert len(rows) == 1000 and {r["status"] for r in rows} == {499}
    assert all(r["finish_reason"] == "cancelled" for r in rows)
