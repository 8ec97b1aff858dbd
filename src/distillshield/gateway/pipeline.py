"""The request path, in order: auth -> parse -> policy -> limits -> upstream -> response -> audit.

Every API speaks OpenAI chat to the upstream: /v1/messages and /v1/responses are translated at the edge
(protocols/anthropic.py, protocols/responses.py), so every stage in between sees one request shape.
/v1/embeddings takes the same stages (its inputs are the prompt; it generates nothing) and the upstream's
`embed` (protocols/embeddings.py).

`Gateway.handle` takes one API call through every stage. Every exit path (success, 4xx, upstream
failure, client disconnect mid-stream) settles and releases the rate-limit reservation and hands one
row to the audit writer; nothing on this path waits for the database.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import orjson
from starlette.responses import Response
from starlette.types import Receive
from starlette.types import Scope as AsgiScope

from distillshield.config import LimitSet, Settings
from distillshield.gateway.auth import Authenticator
from distillshield.gateway.errors import ApiError, UpstreamError, bad_request
from distillshield.gateway.limits import (
    LimitExceeded,
    RateLimiter,
    RateStatus,
    Reservation,
    Scope,
    anthropic_headers,
    estimate_tokens,
    openai_headers,
)
from distillshield.gateway.logits import LogitGuard, asks_logprobs
from distillshield.gateway.metrics import GatewayMetrics
from distillshield.gateway.policy import Decision, PolicyRefusal, PolicyStage
from distillshield.gateway.protocols import anthropic, embeddings, openai, responses
from distillshield.gateway.streaming import Ending, LastChunk, SSEResponse
from distillshield.gateway.transforms import ResponseTransform
from distillshield.gateway.upstream.base import ChunkBatch, GenRequest, LogitsHook, Upstream
from distillshield.store.database import KeyContext
from distillshield.store.writer import AuditWriter

log = logging.getLogger("distillshield.gateway")
ENDPOINT_OF = {
    "chat": "/v1/chat/completions",
    "completions": "/v1/completions",
    "messages": "/v1/messages",
    "responses": "/v1/responses",
    "embeddings": "/v1/embeddings",
}
CLIENT_CLOSED = 499  # nginx's convention, used in the audit log for streams the client abandoned
STORE_DOWN = "the audit log cannot record requests right now (database and spool unavailable); retry shortly"
DURABLE_WAIT_S = 5.0  # how long an answer waits for its audit row to be committed or spooled
INTERNAL_ERROR = "internal error in the gateway; it has been logged"
SHUTDOWN_CUT = "the gateway shut down before the stream finished (graceful timeout); retry the request"


def openai_error_event(message: str, kind: str, code: str | None) -> bytes:
    """The error event an OpenAI-style stream ends with (upstream failure, shutdown cut, row not durable)."""
    return b"data: " + orjson.dumps({"error": {"message": message, "type": kind, "code": code}}) + b"\n\n"


_JSON = "application/json"
_SSE_DATA = b"data: "
_SSE_END = b"\n\n"


def forwarded_client(header: str, hops: int) -> str | None:
    """The client address in an X-Forwarded-For header that `hops` trusted proxies appended to: the entry
    `hops` from the right. The leftmost entries are whatever the client chose to send; None when the entry
    is missing or is not an IP address."""
    parts = [p.strip() for p in header.split(",")]
    if len(parts) < hops:
        return None
    candidate = parts[-hops]
    try:
        ipaddress.ip_address(candidate)
    except ValueError:
        return None
    return candidate


MAX_NESTING = 64  # levels of arrays/objects a request body may nest (real API bodies use a handful)


def nested_deeper(value: Any, limit: int) -> bool:
    """True when `value` nests arrays/objects more than `limit` levels deep (iterative: no recursion)."""
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, dict):
            children = v.values()
        elif isinstance(v, list):
            children = v
        else:
            continue
        if depth > limit:
            return True
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return False


class _RequestIds:
    """Random 128-bit request ids (32 hex digits, like uuid4().hex) from a pooled os.urandom read.

    uuid.uuid4() makes a getrandom() system call and builds a UUID object per request; one read of
    4 KiB serves 256 ids, with the same randomness. list.pop() is atomic, so gateways running on
    several threads' event loops (tests) never get the same id.
    """

    __slots__ = ("_ids",)

    def __init__(self) -> None:
        self._ids: list[str] = []

    def __call__(self) -> str:
        try:
            return self._ids.pop()
        except IndexError:
            pool = os.urandom(4096).hex()
            self._ids = [pool[i : i + 32] for i in range(0, len(pool), 32)]
            return self._ids.pop()


new_request_id = _RequestIds()


def request_headers(scope: AsgiScope) -> dict[str, str]:
    """The request's headers as a dict (names are lower-case in ASGI); the first of repeated headers wins,
    as with Starlette's Headers.get. One pass instead of a scan of the header list per lookup."""
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in reversed(scope["headers"])}


@dataclass(frozen=True)
class BatchOrigin:
    """Who a request of a batch runs as (gateway/batches.py): the key that created the batch, whose account's
    limits, policy and detection apply as to a live request, and the batch id its audit row carries."""

    batch_id: str
    key_id: str


@dataclass
class Call:
    """One API call on its way through the stages."""

    api: str  # chat | completions | messages | responses | embeddings
    request_id: str
    started: float  # wall clock, for the audit log
    t0: float  # perf counter, for latency
    row: dict[str, Any]
    gen: GenRequest | None = None
    reservation: Reservation | None = None
    decision: Decision | None = None  # the policy's, when a rule was involved (None: plain allow)
    transform: ResponseTransform | None = None  # what the response goes through (degrade)
    responses_request: responses.ResponsesRequest | None = None  # a /v1/responses call: what its answer restates
    ack: asyncio.Future[None] | None = None  # done once the audit row is durable (see AuditWriter.submit)
    finished: bool = False  # the audit row is queued (a stream's is, before its last event goes out)

    @property
    def anthropic(self) -> bool:
        return self.api == "messages"


class Gateway:
    """The stages of the hot path, wired together."""

    def __init__(
        self,
        settings: Settings,
        upstream: Upstream,
        limiter: RateLimiter,
        auth: Authenticator,
        audit: AuditWriter,
        metrics: GatewayMetrics,
    ) -> None:
        self.settings = settings
        self.upstream = upstream
        self.limiter = limiter
        self.auth = auth
        self.audit = audit
        self.metrics = metrics
        self.logit_guard = LogitGuard(settings.logits)  # what a request may learn of the output layer
        self._scopes: dict[int, tuple[KeyContext, tuple[Scope, ...]]] = {}
        # Extension point for generation-time behaviour per account (the watermark uses it): returns
        # a logits hook for this caller and request, or None. Only in-process upstreams honour it.
        self.logits_hook_factory: Callable[[KeyContext, GenRequest], LogitsHook | None] | None = None
        # Called with every finished audit row (see gateway/extensions.py); must be cheap.
        self.observers: list[Callable[[dict[str, Any]], None]] = []
        # The policy stage (gateway/policy/): None runs no countermeasures.
        self.policy: PolicyStage | None = None
        # Streams answered and not yet closed (audited), for a shutdown to wait on (streams_closed).
        self._open_streams = 0
        self._streams_closed = asyncio.Event()
        self._streams_closed.set()

    # -- entry point ----------------------------------------------------------------------------------

    async def handle(
        self, scope: AsgiScope, receive: Receive, api: str, origin: BatchOrigin | None = None
    ) -> Response | SSEResponse:
        """Take one API call (the ASGI scope and receive channel of a POST) through every stage; `origin`: a
        request of a batch, run as the batch's key instead of one the request presents."""
        headers = request_headers(scope)
        call = self._start(scope, headers, api)
        if origin is not None:
            call.row["batch_id"] = origin.batch_id
        handed_to_stream = False
        try:
            if not self.audit.accepting:  # no row could be made durable now: serve nothing unrecorded
                raise ApiError(503, STORE_DOWN, code="store_unavailable", headers={"retry-after": "5"})
            if origin is None:
                ctx = await self.auth.authenticate(headers)
            else:
                ctx = await self.auth.authenticate_key_id(origin.key_id)
            row = call.row
            row["account_id"], row["org_id"], row["key_id"] = ctx.account.id, ctx.org.id, ctx.key.id
            row["account_created_at"] = ctx.account.created_at
            body = self._parse_body(await self._read_body(receive, headers, call))
            call.gen = gen = self._parse_api(call, body)
            row["model"], row["stream"] = gen.model, gen.stream
            self._check_model(gen.model)
            scopes = self._scopes_for(ctx)
            if self.policy is not None:  # may refuse (403), cap the request and throttle its scopes
                scopes, call.transform, call.decision = self.policy.apply(ctx, gen, scopes, row)
            if api not in ("messages", "embeddings"):  # what the policy left: may refuse logit_bias with logprobs
                self.logit_guard.apply(gen)
            if self.logit_guard.noise > 0 and asks_logprobs(gen):
                self._add_logprob_noise(call, gen)
            n_messages = len(gen.body.get("messages") or ()) or 1
            est = estimate_tokens(gen.prompt_text, gen.max_tokens, gen.n, n_messages)
            call.reservation = await self.limiter.reserve(scopes, est)
            row.setdefault("decision", "allow")
            if self.logits_hook_factory is not None and api != "embeddings":  # vectors are not sampled
                gen.logits_hook = self.logits_hook_factory(ctx, gen)
            self.metrics.in_flight.inc()
            if api == "embeddings":
                response = await self._embed(call)
                return response if call.ack is None else await self._when_durable(call, response)
            if gen.stream:
                response = await self._stream(call)
                handed_to_stream = True
                return response
            response = await self._complete(call)
            return response if call.ack is None else await self._when_durable(call, response)
        except LimitExceeded as exc:
            self.metrics.rate_limited.labels(exc.scope.kind, exc.limit).inc()
            headers = {**exc.headers(), **self._rate_headers(call, exc.rate)}
            return self._error(call, ApiError(429, exc.message, code=f"rate_limit_{exc.limit}", headers=headers))
        except UpstreamError as exc:
            return self._error(call, exc.to_api_error(), detail=exc.detail)
        except ApiError as exc:
            return self._error(call, exc)
        except Exception as exc:  # noqa: BLE001 - a bug: logged, audited as 500, and the connection stays usable
            log.exception("unhandled error on %s (request %s)", ENDPOINT_OF[api], call.request_id)
            err = ApiError(500, INTERNAL_ERROR, code="internal_error")
            return self._error(call, err, detail=f"internal error: {type(exc).__name__}: {exc}"[:2000])
        finally:
            if not handed_to_stream and call.reservation is not None:
                await self._release(call)

    # -- stages ---------------------------------------------------------------------------------------

    def _start(self, scope: AsgiScope, headers: Mapping[str, str], api: str) -> Call:
        client = scope.get("client")
        ip = client[0] if client else None
        if self.settings.server.trust_forwarded_for and "x-forwarded-for" in headers:
            ip = forwarded_client(headers["x-forwarded-for"], self.settings.server.forwarded_for_hops) or ip
        rid = new_request_id()
        row: dict[str, Any] = {
            "ts": time.time(),
            "request_id": rid,
            "endpoint": ENDPOINT_OF[api],
            "ip": ip,
            "user_agent": headers.get("user-agent"),
            "stream": False,
        }
        return Call(api, rid, row["ts"], time.perf_counter(), row)

    async def _read_body(self, receive: Receive, headers: Mapping[str, str], call: Call) -> bytes:
        limit = self.settings.server.max_body_bytes
        declared = headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise ApiError(413, f"request body is {declared} bytes; the limit is {limit} bytes", code="body_too_large")
        parts, size = [], 0
        while True:  # the ASGI receive loop that starlette's Request.stream() runs, without the wrapper
            message = await receive()
            if message["type"] == "http.request":
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise ApiError(413, f"request body exceeds the limit of {limit} bytes", code="body_too_large")
                parts.append(chunk)
                if not message.get("more_body", False):
                    break
            elif message["type"] == "http.disconnect":
                raise ApiError(400, "the client closed the connection before sending the whole body")
        raw = parts[0] if len(parts) == 1 else b"".join(parts)
        max_chars = self.settings.audit.max_body_chars
        call.row["request"] = raw[:max_chars].decode("utf-8", "replace")
        return raw

    @staticmethod
    def _parse_body(raw: bytes) -> dict[str, Any]:
        if not raw:
            raise bad_request("request body is empty; send a JSON object", code="invalid_json")
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise bad_request(
                f"request body is not valid UTF-8 (bad byte at offset {exc.start})", code="invalid_encoding"
            ) from None
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise bad_request(f"request body is not valid JSON: {exc}", code="invalid_json") from None
        if not isinstance(body, dict):
            raise bad_request(f"request body must be a JSON object, got {openai._type_name(body)}", code="invalid_json")
        if nested_deeper(body, MAX_NESTING):
            # orjson writes at most 254 levels: a deeper body could be read here but not forwarded or audited.
            raise bad_request(f"request body is nested more than {MAX_NESTING} levels deep", code="invalid_json")
        return body

    def _parse_api(self, call: Call, body: dict[str, Any]) -> GenRequest:
        s = self.settings.server
        if call.api == "chat":
            return openai.parse_chat(body, s.default_max_tokens, s.max_max_tokens)
        if call.api == "completions":
            return openai.parse_completion(body, s.default_max_tokens, s.max_max_tokens)
        if call.api == "responses":
            call.responses_request = responses.parse_responses(body, s.default_max_tokens, s.max_max_tokens)
            return call.responses_request.gen
        if call.api == "embeddings":
            return embeddings.parse_embeddings(body)
        return anthropic.parse_messages(body, s.max_max_tokens)

    def _add_logprob_noise(self, call: Call, gen: GenRequest) -> None:
        """Keyed noise on the logprobs this request gets back (settings `logits.logprob_noise`)."""
        tf = call.transform
        if tf is None:
            tf = call.transform = ResponseTransform(gen.api, reasoning="keep", drop_logprobs=False)
        if not tf.drop_logprobs:
            tf.logprob_noise, tf.noise_seed = self.logit_guard.noise, self.logit_guard.noise_seed(gen)

    def _check_model(self, model: str) -> None:
        served = self.upstream.models()
        if served and model not in served:
            raise ApiError(
                404,
                f"model '{model}' is not served here; GET /v1/models lists the models ({', '.join(served)})",
                code="model_not_found",
                param="model",
            )

    def _scopes_for(self, ctx: KeyContext) -> tuple[Scope, ...]:
        cached = self._scopes.get(id(ctx))
        if cached is not None and cached[0] is ctx:
            return cached[1]
        lim = self.settings.limits
        tier = lim.tiers.get(ctx.account.tier)

        def merged(kind: str, base: LimitSet, own: dict[str, Any] | None) -> LimitSet:
            tier_set = getattr(tier, kind) if tier else None
            out = base.merged(tier_set.model_dump(exclude_unset=True) if tier_set else None)
            return out.merged(own)

        scopes = (
            Scope("key", ctx.key.id, merged("key", lim.key, ctx.key.limits)),
            Scope("account", ctx.account.id, merged("account", lim.account, ctx.account.limits)),
            Scope("org", ctx.org.id, merged("org", lim.org, ctx.org.limits)),
        )
        if len(self._scopes) > 100_000:
            self._scopes.clear()
        self._scopes[id(ctx)] = (ctx, scopes)
        return scopes

    async def _complete(self, call: Call) -> Response:
        gen = call.gen
        assert gen is not None and call.reservation is not None
        resp = await self.upstream.complete(gen)
        if call.transform is not None:
            resp = call.transform.whole(resp)
        text, finish = openai.response_text(gen.api, resp)
        usage = resp.get("usage") or {}
        prompt, completion = _usage(usage, gen, text)
        await self._settle_and_release(call, prompt + completion)
        if call.anthropic:
            payload = anthropic.to_message(resp, gen.model, call.request_id)
            payload["usage"] = {"input_tokens": prompt, "output_tokens": completion}
        elif call.responses_request is not None:
            payload = responses.to_response(resp, call.responses_request, call.request_id, prompt, completion)
        else:
            payload = resp
        call.row.update(response_text=text, finish_reason=finish, prompt_tokens=prompt, completion_tokens=completion)
        self._finish(call, 200)
        return Response(orjson.dumps(payload), 200, self._headers(call), media_type=_JSON)

    async def _embed(self, call: Call) -> Response:
        """An embeddings request: the upstream's vectors, settled to its count of input tokens (or the
        reservation's estimate when it gave none). The policy's response transforms have nothing to act on."""
        gen = call.gen
        assert gen is not None and call.reservation is not None
        resp = await self.upstream.embed(gen)
        prompt = embeddings.upstream_tokens(resp)
        if prompt is None:
            prompt = estimate_tokens(gen.prompt_text, 0)
        payload = embeddings.answer(resp, gen, prompt)
        await self._settle_and_release(call, prompt)
        # No text is served: the row's response text is empty, its usage the input tokens.
        call.row.update(response_text="", finish_reason=None, prompt_tokens=prompt, completion_tokens=0)
        self._finish(call, 200)
        return Response(orjson.dumps(payload), 200, self._headers(call), media_type=_JSON)

    async def _stream(self, call: Call) -> SSEResponse:
        gen = call.gen
        assert gen is not None
        batches: AsyncGenerator[ChunkBatch, None] = self.upstream.stream_batches(gen)
        # Wait for the first chunks before answering 200, so an upstream that is down or slow to start
        # gets a proper 502/504 JSON error instead of a broken stream.
        try:
            first: ChunkBatch | None = await anext(batches)
        except StopAsyncIteration:
            first = None
        state = _StreamState()
        include_usage = bool((gen.body.get("stream_options") or {}).get("include_usage"))
        cut: bytes | Callable[[], bytes]
        if call.anthropic:
            body = self._anthropic_events(call, batches, first, state)
            cut = anthropic.MessageStream.error("api_error", SHUTDOWN_CUT)
        elif call.responses_request is not None:
            rs = responses.ResponseStream(call.responses_request, call.request_id)
            body = self._responses_events(call, rs, batches, first, state)
            cut = partial(rs.error, "server_shutdown", SHUTDOWN_CUT)  # made when sent: its sequence number
        else:
            body = self._openai_events(call, batches, first, state, include_usage)
            cut = openai_error_event(SHUTDOWN_CUT, "server_error", "server_shutdown")

        async def on_close(ending: Ending) -> None:
            try:
                await batches.aclose()
            finally:
                try:
                    await self._close_stream(call, state, ending)
                finally:
                    self._open_streams -= 1
                    if not self._open_streams:
                        self._streams_closed.set()

        # When the first read held the whole stream, the body never waits on the upstream: no disconnect
        # watcher is needed (see SSEResponse).
        complete = first is None or first.last
        headers = self._headers(call)
        self._open_streams += 1  # from here the response runs, and on_close counts it down on every path
        self._streams_closed.clear()
        return SSEResponse(body, headers, on_close, watch_disconnect=not complete, cut_event=cut)

    def audit_invalid_http(self, ip: str | None, first_bytes: bytes) -> None:
        """Audit a request the HTTP parser rejected before it reached the API (gateway/wire.py): no account,
        no endpoint, the start of what was sent."""
        row: dict[str, Any] = {
            "ts": time.time(),
            "request_id": new_request_id(),
            "endpoint": "-",
            "ip": ip,
            "user_agent": None,
            "stream": False,
            "status": 400,
            "latency_ms": 0.0,
            "request": first_bytes.decode("utf-8", "replace").replace("\x00", "\\0"),  # PostgreSQL text: no NUL
            "decision": "refuse:invalid_http",
            "error": "not valid HTTP/1.1; answered by the HTTP layer",
        }
        self.metrics.observe("-", 400, 0.0, 0, 0)
        self.audit.submit(row)

    async def streams_closed(self) -> None:
        """Return once every open stream has closed (and queued its audit row): a shutdown that cancels
        streams waits for their rows (under its own time limit) before it stops the audit writer."""
        await self._streams_closed.wait()

    async def _openai_events(
        self,
        call: Call,
        batches: AsyncGenerator[ChunkBatch, None],
        first: ChunkBatch | None,
        state: _StreamState,
        include_usage: bool,
    ) -> AsyncGenerator[bytes, None]:
        """The client's SSE body: one write per batch of upstream chunks.

        A chunk that nothing changes (no transform; no usage to drop) is passed on as the upstream's own
        JSON bytes; it is still parsed (by the upstream) for the text, finish reason and usage recorded
        in the audit row and settled with the limiter.
        """
        api = call.gen.api if call.gen else "chat"
        chat = api == "chat"
        tf = call.transform
        chunk_text, sse = openai.chunk_text, openai.sse
        parts = state.parts
        try:
            batch = first
            while batch is not None:
                out: list[bytes] = []
                for raw, chunk in batch.chunks:
                    usage = chunk.get("usage")
                    if usage:
                        state.usage = usage
                    if tf is not None:
                        chunk, raw = tf.chunk(chunk), None  # None: all it carried is withheld
                        if chunk is None:
                            continue
                    choices = chunk.get("choices")
                    if choices or include_usage:
                        # openai.chunk_text and _StreamState.add, inlined: this runs for every chunk of
                        # every stream, and the calls and the (text, finish) tuple were a measurable part
                        # of relaying one (same text, same finish reason: the last one a choice carries).
                        for c in choices or ():
                            t = (c.get("delta") or {}).get("content") if chat else c.get("text")
                            if t:
                                parts.append(t)
                            finish = c.get("finish_reason")
                            if finish:
                                state.finish = finish
                        if not include_usage and "usage" in chunk:
                            chunk, raw = {k: v for k, v in chunk.items() if k != "usage"}, None
                        if raw is None:
                            out.append(sse(chunk))
                        else:  # the upstream's own bytes, framed; one join per batch below
                            out += (_SSE_DATA, raw, _SSE_END)
                if batch.last:
                    break
                if out:
                    yield b"".join(out)
                    out = []
                batch = await anext(batches, None)
            for extra in tf.tail() if tf is not None else ():
                state.add(chunk_text(api, extra)[0], None)
                out.append(sse(extra))
            state.complete = True
            # The row goes to the log before the last event: a client that saw the stream end has its row.
            if await self._end_stream(call, state):
                out.append(openai.DONE)
            else:
                out.append(openai_error_event(STORE_DOWN, "server_error", "store_unavailable"))
            yield LastChunk(b"".join(out))
        except UpstreamError as exc:
            state.error = exc
            yield openai_error_event(exc.message, "upstream_error", exc.to_api_error().code)

    async def _anthropic_events(
        self,
        call: Call,
        batches: AsyncGenerator[ChunkBatch, None],
        first: ChunkBatch | None,
        state: _StreamState,
    ) -> AsyncGenerator[bytes, None]:
        gen = call.gen
        assert gen is not None and call.reservation is not None
        ms = anthropic.MessageStream(gen.model, call.request_id, call.reservation.tokens - gen.max_tokens)
        tf = call.transform
        chunk_text = openai.chunk_text
        out: list[bytes] = [ms.start()]
        try:
            batch = first
            while batch is not None:
                for _raw, chunk in batch.chunks:
                    usage = chunk.get("usage")
                    if usage:
                        state.usage = usage
                    if tf is not None:
                        chunk = tf.chunk(chunk)
                        if chunk is None:
                            continue
                    text, finish = chunk_text("chat", chunk)
                    state.add(text, finish)
                    if text:
                        out.append(ms.delta(text))
                if batch.last:
                    break
                if out:
                    yield b"".join(out)
                    out = []
                batch = await anext(batches, None)
            for extra in tf.tail() if tf is not None else ():
                text = chunk_text("chat", extra)[0]
                state.add(text, None)
                out.append(ms.delta(text))
            prompt, completion = _usage(state.usage or {}, gen, state.text())
            state.complete = True
            if await self._end_stream(call, state):  # the row is durable before the closing events
                out.append(ms.finish(state.finish, completion, prompt))
            else:
                out.append(ms.error("api_error", STORE_DOWN))
            yield LastChunk(b"".join(out))
        except UpstreamError as exc:
            state.error = exc
            out.append(ms.error("api_error", exc.message))
            yield b"".join(out)

    async def _responses_events(
        self,
        call: Call,
        rs: responses.ResponseStream,
        batches: AsyncGenerator[ChunkBatch, None],
        first: ChunkBatch | None,
        state: _StreamState,
    ) -> AsyncGenerator[bytes, None]:
        """A /v1/responses stream: the upstream's chat chunks (through the policy's transform) as Responses
        events (protocols/responses.py)."""
        gen = call.gen
        assert gen is not None
        tf = call.transform
        chunk_text = openai.chunk_text
        out: list[bytes] = [rs.start()]
        try:
            batch = first
            while batch is not None:
                for _raw, chunk in batch.chunks:
                    usage = chunk.get("usage")
                    if usage:
                        state.usage = usage
                    if tf is not None:
                        chunk = tf.chunk(chunk)
                        if chunk is None:
                            continue
                    state.add(*chunk_text("chat", chunk))
                    out.append(rs.chunk(chunk))
                if batch.last:
                    break
                if out:
                    yield b"".join(out)
                    out = []
                batch = await anext(batches, None)
            for extra in tf.tail() if tf is not None else ():
                state.add(chunk_text("chat", extra)[0], None)
                out.append(rs.chunk(extra))
            prompt, completion = _usage(state.usage or {}, gen, state.text())
            state.complete = True
            if await self._end_stream(call, state):  # the row is durable before the closing events
                out.append(rs.finish(state.finish, prompt, completion))
            else:
                out.append(rs.error("store_unavailable", STORE_DOWN))
            yield LastChunk(b"".join(out))
        except UpstreamError as exc:
            state.error = exc
            out.append(rs.error(exc.to_api_error().code, exc.message))
            yield b"".join(out)

    async def _end_stream(self, call: Call, state: _StreamState) -> bool:
        """A stream that ran to its end: settle, queue its row (200) and wait for it to be durable; False
        when it could not be made durable in time (the stream then ends with an error event)."""
        await self._close_stream(call, state, "finished")
        return await self._durable(call)

    async def _close_stream(self, call: Call, state: _StreamState, ending: Ending) -> None:
        """Settle the stream's tokens and queue its audit row (once: a finished stream did so before its
        last event)."""
        if call.finished:
            return
        gen = call.gen
        assert gen is not None and call.reservation is not None
        text = state.text()
        prompt, completion = _usage(state.usage or {}, gen, text)
        await self._settle_and_release(call, prompt + completion)
        if state.complete:
            status, error = 200, None
        elif state.error is not None:
            status, error = state.error.status, state.error.detail
            log.warning("request %s: %s", call.request_id, error)
        elif ending == "server":
            status, error = 503, SHUTDOWN_CUT
        else:
            status, error = (
                CLIENT_CLOSED,
                "client closed the stream before it finished" if ending == "client" else "stream ended early",
            )
        call.row.update(
            response_text=text,
            finish_reason=state.finish if state.complete else "cancelled",
            prompt_tokens=prompt,
            completion_tokens=completion,
            error=error,
        )
        self._finish(call, status)

    async def _settle_and_release(self, call: Call, tokens_used: int) -> None:
        """The end of a request with its usage: settle and release in one limiter call (one round trip)."""
        res = call.reservation
        assert res is not None
        if res.released:
            await self.limiter.settle(res, tokens_used)
            return
        try:
            await self.limiter.finish(res, tokens_used)
        finally:
            if res.released:
                self.metrics.in_flight.dec()
            else:  # finish() failed before it took the slot back: release on its own, as before
                await self._release(call)

    async def _release(self, call: Call) -> None:
        assert call.reservation is not None
        if not call.reservation.released:
            await self.limiter.release(call.reservation)
            self.metrics.in_flight.dec()

    # -- responses and the audit row --------------------------------------------------------------------

    def _headers(self, call: Call) -> dict[str, str]:
        h = {"x-request-id": call.request_id, "request-id": call.request_id}
        if call.reservation is not None:
            h.update(self._rate_headers(call, call.reservation.rate))
        return h

    @staticmethod
    def _rate_headers(call: Call, rate: RateStatus | None) -> dict[str, str]:
        """The rate-limit headers in the convention of the call's API (anthropic-ratelimit-* or x-ratelimit-*)."""
        return anthropic_headers(rate) if call.anthropic else openai_headers(rate)

    def _error(self, call: Call, err: ApiError, detail: str | None = None) -> Response:
        """Answer `err` and audit it; `detail`, when given, is what the audit row records instead of the
        client's message (an upstream failure's internals, which the client is not told)."""
        call.row["error"] = detail or err.message
        if detail is not None:
            log.warning("request %s: %s", call.request_id, detail)
        # a policy refusal carries its decision; a later refusal (429 under throttle) keeps the policy's
        decision = (err.decision if isinstance(err, PolicyRefusal) else None) or call.decision
        code = str(err.code or err.status)
        call.row["decision"] = decision.audit(refused=code) if decision is not None else f"refuse:{code}"
        self._finish(call, err.status)
        headers = {"x-request-id": call.request_id, "request-id": call.request_id, **err.headers}
        body = err.anthropic_body() if call.anthropic else err.openai_body()
        return Response(body, err.status, headers, media_type=_JSON)

    async def _when_durable(self, call: Call, response: Response) -> Response:
        """Answer only once the row is durable (committed, or spooled while the database is away); if it
        cannot be made durable in time, say so (503) rather than hand over an answer the log may not hold."""
        if await self._durable(call):
            return response
        err = ApiError(503, STORE_DOWN, code="store_unavailable", headers={"retry-after": "5"})
        body = err.anthropic_body() if call.anthropic else err.openai_body()
        return Response(body, 503, {"x-request-id": call.request_id, **err.headers}, media_type=_JSON)

    @staticmethod
    async def _durable(call: Call) -> bool:
        """Wait (at most DURABLE_WAIT_S) for the call's audit row to be durable; True when it is."""
        if call.ack is None:
            return True
        try:
            async with asyncio.timeout(DURABLE_WAIT_S):
                await asyncio.shield(call.ack)
            return True
        except TimeoutError:
            log.error("request %s: its audit row was not durable within %.0f s", call.request_id, DURABLE_WAIT_S)
            return False

    def _finish(self, call: Call, status: int) -> None:
        call.finished = True
        row = call.row
        elapsed = time.perf_counter() - call.t0
        row["status"] = status
        row["latency_ms"] = round(elapsed * 1000.0, 3)
        text = row.get("response_text")
        if text and len(text) > self.settings.audit.max_body_chars:
            row["response_text"] = text[: self.settings.audit.max_body_chars]
        self.metrics.observe(
            row["endpoint"], status, elapsed, row.get("prompt_tokens") or 0, row.get("completion_tokens") or 0
        )
        ack = self.audit.submit(row)
        if status == 200:
            call.ack = ack
        for observe in self.observers:
            try:
                observe(row)
            except Exception:  # noqa: BLE001 - a failing observer must not fail the request
                log.exception("gateway observer %r failed", observe)


class _StreamState:
    __slots__ = ("parts", "finish", "usage", "complete", "error")

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.finish: str | None = None
        self.usage: dict[str, Any] | None = None
        self.complete = False
        self.error: UpstreamError | None = None

    def add(self, text: str, finish: str | None) -> None:
        if text:
            self.parts.append(text)
        if finish:
            self.finish = finish

    def text(self) -> str:
        return "".join(self.parts)


def _usage(usage: dict[str, Any], gen: GenRequest, text: str) -> tuple[int, int]:
    """Real usage when the upstream reported it; otherwise the same estimate the reservation used."""
    prompt = usage.get("prompt_tokens")
    completion = usage.get("completion_tokens")
    if prompt is None:
        prompt = estimate_tokens(gen.prompt_text, 0, 1, len(gen.body.get("messages") or ()) or 1)
    if completion is None:
        completion = -(-len(text.encode("utf-8")) // 3)
    return int(prompt), int(completion)
