"""The gateway's hot path: raw ASGI dispatch, batched pass-through streams, the limiter's windows,
request ids, and the SQLite audit writer thread (docs/performance.md, "Gateway overhead")."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web

from distillshield.config import LimitSet
from distillshield.gateway.limits import Scope
from distillshield.gateway.limits.memory import _COMPACT_AT, MemoryRateLimiter
from distillshield.gateway.pipeline import new_request_id, request_headers
from distillshield.gateway.streaming import LastChunk, SSEResponse
from distillshield.store import Store
from tests.conftest import RunningGateway, free_port
from tests.fakes import FakeUpstream, MockOpenAIServer

# The upstream's own bytes, spaced as orjson never writes them: a chunk passed through untouched keeps them.
RAW_CHUNKS = [
    b'{"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "mock-model", '
    b'"choices": [{"index": 0, "delta": {"role": "assistant", "content": "hel"}, "finish_reason": null}]}',
    b'{"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "mock-model", '
    b'"choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": "stop"}]}',
]
RAW_USAGE = (
    b'{"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "mock-model", "choices": [], '
    b'"usage": {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}}'
)


class OneReadServer(MockOpenAIServer):
    """Streams every event (usage included when asked for) in one write, so they arrive in one read."""

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        events = RAW_CHUNKS + ([RAW_USAGE] if (body.get("stream_options") or {}).get("include_usage") else [])
        await resp.write(b"".join(b"data: " + e + b"\n\n" for e in events) + b"data: [DONE]\n\n")
        return resp


@pytest.fixture
def one_read_gateway(gateway_factory: Any) -> tuple[RunningGateway, str]:
    srv = OneReadServer(free_port()).start()
    gw = gateway_factory(upstream__kind="http", upstream__http={"base_url": srv.base_url})
    yield gw, gw.create_key("hot")
    srv.stop()


def _audit_rows(gw: RunningGateway) -> list[dict[str, Any]]:
    gw.flush_audit()

    async def read() -> list[dict[str, Any]]:
        return [r async for r in gw.state.store.iter_audit()]

    return gw.run(read())


def _post(gw: RunningGateway, key: str, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{gw.base}{path}", headers={"authorization": f"Bearer {key}"}, json=body, timeout=30)


def test_untouched_chunks_pass_through_as_the_upstreams_bytes(one_read_gateway) -> None:
    gw, key = one_read_gateway
    body = {
        "model": "mock-model",
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "hi"}],
    }
    r = _post(gw, key, "/v1/chat/completions", body)
    assert r.status_code == 200
    expected = b"".join(b"data: " + e + b"\n\n" for e in [*RAW_CHUNKS, RAW_USAGE]) + b"data: [DONE]\n\n"
    assert r.content == expected
    row = _audit_rows(gw)[-1]
    assert row["status"] == 200 and row["response_text"] == "hello" and row["finish_reason"] == "stop"
    assert (row["prompt_tokens"], row["completion_tokens"]) == (7, 2)  # settled from the usage chunk


def test_usage_the_client_did_not_ask_for_is_dropped(one_read_gateway) -> None:
    gw, key = one_read_gateway
    body = {"model": "mock-model", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    r = _post(gw, key, "/v1/chat/completions", body)
    assert r.content == b"".join(b"data: " + e + b"\n\n" for e in RAW_CHUNKS) + b"data: [DONE]\n\n"
    row = _audit_rows(gw)[-1]
    assert row["response_text"] == "hello" and (row["prompt_tokens"], row["completion_tokens"]) == (7, 2)
    in_flight = gw.run(gw.state.limiter.in_flight(f"account:{row['account_id']}"))
    assert in_flight == 0


def test_anthropic_stream_from_one_read_keeps_the_event_sequence(one_read_gateway) -> None:
    gw, key = one_read_gateway
    body = {"model": "mock-model", "stream": True, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
    r = _post(gw, key, "/v1/messages", body)
    names = re.findall(rb"^event: (\w+)$", r.content, re.M)
    assert names == [
        b"message_start",
        b"content_block_start",
        b"ping",
        b"content_block_delta",
        b"content_block_delta",
        b"content_block_stop",
        b"message_delta",
        b"message_stop",
    ]
    datas = [orjson.loads(d) for d in re.findall(rb"^data: (.*)$", r.content, re.M)]
    assert "".join(d["delta"]["text"] for d in datas if d["type"] == "content_block_delta") == "hello"
    # message_delta's cumulative usage carries the upstream's real counts (message_start only had an estimate)
    assert datas[-2]["usage"] == {"output_tokens": 2, "input_tokens": 7}
    assert datas[-2]["delta"]["stop_reason"] == "end_turn"


class BrokenUpstream(FakeUpstream):
    async def complete(self, req: Any) -> dict[str, Any]:
        raise RuntimeError("bug in an upstream")


def test_unexpected_error_on_an_api_route_is_a_logged_500(gateway_factory) -> None:
    gw = gateway_factory({"upstream": BrokenUpstream()})
    key = gw.create_key("broken")
    body = {"model": "fake-model", "messages": [{"role": "user", "content": "x"}]}
    with httpx.Client(timeout=30) as client:  # one keep-alive connection
        auth = {"authorization": f"Bearer {key}"}
        r = client.post(f"{gw.base}/v1/chat/completions", json=body, headers=auth)
        assert r.status_code == 500 and r.headers.get("connection", "").lower() != "close"
        assert r.json()["error"]["message"] == "internal error in the gateway; it has been logged"
        again = client.post(f"{gw.base}/v1/chat/completions", json={**body, "stream": True}, headers=auth)
        assert again.status_code == 200  # the same connection still serves (streams do not call complete())
    failed = [row for row in _audit_rows(gw) if row["status"] == 500]
    assert len(failed) == 1 and "RuntimeError: bug in an upstream" in failed[0]["error"]
    assert failed[0]["request_id"] == r.headers["x-request-id"]


def test_other_methods_and_paths_still_go_through_starlette(fake_gateway) -> None:
    r = httpx.get(f"{fake_gateway.base}/v1/chat/completions", timeout=10)
    assert r.status_code == 405 and "not allowed" in r.json()["error"]["message"]
    r = httpx.post(f"{fake_gateway.base}/v1/chat/completion", json={}, timeout=10)
    assert r.status_code == 404 and "no such endpoint" in r.json()["error"]["message"]


def test_request_ids_are_random_128_bit_hex() -> None:
    ids = [new_request_id() for _ in range(1000)]
    assert len(set(ids)) == 1000 and all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)


def test_first_of_repeated_headers_wins() -> None:
    scope = {"headers": [(b"x-api-key", b"first"), (b"user-agent", b"ua"), (b"x-api-key", b"second")]}
    assert request_headers(scope) == {"x-api-key": "first", "user-agent": "ua"}


async def test_last_chunk_ends_the_body_in_the_same_message() -> None:
    async def body():
        yield b"a"
        yield LastChunk(b"b")

    sent: list[dict[str, Any]] = []
    closed: list[str] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def on_close(ending: str) -> None:
        closed.append(ending)

    await SSEResponse(body(), {}, on_close)({"type": "http"}, receive, send)
    assert [(m.get("body"), m.get("more_body")) for m in sent[1:]] == [(b"a", True), (b"b", False)]
    assert closed == ["finished"]


async def test_limiter_windows_survive_compaction_and_settle_exactly() -> None:
    lim = MemoryRateLimiter()
    clock = [1000.0]
    lim._mono = lambda: clock[0]
    scope = Scope("key", "k", LimitSet(rpm=10**9, tpm=10**12, concurrent=None, tpd=None))
    n = 3 * _COMPACT_AT
    held = []
    for i in range(n):
        clock[0] = 1000.0 + i * (120.0 / n)  # spread over two minutes: the first half leaves the window
        res = await lim.reserve((scope,), 10)
        if i % 2:
            await lim.settle(res, 3)
            await lim.release(res)
        else:
            held.append(res)
    st = lim._states["key:k"]
    assert st.req_front < _COMPACT_AT and len(st.req_ts) < n  # expired entries were dropped
    in_window = [i for i in range(n) if 1000.0 + i * (120.0 / n) > clock[0] - 60.0]
    assert st.requests == len(in_window)
    assert st.token_sum == sum(3 if i % 2 else 10 for i in in_window)
    for res in held:  # settling reservations that already left the window does not touch the sum
        await lim.settle(res, 1)
        await lim.release(res)
    assert st.token_sum == sum(3 if i % 2 else 1 for i in in_window)
    assert await lim.in_flight("key:k") == 0


def _row(i: int) -> dict[str, Any]:
    return {
        "ts": 1_700_000_000.5 + i,
        "request_id": f"r{i}",
        "account_id": "a",
        "org_id": "o",
        "key_id": "k",
        "ip": "127.0.0.1",
        "user_agent": "ua\x00",
        "endpoint": "/v1/chat/completions",
        "model": "m",
        "stream": bool(i % 2),
        "status": 200,
        "latency_ms": 1.25,
        "request": "{}",
        "response_text": "t",
        "finish_reason": "stop",
        "prompt_tokens": 1,
        "completion_tokens": None,
        "decision": "allow",
        "error": None,
    }


async def test_sqlite_audit_thread_stores_what_the_sqlalchemy_path_stores(tmp_path) -> None:
    threaded = Store(f"sqlite+aiosqlite:///{tmp_path / 'a.db'}")
    plain = Store(f"sqlite+aiosqlite:///{tmp_path / 'b.db'}")
    plain._audit_file = None  # the SQLAlchemy path, as for in-memory and URI databases
    try:
        for s in (threaded, plain):
            await s.init()
            assert await s.append_audit([_row(i) for i in range(5)]) == 5
            assert await s.append_audit([_row(i) for i in range(5, 7)]) == 7
        rows_a = [r async for r in threaded.iter_audit()]
        rows_b = [r async for r in plain.iter_audit()]
        assert rows_a == rows_b and rows_a[1]["stream"] is True and rows_a[0]["user_agent"] == "ua\ufffd"
        assert (await threaded.verify_chain()).ok and await threaded.chain_head() == await plain.chain_head()
    finally:
        await threaded.close()
        await plain.close()


def _ip_of_last_row(gw: RunningGateway, key: str, forwarded_for: str) -> str | None:
    r = httpx.post(
        f"{gw.base}/v1/chat/completions",
        headers={"authorization": f"Bearer {key}", "x-forwarded-for": forwarded_for},
        json={"model": "fake-model", "messages": [{"role": "user", "content": "x"}]},
        timeout=30,
    )
    assert r.status_code == 200
    return _audit_rows(gw)[-1]["ip"]


def test_forwarded_for_is_ignored_unless_the_proxy_is_configured(gateway_factory) -> None:
    # uvicorn alone would trust X-Forwarded-For from 127.0.0.1; the gateway trusts no proxy by default.
    gw = gateway_factory({"upstream": FakeUpstream()})
    assert _ip_of_last_row(gw, gw.create_key("direct"), "203.0.113.7") == "127.0.0.1"
    gw = gateway_factory({"upstream": FakeUpstream()}, server__forwarded_allow_ips=["127.0.0.1"])
    assert _ip_of_last_row(gw, gw.create_key("proxied"), "203.0.113.7") == "203.0.113.7"


async def test_a_body_that_never_waits_needs_no_disconnect_watcher() -> None:
    async def body():
        yield LastChunk(b"all of it")

    sent: list[dict[str, Any]] = []
    closed: list[str] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        raise AssertionError("receive() is only for the disconnect watcher")

    async def on_close(ending: str) -> None:
        closed.append(ending)

    tasks_before = len(asyncio.all_tasks())
    await SSEResponse(body(), {}, on_close, watch_disconnect=False)({"type": "http"}, receive, send)
    assert len(asyncio.all_tasks()) == tasks_before
    assert [(m.get("body"), m.get("more_body")) for m in sent[1:]] == [(b"all of it", False)] and closed == ["finished"]


async def test_a_body_that_waits_is_cancelled_when_the_client_leaves() -> None:
    upstream_gone = asyncio.Event()

    async def body():
        yield b"first"
        try:
            await asyncio.sleep(3600)  # the upstream is slow
        finally:
            upstream_gone.set()
        yield LastChunk(b"never")

    sent: list[dict[str, Any]] = []
    closed: list[str] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(0.05)
        return {"type": "http.disconnect"}

    async def on_close(ending: str) -> None:
        closed.append(ending)

    await asyncio.wait_for(SSEResponse(body(), {}, on_close)({"type": "http"}, receive, send), 10)
    assert upstream_gone.is_set() and closed == ["client"] and [m.get("body") for m in sent[1:]] == [b"first"]


def _reference_text(api: str, chunks: list[dict[str, Any]]) -> tuple[str, str | None]:
    from distillshield.gateway.protocols.openai import chunk_text

    parts, finish = [], None
    for c in chunks:
        text, f = chunk_text(api, c)
        parts.append(text)
        finish = f or finish
    return "".join(parts), finish


@pytest.mark.parametrize("api", ["chat", "completions"])
async def test_stream_text_and_finish_match_chunk_text(api: str) -> None:
    from types import SimpleNamespace

    from distillshield.gateway.pipeline import Gateway, _StreamState
    from distillshield.gateway.upstream.base import ChunkBatch

    def choice(i: int, t: str | None, finish: str | None = None) -> dict[str, Any]:
        c: dict[str, Any] = {"index": i, "finish_reason": finish}
        if api == "chat":
            c["delta"] = {} if t is None else {"content": t}
        else:
            c["text"] = t
        return c

    chunks = [
        {"choices": [choice(0, "he"), choice(1, "Ho")]},
        {"choices": [choice(0, None), choice(1, "")]},
        {"choices": [choice(0, "llo", "stop"), choice(1, "w", None)]},
        {"choices": [choice(1, "dy", "length")]},
        {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}},
    ]
    if api == "chat":
        chunks.insert(1, {"choices": [{"index": 0, "delta": None, "finish_reason": None}]})
    batches = [ChunkBatch([(orjson.dumps(c), c) for c in chunks[:2]]), ChunkBatch([(None, c) for c in chunks[2:]])]

    async def rest():
        yield batches[1]

    state = _StreamState()
    call = SimpleNamespace(gen=SimpleNamespace(api=api), transform=None)
    ended: list[Any] = []

    async def end_stream(c: Any, s: Any) -> bool:  # the row is queued and durable before [DONE]
        ended.append(c)
        return True

    gw = SimpleNamespace(_end_stream=end_stream)
    out = b"".join([part async for part in Gateway._openai_events(gw, call, rest(), batches[0], state, True)])  # type: ignore[arg-type]
    assert ended == [call]
    assert (state.text(), state.finish) == _reference_text(api, chunks) and state.complete
    assert state.usage == {"prompt_tokens": 3, "completion_tokens": 4}
    events = re.findall(rb"^data: (.*)$", out, re.M)
    assert [orjson.loads(e) for e in events[:-1]] == chunks and events[-1] == b"[DONE]"
