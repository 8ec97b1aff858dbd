"""OpenAI's embeddings API (POST /v1/embeddings) through the gateway, with the official openai SDK as the client:
float and base64 encodings, list input, `dimensions`, on the fake, HTTP and embedded upstreams; the same stages
as chat (token limits charged, block and throttle, audit row, online detection) and 4xx JSON errors for bad
bodies."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import openai
import orjson
import pytest

from distillshield.contracts import AccountRisk
from distillshield.detect.corpus import ENDPOINT_CODES, Extractor
from distillshield.detect.online import DetectionExtension
from distillshield.detect.signals.templates import is_template
from distillshield.evidence.collect import prompt_text
from distillshield.store.export import row_to_record
from distillshield.traffic import TrafficRecord
from tests.conftest import RunningGateway, free_port, make_settings, start_gateway
from tests.fakes import FAKE_DIMS, FakeUpstream, MockOpenAIServer, fake_vector

MODEL = "fake-model"
EMBEDDINGS = "/v1/embeddings"
UNLIMITED = {"rpm": None, "tpm": None, "concurrent": None, "tpd": None}
POLICY = """
version: 1
rules:
  - {name: stop, when: {verdict: [extraction]}, action: block, params: {scope: account}}
  - {name: slow, when: {verdict: [suspicious]}, action: throttle, params: {factor: 0.5}}
  - {name: thin, when: {account: [degraded-embedder]}, action: degrade, params: {max_tokens: 16, n: 1}}
  - {name: mark, when: {account: [marked-embedder]}, action: watermark, params: {mode: strong}}
"""


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    """A gateway on the fake upstream with a block and a throttle rule; accounts get 1,000 tokens a minute."""
    where = tmp_path_factory.mktemp("embeddings-gw")
    policy = where / "policy.yaml"
    policy.write_text(POLICY)
    settings = make_settings(
        where,
        policy__file=str(policy),
        limits__account={"rpm": None, "tpm": 1000, "concurrent": None, "tpd": None},
        limits__key=UNLIMITED,
    )
    g = start_gateway(settings, upstream=FakeUpstream())
    yield g
    g.stop()


def client(gw: RunningGateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.base}/v1", api_key=key, max_retries=0)


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def audit_rows(gw: RunningGateway, account_id: str) -> list[dict[str, Any]]:
    gw.flush_audit()

    async def rows() -> list[dict[str, Any]]:
        return [r async for r in gw.state.store.iter_audit() if r["account_id"] == account_id]

    return gw.run(rows())


# -- the shapes the SDK reads ------------------------------------------------------------------------------


def test_float_encoding_returns_the_upstreams_normalised_vector(gw: RunningGateway) -> None:
    r = client(gw, gw.create_key("floats")).embeddings.create(model=MODEL, input="hello", encoding_format="float")
    assert r.object == "list" and r.model == MODEL and len(r.data) == 1
    (item,) = r.data
    assert item.object == "embedding" and item.index == 0 and len(item.embedding) == FAKE_DIMS
    np.testing.assert_allclose(item.embedding, unit(fake_vector("hello")), rtol=1e-6)
    assert (r.usage.prompt_tokens, r.usage.total_tokens) == (10, 10)
    assert gw.state.upstream.embed_bodies[-1]["encoding_format"] == "float"


def test_base64_encoding_is_little_endian_float32(gw: RunningGateway) -> None:
    c = client(gw, gw.create_key("b64"))
    r = c.embeddings.create(model=MODEL, input="hello", encoding_format="base64")
    raw = r.data[0].embedding
    assert isinstance(raw, str)  # asked for explicitly: the SDK hands the string over as it came
    np.testing.assert_allclose(np.frombuffer(base64.b64decode(raw), dtype="<f4"), unit(fake_vector("hello")), rtol=1e-6)
    # Without encoding_format the SDK asks for base64 and decodes it into floats itself.
    default = c.embeddings.create(model=MODEL, input="hello")
    assert gw.state.upstream.embed_bodies[-1]["encoding_format"] == "base64"
    np.testing.assert_allclose(default.data[0].embedding, unit(fake_vector("hello")), rtol=1e-6)


def test_list_input_gets_one_vector_per_input_in_order(gw: RunningGateway) -> None:
    texts = ["first text", "second text", "third text"]
    r = client(gw, gw.create_key("lister")).embeddings.create(model=MODEL, input=texts)
    assert [d.index for d in r.data] == [0, 1, 2]
    for d, text in zip(r.data, texts, strict=True):
        np.testing.assert_allclose(d.embedding, unit(fake_vector(text)), rtol=1e-6)
    assert r.usage.prompt_tokens == 30  # the fake upstream's 10 tokens per input


def test_dimensions_shortens_and_renormalises(gw: RunningGateway) -> None:
    c = client(gw, gw.create_key("short"))
    r = c.embeddings.create(model=MODEL, input="hello", dimensions=3, encoding_format="float")
    assert len(r.data[0].embedding) == 3
    np.testing.assert_allclose(r.data[0].embedding, unit(fake_vector("hello")[:3]), rtol=1e-6)
    with pytest.raises(openai.BadRequestError) as exc:
        c.embeddings.create(model=MODEL, input="hello", dimensions=FAKE_DIMS + 1)
    assert f"at most {FAKE_DIMS}" in exc.value.body["message"]


# -- the same stages as chat -------------------------------------------------------------------------------


def test_input_tokens_are_charged_to_the_token_limit(gw: RunningGateway) -> None:
    """The upstream's count of input tokens is what the account's tokens/minute window is charged."""
    heavy, fresh = client(gw, gw.create_key("heavy")), client(gw, gw.create_key("fresh"))

    def remaining(c: openai.OpenAI) -> int:
        raw = c.embeddings.with_raw_response.create(model=MODEL, input="probe")
        return int(raw.headers["x-ratelimit-remaining-tokens"])

    heavy.embeddings.create(model=MODEL, input=[f"text {i}" for i in range(7)])  # 70 tokens
    assert remaining(fresh) - remaining(heavy) == 70


def test_a_key_over_its_token_limit_gets_429_before_the_model(gw: RunningGateway) -> None:
    c = client(gw, gw.create_key("greedy"))
    c.embeddings.create(model=MODEL, input=[f"t{i}" for i in range(95)])  # 950 of the 1,000 tokens a minute
    upstream = gw.state.upstream
    calls = upstream.calls
    big = ["a longer passage of text to embed, " * 5]  # its reservation estimate is over the 50 left
    with pytest.raises(openai.RateLimitError) as exc:
        c.embeddings.create(model=MODEL, input=big)
    assert exc.value.body["code"] == "rate_limit_tokens" and upstream.calls == calls
    assert exc.value.response.headers["x-ratelimit-limit-tokens"] == "1000"
    other = client(gw, gw.create_key("patient"))
    assert other.embeddings.create(model=MODEL, input=big).data  # the same request, from an account with room
    (row,) = [r for r in audit_rows(gw, "greedy") if r["status"] == 429]
    assert (row["endpoint"], row["decision"]) == (EMBEDDINGS, "refuse:rate_limit_tokens")


def test_blocked_account_is_refused(gw: RunningGateway) -> None:
    key = gw.create_key("blocked-embedder")
    gw.state.risk.update(AccountRisk("blocked-embedder", 0.95, "extraction", None, {"coverage": 0.9}, source="report"))
    calls = gw.state.upstream.calls
    with pytest.raises(openai.PermissionDeniedError) as exc:
        client(gw, key).embeddings.create(model=MODEL, input="harvest me")
    assert exc.value.body["code"] == "account_blocked" and gw.state.upstream.calls == calls
    (row,) = audit_rows(gw, "blocked-embedder")
    assert (row["endpoint"], row["status"]) == (EMBEDDINGS, 403)
    assert orjson.loads(row["decision"])["rule"] == "stop"


def test_throttled_account_gets_scaled_limits(gw: RunningGateway) -> None:
    key = gw.create_key("throttled-embedder")
    gw.state.risk.update(AccountRisk("throttled-embedder", 0.6, "suspicious", None, {"coverage": 0.6}, source="report"))
    raw = client(gw, key).embeddings.with_raw_response.create(model=MODEL, input="slowly")
    assert raw.headers["x-ratelimit-limit-tokens"] == "500"  # half of the account's 1,000
    assert raw.parse().data
    (row,) = audit_rows(gw, "throttled-embedder")
    assert orjson.loads(row["decision"])["rule"] == "slow"


@pytest.mark.parametrize(("account", "rule"), [("degraded-embedder", "thin"), ("marked-embedder", "mark")])
def test_degrade_and_watermark_have_nothing_to_act_on(gw: RunningGateway, account: str, rule: str) -> None:
    """No text, reasoning or logprobs to strip and no sampled tokens to mark: the vectors are served unchanged and
    the decision is recorded."""
    r = client(gw, gw.create_key(account)).embeddings.create(model=MODEL, input=["one", "two"], encoding_format="float")
    for d, text in zip(r.data, ["one", "two"], strict=True):
        np.testing.assert_allclose(d.embedding, unit(fake_vector(text)), rtol=1e-6)
    (row,) = audit_rows(gw, account)
    assert row["status"] == 200 and orjson.loads(row["decision"])["rule"] == rule


def test_audit_row_and_traffic_record(gw: RunningGateway) -> None:
    c = client(gw, gw.create_key("audited-embedder"))
    c.embeddings.create(model=MODEL, input=["What is a cat?", "What is a dog?"], encoding_format="float")
    (row,) = audit_rows(gw, "audited-embedder")
    assert (row["endpoint"], row["status"], row["model"], row["stream"]) == (EMBEDDINGS, 200, MODEL, False)
    assert (row["prompt_tokens"], row["completion_tokens"], row["response_text"]) == (20, 0, "")
    assert orjson.loads(row["request"])["input"] == ["What is a cat?", "What is a dog?"]  # as the client sent it
    record = row_to_record(row)
    assert isinstance(record, TrafficRecord) and record.endpoint == EMBEDDINGS
    again = TrafficRecord.model_validate(orjson.loads(record.to_json()))  # the record survives its own format
    assert again.response is not None and again.response.usage is not None
    assert again.response.usage.prompt_tokens == 20
    assert prompt_text(row["request"]) == "What is a cat?\nWhat is a dog?"  # what an evidence bundle shows


def test_analyser_reads_the_inputs_as_the_prompt() -> None:
    """The same text sent to chat and to embeddings is the same prompt to the content and template signals."""
    text = "Summarise the following support ticket about a late delivery in two sentences for the agent."
    ex = Extractor(None, None)

    def obs(endpoint: str, body: dict[str, Any]) -> Any:
        return ex._obs(TrafficRecord(ts=1.0, account_id="a", endpoint=endpoint, request=body))

    chat = obs("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": text}]})
    emb = obs(EMBEDDINGS, {"model": "m", "input": text})
    assert emb.endpoint == ENDPOINT_CODES[EMBEDDINGS] != chat.endpoint
    assert (emb.user_chars, emb.skel_hash, emb.raw_hash, emb.head, emb.tail) == (
        chat.user_chars, chat.skel_hash, chat.raw_hash, chat.head, chat.tail,
    )  # fmt: skip
    batch = obs(EMBEDDINGS, {"model": "m", "input": ["one text", "another text"]})
    assert batch.user_chars == len("one text\nanother text") and batch.max_tokens is None


def test_online_detection_folds_embedding_traffic_in(gateway_factory: Any) -> None:
    g = gateway_factory({"upstream": FakeUpstream()}, detection__interval_s=3600)
    ext = g.state.detection
    assert isinstance(ext, DetectionExtension)
    deadline = time.monotonic() + 60
    while ext.engine is None:
        assert time.monotonic() < deadline, "the detection model did not load"
        time.sleep(0.05)
    c = client(g, g.create_key("embedder"))
    for i in range(12):
        c.embeddings.create(model=MODEL, input=[f"Encyclopedia article number {i} about topic {i * 7}."])
    assert g.run(ext.run_once()) == 12
    acc = ext.engine.accounts["embedder"]
    assert acc.n == 12 and acc.templates.n == 12
    assert acc.templates.framed == 12  # the inputs were read as prompts: one template frame around varying numbers
    (head, count), *_ = acc.templates.heads.top()
    assert count == 12 and is_template(acc.templates.heads, head)
    assert g.admin("GET", "/accounts/embedder").json()["detection"]["requests"] == 12


# -- bad requests --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"input": "hi", "frobnicate": 1}, "frobnicate", "unknown_parameter"),
        ({"input": "hi", "stream": True}, "stream", "unknown_parameter"),
        ({}, "input", "missing_required_parameter"),
        ({"input": ""}, "input", "invalid_request"),
        ({"input": []}, "input", "invalid_request"),
        ({"input": ["ok", ""]}, "input[1]", "invalid_request"),
        ({"input": ["ok", 7.5]}, "input[1]", "invalid_request"),
        ({"input": ["x"] * 2049}, "input", "invalid_request"),
        ({"input": 7}, "input", "invalid_request"),
        ({"input": {"text": "hi"}}, "input", "invalid_request"),
        ({"input": [1, 2, 3]}, "input", "unsupported_parameter"),
        ({"input": ["ok", [1, 2]]}, "input[1]", "unsupported_parameter"),
        ({"input": "hi", "encoding_format": "hex"}, "encoding_format", "invalid_request"),
        ({"input": "hi", "dimensions": 0}, "dimensions", "invalid_request"),
        ({"input": "hi", "dimensions": "8"}, "dimensions", "invalid_request"),
        ({"input": "hi", "user": 5}, "user", "invalid_request"),
        ({"input": "hi", "model": None}, "model", "missing_required_parameter"),
    ],
)  # fmt: skip
def test_bad_requests_get_a_400_json_error_naming_the_field(
    gw: RunningGateway, body: dict[str, Any], param: str, code: str
) -> None:
    key = gw.create_key("careless-embedder")
    r = httpx.post(f"{gw.base}{EMBEDDINGS}", json={"model": MODEL, **body}, headers={"authorization": f"Bearer {key}"})
    assert r.status_code == 400 and r.headers["content-type"] == "application/json"
    err = r.json()["error"]
    assert (err["param"], err["code"], err["type"]) == (param, code, "invalid_request_error")


def test_unknown_model_and_missing_key(gw: RunningGateway) -> None:
    with pytest.raises(openai.NotFoundError):
        client(gw, gw.create_key("lost")).embeddings.create(model="no-such-model", input="hi")
    with pytest.raises(openai.AuthenticationError):
        client(gw, "ds-not-a-key").embeddings.create(model=MODEL, input="hi")
    assert httpx.get(f"{gw.base}{EMBEDDINGS}").status_code == 405


WRONG = (None, True, 0, -1, 1.5, "x", "", [], [1], [[]], {}, {"a": 1})
SWEEP = {"model": MODEL, "input": ["a", "b"], "encoding_format": "float", "dimensions": 4, "user": "u"}


def test_no_wrong_value_anywhere_gets_a_server_error(gw: RunningGateway) -> None:
    """Each key and list item of a valid body replaced by each JSON type in turn."""
    key = gw.create_key("embed-sweeper")
    places: list[tuple[Any, ...]] = [(k,) for k in SWEEP] + [("input", 0), ("input", 1)]
    failures = []
    with httpx.Client(base_url=gw.base, timeout=30, headers={"authorization": f"Bearer {key}"}) as c:
        for place in places:
            for value in WRONG:
                body = orjson.loads(orjson.dumps(SWEEP))
                node = body
                for k in place[:-1]:
                    node = node[k]
                node[place[-1]] = value
                r = c.post(EMBEDDINGS, content=orjson.dumps(body))
                if r.status_code >= 500 or (r.status_code >= 400 and "error" not in r.json()):
                    failures.append((place, value, r.status_code, r.text[:200]))
    assert failures == []


# -- other upstreams -----------------------------------------------------------------------------------------


def test_http_upstream_forwards_to_its_embeddings_endpoint(gateway_factory: Any) -> None:
    mock = MockOpenAIServer(free_port()).start()
    try:
        g = gateway_factory(upstream__kind="http", upstream__http__base_url=mock.base_url)
        c = client(g, g.create_key("via-http"))
        r = c.embeddings.create(model="mock-model", input=["alpha", "beta"], dimensions=5)  # the SDK asks base64
        assert mock.embed_bodies[-1] == {
            "model": "mock-model", "input": ["alpha", "beta"], "dimensions": 5, "encoding_format": "base64",
        }  # fmt: skip
        for d, text in zip(r.data, ["alpha", "beta"], strict=True):
            np.testing.assert_allclose(d.embedding, unit(fake_vector(text)[:5]), rtol=1e-6)
        assert r.usage.prompt_tokens == 4 and r.model == "mock-model"
    finally:
        mock.stop()


# -- the embedded model ------------------------------------------------------------------------------------------

LOCAL_MODEL = "smollm2-135m-instruct"


def test_embedded_model_serves_embeddings(local_gateway: RunningGateway) -> None:
    upstream = local_gateway.state.upstream
    assert upstream._embedder is None  # loaded on the first embeddings request: the other tests never paid for it
    c = client(local_gateway, local_gateway.create_key("local-embeddings"))
    texts = ["The cat sat on the mat.", "A cat is sitting on a mat.", "Quarterly revenue grew by five percent."]
    r = c.embeddings.create(model=LOCAL_MODEL, input=texts)
    v = np.array([d.embedding for d in r.data])
    assert v.shape == (3, 576)  # SmolLM2-135M's hidden size, mean-pooled
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-5)
    cos = v @ v.T
    assert cos[0, 1] > cos[0, 2] and cos[0, 1] > cos[1, 2]  # the two sentences about a cat are the closest pair
    assert r.usage.prompt_tokens > len(texts) and upstream._embedder is not None
    one = c.embeddings.create(model=LOCAL_MODEL, input=texts[0], dimensions=64, encoding_format="base64")
    short = np.frombuffer(base64.b64decode(one.data[0].embedding), dtype="<f4")
    np.testing.assert_allclose(short, unit(v[0][:64]), rtol=1e-4, atol=1e-6)
    with pytest.raises(openai.BadRequestError) as exc:
        c.embeddings.create(model=LOCAL_MODEL, input=["fine", "word " * 600])
    assert "input[1]" in exc.value.body["message"] and "512 tokens" in exc.value.body["message"]
    # The generating instance is untouched by the embedding one.
    answer = c.chat.completions.create(model=LOCAL_MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    assert answer.choices[0].message.content
