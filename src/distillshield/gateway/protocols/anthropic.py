"""Anthropic Messages API shapes: validate /v1/messages, translate to and from the OpenAI chat shape.

The upstreams speak OpenAI chat; this module is the only place that knows Anthropic's request body,
its message object and its SSE event sequence (message_start, content_block_start, ping,
content_block_delta*, content_block_stop, message_delta, message_stop), as the official SDK parses them.
"""

from __future__ import annotations

from typing import Any

import orjson

from distillshield.gateway.errors import bad_request
from distillshield.gateway.protocols.openai import _bool, _int, _model, _num, _stop, _type_name
from distillshield.gateway.upstream.base import GenRequest

STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
}


def _blocks_text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise bad_request(f"'{where}' must be a string or an array of content blocks, got {_type_name(content)}")
    out = []
    for j, block in enumerate(content):
        if not isinstance(block, dict):
            raise bad_request(f"'{where}[{j}]' must be an object, got {_type_name(block)}")
        btype = block.get("type")
        if btype != "text":
            raise bad_request(
                f"'{where}[{j}].type' is {btype!r}; this gateway's upstream accepts text content blocks only"
            )
        text = block.get("text")
        if not isinstance(text, str):
            raise bad_request(f"'{where}[{j}].text' must be a string")
        out.append(text)
    return "\n".join(out)


def parse_messages(body: dict[str, Any], max_max_tokens: int) -> GenRequest:
    """Validate a Messages body and translate it to an OpenAI chat body for the upstream."""
    model = _model(body)
    if "max_tokens" not in body:
        raise bad_request("'max_tokens' is required", "max_tokens", code="missing_required_parameter")
    max_tokens = _int(body, "max_tokens", 1)
    if max_tokens is None:
        raise bad_request("'max_tokens' must be an integer, got null", "max_tokens")
    if max_tokens > max_max_tokens:
        raise bad_request(f"'max_tokens' must be at most {max_max_tokens} on this gateway, got {max_tokens}")
    messages = body.get("messages")
    if messages is None:
        raise bad_request("'messages' is required", "messages", code="missing_required_parameter")
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty array of messages")
    chat: list[dict[str, str]] = []
    system = body.get("system")
    if system is not None:
        chat.append({"role": "system", "content": _blocks_text(system, "system")})
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise bad_request(f"'messages[{i}]' must be an object, got {_type_name(m)}")
        role = m.get("role")
        if role not in ("user", "assistant"):
            raise bad_request(f"'messages[{i}].role' must be 'user' or 'assistant', got {role!r}")
        if "content" not in m:
            raise bad_request(f"'messages[{i}].content' is required")
        chat.append({"role": role, "content": _blocks_text(m["content"], f"messages[{i}].content")})
    _num(body, "temperature", 0, 1)
    _num(body, "top_p", 0, 1)
    _int(body, "top_k", 0)
    _stop(body, "stop_sequences")
    stream = _bool(body, "stream")
    upstream_body: dict[str, Any] = {"model": model, "messages": chat, "max_tokens": max_tokens}
    for src, dst in (("temperature", "temperature"), ("top_p", "top_p"), ("stop_sequences", "stop")):
        if body.get(src) is not None:
            upstream_body[dst] = body[src]
    if stream:
        upstream_body["stream"] = True
    prompt_text = "\n".join(f"{m['role']}: {m['content']}" for m in chat)
    return GenRequest("chat", upstream_body, model, stream, max_tokens, prompt_text)


def message_id(request_id: str) -> str:
    return "msg_" + request_id.replace("-", "")[:24]


def to_message(resp: dict[str, Any], model: str, request_id: str) -> dict[str, Any]:
    """An OpenAI chat completion -> an Anthropic Message object."""
    choice = (resp.get("choices") or [{}])[0]
    text = (choice.get("message") or {}).get("content") or ""
    usage = resp.get("usage") or {}
    return {
        "id": message_id(request_id),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": STOP_REASONS.get(choice.get("finish_reason") or "stop", "end_turn"),
        "stop_sequence": None,
        "usage": {
            "input_tokens": int(usage.get("prompt_tokens") or 0),
            "output_tokens": int(usage.get("completion_tokens") or 0),
        },
    }


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class MessageStream:
    """Turns OpenAI chat chunks into Anthropic SSE events, one call per chunk."""

    def __init__(self, model: str, request_id: str, input_tokens_estimate: int) -> None:
        self.model = model
        self.id = message_id(request_id)
        self.input_tokens = input_tokens_estimate
        self.started = False

    def start(self) -> bytes:
        self.started = True
        message = {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": self.input_tokens, "output_tokens": 0},
        }
        return (
            _event("message_start", {"type": "message_start", "message": message})
            + _event(
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            )
            + _event("ping", {"type": "ping"})
        )

    def delta(self, text: str) -> bytes:
        return _event(
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}},
        )

    def finish(self, finish_reason: str | None, output_tokens: int, input_tokens: int | None = None) -> bytes:
        """The closing events. message_start had to carry an estimate of the input tokens (the upstream
        reports usage only at the end); the real count goes in message_delta's cumulative usage, which the
        SDK's stream accumulator takes as the message's."""
        usage: dict[str, int] = {"output_tokens": output_tokens}
        if input_tokens is not None:
            usage["input_tokens"] = input_tokens
        return (
            _event("content_block_stop", {"type": "content_block_stop", "index": 0})
            + _event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {
                        "stop_reason": STOP_REASONS.get(finish_reason or "stop", "end_turn"),
                        "stop_sequence": None,
                    },
                    "usage": usage,
                },
            )
            + _event("message_stop", {"type": "message_stop"})
        )

    @staticmethod
    def error(kind: str, message: str) -> bytes:
        return _event("error", {"type": "error", "error": {"type": kind, "message": message}})
