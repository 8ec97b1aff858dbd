"""Request bodies as real clients send them: OpenAI chat/completions and Anthropic messages."""

from __future__ import annotations

from typing import Any

from distillshield.simulate.personas.base import CHAT, COMPLETIONS, MESSAGES, Account

Message = dict[str, Any]


def chat(
    account: Account,
    model: str,
    messages: list[Message],
    *,
    system: str | None = None,
    max_tokens: int | None = None,
    temperature: float | None = None,
    stream: bool = False,
    extra: dict[str, Any] | None = None,
) -> tuple[str, dict[str, Any]]:
    """(endpoint, body) for a chat turn in the account's API. `extra` is OpenAI-only (tools, logprobs...)."""
    if account.api == "anthropic":
        body: dict[str, Any] = {"model": model, "max_tokens": max_tokens or 1024}
        if system:
            body["system"] = system
        body["messages"] = messages
        if temperature is not None:
            body["temperature"] = min(temperature, 1.0)  # Anthropic's range is 0..1
        if stream:
            body["stream"] = True
        return MESSAGES, body
    msgs = [{"role": "system", "content": system}, *messages] if system else messages
    return openai_chat(model, msgs, max_tokens=max_tokens, temperature=temperature, stream=stream, extra=extra)


def openai_chat(
    model: str,
    messages: list[Message],
    *,
    max_tokens: int | None = None,
    temperature: float | None = None,
    stream: bool = False,
    extra: dict[str, Any] | None = None,
) -> tuple[str, dict[str, Any]]:
    """An OpenAI chat body regardless of the account's API (tools, logprobs, n exist only there)."""
    body: dict[str, Any] = {"model": model, "messages": messages}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if temperature is not None:
        body["temperature"] = temperature
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    if extra:
        body.update(extra)
    return CHAT, body


def completion(
    model: str,
    prompt: str,
    *,
    max_tokens: int,
    temperature: float | None = None,
    stream: bool = False,
    extra: dict[str, Any] | None = None,
) -> tuple[str, dict[str, Any]]:
    """A legacy /v1/completions body (autocomplete, logprobs probing)."""
    body: dict[str, Any] = {"model": model, "prompt": prompt, "max_tokens": max_tokens}
    if temperature is not None:
        body["temperature"] = temperature
    if stream:
        body["stream"] = True
    if extra:
        body.update(extra)
    return COMPLETIONS, body
