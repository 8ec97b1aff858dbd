"""Bad input gets a 4xx JSON error that names the problem; never a 500."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.conftest import RunningGateway

GOOD_CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def key(fake_gateway: RunningGateway) -> str:
    return fake_gateway.create_key("bad-input")


def send(gw: RunningGateway, key: str, content: bytes, path: str = "/v1/chat/completions") -> httpx.Response:
    return httpx.post(
        f"{gw.base}{path}",
        content=content,
        timeout=30,
        headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
    )


CASES = [
    (b"{not json", 400, "not valid JSON"),
    (b"", 400, "empty"),
    (b"[1, 2]", 400, "must be a JSON object"),
    (
        b'{"model": "fake-model", "messages": [{"role": "user", "content": "caf\xe9"}]}',
        400,
        "not valid UTF-8",
    ),
    (b'{"model": "fake-model"}', 400, "'messages' is required"),
    (b'{"model": "fake-model", "messages": []}', 400, "at least one message"),
    (b'{"model": "fake-model", "messages": "hi"}', 400, "'messages' must be an array"),
    (b'{"model": "fake-model", "messages": [{"role": "wizard", "content": "x"}]}', 400, "messages[0].role"),
    (b'{"model": "fake-model", "messages": [{"role": "user"}]}', 400, "messages[0].content"),
    (b'{"messages": [{"role": "user", "content": "x"}]}', 400, "'model' is required"),
    (
        b'{"model": 7, "messages": [{"role": "user", "content": "x"}]}',
        400,
        "'model' must be a non-empty string",
    ),
    (
        b'{"model": "fake-model", "messages": [{"role": "user", "content": "x"}], "max_tokens": "ten"}',
        400,
        "'max_tokens' must be an integer",
    ),
    (
        b'{"model": "fake-model", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}',
        400,
        "'max_tokens' must be at least 1",
    ),
    (
        b'{"model": "fake-model", "messages": [{"role": "user", "content": "x"}], "temperature": 9}',
        400,
        "'temperature' must be between 0 and 2",
    ),
    (
        b'{"model": "fake-model", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}',
        400,
        "'stream' must be a boolean",
    ),
    (
        b'{"model": "fake-model", "messages": [{"role": "user", "content": "x"}], "max_tokens": 999999}',
        400,
        "at most 4096",
    ),
    (
        b'{"model": "gpt-nope", "messages": [{"role": "user", "content": "x"}]}',
        404,
        "model 'gpt-nope' is not served",
    ),
]


@pytest.mark.parametrize(("body", "status", "needle"), CASES)
def test_chat_bad_input(fake_gateway: RunningGateway, key: str, body: bytes, status: int, needle: str) -> None:
    r = send(fake_gateway, key, body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert needle in err["message"]


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (
            b'{"model": "fake-model", "messages": [{"role": "user", "content": "x"}]}',
            "'max_tokens' is required",
        ),
        (b'{"model": "fake-model", "max_tokens": 5}', "'messages' is required"),
        (
            b'{"model": "fake-model", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}',
            "'user' or 'assistant'",
        ),
        (
            b'{"model": "fake-model", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "image"}]}]}',
            "text content blocks only",
        ),
        (
            b'{"model": "fake-model", "max_tokens": 5, "temperature": 1.5, '
            b'"messages": [{"role": "user", "content": "x"}]}',
            "'temperature' must be between 0 and 1",
        ),
    ],
)
def test_messages_bad_input_has_anthropic_shape(
    fake_gateway: RunningGateway, key: str, body: bytes, needle: str
) -> None:
    r = send(fake_gateway, key, body, "/v1/messages")
    assert r.status_code == 400, r.text
    assert r.json()["type"] == "error"
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert needle in r.json()["error"]["message"]


def test_completions_bad_prompt(fake_gateway: RunningGateway, key: str) -> None:
    r = send(fake_gateway, key, b'{"model": "fake-model", "prompt": 42}', "/v1/completions")
    assert r.status_code == 400 and "'prompt'" in r.json()["error"]["message"]


def test_oversized_body_is_413(gateway_factory) -> None:
    from tests.fakes import FakeUpstream

    gw = gateway_factory({"upstream": FakeUpstream()}, server__max_body_bytes=4096)
    key = gw.create_key("big")
    body = b'{"model": "fake-model", "messages": [{"role": "user", "content": "' + b"a" * 10_000 + b'"}]}'
    r = send(gw, key, body)
    assert r.status_code == 413
    assert "limit is 4096 bytes" in r.json()["error"]["message"]

    def chunks():  # no content-length: the limit is enforced while reading
        yield body[:3000]
        yield body[3000:]

    r = httpx.post(
        f"{gw.base}/v1/chat/completions",
        content=chunks(),
        timeout=30,
        headers={"authorization": f"Bearer {key}"},
    )
    assert r.status_code == 413 and "exceeds the limit of 4096 bytes" in r.json()["error"]["message"]


def test_unknown_route_and_method_are_json(fake_gateway: RunningGateway) -> None:
    r = httpx.get(f"{fake_gateway.base}/v1/nothing", timeout=10)
    assert r.status_code == 404 and "no such endpoint" in r.json()["error"]["message"]
    r = httpx.get(f"{fake_gateway.base}/v1/chat/completions", timeout=10)
    assert r.status_code == 405 and "not allowed" in r.json()["error"]["message"]


def test_rejected_requests_are_audited_and_nothing_is_lost(fake_gateway: RunningGateway, key: str) -> None:
    for body, _status, _needle in CASES:
        send(fake_gateway, key, body)
    ok = send(fake_gateway, key, b'{"model": "fake-model", "messages": [{"role": "user", "content": "fine"}]}')
    assert ok.status_code == 200
    rows = fake_gateway.request_rows()
    statuses = [r["status"] for r in rows]
    assert len(rows) == len(CASES) + 1
    assert 500 not in statuses and statuses[-1] == 200
    assert all(r["error"] for r in rows[:-1])


async def _rows(gw: RunningGateway) -> list[dict]:
    return [r async for r in gw.state.store.iter_audit()]


DEEP = b'{"model": "fake-model", "messages": [{"role": "user", "content": "x"}], "extra": ' + b"[" * 300 + b"]" * 300
DEEP += b"}"


@pytest.mark.parametrize(
    ("path", "body", "needle"),
    [
        (
            "/v1/chat/completions",
            b'{"model":"fake-model","stream":true,"stream_options":1,"messages":[{"role":"user","content":"x"}]}',
            "'stream_options' must be an object",
        ),
        ("/v1/completions", b'{"model":"fake-model","prompt":"x","messages":5}', "'messages'"),
        (
            "/v1/messages",
            b'{"model":"fake-model","max_tokens":null,"messages":[{"role":"user","content":"x"}]}',
            "'max_tokens' must be an integer",
        ),
        ("/v1/chat/completions", DEEP, "nested"),
    ],
)
def test_fuzzer_findings_are_400s_with_an_audit_row(
    fake_gateway: RunningGateway, key: str, path: str, body: bytes, needle: str
) -> None:
    """Bodies a fuzzer found that used to end in a 500 with no audit row and a closed connection."""
    r = send(fake_gateway, key, body, path)
    assert r.status_code == 400, r.text
    assert needle in r.text
    fine = b'{"model": "fake-model", "messages": [{"role": "user", "content": "ok"}]}'
    assert send(fake_gateway, key, fine).status_code == 200
    fake_gateway.flush_audit()
    rows = fake_gateway.run(_rows(fake_gateway))
    assert [row["status"] for row in rows][-2:] == [400, 200]


def test_admin_ids_with_nul_are_refused_before_the_store(fake_gateway: RunningGateway) -> None:
    """PostgreSQL text cannot hold NUL (the driver raised, a 500): such an id is a 400/422 that says why."""
    r = fake_gateway.admin("GET", "/accounts/a%00b")
    assert r.status_code == 400 and "NUL" in r.json()["detail"]
    r = fake_gateway.admin("GET", "/keys?account_id=a%00b")
    assert r.status_code == 400 and "NUL" in r.json()["detail"]
    r = fake_gateway.admin("POST", "/accounts", json={"id": "a\u0000b"})
    assert r.status_code == 422 and "id" in r.text
    assert fake_gateway.admin("GET", "/accounts").status_code == 200


def test_forwarded_for_takes_the_address_the_trusted_proxy_appended() -> None:
    """The leftmost X-Forwarded-For entries are the client's own choice; the trusted proxy appends on the right."""
    from distillshield.gateway.pipeline import forwarded_client

    assert forwarded_client("6.6.6.6, 203.0.113.9", 1) == "203.0.113.9"
    assert forwarded_client("6.6.6.6, 203.0.113.9, 10.0.0.2", 2) == "203.0.113.9"
    assert forwarded_client("203.0.113.9", 2) is None
    assert forwarded_client("6.6.6.6, not-an-ip", 1) is None


def test_gateway_records_the_proxy_appended_client_address(gateway_factory) -> None:
    from tests.fakes import FakeUpstream

    gw = gateway_factory({"upstream": FakeUpstream()}, server__trust_forwarded_for=True)
    key = gw.create_key("behind-proxy")
    r = httpx.post(
        f"{gw.base}/v1/chat/completions", json=GOOD_CHAT, timeout=30,
        headers={"authorization": f"Bearer {key}", "x-forwarded-for": "6.6.6.6, 198.51.100.23"},
    )  # fmt: skip
    assert r.status_code == 200
    gw.flush_audit()
    rows = gw.run(_rows(gw))
    assert rows[-1]["ip"] == "198.51.100.23"


def test_readiness_includes_the_limiter(gateway_factory) -> None:
    """A gateway whose shared limiter is unreachable answers every API call with 503; it must not say ready."""
    from tests.conftest import free_port
    from tests.fakes import FakeUpstream

    ok = gateway_factory({"upstream": FakeUpstream()})
    r = httpx.get(f"{ok.base}/readyz", timeout=10)
    assert r.status_code == 200 and r.json()["checks"]["limiter"] is True
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    gw = gateway_factory({"upstream": FakeUpstream()}, limits__backend="redis", limits__redis_url=dead)
    r = httpx.get(f"{gw.base}/readyz", timeout=10)
    checks = {"upstream": True, "store": True, "limiter": False, "audit": True}
    assert r.status_code == 503 and r.json()["checks"] == checks


def _raw(gw: RunningGateway, data: bytes) -> bytes:
    import socket

    host, port = gw.base.rsplit("//", 1)[1].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


@pytest.mark.parametrize(
    "data",
    [
        b"GARBAGE\x00 / HTTP/1.1\r\n\r\n",  # a bad request line (and a NUL, which PostgreSQL text refuses)
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: abc\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nno colon here\r\n\r\n",
    ],
)
def test_requests_that_are_not_http_get_a_json_400_and_an_audit_row(fake_gateway: RunningGateway, data: bytes) -> None:
    before = len(fake_gateway.run(_rows(fake_gateway)))
    raw = _raw(fake_gateway, data)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and b"application/json" in head
    assert json.loads(body)["error"]["code"] == "invalid_http"
    fake_gateway.flush_audit()
    rows = fake_gateway.run(_rows(fake_gateway))[before:]
    assert len(rows) == 1 and rows[0]["status"] == 400 and rows[0]["decision"] == "refuse:invalid_http"
    assert rows[0]["request"].startswith(data[:4].decode()) and rows[0]["ip"] == "127.0.0.1"


def test_a_body_framing_error_mid_request_is_audited_once(fake_gateway: RunningGateway, key: str) -> None:
    # The API is already serving this request when the bad chunk size arrives: it audits it (the client did
    # not send the whole body); the HTTP layer answers without a second row.
    before = len(fake_gateway.run(_rows(fake_gateway)))
    data = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer " + key.encode()
        + b"\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n5\r\n{\"mod\r\nZZ\r\n"
    )  # fmt: skip
    raw = _raw(fake_gateway, data)
    assert raw.startswith(b"HTTP/1.1 400")
    time.sleep(0.5)
    fake_gateway.flush_audit()
    rows = fake_gateway.run(_rows(fake_gateway))[before:]
    assert len(rows) == 1 and rows[0]["status"] == 400
