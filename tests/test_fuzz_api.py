"""Fuzzing the three /v1 endpoints (hypothesis): valid bodies of the real request shapes with one place
replaced by a value of any JSON type (or removed). Whatever arrives, the gateway answers a 2xx
or a 4xx with a JSON error (never a 5xx), keeps the connection usable, and writes one audit row per
request. Bounded in examples so that `make test` stays quick."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import RunningGateway

JSON_LEAF = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.floats(allow_nan=False), st.text(max_size=20)
)
ANY_JSON = st.recursive(
    JSON_LEAF, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)  # fmt: skip


MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant"]), "content": st.text(max_size=40)})
VALID = {
    "model": st.just("fake-model"),
    "max_tokens": st.integers(1, 64),
    "stream": st.booleans(),
    "temperature": st.floats(0, 1),
    "top_p": st.floats(0, 1),
    "n": st.just(1),
    "stop": st.text(max_size=5),
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
    "logprobs": st.booleans(),
    "top_logprobs": st.integers(0, 5),
    "user": st.text(max_size=10),
    "metadata": st.fixed_dictionaries({"user_id": st.text(max_size=10)}),
    "system": st.text(max_size=20),
}
CHAT_BODY = st.fixed_dictionaries({"messages": st.lists(MESSAGE, min_size=1, max_size=2), **VALID})
COMPLETION_BODY = st.fixed_dictionaries({"prompt": st.text(max_size=40), **VALID})
ENDPOINTS = st.sampled_from(
    [("/v1/chat/completions", CHAT_BODY), ("/v1/messages", CHAT_BODY), ("/v1/completions", COMPLETION_BODY)]
)


def corrupt(data: st.DataObject, body: dict[str, Any]) -> dict[str, Any]:
    """A valid body with one place (a field, a field inside a message or an option, or a new field) replaced
    by any JSON value, or a field removed: type confusion one place at a time is what breaks parsers."""
    places: list[tuple[Any, Any]] = [(body, k) for k in body] + [(body, "extra")]
    for m in body.get("messages", []):
        places += [(m, "role"), (m, "content")]
    places += [(body["stream_options"], "include_usage"), (body["metadata"], "user_id")]
    node, key = data.draw(st.sampled_from(places))
    if data.draw(st.integers(0, 4)) == 0:
        node.pop(key, None)
    else:
        node[key] = data.draw(ANY_JSON)
    return body


# The gateway runs in a thread of this process and uses `random`; hypothesis notices and warns.
@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
def test_no_body_gets_a_server_error(fake_gateway: RunningGateway) -> None:
    key = fake_gateway.create_key("fuzzer")
    sent: list[int] = []
    client = httpx.Client(base_url=fake_gateway.base, timeout=30, headers={"authorization": f"Bearer {key}"})

    @settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(data=st.data())
    def one(data: st.DataObject) -> None:
        path, shape = data.draw(ENDPOINTS)
        body = corrupt(data, data.draw(shape))
        r = client.post(path, content=orjson.dumps(body), headers={"content-type": "application/json"})
        sent.append(r.status_code)

        assert r.status_code < 500, (path, body, r.text)
        if r.status_code >= 400:
            assert "error" in r.json(), r.text
        else:
            r.read()  # a stream is read to its end

    try:
        one()

        # The same keep-alive connection still serves a good request after all of that.
        good = {"model": "fake-model", "messages": [{"role": "user", "content": "still here?"}]}
        assert client.post("/v1/chat/completions", json=good).status_code == 200
    finally:
        client.close()
    assert len(fake_gateway.request_rows()) == len(sent) + 1  # every request has its row, rejected ones too
    assert any(s < 300 for s in sent) and any(400 <= s < 500 for s in sent)  # both kinds were exercised


WRONG = (None, True, False, 0, 1, -1, 1.5, "", "x", [], [1], ["a", 2], {}, {"a": 1}, [[[]]])
SWEEP_BODIES = {
    "/v1/chat/completions": {
        "model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "temperature": 0.5,
        "top_p": 0.9, "n": 1, "stop": "x", "logprobs": True, "top_logprobs": 2, "user": "u",
        "stream_options": {"include_usage": True}, "tools": [], "logit_bias": {"1": 1},
    },
    "/v1/completions": {
        "model": "fake-model", "prompt": "hi", "max_tokens": 8, "temperature": 0.5, "top_p": 0.9, "n": 1,
        "stop": ["x"], "logprobs": 1, "user": "u", "stream_options": {"include_usage": True},
    },
    "/v1/messages": {
        "model": "fake-model", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "max_tokens": 8, "system": "s", "temperature": 0.5, "top_p": 0.9, "top_k": 5, "stop_sequences": ["x"],
        "metadata": {"user_id": "u"},
    },
}  # fmt: skip


def _places(body: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key and list index in a body, at any depth."""
    out: list[tuple[Any, ...]] = []
    items = body.items() if isinstance(body, dict) else enumerate(body) if isinstance(body, list) else ()
    for k, v in items:
        out.append((*path, k))
        out.extend(_places(v, (*path, k)))
    return out


def _replaced(body: Any, place: tuple[Any, ...], value: Any) -> Any:
    body = orjson.loads(orjson.dumps(body))
    node = body
    for k in place[:-1]:
        node = node[k]
    node[place[-1]] = value
    return body


def test_every_place_of_every_body_takes_every_wrong_type(fake_gateway: RunningGateway) -> None:
    """The systematic half of the fuzzing: each key and list item of a valid body (streamed and not) replaced
    by each JSON type in turn. Random generation rarely lands on one field with one truthy wrong type, which is
    exactly what broke parsers before (stream_options: 1)."""
    key = fake_gateway.create_key("sweeper")
    failures = []
    with httpx.Client(base_url=fake_gateway.base, timeout=30, headers={"authorization": f"Bearer {key}"}) as c:
        for path, valid in SWEEP_BODIES.items():
            for stream in (False, True):
                base = {**valid, "stream": stream}
                for place in _places(base):
                    for value in WRONG:
                        try:
                            r = c.post(path, content=orjson.dumps(_replaced(base, place, value)))
                            r.read()
                        except httpx.TransportError as exc:  # a failure mid-stream closes the connection
                            failures.append((path, stream, place, value, type(exc).__name__))
                            continue
                        if r.status_code >= 500:
                            failures.append((path, stream, place, value, r.status_code))
        good = {"model": "fake-model", "messages": [{"role": "user", "content": "still here?"}]}
        assert c.post("/v1/chat/completions", json=good).status_code == 200
    assert failures == []
