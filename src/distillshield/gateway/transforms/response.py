"""Response transforms on the OpenAI shapes the upstream returns, whole or chunk by chunk.

The gateway speaks OpenAI chat/completions internally and translates to Anthropic at the edge, so one
transform here serves both API formats: what it removes never reaches the Anthropic translation.
`ResponseTransform` keeps one ReasoningFilter per choice index (n > 1 streams interleave choices) and:

- removes reasoning fields (`reasoning_content`, `reasoning`, `reasoning_details`) from messages and
  deltas, or replaces them with a summary;
- filters chain-of-thought segments out of the content text (transforms/reasoning.py);
- drops `logprobs` from choices.

Streams: text a filter holds back (a tag cut in two) is released on the choice's finish chunk, or by
`tail()` if the upstream ends without one; a chunk whose only content was withheld is skipped.
`strip_thinking_blocks` does the same for an Anthropic Message that carries `thinking` blocks.
"""

from __future__ import annotations

from typing import Any

from distillshield.gateway.transforms.reasoning import Mode, ReasoningFilter, summarize

REASONING_FIELDS = ("reasoning_content", "reasoning", "reasoning_details")
THINKING_BLOCKS = ("thinking", "redacted_thinking")


class ResponseTransform:
    """What one degraded request's response goes through. reasoning: keep | strip | summarize."""

    __slots__ = ("api", "reasoning", "sections", "summary_chars", "open_at_start", "drop_logprobs", "_choices", "_last")

    def __init__(
        self,
        api: str,
        *,
        reasoning: str = "strip",
        sections: bool = True,
        summary_chars: int = 240,
        open_at_start: bool = False,
        drop_logprobs: bool = True,
    ) -> None:
        self.api = api  # chat | completions (the upstream's shape)
        self.reasoning = reasoning
        self.sections = sections
        self.summary_chars = summary_chars
        self.open_at_start = open_at_start
        self.drop_logprobs = drop_logprobs
        self._choices: dict[int, _Choice] = {}
        self._last: dict[str, Any] | None = None

    @property
    def active(self) -> bool:
        return self.reasoning != "keep" or self.drop_logprobs

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
    __slots__ = ("filter", "field_parts", "done")

    def __init__(self, f: ReasoningFilter | None) -> None:
        self.filter = f
        self.field_parts: list[str] = []
        self.done = False

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
