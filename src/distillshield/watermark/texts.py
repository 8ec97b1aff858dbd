"""Reading the texts to test: plain text, JSONL (several shapes), or stdin."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class TextsError(ValueError):
    """The input cannot be read; the message names the file and line."""


@dataclass(frozen=True)
class Text:
    id: str
    text: str
    prompt: str | None = None  # what the text answered, when the record says (entropy weights condition on it)


def _text_of(obj: dict[str, Any]) -> str | None:
    """The text in one JSON object: text / completion / output / response.text (traffic format) /
    choices[0].message.content or choices[0].text (an OpenAI response)."""
    for k in ("text", "completion", "output", "response_text"):
        if isinstance(obj.get(k), str):
            return obj[k]
    resp = obj.get("response")
    if isinstance(resp, dict) and isinstance(resp.get("text"), str):
        return resp["text"]
    if isinstance(resp, str):
        return resp
    choices = obj.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        c = choices[0]
        msg = c.get("message")
        if isinstance(msg, dict) and isinstance(msg.get("content"), str):
            return msg["content"]
        if isinstance(c.get("text"), str):
            return c["text"]
    return None


def _prompt_of(obj: dict[str, Any]) -> str | None:
    """The prompt a JSON record's text answers: prompt / instruction (+ input, as instruction data sets
    write it) / the last user message of request.messages (traffic format) or of messages."""
    if isinstance(obj.get("prompt"), str):
        return obj["prompt"]
    if isinstance(obj.get("instruction"), str):
        extra = obj.get("input")
        return obj["instruction"] + (f"\n\n{extra}" if isinstance(extra, str) and extra else "")
    req = obj.get("request")
    messages = req.get("messages") if isinstance(req, dict) else obj.get("messages")
    if isinstance(messages, list):
        for m in reversed(messages):
            if isinstance(m, dict) and m.get("role") == "user" and isinstance(m.get("content"), str):
                return m["content"]
    return None


def _is_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except json.JSONDecodeError:
        return False


def read_texts(source: str | Path) -> list[Text]:
    """Texts from a file ('-' = stdin). A `.jsonl`/`.ndjson` file, or one whose first line is a JSON
    object, is JSONL (one text per line; a line that is not a JSON object is an error naming it); anything
    else is one text."""
    name = str(source)
    if name == "-":
        raw = sys.stdin.read()
    else:
        path = Path(source)
        if not path.is_file():
            raise TextsError(f"{path} does not exist or is not a file")
        try:
            raw = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise TextsError(f"{path} is not UTF-8 text") from None
    lines = [(i, ln) for i, ln in enumerate(raw.splitlines(), start=1) if ln.strip()]
    # JSONL when the name says so or the first line is a JSON object; then every line must be one (a single
    # bad line used to turn the whole file into one text, silently).
    first = lines[0][1].strip() if lines else ""
    jsonl = name.endswith((".jsonl", ".ndjson")) or (first.startswith("{") and _is_object(first))
    if not jsonl:
        return [Text("1" if name == "-" else Path(name).name, raw)] if raw.strip() else []
    objs: list[tuple[int, Any]] = []
    for i, ln in lines:
        try:
            obj = json.loads(ln)
        except json.JSONDecodeError as exc:
            raise TextsError(f"{name}:{i}: not valid JSON ({exc.msg}); JSONL holds one object per line") from None
        if not isinstance(obj, dict):
            raise TextsError(f"{name}:{i}: a JSONL line must be a JSON object, got {type(obj).__name__}")
        objs.append((i, obj))
    out = []
    for i, obj in objs:
        text = _text_of(obj)
        if text is None:
            raise TextsError(f"{name}:{i}: no text field (expected text, completion, output, response.text or choices)")
        ident = obj.get("id") if isinstance(obj.get("id"), (str, int)) else None
        out.append(Text(str(ident) if ident is not None else f"line {i}", text, _prompt_of(obj)))
    return out
