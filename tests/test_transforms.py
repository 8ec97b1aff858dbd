"""Response and request transforms: reasoning out of text and fields, stream-safe at any split; logprobs
out of responses; request caps."""

from __future__ import annotations

import random

import pytest

from distillshield.gateway.transforms import (
    ReasoningFilter,
    ResponseTransform,
    cap_request,
    strip_thinking_blocks,
)
from distillshield.gateway.upstream.base import GenRequest

CASES = [
    ("Hello <think>secret plan\nstep a</think>\n\nThe answer is 4.", "Hello The answer is 4."),
    ("<THINKING>x</THINKING>Visible", "Visible"),
    ("Let's think step by step.\nFirst add 2 and 2.\nThat gives 4.\nAnswer: 4\nThanks!", "Answer: 4\nThanks!"),
    ("Intro line\nStep 1: do a\nStep 2: do b\nSo x = 5", "Intro line\nSo x = 5"),
    ("Reasoning: because\nmore\n\nFinal answer: yes", "Final answer: yes"),
    ("## Step-by-step solution:\n1. a\n2. b\n**Answer:** 3", "**Answer:** 3"),
    ("a < b and c <thin is not a tag", "a < b and c <thin is not a tag"),
    ("plain text, no reasoning at all, longer than the peek window.\nsecond line", None),
    ("tail <think>never closed", "tail "),
]


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_filter_removes_reasoning_segments(text: str, expected: str | None) -> None:
    assert ReasoningFilter("strip").filter(text) == (text if expected is None else expected)


@pytest.mark.parametrize("mode", ["strip", "summarize"])
@pytest.mark.parametrize("text", [t for t, _ in CASES])
def test_streaming_gives_the_same_text_at_any_split(text: str, mode: str) -> None:
    whole = ReasoningFilter(mode).filter(text)  # type: ignore[arg-type]
    rng = random.Random(7)
    for _ in range(200):
        f = ReasoningFilter(mode)  # type: ignore[arg-type]
        out, i = [], 0
        while i < len(text):
            j = i + rng.randint(1, 6)
            out.append(f.feed(text[i:j]))
            i = j
        out.append(f.finish())
        assert "".join(out) == whole


def test_filter_releases_plain_text_without_waiting_for_the_end() -> None:
    f = ReasoningFilter("strip")
    first = f.feed("A normal sentence that is long enough to be decided. ")
    assert first.startswith("A normal sentence")
    assert f.feed("<th") == ""  # maybe a tag: held
    assert f.feed("e theorem") == "<the theorem"  # not a tag after all


def test_summarize_keeps_a_short_summary_of_the_reasoning() -> None:
    text = "<think>First I consider the inputs. Then many steps follow. Finally I conclude 42.</think>It is 42."
    out = ReasoningFilter("summarize", summary_chars=120).filter(text)
    assert out.startswith("[reasoning summarised") and out.endswith("It is 42.")
    assert "First I consider the inputs." in out and "Then many steps follow." not in out


def test_open_at_start_handles_templates_that_open_the_think_block() -> None:
    assert ReasoningFilter("strip", open_at_start=True).filter("hidden</think>\nshown") == "shown"


def _chat(content: str, **extra: object) -> dict:
    msg = {"role": "assistant", "content": content, **extra}
    return {"id": "c", "object": "chat.completion", "choices": [{"index": 0, "message": msg, "logprobs": {"x": 1}}]}


def test_whole_chat_response_loses_reasoning_field_tags_and_logprobs() -> None:
    resp = _chat("<think>plan</think>Answer.", reasoning_content="why", reasoning="also why")
    out = ResponseTransform("chat").whole(resp)
    choice = out["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "Answer."}
    assert choice["logprobs"] is None
    assert resp["choices"][0]["message"]["reasoning_content"] == "why"  # the input is not modified


def test_whole_response_keep_reasoning_only_drops_logprobs() -> None:
    out = ResponseTransform("chat", reasoning="keep").whole(_chat("<think>p</think>A", reasoning_content="r"))
    assert out["choices"][0]["message"]["content"] == "<think>p</think>A"
    assert out["choices"][0]["logprobs"] is None


def _stream(tf: ResponseTransform, chunks: list[dict]) -> list[dict]:
    out = [c for c in (tf.chunk(ch) for ch in chunks) if c is not None]
    return out + tf.tail()


def _delta(i: int, **d: object) -> dict:
    return {"id": "x", "object": "chat.completion.chunk", "choices": [{"index": i, "delta": d, "finish_reason": None}]}


def test_stream_chunks_with_split_tags_and_interleaved_choices() -> None:
    parts = ["<thi", "nk>sec", "ret</thi", "nk>\nOK", " done"]
    chunks = [_delta(0, role="assistant", content="")]
    for p in parts:
        chunks += [_delta(0, content=p), _delta(1, content=p.upper())]
    chunks += [_delta(0, reasoning_content="leaked?")]
    fin = [
        {"id": "x", "choices": [{"index": i, "delta": {}, "finish_reason": "stop", "logprobs": {"a": 1}}]}
        for i in (0, 1)
    ]
    out = _stream(ResponseTransform("chat"), chunks + fin)
    text = {0: "", 1: ""}
    for ch in out:
        for c in ch["choices"]:
            assert "reasoning_content" not in c["delta"] and not c.get("logprobs")
            text[c["index"]] += c["delta"].get("content") or ""
    assert text == {0: "OK done", 1: "OK DONE"}
    assert out[0]["choices"][0]["delta"]["role"] == "assistant"


def test_stream_held_text_is_released_by_tail_when_no_finish_chunk_comes() -> None:
    out = _stream(ResponseTransform("chat"), [_delta(0, content="short <thi")])
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in out) == "short <thi"


def test_stream_summarize_puts_the_summary_in_the_reasoning_field() -> None:
    chunks = [_delta(0, reasoning_content="Long chain. Of many. Steps."), _delta(0, content="Answer")]
    out = _stream(ResponseTransform("chat", reasoning="summarize"), chunks)
    assert out[0]["choices"][0]["delta"]["reasoning_content"].startswith("[reasoning summarised")
    assert out[0]["choices"][0]["delta"]["content"] == "Answer"


def test_completions_text_is_filtered_too() -> None:
    tf = ResponseTransform("completions")
    chunks = [{"choices": [{"index": 0, "text": t, "finish_reason": None}]} for t in ("<think>a", "</think>B")]
    chunks.append({"choices": [{"index": 0, "text": "", "finish_reason": "stop"}]})
    out = _stream(tf, chunks)
    assert "".join(c["choices"][0]["text"] for c in out) == "B"


def test_anthropic_thinking_blocks_are_removed_or_summarised() -> None:
    msg = {
        "type": "message",
        "content": [
            {"type": "thinking", "thinking": "Secret plan. Many steps.", "signature": "s"},
            {"type": "redacted_thinking", "data": "zz"},
            {"type": "text", "text": "<think>x</think>Hi"},
        ],
    }
    assert strip_thinking_blocks(msg)["content"] == [{"type": "text", "text": "Hi"}]
    summarised = strip_thinking_blocks(msg, "summarize")["content"]
    assert summarised[0]["text"].startswith("[reasoning summarised") and summarised[1]["text"].endswith("Hi")


def _gen(api: str = "chat", **body: object) -> GenRequest:
    b = {"model": "m", "max_tokens": 500, **body}
    return GenRequest(api, b, "m", False, int(b["max_tokens"]), "hi", n=int(b.get("n", 1)))  # type: ignore[arg-type]


def test_cap_request_drops_logprob_levers_and_caps_tokens_and_n() -> None:
    gen = _gen(logprobs=True, top_logprobs=5, logit_bias={"1": 100}, n=4)
    changed = cap_request(gen, drop_logprobs=True, max_tokens=64, n=1)
    assert set(changed) == {"logprobs", "top_logprobs", "logit_bias", "max_tokens", "n"}
    assert gen.max_tokens == 64 and gen.body["max_tokens"] == 64 and gen.n == 1 and gen.body["n"] == 1
    assert not {"logprobs", "top_logprobs", "logit_bias"} & set(gen.body)


def test_cap_request_leaves_smaller_requests_alone() -> None:
    gen = _gen(max_tokens=10)
    assert cap_request(gen, drop_logprobs=False, max_tokens=64, n=2) == []
    assert gen.max_tokens == 10


def test_cap_request_keeps_the_prompt_list_factor_of_completions() -> None:
    gen = GenRequest("completions", {"prompt": ["a", "b", "c"], "n": 4, "max_tokens": 5}, "m", False, 5, "a", n=12)
    cap_request(gen, n=2)
    assert gen.n == 6 and gen.body["n"] == 2
