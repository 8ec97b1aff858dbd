"""OpenAI API shapes: request validation for /v1/chat/completions and /v1/completions, responses, SSE.

Validation names the field and what was wrong with it, as OpenAI's own API does (`param`).
Fields we do not interpret are passed through to the upstream untouched.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from distillshield.gateway.errors import bad_request
from distillshield.gateway.upstream.base import GenRequest

CHAT_ROLES = ("system", "developer", "user", "assistant", "tool", "function")
DONE = b"data: [DONE]\n\n"


def _type_name(v: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(v), type(v).__name__
    )


def _num(body: dict[str, Any], name: str, lo: float, hi: float) -> None:
    v = body.get(name)
    if v is None:
        return
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise bad_request(f"'{name}' must be a number, got {_type_name(v)}", name)
    if not lo <= v <= hi:
        raise bad_request(f"'{name}' must be between {lo:g} and {hi:g}, got {v}", name)


def _int(body: dict[str, Any], name: str, lo: int, hi: int | None = None) -> int | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise bad_request(f"'{name}' must be an integer, got {_type_name(v)}", name)
    if v < lo or (hi is not None and v > hi):
        bound = f"at least {lo}" if hi is None else f"between {lo} and {hi}"
        raise bad_request(f"'{name}' must be {bound}, got {v}", name)
    return v


def _bool(body: dict[str, Any], name: str) -> bool:
    v = body.get(name, False)
    if v is None:
        return False
    if not isinstance(v, bool):
        raise bad_request(f"'{name}' must be a boolean, got {_type_name(v)}", name)
    return v


def _stop(body: dict[str, Any], name: str = "stop") -> None:
    v = body.get(name)
    if v is None or isinstance(v, str):
        return
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v) or len(v) > 16:
        raise bad_request(f"'{name}' must be a string or an array of at most 16 strings", name)


def _stream_options(body: dict[str, Any]) -> None:
    v = body.get("stream_options")
    if v is None:
        return
    if not isinstance(v, dict):
        raise bad_request(f"'stream_options' must be an object, got {_type_name(v)}", "stream_options")
    if "include_usage" in v and not isinstance(v["include_usage"], bool):
        raise bad_request("'stream_options.include_usage' must be a boolean", "stream_options.include_usage")


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if model is None:
        raise bad_request("'model' is required", "model", code="missing_required_parameter")
    if not isinstance(model, str) or not model:
        raise bad_request(f"'model' must be a non-empty string, got {_type_name(model)}", "model")
    return model


def _max_tokens(body: dict[str, Any], names: tuple[str, ...], default: int, ceiling: int) -> int:
    for name in names:
        v = _int(body, name, 1)
        if v is not None:
            if v > ceiling:
                raise bad_request(f"'{name}' must be at most {ceiling} on this gateway, got {v}", name)
            return v
    return default


def content_text(content: Any, where: str) -> str:
    """Plain text of a message's content (a string or an array of content parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for j, part in enumerate(content):
            if not isinstance(part, dict):
                raise bad_request(f"'{where}[{j}]' must be an object, got {_type_name(part)}", f"{where}[{j}]")
            if part.get("type") == "text":
                text = part.get("text")
                if not isinstance(text, str):
                    raise bad_request(f"'{where}[{j}].text' must be a string", f"{where}[{j}].text")
                out.append(text)
        return "\n".join(out)
    raise bad_request(f"'{where}' must be a string or an array of content parts, got {_type_name(content)}", where)


def parse_chat(body: dict[str, Any], default_max_tokens: int, max_max_tokens: int) -> GenRequest:
    """Validate a chat completions body and bound its max_tokens (the reservation's upper bound)."""
    model = _model(body)
    messages = body.get("messages")
    if messages is None:
        raise bad_request("'messages' is required", "messages", code="missing_required_parameter")
    if not isinstance(messages, list):
        raise bad_request(f"'messages' must be an array, got {_type_name(messages)}", "messages")
    if not messages:
        raise bad_request("'messages' must contain at least one message", "messages")
    texts = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise bad_request(f"'messages[{i}]' must be an object, got {_type_name(m)}", f"messages[{i}]")
        role = m.get("role")
        if role not in CHAT_ROLES:
            raise bad_request(
                f"'messages[{i}].role' must be one of {', '.join(CHAT_ROLES)}, got {role!r}",
                f"messages[{i}].role",
            )
        if "content" not in m and role != "assistant":
            raise bad_request(f"'messages[{i}].content' is required", f"messages[{i}].content")
        texts.append(f"{role}: {content_text(m.get('content'), f'messages[{i}].content')}")
    _num(body, "temperature", 0, 2)
    _num(body, "top_p", 0, 1)
    _num(body, "presence_penalty", -2, 2)
    _num(body, "frequency_penalty", -2, 2)
    _stop(body)
    n = _int(body, "n", 1, 128) or 1
    _int(body, "top_logprobs", 0, 20)
    _bool(body, "logprobs")
    stream = _bool(body, "stream")
    _stream_options(body)
    max_tokens = _max_tokens(body, ("max_completion_tokens", "max_tokens"), default_max_tokens, max_max_tokens)
    upstream_body = dict(body)
    if "max_completion_tokens" not in body:
        upstream_body["max_tokens"] = max_tokens
    return GenRequest("chat", upstream_body, model, stream, max_tokens, "\n".join(texts), n=n)


def parse_completion(body: dict[str, Any], default_max_tokens: int, max_max_tokens: int) -> GenRequest:
    """Validate a legacy completions body."""
    model = _model(body)
    if "messages" in body:
        raise bad_request(
            "'messages' is not a parameter of /v1/completions; send it to /v1/chat/completions", "messages"
        )
    prompt = body.get("prompt")
    if prompt is None:
        raise bad_request("'prompt' is required", "prompt", code="missing_required_parameter")
    if isinstance(prompt, str):
        prompt_text = prompt
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        prompt_text = "\n".join(prompt)
    else:
        raise bad_request("'prompt' must be a string or a non-empty array of strings", "prompt")
    _num(body, "temperature", 0, 2)
    _num(body, "top_p", 0, 1)
    _stop(body)
    n = _int(body, "n", 1, 128) or 1
    _int(body, "logprobs", 0, 5)
    stream = _bool(body, "stream")
    _stream_options(body)
    max_tokens = _max_tokens(body, ("max_tokens",), default_max_tokens, max_max_tokens)
    upstream_body = dict(body)
    upstream_body["max_tokens"] = max_tokens
    if isinstance(prompt, list):
        n *= len(prompt)
    return GenRequest("completions", upstream_body, model, stream, max_tokens, prompt_text, n=n)


def response_text(api: str, resp: dict[str, Any]) -> tuple[str, str | None]:
    """The served text (choices joined in index order) and the first finish_reason."""
    choices = resp.get("choices") or []
    texts, finish = [], None
    for c in choices:
        if api == "chat":
            msg = c.get("message") or {}
            texts.append(msg.get("content") or "")
        else:
            texts.append(c.get("text") or "")
        finish = finish or c.get("finish_reason")
    return "\n".join(texts), finish


def chunk_text(api: str, chunk: dict[str, Any]) -> tuple[str, str | None]:
    """The text a stream chunk adds and its finish_reason, if any."""
    text, finish = "", None
    for c in chunk.get("choices") or ():
        if api == "chat":
            delta = c.get("delta") or {}
            t = delta.get("content")
        else:
            t = c.get("text")
        if t:
            text += t
        if c.get("finish_reason"):
            finish = c["finish_reason"]
    return text, finish


def sse(chunk: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def chat_response(rid: str, model: str, text: str, finish: str, usage: dict[str, int]) -> dict[str, Any]:
    """A whole chat completion in OpenAI's shape (used by upstreams that produce plain text)."""
    return {
        "id": rid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": finish,
            }
        ],
        "usage": {**usage, "total_tokens": usage["prompt_tokens"] + usage["completion_tokens"]},
    }
