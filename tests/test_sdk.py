"""The official openai and anthropic SDKs against a running gateway on the embedded model."""

from __future__ import annotations

import anthropic
import httpx
import openai
import pytest

from tests.conftest import RunningGateway

MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def key(local_gateway: RunningGateway) -> str:
    return local_gateway.create_key("sdk-user", org="sdk-org")


def test_openai_chat_non_stream(local_gateway: RunningGateway, key: str) -> None:
    client = openai.OpenAI(base_url=f"{local_gateway.base}/v1", api_key=key)
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Say hello"}], max_tokens=12)
    assert r.model == MODEL
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content
    assert r.usage is not None and r.usage.completion_tokens > 0 and r.usage.prompt_tokens > 0


def test_openai_chat_stream_with_usage(local_gateway: RunningGateway, key: str) -> None:
    client = openai.OpenAI(base_url=f"{local_gateway.base}/v1", api_key=key)
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Count to five"}],
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    )
    texts, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            texts.append(c.delta.content or "")
            finish = c.finish_reason or finish
    assert "".join(texts).strip()
    assert finish in ("stop", "length")
    assert usage is not None and usage.completion_tokens > 0


def test_openai_stream_without_usage_has_no_usage_chunk(local_gateway: RunningGateway, key: str) -> None:
    client = openai.OpenAI(base_url=f"{local_gateway.base}/v1", api_key=key)
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=6, stream=True
        )
    )
    assert chunks and all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)


def test_openai_completions_stream_and_non_stream(local_gateway: RunningGateway, key: str) -> None:
    client = openai.OpenAI(base_url=f"{local_gateway.base}/v1", api_key=key)
    r = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=6)
    assert r.choices[0].text
    assert r.usage is not None and r.usage.completion_tokens > 0
    parts = [
        c.choices[0].text
        for c in client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=6, stream=True)
        if c.choices
    ]
    assert "".join(parts)


def test_anthropic_messages_non_stream(local_gateway: RunningGateway, key: str) -> None:
    client = anthropic.Anthropic(base_url=local_gateway.base, api_key=key)
    m = client.messages.create(
        model=MODEL,
        max_tokens=12,
        system="You are terse.",
        messages=[{"role": "user", "content": "Say hello"}],
    )
    assert m.type == "message" and m.role == "assistant"
    assert m.content[0].type == "text" and m.content[0].text
    assert m.stop_reason in ("end_turn", "max_tokens")
    assert m.usage.input_tokens > 0 and m.usage.output_tokens > 0


def test_anthropic_messages_stream(local_gateway: RunningGateway, key: str) -> None:
    client = anthropic.Anthropic(base_url=local_gateway.base, api_key=key)
    with client.messages.stream(
        model=MODEL, max_tokens=12, messages=[{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]
    ) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text and final.content[0].text == text
    assert final.stop_reason in ("end_turn", "max_tokens")
    assert final.usage.output_tokens > 0


def test_models_endpoint_lists_embedded_model(local_gateway: RunningGateway, key: str) -> None:
    client = openai.OpenAI(base_url=f"{local_gateway.base}/v1", api_key=key)
    assert [m.id for m in client.models.list()] == [MODEL]


def test_sdk_calls_are_audited_with_response_text(local_gateway: RunningGateway, key: str) -> None:
    client = openai.OpenAI(base_url=f"{local_gateway.base}/v1", api_key=key)
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "audit me"}], max_tokens=8)
    local_gateway.flush_audit()

    async def last_rows():
        return [row async for row in local_gateway.state.store.iter_audit()]

    rows = local_gateway.run(last_rows())
    mine = [row for row in rows if "audit me" in (row["request"] or "")]
    assert len(mine) == 1
    row = mine[0]
    assert row["account_id"] == "sdk-user" and row["org_id"] == "sdk-org" and row["key_id"]
    assert row["status"] == 200 and row["response_text"] == r.choices[0].message.content
    assert row["completion_tokens"] == r.usage.completion_tokens
    assert key not in str(row)  # the key itself is never logged


def test_health_ready_metrics(local_gateway: RunningGateway) -> None:
    assert httpx.get(f"{local_gateway.base}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{local_gateway.base}/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    from tests.conftest import ADMIN_TOKEN

    text = httpx.get(f"{local_gateway.base}/metrics", headers={"authorization": f"Bearer {ADMIN_TOKEN}"}).text
    assert "distillshield_requests_total" in text and "distillshield_request_seconds_bucket" in text


def test_logits_hook_steers_the_embedded_model_per_account(local_gateway: RunningGateway) -> None:
    """The per-request logits hook (the watermark's entry point) reaches llama.cpp for chosen accounts."""
    import numpy as np

    llm = local_gateway.state.upstream._llm
    forced = llm.tokenize(b" banana", add_bos=False)[0]

    def force(_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        out = np.full_like(scores, -1e9)
        out[forced] = 0.0
        return out

    gw = local_gateway.state.gateway
    gw.logits_hook_factory = lambda ctx, gen: force if ctx.account.id == "hooked" else None
    try:
        hooked = openai.OpenAI(base_url=f"{local_gateway.base}/v1", api_key=local_gateway.create_key("hooked"))
        plain = openai.OpenAI(base_url=f"{local_gateway.base}/v1", api_key=local_gateway.create_key("plain"))
        msgs = [{"role": "user", "content": "Name a colour."}]
        a = hooked.chat.completions.create(model=MODEL, messages=msgs, max_tokens=4, temperature=0)
        b = plain.chat.completions.create(model=MODEL, messages=msgs, max_tokens=4, temperature=0)
        s = "".join(
            c.choices[0].delta.content or ""
            for c in hooked.chat.completions.create(model=MODEL, messages=msgs, max_tokens=3, stream=True)
            if c.choices
        )
    finally:
        gw.logits_hook_factory = None
    assert a.choices[0].message.content.split() == ["banana"] * 4
    assert "banana" not in b.choices[0].message.content
    assert s.split() == ["banana"] * 3


def test_audit_rows_record_the_decision(local_gateway: RunningGateway, key: str) -> None:
    client = openai.OpenAI(base_url=f"{local_gateway.base}/v1", api_key=key)
    client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "decide"}], max_tokens=2)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "decide2"}])
    local_gateway.flush_audit()

    async def rows():
        return [r async for r in local_gateway.state.store.iter_audit() if "decide" in (r["request"] or "")]

    got = local_gateway.run(rows())
    assert [r["decision"] for r in got] == ["allow", "refuse:model_not_found"]


def test_prompt_longer_than_the_context_is_400(local_gateway: RunningGateway, key: str) -> None:
    client = openai.OpenAI(base_url=f"{local_gateway.base}/v1", api_key=key, max_retries=0)
    long = "word " * 5000  # far beyond the 2,048-token context
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": long}], max_tokens=4)
    assert "too long for the model" in str(exc.value)
    with pytest.raises(openai.BadRequestError):
        list(
            client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": long}], max_tokens=4, stream=True
            )
        )


def test_anthropic_stream_reports_the_same_input_tokens_as_the_non_stream_answer(
    local_gateway: RunningGateway, key: str
) -> None:
    """message_start can only carry an estimate (the upstream counts tokens at the end); the final message
    the SDK assembles must carry the real count, as the non-stream answer does."""
    client = anthropic.Anthropic(base_url=local_gateway.base, api_key=key)
    msgs = [{"role": "user", "content": "Name three colours of the rainbow, please, in a short list."}]
    whole = client.messages.create(model=MODEL, max_tokens=6, system="You are terse.", messages=msgs)
    with client.messages.stream(model=MODEL, max_tokens=6, system="You are terse.", messages=msgs) as s:
        final = s.get_final_message()
    assert final.usage.input_tokens == whole.usage.input_tokens > 0
