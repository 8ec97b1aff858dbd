"""OpenAI Responses API shapes: validate /v1/responses, translate to and from the OpenAI chat shape.

The upstreams speak OpenAI chat; this module is the only place that knows the Responses request body,
the Response object and its SSE events as the official SDK parses them (`client.responses.create`,
`client.responses.stream`): response.created, response.in_progress; per output item
response.output_item.added ... response.output_item.done, with a reasoning item's summary in between
(response.reasoning_summary_part.added, response.reasoning_summary_text.delta/done,
response.reasoning_summary_part.done) or a message's text (response.content_part.added,
response.output_text.delta/done, response.content_part.done); then response.completed, or
response.incomplete when `max_output_tokens` cut the answer, as OpenAI's API ends such a stream.

Reasoning the upstream returns (`reasoning_content` or `reasoning` on the chat message or delta, after the
policy's transforms) becomes a reasoning item whose summary holds it; a stripped answer has none.

Stateless: the gateway stores no responses, so `previous_response_id` and `conversation` are refused with a
400 that says why; `store: true` is accepted and has no effect (the Response says `"store": false`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson

from distillshield.gateway.errors import ApiError, bad_request
from distillshield.gateway.protocols.openai import _bool, _int, _max_tokens, _model, _num, _type_name
from distillshield.gateway.upstream.base import GenRequest
from distillshield.traffic import RESPONSES_ROLES, responses_messages

LOGPROBS_INCLUDE = "message.output_text.logprobs"
INCLUDABLE = (
    "file_search_call.results",
    "web_search_call.results",
    "web_search_call.action.sources",
    "message.input_image.image_url",
    "computer_call_output.output.image_url",
    "code_interpreter_call.outputs",
    "reasoning.encrypted_content",
    LOGPROBS_INCLUDE,
)
TEXT_PARTS = ("input_text", "output_text")
REASONING_FIELDS = ("reasoning_content", "reasoning")  # where chat upstreams put the chain of thought

# Fields this stateless text gateway accepts and does not act on: checked for their JSON type, then ignored.
IGNORED: dict[str, type] = {
    "metadata": dict,
    "store": bool,
    "user": str,
    "safety_identifier": str,
    "prompt_cache_key": str,
    "prompt_cache_retention": str,
    "prompt_cache_options": dict,
    "service_tier": str,
    "truncation": str,
    "parallel_tool_calls": bool,
    "stream_options": dict,
    "max_tool_calls": int,
    "reasoning": dict,
}
_KIND_NAMES: dict[type, str] = {dict: "an object", bool: "a boolean", str: "a string", int: "an integer"}
_NOT_STORED = "this gateway does not store responses (`store` is off; `store: true` is accepted and ignored)"
# Fields that need what this gateway does not have; refused (400, naming the field) unless null or false.
UNSUPPORTED: dict[str, str] = {
    "previous_response_id": f"{_NOT_STORED}, so there is no earlier response to continue; send the whole "
    "conversation in `input`",
    "conversation": "conversations are not stored here (nor are responses: `store` is off); send the whole "
    "conversation in `input`",
    "prompt": "stored prompt templates are not available here; send the text in `instructions` and `input`",
    "background": f"background responses are polled from storage and {_NOT_STORED}",
    "background_options": f"background responses are polled from storage and {_NOT_STORED}",
    "context_management": "context management (compaction) is not available here",
    "image": "image generation is not served here",
    "moderation": "moderation options are not available here",
    "access_programs": "access programs are not available here",
}
TRANSLATED = (
    "model", "input", "instructions", "max_output_tokens", "temperature", "top_p", "top_logprobs", "include",
    "stream", "text", "tools", "tool_choice",
)  # fmt: skip
KNOWN = frozenset(TRANSLATED) | IGNORED.keys() | UNSUPPORTED.keys()


@dataclass
class ResponsesRequest:
    """A validated Responses request: the chat generation the pipeline runs, and what the answer restates."""

    gen: GenRequest
    echo: dict[str, Any]  # the Response object's fields that restate the request
    logprobs: bool  # the client asked for output_text logprobs (include: message.output_text.logprobs)


def _unsupported(name: str, why: str) -> ApiError:
    return bad_request(f"'{name}' is not supported by this gateway: {why}", name, code="unsupported_parameter")


def _check_fields(body: dict[str, Any]) -> None:
    for name in body:
        if name not in KNOWN:
            raise bad_request(f"Unknown parameter: '{name}'.", name, code="unknown_parameter")
    for name, why in UNSUPPORTED.items():
        v = body.get(name)
        if v is not None and v is not False:
            raise _unsupported(name, why)
    for name, kind in IGNORED.items():
        v = body.get(name)
        if v is not None and (not isinstance(v, kind) or (kind is int and isinstance(v, bool))):
            want = _KIND_NAMES[kind]
            raise bad_request(f"'{name}' must be {want}, got {_type_name(v)}", name)
    truncation = body.get("truncation")
    if truncation is not None and truncation not in ("auto", "disabled"):
        raise bad_request(f"'truncation' must be 'auto' or 'disabled', got {truncation!r}", "truncation")


def _check_tools(body: dict[str, Any]) -> None:
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise bad_request(f"'tools' must be an array, got {_type_name(tools)}", "tools")
        if tools:
            raise _unsupported("tools", "the upstream serves text answers only; send no tools")
    choice = body.get("tool_choice")
    if choice not in (None, "none", "auto"):
        raise _unsupported("tool_choice", "there are no tools to choose; leave it out, or send 'none' or 'auto'")


def _check_text(body: dict[str, Any]) -> str:
    """Validate `text` (the output format); returns the verbosity to restate."""
    text = body.get("text")
    if text is None:
        return "medium"
    if not isinstance(text, dict):
        raise bad_request(f"'text' must be an object, got {_type_name(text)}", "text")
    fmt = text.get("format")
    if fmt is not None:
        if not isinstance(fmt, dict):
            raise bad_request(f"'text.format' must be an object, got {_type_name(fmt)}", "text.format")
        if fmt.get("type") != "text":
            raise _unsupported(
                "text.format", f"the output format is {fmt.get('type')!r}; this gateway serves plain text only"
            )
    verbosity = text.get("verbosity")
    if verbosity is None:
        return "medium"
    if verbosity not in ("low", "medium", "high"):
        raise bad_request(f"'text.verbosity' must be 'low', 'medium' or 'high', got {verbosity!r}", "text.verbosity")
    return str(verbosity)


def _check_content(content: Any, where: str) -> None:
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise bad_request(f"'{where}' must be a string or an array of content parts, got {_type_name(content)}", where)
    for j, part in enumerate(content):
        at = f"{where}[{j}]"
        if not isinstance(part, dict):
            raise bad_request(f"'{at}' must be an object, got {_type_name(part)}", at)
        ptype = part.get("type")
        if ptype not in TEXT_PARTS:
            raise bad_request(
                f"'{at}.type' is {ptype!r}; this gateway's upstream takes text parts only ({', '.join(TEXT_PARTS)})",
                f"{at}.type",
            )
        if not isinstance(part.get("text"), str):
            raise bad_request(f"'{at}.text' must be a string", f"{at}.text")


def _check_input(body: dict[str, Any]) -> None:
    given = body.get("input")
    if given is None:
        raise bad_request("'input' is required", "input", code="missing_required_parameter")
    if isinstance(given, str):
        return
    if not isinstance(given, list) or not given:
        raise bad_request(
            f"'input' must be a string or a non-empty array of input items, got {_type_name(given)}", "input"
        )
    messages = 0
    for i, item in enumerate(given):
        at = f"input[{i}]"
        if not isinstance(item, dict):
            raise bad_request(f"'{at}' must be an object, got {_type_name(item)}", at)
        kind = item.get("type", "message")
        if kind == "reasoning":  # an earlier answer's reasoning, passed back: nothing a chat upstream takes
            continue
        if kind != "message":
            raise bad_request(
                f"'{at}.type' is {kind!r}; this gateway serves text conversations: message items (reasoning "
                "items are accepted and skipped)",
                f"{at}.type",
            )
        role = item.get("role")
        if role not in RESPONSES_ROLES:
            raise bad_request(f"'{at}.role' must be one of {', '.join(RESPONSES_ROLES)}, got {role!r}", f"{at}.role")
        if "content" not in item:
            raise bad_request(f"'{at}.content' is required", f"{at}.content", code="missing_required_parameter")
        _check_content(item["content"], f"{at}.content")
        messages += 1
    if not messages:
        raise bad_request("'input' holds no message item; send at least one", "input")


def _check_logprobs(body: dict[str, Any]) -> tuple[bool, int]:
    """(logprobs asked for, how many alternatives per token)."""
    include = body.get("include")
    if include is not None:
        if not isinstance(include, list):
            raise bad_request(f"'include' must be an array, got {_type_name(include)}", "include")
        for i, name in enumerate(include):
            if name not in INCLUDABLE:
                raise bad_request(
                    f"'include[{i}]' must be one of {', '.join(INCLUDABLE)}, got {str(name)[:60]!r}", f"include[{i}]"
                )
    top = _int(body, "top_logprobs", 0, 20) or 0
    return LOGPROBS_INCLUDE in (include or ()), top


def parse_responses(body: dict[str, Any], default_max_tokens: int, max_max_tokens: int) -> ResponsesRequest:
    """Validate a Responses body and translate it to an OpenAI chat body for the upstream."""
    _check_fields(body)
    model = _model(body)
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise bad_request(f"'instructions' must be a string, got {_type_name(instructions)}", "instructions")
    _check_input(body)
    _check_tools(body)
    verbosity = _check_text(body)
    _num(body, "temperature", 0, 2)
    _num(body, "top_p", 0, 1)
    logprobs, top = _check_logprobs(body)
    stream = _bool(body, "stream")
    max_tokens = _max_tokens(body, ("max_output_tokens",), default_max_tokens, max_max_tokens)
    messages = responses_messages(body)
    upstream: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": max_tokens}
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            upstream[name] = body[name]
    if logprobs:
        upstream["logprobs"] = True
        if top:
            upstream["top_logprobs"] = top
    if stream:
        upstream["stream"] = True
    prompt_text = "\n".join(f"{m['role']}: {m['content']}" for m in messages)
    gen = GenRequest("chat", upstream, model, stream, max_tokens, prompt_text)
    reasoning = body.get("reasoning") or {}
    echo: dict[str, Any] = {
        "background": False,
        "instructions": instructions,
        "max_output_tokens": body.get("max_output_tokens"),
        "max_tool_calls": body.get("max_tool_calls"),
        "metadata": body.get("metadata") or {},
        "model": model,
        "parallel_tool_calls": body.get("parallel_tool_calls") is not False,
        "previous_response_id": None,
        "prompt_cache_key": body.get("prompt_cache_key"),
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "safety_identifier": body.get("safety_identifier"),
        "service_tier": body.get("service_tier") or "default",
        "store": False,
        "temperature": body["temperature"] if body.get("temperature") is not None else 1.0,
        "text": {"format": {"type": "text"}, "verbosity": verbosity},
        "tool_choice": body.get("tool_choice") or "auto",
        "tools": [],
        "top_logprobs": top,
        "top_p": body["top_p"] if body.get("top_p") is not None else 1.0,
        "truncation": body.get("truncation") or "disabled",
        "user": body.get("user"),
    }
    return ResponsesRequest(gen, echo, logprobs)


# -- the answer ---------------------------------------------------------------------------------------


def response_id(request_id: str) -> str:
    return "resp_" + request_id


def _status(finish_reason: str | None) -> tuple[str, dict[str, str] | None]:
    """The Response's status and incomplete_details for a chat finish_reason."""
    if finish_reason == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    if finish_reason == "content_filter":
        return "incomplete", {"reason": "content_filter"}
    return "completed", None


def _usage(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }


def _bytes(entry: dict[str, Any]) -> list[int]:
    b = entry.get("bytes")
    return b if isinstance(b, list) else list(str(entry.get("token", "")).encode())


def output_logprobs(chat_logprobs: Any) -> list[dict[str, Any]]:
    """A chat choice's logprobs (`content` entries) as the Responses output_text `logprobs` list."""
    content = chat_logprobs.get("content") if isinstance(chat_logprobs, dict) else None
    out = []
    for e in content if isinstance(content, list) else ():
        if not isinstance(e, dict) or not isinstance(e.get("token"), str):
            continue
        tops = e.get("top_logprobs") if isinstance(e.get("top_logprobs"), list) else []
        out.append(
            {
                "token": e["token"],
                "bytes": _bytes(e),
                "logprob": float(e.get("logprob") or 0.0),
                "top_logprobs": [
                    {"token": t["token"], "bytes": _bytes(t), "logprob": float(t.get("logprob") or 0.0)}
                    for t in tops
                    if isinstance(t, dict) and isinstance(t.get("token"), str)
                ],
            }
        )
    return out


def reasoning_text(message: dict[str, Any]) -> str:
    """The chain of thought a chat message or delta carries (empty when there is none or it was stripped)."""
    for name in REASONING_FIELDS:
        v = message.get(name)
        if isinstance(v, str) and v:
            return v
    return ""


def _text_part(text: str, logprobs: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs}


def _message_item(item_id: str, status: str, content: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": item_id, "type": "message", "status": status, "role": "assistant", "content": content}


def _reasoning_item(item_id: str, summary: str | None) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "reasoning",
        "summary": [] if summary is None else [{"type": "summary_text", "text": summary}],
    }


def response_object(
    request_id: str,
    req: ResponsesRequest,
    created_at: float,
    status: str,
    output: list[dict[str, Any]],
    *,
    usage: dict[str, Any] | None = None,
    incomplete: dict[str, str] | None = None,
    error: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A whole Response object."""
    done = status in ("completed", "incomplete", "failed")
    return {
        "id": response_id(request_id),
        "object": "response",
        "created_at": created_at,
        "status": status,
        "completed_at": time.time() if status == "completed" else None,
        "error": error,
        "incomplete_details": incomplete,
        **req.echo,
        "output": output,
        "usage": usage if done else None,
    }


def to_response(
    resp: dict[str, Any], req: ResponsesRequest, request_id: str, prompt: int, completion: int
) -> dict[str, Any]:
    """An OpenAI chat completion (already through the policy's transforms) -> a Response object."""
    choice = (resp.get("choices") or [{}])[0]
    message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    status, incomplete = _status(choice.get("finish_reason"))
    output = []
    thought = reasoning_text(message)
    if thought:
        output.append(_reasoning_item(f"rs_{request_id}_{len(output)}", thought))
    text = message.get("content") if isinstance(message.get("content"), str) else ""
    part = _text_part(text, output_logprobs(choice.get("logprobs")))
    output.append(_message_item(f"msg_{request_id}_{len(output)}", status, [part]))
    created = resp.get("created")
    created_at = float(created) if isinstance(created, (int, float)) and created > 0 else time.time()
    return response_object(
        request_id, req, created_at, status, output, usage=_usage(prompt, completion), incomplete=incomplete
    )


class ResponseStream:
    """Turns OpenAI chat chunks into Responses SSE events, one call per chunk; `finish` or `error` ends it."""

    def __init__(self, req: ResponsesRequest, request_id: str) -> None:
        self.req = req
        self.request_id = request_id
        self.created_at = time.time()
        self.seq = 0
        self.output: list[dict[str, Any]] = []  # the items done, in output order
        self.opened = 0  # output items announced so far (the next one's output_index)
        self._thought: tuple[str, int, list[str]] | None = None  # the open reasoning item: id, index, text
        self._message: tuple[str, int, list[str]] | None = None  # the open message: id, index, text
        self._late_thought: list[str] = []  # reasoning that arrived while the message was open
        self._logprobs: list[dict[str, Any]] = []

    def _event(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, **fields, "sequence_number": self.seq}
        self.seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

    def _response(self, status: str, **kw: Any) -> dict[str, Any]:
        return response_object(self.request_id, self.req, self.created_at, status, list(self.output), **kw)

    def start(self) -> bytes:
        return self._event("response.created", response=self._response("in_progress")) + self._event(
            "response.in_progress", response=self._response("in_progress")
        )

    def chunk(self, chunk: dict[str, Any]) -> bytes:
        """The events for one chat chunk (its first choice: the Responses API has one answer)."""
        out: list[bytes] = []
        for c in chunk.get("choices") or ():
            if not isinstance(c, dict) or c.get("index", 0) != 0:
                continue
            delta = c.get("delta") if isinstance(c.get("delta"), dict) else {}
            thought = reasoning_text(delta)
            if thought:
                out.append(self._reason(thought))
            logprobs = output_logprobs(c.get("logprobs")) if self.req.logprobs else []
            text = delta.get("content")
            if isinstance(text, str) and text:
                out.append(self._text(text, logprobs))
            else:
                self._logprobs += logprobs  # logprobs on a chunk without text: reported with the whole text
        return b"".join(out)

    # -- items ------------------------------------------------------------------------------------

    def _open_thought(self) -> bytes:
        index = self.opened
        self.opened += 1
        item_id = f"rs_{self.request_id}_{index}"
        self._thought = (item_id, index, [])
        return self._event(
            "response.output_item.added", output_index=index, item=_reasoning_item(item_id, None)
        ) + self._event(
            "response.reasoning_summary_part.added",
            item_id=item_id,
            output_index=index,
            summary_index=0,
            part={"type": "summary_text", "text": ""},
        )

    def _reason(self, text: str) -> bytes:
        if self._message is not None:
            self._late_thought.append(text)
            return b""
        out = self._open_thought() if self._thought is None else b""
        assert self._thought is not None
        item_id, index, parts = self._thought
        parts.append(text)
        return out + self._event(
            "response.reasoning_summary_text.delta", item_id=item_id, output_index=index, summary_index=0, delta=text
        )

    def _close_thought(self) -> bytes:
        if self._thought is None:
            return b""
        item_id, index, parts = self._thought
        self._thought = None
        text = "".join(parts)
        part = {"type": "summary_text", "text": text}
        item = _reasoning_item(item_id, text)
        self.output.append(item)
        common = {"item_id": item_id, "output_index": index, "summary_index": 0}
        return (
            self._event("response.reasoning_summary_text.done", **common, text=text)
            + self._event("response.reasoning_summary_part.done", **common, part=part)
            + self._event("response.output_item.done", output_index=index, item=item)
        )

    def _open_message(self) -> bytes:
        out = self._close_thought()
        index = self.opened
        self.opened += 1
        item_id = f"msg_{self.request_id}_{index}"
        self._message = (item_id, index, [])
        return (
            out
            + self._event(
                "response.output_item.added", output_index=index, item=_message_item(item_id, "in_progress", [])
            )
            + self._event(
                "response.content_part.added",
                item_id=item_id,
                output_index=index,
                content_index=0,
                part=_text_part("", []),
            )
        )

    def _text(self, text: str, logprobs: list[dict[str, Any]]) -> bytes:
        out = self._open_message() if self._message is None else b""
        assert self._message is not None
        item_id, index, parts = self._message
        parts.append(text)
        self._logprobs += logprobs
        return out + self._event(
            "response.output_text.delta",
            item_id=item_id,
            output_index=index,
            content_index=0,
            delta=text,
            logprobs=logprobs,
        )

    def _close_message(self, status: str) -> bytes:
        out = self._open_message() if self._message is None else b""  # an empty answer is an empty message
        assert self._message is not None
        item_id, index, parts = self._message
        self._message = None
        text = "".join(parts)
        part = _text_part(text, self._logprobs)
        item = _message_item(item_id, status, [part])
        self.output.append(item)
        common = {"item_id": item_id, "output_index": index, "content_index": 0}
        return (
            out
            + self._event("response.output_text.done", **common, text=text, logprobs=self._logprobs)
            + self._event("response.content_part.done", **common, part=part)
            + self._event("response.output_item.done", output_index=index, item=item)
        )

    # -- the end ----------------------------------------------------------------------------------

    def finish(self, finish_reason: str | None, prompt: int, completion: int) -> bytes:
        """The closing events: the open items done, then response.completed (or response.incomplete)."""
        status, incomplete = _status(finish_reason)
        out = self._close_message(status)
        if self._late_thought:
            late, self._late_thought = "".join(self._late_thought), []
            out += self._reason(late) + self._close_thought()
        terminal = "response.completed" if status == "completed" else "response.incomplete"
        response = self._response(status, usage=_usage(prompt, completion), incomplete=incomplete)
        return out + self._event(terminal, response=response)

    def error(self, code: str | None, message: str) -> bytes:
        """An error event and response.failed: how a Responses stream ends when the answer cannot be finished."""
        failed = self._response("failed", error={"code": "server_error", "message": message})
        return self._event("error", code=code, message=message, param=None) + self._event(
            "response.failed", response=failed
        )
