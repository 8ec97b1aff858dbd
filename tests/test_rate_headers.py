"""Rate-limit headers: each API's convention (names and formats), the same windows from every back end, and
what the official SDKs see on successes and 429s."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import anthropic
import openai
import pytest

from distillshield.config import LimitSet
from distillshield.gateway.limits import (
    LimitExceeded,
    MemoryRateLimiter,
    RateLimiter,
    RateStatus,
    Scope,
    Window,
    anthropic_headers,
    openai_headers,
)
from distillshield.gateway.limits.headers import go_duration, rfc3339
from distillshield.gateway.limits.redis import PREFIX, RedisRateLimiter
from tests.conftest import REDIS_URL, RunningGateway, require_service
from tests.fakes import FakeUpstream
from tests.test_limits_redis import REDIS_HOST, REDIS_PORT, Clock, delete_keys, duration_s

# -- formats ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0s"),
        (-1.0, "0s"),
        (0.0004, "1ms"),  # rounded up: a client that waits this long is never early
        (0.02, "20ms"),
        (0.999, "999ms"),
        (1.0, "1s"),
        (8.64, "8.64s"),
        (17.5001, "17.501s"),
        (59.9995, "1m0s"),
        (60.0, "1m0s"),
        (360.0, "6m0s"),
        (3661.5, "1h1m1.5s"),
    ],
)
def test_openai_resets_are_go_durations(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text


def test_anthropic_resets_are_rfc3339_utc_rounded_up_to_the_second() -> None:
    assert rfc3339(1_700_000_000.0) == "2023-11-14T22:13:20Z"
    assert rfc3339(1_700_000_000.2) == "2023-11-14T22:13:21Z"


def test_headers_name_each_window_in_each_convention() -> None:
    rate = RateStatus(1_700_000_000.0, Window(50, 49, 60.0), Window(40_000, 39_000, 1.5))
    assert openai_headers(rate) == {
        "x-ratelimit-limit-requests": "50",
        "x-ratelimit-remaining-requests": "49",
        "x-ratelimit-reset-requests": "1m0s",
        "x-ratelimit-limit-tokens": "40000",
        "x-ratelimit-remaining-tokens": "39000",
        "x-ratelimit-reset-tokens": "1.5s",
    }
    assert anthropic_headers(rate) == {
        "anthropic-ratelimit-requests-limit": "50",
        "anthropic-ratelimit-requests-remaining": "49",
        "anthropic-ratelimit-requests-reset": "2023-11-14T22:14:20Z",
        "anthropic-ratelimit-tokens-limit": "40000",
        "anthropic-ratelimit-tokens-remaining": "39000",
        "anthropic-ratelimit-tokens-reset": "2023-11-14T22:13:22Z",
    }
    only_tokens = RateStatus(0.0, None, Window(10, 0, 0.0))
    assert set(openai_headers(only_tokens)) == {f"x-ratelimit-{k}-tokens" for k in ("limit", "remaining", "reset")}
    assert openai_headers(None) == anthropic_headers(None) == {}


# -- the windows: one contract for every back end ------------------------------------------------------------

Limiter = tuple[RateLimiter, Clock]


@pytest.fixture(params=["memory", "redis"])
async def limiter(request: pytest.FixtureRequest) -> AsyncIterator[Limiter]:
    clock = Clock()
    if request.param == "memory":
        mem = MemoryRateLimiter()
        mem._mono = clock  # type: ignore[method-assign]
        mem._wall = clock  # type: ignore[method-assign]
        yield mem, clock
        return
    require_service("Redis", REDIS_HOST, REDIS_PORT)
    prefix = f"{PREFIX}test:{uuid.uuid4().hex[:12]}:"
    lim = RedisRateLimiter(REDIS_URL, prefix=prefix, lease_s=600)
    lim._clock = clock
    try:
        yield lim, clock
    finally:
        await lim.close()
        await delete_keys(prefix + "*")


async def test_reset_is_when_the_newest_entry_leaves_and_retry_after_when_the_oldest_does(limiter: Limiter) -> None:
    lim, clock = limiter
    s = (Scope("account", "a", LimitSet(rpm=3, tpm=100)),)
    first = await lim.reserve(s, 30)
    # the admitted request is the newest entry of both windows: they are full again 60 s from now
    assert first.rate == RateStatus(1000.0, Window(3, 2, 60.0), Window(100, 70, 60.0))
    clock.t = 1010.0
    second = await lim.reserve(s, 30)
    await lim.settle(second, 0)  # used nothing: it no longer holds the token window
    clock.t = 1020.0
    third = await lim.reserve(s, 0)
    # requests: the newest is this one; tokens: the newest holding any is the first (1000 + 60 - 1020)
    assert third.rate == RateStatus(1020.0, Window(3, 0, 60.0), Window(100, 70, 40.0))
    clock.t = 1030.0
    with pytest.raises(LimitExceeded) as exc:
        await lim.reserve(s, 1)
    assert exc.value.retry_after == pytest.approx(30.0)  # one more request fits when the oldest (1000) leaves
    assert exc.value.rate == RateStatus(1030.0, Window(3, 0, 50.0), Window(100, 70, 30.0))


async def test_the_tightest_scope_sets_the_windows(limiter: Limiter) -> None:
    lim, _clock = limiter
    key = Scope("key", "k", LimitSet(rpm=10, tpm=50))
    account = Scope("account", "a", LimitSet(rpm=2, tpm=1000))
    org = Scope("org", "o", LimitSet())
    r = await lim.reserve((key, account, org), 20)
    assert r.rate is not None and r.rate.requests == Window(2, 1, 60.0) and r.rate.tokens == Window(50, 30, 60.0)


async def test_windows_without_a_limit_are_left_out(limiter: Limiter) -> None:
    lim, _clock = limiter
    r = await lim.reserve((Scope("account", "c", LimitSet(concurrent=5, tpd=1000)),), 20)
    assert r.rate == RateStatus(1000.0, None, None)


# -- what the official SDKs see --------------------------------------------------------------------------------


def _limited_gateway(gateway_factory: Callable[..., RunningGateway]) -> tuple[RunningGateway, str]:
    gw = gateway_factory(
        {"upstream": FakeUpstream()},
        limits__account={"rpm": 2, "tpm": 5000, "concurrent": None, "tpd": None},
        limits__key={"rpm": None, "tpm": None, "concurrent": None},
    )
    return gw, gw.create_key("headers")


def test_openai_sdk_reads_ratelimit_headers_on_success_and_on_429(gateway_factory: Any) -> None:
    gw, key = _limited_gateway(gateway_factory)
    client = openai.OpenAI(base_url=f"{gw.base}/v1", api_key=key, max_retries=0)
    msgs = [{"role": "user", "content": "hi"}]
    chat = client.chat.completions.with_raw_response.create(model="fake-model", messages=msgs, max_tokens=20)
    comp = client.completions.with_raw_response.create(model="fake-model", prompt="hi", max_tokens=20, stream=True)
    for raw, remaining in ((chat, "1"), (comp, "0")):
        h = raw.headers
        assert h["x-ratelimit-limit-requests"] == "2" and h["x-ratelimit-remaining-requests"] == remaining
        assert h["x-ratelimit-reset-requests"] == "1m0s"  # the request just made is the window's newest entry
        assert h["x-ratelimit-limit-tokens"] == "5000" and 0 < int(h["x-ratelimit-remaining-tokens"]) < 5000
        assert h["x-ratelimit-reset-tokens"] == "1m0s"
        assert not any(k.startswith("anthropic-ratelimit") for k in h)
    chat.parse()
    list(comp.parse())
    with pytest.raises(openai.RateLimitError) as exc:
        client.chat.completions.create(model="fake-model", messages=msgs, max_tokens=20)
    h = exc.value.response.headers
    assert h["x-ratelimit-remaining-requests"] == "0"
    reset = duration_s(h["x-ratelimit-reset-requests"])
    assert 0 < reset <= 60
    # the window is full again when its newest entry leaves: no sooner than one more request fits
    assert float(h["retry-after-ms"]) / 1000 <= reset and 1 <= int(h["retry-after"]) <= 60


def test_anthropic_sdk_reads_anthropic_ratelimit_headers_on_success_and_on_429(gateway_factory: Any) -> None:
    gw, key = _limited_gateway(gateway_factory)
    client = anthropic.Anthropic(base_url=gw.base, api_key=key, max_retries=0)
    msgs = [{"role": "user", "content": "hi"}]
    before = datetime.now(UTC).replace(microsecond=0)
    raw = client.messages.with_raw_response.create(model="fake-model", max_tokens=20, messages=msgs)
    assert raw.parse().content[0].text
    h = raw.headers
    assert h["anthropic-ratelimit-requests-limit"] == "2" and h["anthropic-ratelimit-requests-remaining"] == "1"
    assert h["anthropic-ratelimit-tokens-limit"] == "5000"
    assert 0 < int(h["anthropic-ratelimit-tokens-remaining"]) < 5000
    for name in ("anthropic-ratelimit-requests-reset", "anthropic-ratelimit-tokens-reset"):
        reset = datetime.strptime(h[name], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        assert 59 <= (reset - before).total_seconds() <= 62, h[name]
    assert not any(k.startswith("x-ratelimit-") for k in h)
    client.messages.create(model="fake-model", max_tokens=20, messages=msgs)
    with pytest.raises(anthropic.RateLimitError) as exc:
        client.messages.create(model="fake-model", max_tokens=20, messages=msgs)
    h = exc.value.response.headers
    assert h["anthropic-ratelimit-requests-remaining"] == "0"
    assert 1 <= int(h["retry-after"]) <= 60
    reset = datetime.strptime(h["anthropic-ratelimit-requests-reset"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert 0 < (reset - before).total_seconds() <= 62
    assert exc.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
