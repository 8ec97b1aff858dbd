"""The OpenAI-compatible HTTP upstream: pass-through, and failures mapped to 502/504 that say what failed."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.conftest import RunningGateway, free_port
from tests.fakes import MockOpenAIServer


@pytest.fixture
def mock_upstream():
    servers: list[MockOpenAIServer] = []

    def start(**kw) -> MockOpenAIServer:
        srv = MockOpenAIServer(free_port(), **kw).start()
        servers.append(srv)
        return srv

    yield start
    for s in servers:
        s.stop()


def http_gateway(gateway_factory, base_url: str, **overrides) -> RunningGateway:
    return gateway_factory(upstream__kind="http", upstream__http={"base_url": base_url, **overrides})


def test_pass_through_with_the_openai_sdk(gateway_factory, mock_upstream) -> None:
    up = mock_upstream()
    gw = http_gateway(gateway_factory, up.base_url)
    client = openai.OpenAI(base_url=f"{gw.base}/v1", api_key=gw.create_key("http-user"))
    assert [m.id for m in client.models.list()] == ["mock-model"]  # discovered from the upstream's /models
    r = client.chat.completions.create(model="mock-model", messages=[{"role": "user", "content": "x"}])
    assert r.choices[0].message.content == "a b c" and r.usage.total_tokens == 8
    text = "".join(
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(
            model="mock-model", messages=[{"role": "user", "content": "x"}], stream=True
        )
        if c.choices
    )
    assert text == "a b c"


def test_upstream_down_is_502_and_audited(gateway_factory) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    gw = http_gateway(gateway_factory, dead, models=["m"])
    key = gw.create_key("u")
    for stream in (False, True):
        r = httpx.post(
            f"{gw.base}/v1/chat/completions",
            headers={"authorization": f"Bearer {key}"},
            timeout=30,
            json={"model": "m", "stream": stream, "messages": [{"role": "user", "content": "hello"}]},
        )
        assert r.status_code == 502
        err = r.json()["error"]
        assert err["code"] == "upstream_error" and "cannot connect to the model server" in err["message"]
        assert dead not in r.text and "127.0.0.1" not in r.text  # the client is not told internal addresses
    gw.flush_audit()
    rows = gw.request_rows()
    assert [r["status"] for r in rows] == [502, 502]
    assert all("cannot connect" in r["error"] and "hello" in r["request"] for r in rows)
    assert all(dead in r["error"] for r in rows)  # the operator is (audit log)
    assert gw.run(gw.state.limiter.in_flight("account:u")) == 0


def test_slow_upstream_is_504(gateway_factory, mock_upstream) -> None:
    up = mock_upstream(delay=3.0)
    gw = http_gateway(gateway_factory, up.base_url, models=["mock-model"], read_timeout_s=0.5)
    key = gw.create_key("u")
    r = httpx.post(
        f"{gw.base}/v1/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        timeout=30,
        json={"model": "mock-model", "messages": [{"role": "user", "content": "x"}]},
    )
    assert r.status_code == 504
    assert "did not answer within 0.5 s" in r.json()["error"]["message"]
    gw.flush_audit()
    assert [row["status"] for row in gw.request_rows()] == [504]


def test_upstream_5xx_is_502_and_messages_endpoint_uses_anthropic_shape(gateway_factory, mock_upstream) -> None:
    up = mock_upstream(status=503)
    gw = http_gateway(gateway_factory, up.base_url, models=["mock-model"])
    key = gw.create_key("u")
    r = httpx.post(
        f"{gw.base}/v1/messages",
        headers={"x-api-key": key},
        timeout=30,
        json={"model": "mock-model", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]},
    )
    assert r.status_code == 502
    assert r.json()["type"] == "error" and "the model server failed (HTTP 503)" in r.json()["error"]["message"]
    assert up.base_url not in r.text and "mock failure" not in r.text  # its internals stay in the audit log
    gw.flush_audit()
    assert "returned HTTP 503: mock failure" in gw.request_rows()[0]["error"]
