"""Reasoning removal: chain-of-thought segments out of model text, whole or as a stream of deltas.

What counts as a reasoning segment:
- a tagged block: <think>...</think>, <thinking>, <reasoning>, <thought> (any case);
- an explicit step-by-step section: a line that opens with "Let's think step by step", "Reasoning:",
  "Chain of thought:", "Thought process:", "Step-by-step solution:", "Step 1:" ... up to the line that
  gives the answer ("Answer:", "Final answer", "Therefore", "In conclusion", ...), which is kept. A
  section that never reaches such a line keeps only its last line (where models put the result).

`ReasoningFilter` is stateful and stream-safe: text may arrive in any split (a tag cut in two, a header
spread over chunks); it holds back only what it cannot decide yet (a partial tag, or at most PEEK
characters at the start of a line) and releases it as soon as it can. Modes: "strip" removes the
segment; "summarize" replaces it with a short extractive summary (first and last sentence, capped).
Removing or summarising the chain of thought is the output-level defence that measurably hurts
students (threat-model.md, countermeasures).
"""

from __future__ import annotations

import re
from typing import Literal

Mode = Literal["strip", "summarize"]

_TAGS = ("think", "thinking", "reasoning", "thought")
_OPEN = re.compile(r"<(?:think|thinking|reasoning|thought)>", re.I)
_CLOSE = re.compile(r"</(?:think|thinking|reasoning|thought)>", re.I)
_OPEN_TAGS = tuple(f"<{t}>" for t in _TAGS)
_CLOSE_TAGS = tuple(f"</{t}>" for t in _TAGS)
_LEAD = r"^[ \t>#*_\-]*"  # markdown decoration before a header: "## ", "**", "> "
_HEADER = re.compile(
    _LEAD + r"(?:(?:let'?s|let us|i will|i'll|we will|we'll)\s+think(?:\s+about\s+(?:it|this))?\s+step[- ]by[- ]step"
    r"|step[- ]by[- ]step(?:\s+(?:reasoning|solution|explanation|thinking|analysis))?\s*:"
    r"|(?:reasoning|chain[- ]of[- ]thought|thought process|thinking|internal reasoning|scratchpad|rationale)\s*:"
    r"|step\s*1\s*[:.)])",
    re.I,
)
_ANSWER = re.compile(
    _LEAD
    + r"(?:final answer|the answer is|answer\s*:|conclusion|in conclusion|in summary|therefore|thus,|so the answer)",
    re.I,
)
PEEK = 40  # characters of a line's start that decide whether it opens (or closes) a section
_SENTENCE = re.compile(r"(?<=[.!?])\s+")

_OUT, _TAG, _STEPS = 0, 1, 2


def summarize(text: str, limit: int = 240) -> str:
    """An extractive summary of a reasoning segment: its size, first and last sentence, at most `limit` chars."""
    body = " ".join(text.split())
    if not body:
        return ""
    sentences = [s for s in _SENTENCE.split(body) if s]
    words = len(body.split())
    half = max(20, limit // 2 - 20)
    first = sentences[0][:half]
    last = sentences[-1][:half] if len(sentences) > 1 else ""
    out = f"[reasoning summarised, {words} words] {first}" + (f" ... {last}" if last else "")
    return out[:limit]


def _partial_suffix(buf: str, candidates: tuple[str, ...]) -> int | None:
    """Index where a trailing prefix of one of `candidates` starts (a tag cut by the chunk boundary)."""
    i = buf.rfind("<", max(0, len(buf) - 12))
    if i == -1:
        return None
    tail = buf[i:].lower()
    return i if any(c.startswith(tail) and c != tail for c in candidates) else None


class ReasoningFilter:
    """Feed text deltas, get back what may be shown; `finish()` releases the rest at the end."""

    __slots__ = ("mode", "sections", "summary_chars", "state", "buf", "line_start", "eat_space", "seg", "removed")

    def __init__(
        self, mode: Mode = "strip", sections: bool = True, summary_chars: int = 240, open_at_start: bool = False
    ) -> None:
        self.mode = mode
        self.sections = sections
        self.summary_chars = summary_chars
        # Some chat templates put the opening <think> in the prompt, so the output starts inside the
        # block and only the closing tag appears (DeepSeek-R1 style without a reasoning parser).
        self.state = _TAG if open_at_start else _OUT
        self.buf = ""
        self.line_start = True  # buf[0] is at the start of a line
        self.eat_space = False  # drop the blank lines a removed segment leaves behind
        self.seg: list[str] = []  # the current segment's text (kept for the summary and the last line)
        self.removed = 0  # reasoning segments removed so far

    def feed(self, text: str) -> str:
        if not text:
            return ""
        self.buf += text
        return self._run(final=False)

    def finish(self) -> str:
        out = self._run(final=True)
        if self.state == _STEPS:  # a section that never gave its answer line: keep its last line
            lines = [ln for ln in "".join(self.seg).splitlines() if ln.strip()]
            tail = self._close()
            out += tail + (lines[-1] if len(lines) > 1 else "")
        elif self.state == _TAG:
            out += self._close()
        self.state = _OUT
        return out

    def filter(self, text: str) -> str:
        """The whole of `text` at once (non-streaming responses)."""
        return self.feed(text) + self.finish()

    # -- the state machine ---------------------------------------------------------------------------

    def _run(self, final: bool) -> str:
        out: list[str] = []
        step = (self._out, self._tag, self._steps)
        while self.buf and step[self.state](out, final):
            pass
        return "".join(out)

    def _close(self) -> str:
        """End the current segment; the summary replaces it in summarize mode."""
        self.removed += 1
        self.eat_space = True
        self.line_start = True
        text = "".join(self.seg)
        self.seg = []
        self.state = _OUT
        if self.mode == "summarize" and text.strip():
            return summarize(text, self.summary_chars) + "\n\n"
        return ""

    def _out(self, out: list[str], final: bool) -> bool:
        buf = self.buf
        if self.eat_space:
            stripped = buf.lstrip()
            if not stripped and not final:
                self.buf = ""
                return False
            self.eat_space = False
            buf = self.buf = stripped
            if not buf:
                return False
        m = _OPEN.search(buf)
        hold = None if (m or final) else _partial_suffix(buf, _OPEN_TAGS)
        limit = m.start() if m else (hold if hold is not None else len(buf))
        i = 0
        if self.sections:
            while i < limit:
                if not self.line_start:
                    nl = buf.find("\n", i, limit)
                    if nl == -1:
                        i = limit
                        break
                    i = nl + 1
                    self.line_start = True
                    continue
                nl = buf.find("\n", i, limit)
                end = nl if nl != -1 else limit
                line = buf[i:end]
                if nl == -1 and len(line) < PEEK and m is None and not final:
                    break
                if _HEADER.match(line):
                    out.append(buf[:i])
                    self.seg = [line + ("\n" if nl != -1 else "")]
                    self.buf = buf[end + 1 :] if nl != -1 else buf[end:]
                    self.line_start = nl != -1
                    self.state = _STEPS
                    return True
                if nl == -1:
                    i = end
                    self.line_start = False
                else:
                    i = nl + 1
        else:
            i = limit
        if m is not None and i >= limit:
            out.append(buf[:limit])
            self.buf = buf[m.end() :]
            self.seg = []
            self.state = _TAG
            return True
        out.append(buf[:i])
        self.buf = buf[i:]
        return False

    def _tag(self, out: list[str], final: bool) -> bool:
        buf = self.buf
        m = _CLOSE.search(buf)
        if m is not None:
            self.seg.append(buf[: m.start()])
            self.buf = buf[m.end() :]
            out.append(self._close())
            return True
        hold = None if final else _partial_suffix(buf, _CLOSE_TAGS)
        take = buf if hold is None else buf[:hold]
        self.seg.append(take)
        self.buf = buf[len(take) :]
        return False

    def _steps(self, out: list[str], final: bool) -> bool:
        buf = self.buf
        i = 0
        n = len(buf)
        while i < n:
            nl = buf.find("\n", i)
            end = nl if nl != -1 else n
            if self.line_start:
                line = buf[i:end]
                if nl == -1 and len(line) < PEEK and not final:
                    break  # cannot tell yet whether this line gives the answer
                if _ANSWER.match(line):
                    self.seg.append(buf[:i])
                    self.buf = buf[i:]
                    out.append(self._close())
                    self.eat_space = False  # the answer line follows directly
                    return True
            if nl == -1:
                i = n
                self.line_start = False
            else:
                i = nl + 1
                self.line_start = True
        self.seg.append(buf[:i])
        self.buf = buf[i:]
        return False
