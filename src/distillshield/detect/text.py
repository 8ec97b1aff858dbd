"""Prompt text as the detectors see it: the user turn, its skeleton, its frames and its shingles.

A *skeleton* abstracts what changes between uses of one template (numbers, quoted data, code blocks,
URLs, names) so that "Summarise ticket 4711 for Alice" and "Summarise ticket 88 for Bob" collapse to
one string. *Frames* are the skeleton's opening and closing words: templates put their instructions
there while the variable payload sits in the middle, so two requests of one template share a frame
even when the payload is free text that no regex can abstract.

Hashes are stable across processes (blake2b), because the shipped model artefact and the online
state must agree with batch analysis.
"""

from __future__ import annotations

import re
from hashlib import blake2b
from typing import Any

from distillshield.traffic import embedding_texts, responses_messages

FRAME_WORDS = 8  # opening/closing words that make a frame; long enough that casual chat rarely collides
MIN_FRAME_WORDS = 5  # shorter prompts have no frame: "hi there" is not a template
SHINGLE_WORDS = 3

_CODE_BLOCK = re.compile(r"```.*?(?:```|\Z)", re.S)
_URL = re.compile(r"(?:https?://|www\.)\S+")
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+")
_QUOTED = re.compile(r'"[^"\n]{1,400}"|“[^”\n]{1,400}”|«[^»\n]{1,400}»|\'[^\'\n]{3,400}\'')
_NUMBER = re.compile(r"\d[\d,._:/]*%?")
# A capitalised word that does not start a sentence is most often a name or a proper noun.
_NAME = re.compile(r"(?<=[a-z,;:] )[A-Z][a-z]{1,20}\b")
_WORD = re.compile(r"§?\w+", re.U)


def _content_text(content: Any) -> str:
    """Text of a message content: a string, or OpenAI/Anthropic content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for p in content:
            if isinstance(p, str):
                parts.append(p)
            elif isinstance(p, dict):
                t = p.get("text")
                if isinstance(t, str):
                    parts.append(t)
                elif p.get("type") == "tool_result":
                    parts.append(_content_text(p.get("content")))
        return "\n".join(parts)
    return ""


def request_texts(endpoint: str, request: dict[str, Any]) -> tuple[str, str, int, int]:
    """(last user text, system text, user turns, all turns) of a request body in any supported shape."""
    if endpoint == "/v1/completions":
        prompt = request.get("prompt", "")
        if isinstance(prompt, list):
            prompt = "\n".join(p for p in prompt if isinstance(p, str))
        return (prompt if isinstance(prompt, str) else ""), "", 1, 1
    if endpoint == "/v1/embeddings":
        # The texts an account embeds are its prompt: what it covers is what content signals compare.
        return "\n".join(embedding_texts(request)), "", 1, 1
    if endpoint == "/v1/responses":
        # OpenAI Responses: `instructions` (as a system message) and `input`, read as chat messages.
        messages: Any = responses_messages(request)
        system = ""
    else:
        messages = request.get("messages")
        if not isinstance(messages, list):
            messages = []
        system = _content_text(request.get("system", ""))  # Anthropic
    user = ""
    users = turns = 0
    for m in messages:
        if not isinstance(m, dict):
            continue
        role = m.get("role")
        text = _content_text(m.get("content"))
        if role in ("system", "developer"):
            system = f"{system}\n{text}" if system else text
            continue
        turns += 1
        if role == "user":
            users += 1
            user = text
    return user, system, users, turns


def skeleton(text: str, limit: int = 1200, tail: int = 400) -> str:
    """Lower-cased text with numbers, quoted data, code blocks, URLs and names replaced by §-placeholders.

    Long texts keep their first `limit` and last `tail` characters: templates live at both ends, and
    the regexes' cost grows with the length.
    """
    if len(text) > limit + tail:
        return _skeleton(text[:limit]) + " … " + _skeleton(text[-tail:])
    return _skeleton(text)


def _skeleton(s: str) -> str:
    # Each substitution runs only when its cheap precondition holds: most prompts have no code, URL or
    # e-mail address, and a regex scan of every prompt for each would dominate extraction time.
    if "```" in s:
        s = _CODE_BLOCK.sub(" §code ", s)
    if "http" in s or "www." in s:
        s = _URL.sub(" §url ", s)
    if "@" in s:
        s = _EMAIL.sub(" §url ", s)
    s = _QUOTED.sub(" §q ", s)
    s = _NAME.sub("§name", s)  # before lower-casing: case is what marks a name
    s = _NUMBER.sub("§n", s)
    return " ".join(s.split()).lower()


def words(skel: str) -> list[str]:
    return _WORD.findall(skel)


def has_word(text: str) -> bool:
    """True when the text holds at least one word character."""
    return _WORD.search(text) is not None


def stable_hash(text: str) -> int:
    """A 63-bit hash that is the same in every process (Python's hash() is salted per process)."""
    return int.from_bytes(blake2b(text.encode("utf-8", "replace"), digest_size=8).digest(), "little") >> 1


def frames(toks: list[str]) -> tuple[int, int]:
    """Hashes of the opening and closing FRAME_WORDS words (0 when the prompt is too short to have a frame)."""
    if len(toks) < MIN_FRAME_WORDS:
        return 0, 0
    head = " ".join(toks[:FRAME_WORDS])
    tail = " ".join(toks[-FRAME_WORDS:])
    return stable_hash("H:" + head), stable_hash("T:" + tail)


def shingles(toks: list[str], k: int = SHINGLE_WORDS, limit: int = 200) -> list[bytes]:
    """Word k-shingles of a skeleton (bytes, for MinHash); a prompt shorter than k is one shingle."""
    toks = toks[:limit]
    if len(toks) <= k:
        return [" ".join(toks).encode()]
    return [" ".join(toks[i : i + k]).encode() for i in range(len(toks) - k + 1)]
