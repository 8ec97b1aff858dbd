"""Response transforms on the OpenAI shapes the upstream returns, whole or chunk by chunk.

The gateway speaks OpenAI chat/completions internally and translates to Anthropic at the edge, so one
transform here serves both API formats: what it removes never reaches the Anthropic translation.
`ResponseTransform` keeps one ReasoningFilter per choice index (n > 1 streams interleave choices) and:

- removes reasoning fields (`reasoning_content`, `reasoning`, `reasoning_details`) from messages and
  deltas, or replaces them with a summary;
- filters chain-of-thought segments out of the content text (transforms/reasoning.py);
- drops `logprobs` from choices, or adds keyed noise to them (`logprob_noise`, gateway/logits.py).

Streams: text a filter holds back (a tag cut in two) is released on the choice's finish chunk, or by
`tail()` if the upstream ends without one; a chunk whose only content was withheld is skipped.
`strip_thinking_blocks` does the same for an Anthropic Message that carries `thinking` blocks.
"""

from __future__ import annotations

from typing import Any

from distillshield.gateway.logits import keyed_gauss
from distillshield.gateway.transforms.reasoning import Mode, ReasoningFilter, summarize

REASONING_FIELDS = ("reasoning_content", "reasoning", "reasoning_details")
THINKING_BLOCKS = ("thinking", "redacted_thinking")


class ResponseTransform:
    """What one degraded request's response goes through. reasoning: keep | strip | summarize."""

    __slots__ = (
        "api", "reasoning", "sections", "summary_chars", "open_at_start", "drop_logprobs", "logprob_noise",
        "noise_seed", "_choices", "_last",
    )  # fmt: skip

    def __init__(
        self,
        api: str,
        *,
        reasoning: str = "strip",
        sections: bool = True,
        summary_chars: int = 240,
        open_at_start: bool = False,
        drop_logprobs: bool = True,
        logprob_noise: float = 0.0,
        noise_seed: bytes = b"",
    ) -> None:
        self.api = api  # chat | completions (the upstream's shape)
        self.reasoning = reasoning
        self.sections = sections
        self.summary_chars = summary_chars
        self.open_at_start = open_at_start
        self.drop_logprobs = drop_logprobs
        self.logprob_noise = logprob_noise  # std (nats) of the keyed noise on returned logprobs; 0: exact
        self.noise_seed = noise_seed
        self._choices: dict[int, _Choice] = {}
        self._last: dict[str, Any] | None = None

    @property
    def active(self) -> bool:
        return self.reasoning != "keep" or self.drop_logprobs or self.logprob_noise > 0

    def _filter(self) -> ReasoningFilter | None:
        if self.reasoning == "keep":
            return None
        mode: Mode = "summarize" if self.reasoning == "summarize" else "strip"
        return ReasoningFilter(mode, self.sections, self.summary_chars, self.open_at_start)

    # -- whole responses --------------------------------------------------------------------------

    def whole(self, resp: dict[str, Any]) -> dict[str, Any]:
        """A transformed copy of a chat.completion or text_completion response."""
        choices = resp.get("choices")
        if not isinstance(choices, list):
            return resp
        out = []
        for c in choices:
            if not isinstance(c, dict):
                out.append(c)
                continue
            c = dict(c)
            if self.drop_logprobs and c.get("logprobs") is not None:
                c["logprobs"] = None
            elif self.logprob_noise > 0 and isinstance(c.get("logprobs"), dict):
                c["logprobs"], _ = self._noised(c["logprobs"], c.get("index", 0), 0)
            if self.reasoning != "keep":
                if self.api == "chat" and isinstance(c.get("message"), dict):
                    msg = dict(c["message"])
                    self._fields(msg, None)
                    if isinstance(msg.get("content"), str):
                        f = self._filter()
                        assert f is not None
                        msg["content"] = f.filter(msg["content"])
                    c["message"] = msg
                elif isinstance(c.get("text"), str):
                    f = self._filter()
                    assert f is not None
                    c["text"] = f.filter(c["text"])
            out.append(c)
        return {**resp, "choices": out}

    def _noise(self, choice: int, position: int, token: Any) -> float:
        return keyed_gauss(self.noise_seed + f"{choice}:{position}:{token}".encode(), 0, self.logprob_noise)

    def _noised(self, lp: dict[str, Any], choice: int, start: int) -> tuple[dict[str, Any], int]:
        """A copy of a choice's logprobs with keyed noise on every value (the same token at the same position
        gets the same noise wherever it appears), and the next position. Chat: `content` entries with
        `top_logprobs`; completions: `token_logprobs` and `top_logprobs` maps."""
        out = dict(lp)
        pos = start
        if isinstance(lp.get("content"), list):
            items = []
            for i, e in enumerate(lp["content"]):
                if not isinstance(e, dict):
                    items.append(e)
                    continue
                e = dict(e)
                if isinstance(e.get("logprob"), (int, float)):
                    e["logprob"] = min(e["logprob"] + self._noise(choice, start + i, e.get("token")), 0.0)
                if isinstance(e.get("top_logprobs"), list):
                    e["top_logprobs"] = [
                        {**t, "logprob": min(t["logprob"] + self._noise(choice, start + i, t.get("token")), 0.0)}
                        if isinstance(t, dict) and isinstance(t.get("logprob"), (int, float)) else t
                        for t in e["top_logprobs"]
                    ]  # fmt: skip
                items.append(e)
            out["content"] = items
            pos = start + len(items)
        if isinstance(lp.get("token_logprobs"), list):
            tokens = lp.get("tokens") if isinstance(lp.get("tokens"), list) else []
            out["token_logprobs"] = [
                min(v + self._noise(choice, start + i, tokens[i] if i < len(tokens) else None), 0.0)
                if isinstance(v, (int, float)) else v
                for i, v in enumerate(lp["token_logprobs"])
            ]  # fmt: skip
            if isinstance(lp.get("top_logprobs"), list):
                out["top_logprobs"] = [
                    {t: min(v + self._noise(choice, start + i, t), 0.0) if isinstance(v, (int, float)) else v
                     for t, v in m.items()}
                    if isinstance(m, dict) else m
                    for i, m in enumerate(lp["top_logprobs"])
                ]  # fmt: skip
            pos = start + len(lp["token_logprobs"])
        return out, pos

    def _fields(self, obj: dict[str, Any], st: _Choice | None) -> None:
        """Reasoning fields out of a message (st None) or a delta (collected for the summary)."""
        for k in REASONING_FIELDS:
            if k not in obj:
                continue
            v = obj.pop(k)
            if self.reasoning == "summarize" and isinstance(v, str) and v:
                if st is None:
                    obj["reasoning_content"] = summarize(v, self.summary_chars)
                else:
                    st.field_parts.append(v)

    # -- streams ----------------------------------------------------------------------------------

    def chunk(self, chunk: dict[str, Any]) -> dict[str, Any] | None:
        """The chunk as it may be sent, or None when everything in it is withheld."""
        choices = chunk.get("choices")
        if not choices:
            return chunk  # a usage-only chunk
        self._last = chunk
        out = []
        anything = False
        for c in choices:
            if not isinstance(c, dict):
                out.append(c)
                anything = True
                continue
            c = dict(c)
            st = self._choices.get(c.get("index", 0))
            if st is None:
                st = self._choices[c.get("index", 0)] = _Choice(self._filter())
            if self.drop_logprobs and c.get("logprobs") is not None:
                c["logprobs"] = None
            elif self.logprob_noise > 0 and isinstance(c.get("logprobs"), dict):
                c["logprobs"], st.positions = self._noised(c["logprobs"], c.get("index", 0), st.positions)
            finish = c.get("finish_reason")
            if self.api == "chat":
                delta = c.get("delta")
                if isinstance(delta, dict):
                    delta = dict(delta)
                    if self.reasoning != "keep":
                        self._fields(delta, st)
                        text = delta.get("content")
                        if isinstance(text, str) and text:
                            delta["content"] = st.feed(text)
                        if finish:
                            rest = st.finish()
                            if rest:
                                delta["content"] = (delta.get("content") or "") + rest
                        if st.field_parts and (delta.get("content") or finish):
                            delta["reasoning_content"] = summarize("".join(st.field_parts), self.summary_chars)
                            st.field_parts.clear()
                    c["delta"] = delta
                    if finish or any(v not in (None, "") for v in delta.values()) or c.get("logprobs"):
                        anything = True
                else:
                    anything = True
            else:
                if self.reasoning != "keep" and isinstance(c.get("text"), str):
                    text = st.feed(c["text"]) if c["text"] else ""
                    if finish:
                        text += st.finish()
                    c["text"] = text
                if finish or c.get("text"):
                    anything = True
            out.append(c)
        return {**chunk, "choices": out} if anything else None

    def tail(self) -> list[dict[str, Any]]:
        """Chunks for text still held when the upstream stream ended without a finish chunk."""
        extra = []
        for idx, st in self._choices.items():
            rest = st.finish()
            summary = summarize("".join(st.field_parts), self.summary_chars) if st.field_parts else ""
            st.field_parts.clear()
            if not rest and not summary:
                continue
            base = self._last or {"id": "", "object": "chat.completion.chunk", "created": 0, "model": ""}
            if self.api == "chat":
                delta = {"content": rest, **({"reasoning_content": summary} if summary else {})}
                choice: dict[str, Any] = {"index": idx, "delta": delta, "finish_reason": None}
            else:
                choice = {"index": idx, "text": rest, "finish_reason": None}
            extra.append({**base, "choices": [choice]})
        return extra


class _Choice:
    __slots__ = ("filter", "field_parts", "done", "positions")

    def __init__(self, f: ReasoningFilter | None) -> None:
        self.filter = f
        self.field_parts: list[str] = []
        self.done = False
        self.positions = 0  # logprob positions seen so far (the noise is keyed by position)

    def feed(self, text: str) -> str:
        return self.filter.feed(text) if self.filter is not None else text

    def finish(self) -> str:
        if self.filter is None or self.done:
            return ""
        self.done = True
        return self.filter.finish()


def strip_thinking_blocks(message: dict[str, Any], mode: str = "strip", summary_chars: int = 240) -> dict[str, Any]:
    """An Anthropic Message without its `thinking`/`redacted_thinking` blocks (summarize: one text block
    with the summary in their place) and with reasoning segments filtered out of its text blocks."""
    content = message.get("content")
    if not isinstance(content, list):
        return message
    out: list[Any] = []
    thoughts: list[str] = []
    for block in content:
        btype = block.get("type") if isinstance(block, dict) else None
        if btype in THINKING_BLOCKS:
            if isinstance(block.get("thinking"), str):
                thoughts.append(block["thinking"])
            continue
        if btype == "text" and isinstance(block.get("text"), str) and mode != "keep":
            f = ReasoningFilter("summarize" if mode == "summarize" else "strip", True, summary_chars)
            block = {**block, "text": f.filter(block["text"])}
        out.append(block)
    if mode == "summarize" and thoughts:
        out.insert(0, {"type": "text", "text": summarize("\n".join(thoughts), summary_chars)})
    return {**message, "content": out}
