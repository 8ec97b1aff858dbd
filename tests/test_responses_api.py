"""OpenAI's Responses API (POST /v1/responses) through the gateway, with the official openai SDK as the client:
non-stream and `client.responses.stream`, on the fake, HTTP and embedded upstreams; the same stages as chat
(audit row, strip-reasoning and logprob countermeasures, token limits) and 4xx JSON errors for bad bodies."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import orjson
import pytest

from distillshield.contracts import AccountRisk
from distillshield.evidence.collect import prompt_text
from distillshield.gateway.errors import UpstreamError
from distillshield.gateway.upstream.base import GenRequest
from distillshield.store import Store
from distillshield.store.export import row_to_record
from distillshield.traffic import TrafficRecord, responses_messages
from tests.conftest import RunningGateway, free_port, make_settings, start_gateway
from tests.fakes import FakeUpstream, MockOpenAIServer, ReasoningUpstream

MODEL = "fake-model"
POLICY = """
version: 1
rules:
  - {name: strip, when: {verdict: [extraction]}, action: degrade, params: {reasoning: strip}}
  - {name: summarize, when: {verdict: [suspicious]}, action: degrade, params: {reasoning: summarize}}
"""
UNLIMITED = {"rpm": None, "tpm": None, "concurrent": None, "tpd": None}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    """A gateway on an upstream that answers like a reasoning model, with a strip-reasoning policy rule."""
    where = tmp_path_factory.mktemp("responses-gw")
    policy = where / "policy.yaml"
    policy.write_text(POLICY)
    settings = make_settings(where, policy__file=str(policy), limits__account=UNLIMITED, limits__key=UNLIMITED)
    g = start_gateway(settings, upstream=ReasoningUpstream())
    yield g
    g.stop()


def client(gw: RunningGateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.base}/v1", api_key=key, max_retries=0)


def degraded_key(gw: RunningGateway, account: str, verdict: str = "extraction") -> str:
    """A key for an account the risk board flags: an extraction gets its reasoning stripped, a suspicious
    account summarised."""
    key = gw.create_key(account)
    gw.state.risk.update(AccountRisk(account, 0.95, verdict, None, {"cot": 0.9}, source="report"))
    return key


def audit_rows(gw: RunningGateway, account_id: str) -> list[dict[str, Any]]:
    gw.flush_audit()

    async def rows() -> list[dict[str, Any]]:
        return [r async for r in gw.state.store.iter_audit() if r["account_id"] == account_id]

    return gw.run(rows())


# -- the shapes the SDK reads ------------------------------------------------------------------------------


def test_create_returns_a_response_with_reasoning_and_message(gw: RunningGateway) -> None:
    r = client(gw, gw.create_key("shape")).responses.create(
        model=MODEL, input="What is 6 times 7?", instructions="Be brief.", max_output_tokens=50
    )
    assert r.object == "response" and r.id.startswith("resp_") and r.status == "completed"
    assert r.model == MODEL and r.instructions == "Be brief." and r.max_output_tokens == 50
    assert [item.type for item in r.output] == ["reasoning", "message"]
    reasoning, message = r.output
    assert [s.text for s in reasoning.summary] == [ReasoningUpstream.REASONING]
    assert message.role == "assistant" and message.status == "completed"
    assert [c.type for c in message.content] == ["output_text"]
    assert r.output_text == ReasoningUpstream.TEXT
    assert r.usage is not None and (r.usage.input_tokens, r.usage.output_tokens, r.usage.total_tokens) == (10, 12, 22)
    sent = gw.state.upstream.bodies[-1]  # what the upstream got: a chat request
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 6 times 7?"},
    ]
    assert sent["max_tokens"] == 50


def test_input_items_become_the_conversation(gw: RunningGateway) -> None:
    items: Any = [
        {"role": "developer", "content": "Answer in English."},
        {"role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
        {
            "type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
            "content": [{"type": "output_text", "text": "Hello!", "annotations": []}],
        },
        {"type": "reasoning", "id": "rs_1", "summary": []},  # passed back from an earlier answer: skipped
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "6x7?"}]},
    ]  # fmt: skip
    client(gw, gw.create_key("items")).responses.create(model=MODEL, input=items)
    assert gw.state.upstream.bodies[-1]["messages"] == [
        {"role": "developer", "content": "Answer in English."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "6x7?"},
    ]


def test_stream_events_in_order_and_the_final_response(gw: RunningGateway) -> None:
    with client(gw, gw.create_key("streamer")).responses.stream(model=MODEL, input="q", max_output_tokens=40) as s:
        events = list(s)
        final = s.get_final_response()
    kinds = [e.type for e in events]
    reasoning_events = [
        "response.output_item.added",
        "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done",
        "response.reasoning_summary_part.done",
        "response.output_item.done",
    ]
    message_start = ["response.output_item.added", "response.content_part.added"]
    message_end = ["response.output_text.done", "response.content_part.done", "response.output_item.done"]
    deltas = kinds.count("response.output_text.delta")
    assert kinds == [
        "response.created", "response.in_progress", *reasoning_events, *message_start,
        *["response.output_text.delta"] * deltas, *message_end, "response.completed",
    ]  # fmt: skip
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    summary = "".join(e.delta for e in events if e.type == "response.reasoning_summary_text.delta")
    assert text == ReasoningUpstream.TEXT and summary == ReasoningUpstream.REASONING
    assert final.output_text == text and final.status == "completed"
    assert [item.type for item in final.output] == ["reasoning", "message"]
    assert final.id == events[0].response.id and final.usage is not None and final.usage.output_tokens == 12


def test_answer_cut_by_max_output_tokens_is_incomplete(fake_gateway: RunningGateway) -> None:
    """The fake upstream stops every answer for length: OpenAI's API calls such a response incomplete."""
    c = client(fake_gateway, fake_gateway.create_key("cut"))
    r = c.responses.create(model=MODEL, input="count", max_output_tokens=3)
    assert r.status == "incomplete" and r.incomplete_details is not None
    assert r.incomplete_details.reason == "max_output_tokens" and r.output_text == "w0 w1 w2"
    with c.responses.stream(model=MODEL, input="count", max_output_tokens=3) as s:
        events = list(s)
    assert events[-1].type == "response.incomplete" and events[-1].response.status == "incomplete"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "w0 w1 w2 "
    assert not any(e.type == "response.reasoning_summary_text.delta" for e in events)  # no reasoning: no item


def test_logprobs_are_translated_when_included(gw: RunningGateway) -> None:
    r = client(gw, gw.create_key("lp")).responses.create(
        model=MODEL, input="q", include=["message.output_text.logprobs"], top_logprobs=2
    )
    sent = gw.state.upstream.bodies[-1]
    assert sent["logprobs"] is True and sent["top_logprobs"] == 2
    part = r.output[-1].content[0]
    assert [(lp.token, lp.logprob, lp.bytes) for lp in part.logprobs] == [("The", -0.1, list(b"The"))]


# -- the same stages as chat -------------------------------------------------------------------------------


def test_audit_row_and_traffic_record(gw: RunningGateway) -> None:
    c = client(gw, gw.create_key("audited"))
    r = c.responses.create(model=MODEL, input="audit this response", instructions="Be brief.")
    with c.responses.stream(model=MODEL, input="audit this stream") as s:
        s.get_final_response()
    rows = audit_rows(gw, "audited")
    assert [row["endpoint"] for row in rows] == ["/v1/responses"] * 2
    assert [row["stream"] for row in rows] == [False, True] and [row["status"] for row in rows] == [200, 200]
    assert rows[0]["response_text"] == r.output_text == rows[1]["response_text"]
    assert (rows[0]["prompt_tokens"], rows[0]["completion_tokens"]) == (10, 12)
    assert orjson.loads(rows[0]["request"])["input"] == "audit this response"  # the body as the client sent it
    record = row_to_record(rows[0])
    assert isinstance(record, TrafficRecord) and record.endpoint == "/v1/responses"
    again = TrafficRecord.model_validate(orjson.loads(record.to_json()))  # the record survives its own format
    assert responses_messages(again.request) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "audit this response"},
    ]
    assert prompt_text(rows[1]["request"]) == "audit this stream"  # what an evidence bundle shows of it


def test_strip_reasoning_policy_removes_reasoning(gw: RunningGateway) -> None:
    c = client(gw, degraded_key(gw, "harvester"))
    r = c.responses.create(model=MODEL, input="q", include=["message.output_text.logprobs"], top_logprobs=2)
    sent = gw.state.upstream.bodies[-1]
    assert not {"logprobs", "top_logprobs"} & set(sent)  # the degrade action drops logprobs too
    assert [item.type for item in r.output] == ["message"] and r.output_text == ReasoningUpstream.ANSWER
    assert r.output[0].content[0].logprobs == []
    with c.responses.stream(model=MODEL, input="q") as s:
        events = list(s)
        final = s.get_final_response()
    assert not [e.type for e in events if "reasoning" in e.type]
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == ReasoningUpstream.ANSWER
    assert [item.type for item in final.output] == ["message"] and final.output_text == ReasoningUpstream.ANSWER
    rows = audit_rows(gw, "harvester")
    assert [row["response_text"] for row in rows] == [ReasoningUpstream.ANSWER] * 2
    assert all(orjson.loads(row["decision"])["rule"] == "strip" for row in rows)


def test_summarize_policy_leaves_a_summary_in_the_reasoning_item(gw: RunningGateway) -> None:
    c = client(gw, degraded_key(gw, "summarised", verdict="suspicious"))
    r = c.responses.create(model=MODEL, input="q")
    with c.responses.stream(model=MODEL, input="q") as s:
        final = s.get_final_response()
    for answer in (r, final):
        assert [item.type for item in answer.output] == ["reasoning", "message"]
        (summary,) = answer.output[0].summary
        assert summary.text.startswith("[reasoning summarised, 8 words] Let me work it out")
        assert "<think>" not in answer.output_text and answer.output_text.endswith(ReasoningUpstream.ANSWER)


def test_tokens_are_charged_as_for_chat_and_limits_refuse(gateway_factory: Any) -> None:
    upstream = FakeUpstream()
    g = gateway_factory(
        {"upstream": upstream},
        limits__account={"rpm": None, "tpm": 500, "concurrent": None, "tpd": None},
        limits__key=UNLIMITED,
    )
    chat, resp = client(g, g.create_key("via-chat")), client(g, g.create_key("via-responses"))

    def probe(c: openai.OpenAI) -> int:
        raw = c.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=8
        )
        return int(raw.headers["x-ratelimit-remaining-tokens"])

    chat.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=40)
    resp.responses.create(model=MODEL, input="hi", max_output_tokens=40)
    assert probe(resp) == probe(chat) < 500  # reserved and settled exactly as the chat request was
    calls = upstream.calls
    with pytest.raises(openai.RateLimitError) as exc:
        resp.responses.create(model=MODEL, input="hi", max_output_tokens=900)
    assert exc.value.body["code"] == "rate_limit_tokens" and upstream.calls == calls  # refused before the model
    assert exc.value.response.headers["x-ratelimit-limit-tokens"] == "500"
    with pytest.raises(openai.RateLimitError):
        with resp.responses.stream(model=MODEL, input="hi", max_output_tokens=900) as s:
            s.get_final_response()
    assert upstream.calls == calls


# -- bad requests --------------------------------------------------------------------------------------------


def test_previous_response_id_is_refused_with_a_reason(gw: RunningGateway) -> None:
    c = client(gw, gw.create_key("stateful"))
    first = c.responses.create(model=MODEL, input="hi", store=True)  # accepted; nothing is stored
    assert first.model_extra is not None and first.model_extra["store"] is False
    with pytest.raises(openai.BadRequestError) as exc:
        c.responses.create(model=MODEL, input="and then?", previous_response_id=first.id)
    err = exc.value.body
    assert err["param"] == "previous_response_id" and err["code"] == "unsupported_parameter"
    assert "does not store responses" in err["message"] and "`store`" in err["message"]


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"input": "hi", "frobnicate": 1}, "frobnicate", "unknown_parameter"),
        ({}, "input", "missing_required_parameter"),
        ({"input": 7}, "input", "invalid_request"),
        ({"input": [{"role": "robot", "content": "hi"}]}, "input[0].role", "invalid_request"),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
         "input[0].content[0].type", "invalid_request"),
        ({"input": [{"type": "function_call_output", "call_id": "c", "output": "x"}]}, "input[0].type",
         "invalid_request"),
        ({"input": "hi", "tools": [{"type": "function", "name": "f"}]}, "tools", "unsupported_parameter"),
        ({"input": "hi", "text": {"format": {"type": "json_object"}}}, "text.format", "unsupported_parameter"),
        ({"input": "hi", "max_output_tokens": "many"}, "max_output_tokens", "invalid_request"),
        ({"input": "hi", "include": ["everything"]}, "include[0]", "invalid_request"),
        ({"input": "hi", "store": "yes"}, "store", "invalid_request"),
        ({"input": "hi", "stream": "yes"}, "stream", "invalid_request"),
    ],
)  # fmt: skip
def test_bad_requests_get_a_4xx_json_error_naming_the_field(
    gw: RunningGateway, body: dict[str, Any], param: str, code: str
) -> None:
    key = gw.create_key("careless")
    r = httpx.post(f"{gw.base}/v1/responses", json={"model": MODEL, **body}, headers={"authorization": f"Bearer {key}"})
    assert r.status_code == 400 and r.headers["content-type"] == "application/json"
    err = r.json()["error"]
    assert (err["param"], err["code"], err["type"]) == (param, code, "invalid_request_error")


def test_sdk_raises_bad_request_and_the_refusal_is_audited(gw: RunningGateway) -> None:
    c = client(gw, gw.create_key("refused"))
    with pytest.raises(openai.BadRequestError) as exc:
        c.responses.create(model=MODEL, input="hi", extra_body={"logit_bias": {"1": 5}})
    assert exc.value.body["param"] == "logit_bias"
    with pytest.raises(openai.NotFoundError):
        c.responses.create(model="no-such-model", input="hi")
    rows = audit_rows(gw, "refused")
    assert [(r["endpoint"], r["status"], r["decision"]) for r in rows] == [
        ("/v1/responses", 400, "refuse:unknown_parameter"),
        ("/v1/responses", 404, "refuse:model_not_found"),
    ]


WRONG = (None, True, 0, -1, 1.5, "x", [], [1], {}, {"a": 1})
SWEEP = {
    "model": MODEL, "input": [{"role": "user", "content": [{"type": "input_text", "text": "hi"}]}],
    "instructions": "s", "max_output_tokens": 8, "temperature": 0.5, "top_p": 0.9, "top_logprobs": 2,
    "include": ["message.output_text.logprobs"], "text": {"format": {"type": "text"}, "verbosity": "low"},
    "reasoning": {"effort": "low"}, "metadata": {"k": "v"}, "store": False, "user": "u", "tools": [],
    "tool_choice": "auto", "truncation": "disabled", "parallel_tool_calls": True,
}  # fmt: skip


def _places(body: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    items = body.items() if isinstance(body, dict) else enumerate(body) if isinstance(body, list) else ()
    for k, v in items:
        yield (*path, k)
        yield from _places(v, (*path, k))


def test_no_wrong_value_anywhere_gets_a_server_error(gw: RunningGateway) -> None:
    """Each key and list item of a valid body, streamed and not, replaced by each JSON type in turn."""
    key = gw.create_key("sweeper")
    failures = []
    with httpx.Client(base_url=gw.base, timeout=30, headers={"authorization": f"Bearer {key}"}) as c:
        for stream in (False, True):
            base = {**SWEEP, "stream": stream}
            for place in list(_places(base)):
                for value in WRONG:
                    body = orjson.loads(orjson.dumps(base))
                    node = body
                    for k in place[:-1]:
                        node = node[k]
                    node[place[-1]] = value
                    r = c.post("/v1/responses", content=orjson.dumps(body))
                    r.read()
                    if r.status_code >= 500 or (r.status_code >= 400 and "error" not in r.json()):
                        failures.append((stream, place, value, r.status_code, r.text[:200]))
    assert failures == []


# -- upstream failures and other upstreams ---------------------------------------------------------------------


class BrokenStreamUpstream(FakeUpstream):
    """Sends two words, then fails as a model server that went away does."""

    async def stream(self, req: GenRequest) -> AsyncIterator[dict[str, Any]]:
        self.calls += 1
        for word in ("w0 ", "w1 "):
            yield {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": req.model,
                   "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}]}  # fmt: skip
        raise UpstreamError(502, "the model server failed", "connection reset by the test")


def test_upstream_failure_mid_stream_ends_with_error_and_failed(gateway_factory: Any) -> None:
    g = gateway_factory({"upstream": BrokenStreamUpstream()})
    with client(g, g.create_key("unlucky")).responses.stream(model=MODEL, input="hi") as s:
        events = list(s)
    assert [e.type for e in events][-2:] == ["error", "response.failed"]
    assert events[-2].message == "the model server failed" and events[-2].code == "upstream_error"
    assert events[-1].response.status == "failed" and events[-1].response.error.code == "server_error"
    (row,) = audit_rows(g, "unlucky")
    assert (row["endpoint"], row["status"], row["response_text"]) == ("/v1/responses", 502, "w0 w1 ")


def test_stream_cut_by_shutdown_ends_with_error_and_failed_and_is_audited(gateway_factory: Any) -> None:
    g = gateway_factory({"upstream": FakeUpstream(words=400, chunk_delay=0.05)})
    key = g.create_key("cut-short")
    lines: list[str] = []

    def read() -> None:
        body = {"model": MODEL, "input": "long", "stream": True, "max_output_tokens": 400}
        try:
            with httpx.stream(
                "POST", f"{g.base}/v1/responses", json=body, headers={"authorization": f"Bearer {key}"}, timeout=30
            ) as r:
                lines.extend(r.iter_lines())
        except httpx.TransportError:
            pass  # a bare cut: the assertions below then fail

    reader = threading.Thread(target=read)
    reader.start()
    deadline = time.monotonic() + 20
    while sum(ln.startswith("event: response.output_text.delta") for ln in lines) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    g.server.config.timeout_graceful_shutdown = 1  # the stream has ~20 s to go: shutdown cuts it
    g.stop()
    reader.join(20)
    events = [orjson.loads(ln[6:]) for ln in lines if ln.startswith("data: ")]
    assert [e["type"] for e in events[-2:]] == ["error", "response.failed"], events[-2:]
    assert events[-2]["code"] == "server_shutdown" and "shut down" in events[-2]["message"]
    seqs = [e["sequence_number"] for e in events]
    assert seqs == sorted(set(seqs))  # the cut events are numbered after what was sent

    async def rows() -> list[dict[str, Any]]:
        store = Store(g.settings.store.url)
        try:
            return [r async for r in store.iter_audit() if r["account_id"] == "cut-short"]
        finally:
            await store.close()

    (row,) = asyncio.run(rows())
    assert (row["endpoint"], row["status"]) == ("/v1/responses", 503) and row["completion_tokens"] > 0


def test_http_upstream_serves_responses_through_chat_completions(gateway_factory: Any, tmp_path: Path) -> None:
    mock = MockOpenAIServer(free_port()).start()  # speaks chat completions only
    try:
        g = gateway_factory(upstream__kind="http", upstream__http__base_url=mock.base_url)
        c = client(g, g.create_key("via-http"))
        r = c.responses.create(model="mock-model", input="hi")
        assert r.output_text == "a b c" and r.status == "completed"
        assert r.usage is not None and (r.usage.input_tokens, r.usage.output_tokens) == (5, 3)
        with c.responses.stream(model="mock-model", input="hi") as s:
            text = "".join(e.delta for e in s if e.type == "response.output_text.delta")
            final = s.get_final_response()
        assert text == "a b c" == final.output_text and final.usage is not None and final.usage.output_tokens == 3
    finally:
        mock.stop()


# -- the embedded model ------------------------------------------------------------------------------------------

LOCAL_MODEL = "smollm2-135m-instruct"


def test_embedded_model_serves_responses(local_gateway: RunningGateway) -> None:
    c = client(local_gateway, local_gateway.create_key("local-responses"))
    r = c.responses.create(model=LOCAL_MODEL, input="Say hello", instructions="You are terse.", max_output_tokens=12)
    assert r.output_text and r.status in ("completed", "incomplete")
    assert r.usage is not None and r.usage.input_tokens > 0 and r.usage.output_tokens > 0
    with c.responses.stream(model=LOCAL_MODEL, input="Count to five", max_output_tokens=10) as s:
        events = list(s)
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text and events[-1].type in ("response.completed", "response.incomplete")
    assert events[-1].response.output_text == text


def test_logits_hook_reaches_the_embedded_model_for_responses(local_gateway: RunningGateway) -> None:
    """The per-request logits hook (how the watermark marks chat answers) marks Responses answers too."""
    llm = local_gateway.state.upstream._llm
    forced = llm.tokenize(b" banana", add_bos=False)[0]

    def force(_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        out = np.full_like(scores, -1e9)
        out[forced] = 0.0
        return out

    gw = local_gateway.state.gateway
    gw.logits_hook_factory = lambda ctx, gen: force if ctx.account.id == "hooked-responses" else None
    try:
        c = client(local_gateway, local_gateway.create_key("hooked-responses"))
        r = c.responses.create(model=LOCAL_MODEL, input="Name a colour.", max_output_tokens=4)
        with c.responses.stream(model=LOCAL_MODEL, input="Name a colour.", max_output_tokens=3) as s:
            streamed = "".join(e.delta for e in s if e.type == "response.output_text.delta")
    finally:
        gw.logits_hook_factory = None
    assert r.output_text.split() == ["banana"] * 4
    assert streamed.split() == ["banana"] * 3
