"""The Batch APIs: OpenAI's (`/v1/files`, `/v1/batches`) and Anthropic's Message Batches (`/v1/messages/batches`),
and the runner that takes every request of a batch through the live request path.

A batch is the cheapest way to harvest a million answers, so it gets no way around the defences: each line
runs through `Gateway.handle` as the key that created the batch (`BatchOrigin`), with that key's, account's
and org's limits (a 429 for a line is a 429, as live, charged and recorded per request), the policy (a
blocked or suspended owner stops the batch), an audit row carrying the batch id, and online detection, which
sees the rows like any others. A batch the policy would refuse is refused at create.

The runner is in-process: one task per running batch, all sharing one bound on requests in flight
(`batches.concurrency`). A batch a gateway claimed runs there to its end, held by a lease the runner renews;
one cut by a shutdown ends `failed` with what it had finished in its output file, one whose gateway died is
taken over by another runner once its lease runs out and resumed from the lines that were not sent. A batch
still running at the end of its completion window ends `expired` (docs/batches-api.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from distillshield.config import BatchSettings
from distillshield.gateway.errors import ApiError, bad_request
from distillshield.gateway.pipeline import ENDPOINT_OF, BatchOrigin, Gateway, forwarded_client
from distillshield.gateway.policy.actions import block_refusal, challenge_refusal
from distillshield.gateway.policy.engine import ALLOW
from distillshield.gateway.protocols import batches as shapes
from distillshield.store.batches import RUNNING, BatchRecord, BatchStore
from distillshield.store.database import KeyContext

log = logging.getLogger("distillshield.gateway.batches")
_JSON = "application/json"
PROGRESS_EVERY_S = 0.5  # how often a running batch records its counts and looks for a cancel from elsewhere
STOP_WAIT_S = 5.0  # how long a shutdown waits for the runner's store reads before it cuts them
UPLOAD_OVERHEAD = 64 << 10  # multipart framing allowed on top of batches.max_file_bytes
# Refusals after which no further request of the batch can be served: its key or account is out.
_OWNER_OUT = frozenset({401, 403})


def _json(payload: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status, media_type=_JSON)


def _not_found(kind: str, ident: str) -> ApiError:
    return ApiError(404, f"no such {kind}: '{ident[:100]}'", code=f"{kind}_not_found")


# -- the runner ------------------------------------------------------------------------------------------


@dataclass
class _Progress:
    """One running batch: what it produced so far."""

    batch: BatchRecord
    results: dict[int, tuple[bool, bytes]] = field(default_factory=dict)  # input line -> (answered 2xx, file line)
    completed: int = 0
    failed: int = 0
    cancelled: int = 0  # of the failed: lines a cancel kept from running
    expired: int = 0  # of the failed: lines the end of the completion window kept from running
    input_tokens: int = 0
    output_tokens: int = 0
    stop: tuple[str, str, str] | None = None  # (final status, code, message) once the batch must stop
    cancel_seen: bool = False

    def add(self, line: int, ok: bool, data: bytes) -> None:
        self.results[line] = (ok, data)
        if ok:
            self.completed += 1
        else:
            self.failed += 1


_LOST = "lost"  # a stop status: another runner took the batch over; this one writes nothing more


class BatchRunner:
    """Runs queued batches in this process, each request through `Gateway.handle`. It holds each batch it
    runs by a lease (`batches.lease_s`) that it renews while the batch runs, and takes over the batches whose
    lease ran out: their runner died without a shutdown."""

    def __init__(self, gateway: Gateway, store: BatchStore, settings: BatchSettings) -> None:
        self.gateway = gateway
        self.store = store
        self.settings = settings
        self.owner = f"{socket.gethostname()[:32]}-{os.getpid()}-{secrets.token_hex(4)}"  # this runner, in leases
        self._slots = asyncio.Semaphore(settings.concurrency)
        self._wake = asyncio.Event()
        self._stopping = False
        self._loop_task: asyncio.Task[None] | None = None
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._running: dict[str, asyncio.Task[None]] = {}
        self._cancelled: set[str] = set()
        self._lost: set[str] = set()

    async def start(self) -> None:
        self._loop_task = asyncio.create_task(self._poll(), name="distillshield-batches")
        self._heartbeat_task = asyncio.create_task(self._heartbeat(), name="distillshield-batch-leases")

    async def stop(self) -> None:
        """Stop taking batches; running ones stop launching requests, finish those in flight, write their
        files and end `failed` (code gateway_shutdown)."""
        self._stopping = True
        self._wake.set()
        if self._loop_task is not None:
            try:  # let a claim in progress finish, so that no batch is claimed and left unrun
                async with asyncio.timeout(STOP_WAIT_S):
                    await self._loop_task
            except TimeoutError:
                self._loop_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._loop_task
        if self._running:
            await asyncio.gather(*self._running.values(), return_exceptions=True)
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat_task

    @property
    def stopping(self) -> bool:
        """True once the gateway is shutting down: running batches send no further request."""
        return self._stopping

    def wake(self) -> None:
        """A batch was queued here: look now rather than at the next poll."""
        self._wake.set()

    def cancel(self, batch_id: str) -> None:
        self._cancelled.add(batch_id)

    async def _poll(self) -> None:
        lease_s = self.settings.lease_s
        while not self._stopping:
            self._wake.clear()
            try:
                for batch_id in await self.store.waiting():
                    if batch_id in self._running or self._stopping:
                        continue
                    lease = {"claimed_by": self.owner, "lease_until": time.time() + lease_s}
                    if await self.store.transition(batch_id, ("validating",), "in_progress", **lease):
                        self._launch(batch_id)
                for batch_id in await self.store.orphaned():
                    if batch_id in self._running or self._stopping:
                        continue
                    if await self.store.take_over(batch_id, self.owner, lease_s):
                        log.warning("batch %s: its runner stopped renewing its lease; resuming it here", batch_id)
                        self._launch(batch_id)
            except Exception:  # noqa: BLE001 - the store is away: try again at the next poll
                log.exception("batch runner: cannot read the queued batches")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.poll_s):
                    await self._wake.wait()

    def _launch(self, batch_id: str) -> None:
        task = asyncio.create_task(self._run(batch_id), name=f"distillshield-{batch_id}")
        self._running[batch_id] = task
        task.add_done_callback(lambda _t, b=batch_id: self._running.pop(b, None))

    async def _heartbeat(self) -> None:
        """Renew the leases of the batches running here, a few times per lease; a batch whose lease another
        runner took over (this one stalled past it) stops here."""
        while True:
            await asyncio.sleep(self.settings.lease_s / 3)
            ids = list(self._running)
            if not ids:
                continue
            try:
                held = await self.store.renew(ids, self.owner, self.settings.lease_s)
            except Exception:  # noqa: BLE001 - the store is away: renew at the next beat (the lease may run out)
                log.warning("batch runner: cannot renew the leases of %d batches now", len(ids), exc_info=True)
                continue
            for batch_id in ids:
                if batch_id not in held and batch_id in self._running:
                    log.warning("batch %s: another runner took it over; it stops here", batch_id)
                    self._lost.add(batch_id)

    async def _run(self, batch_id: str) -> None:
        batch = await self.store.get_batch(batch_id)
        if batch is None:
            return
        p = _Progress(batch, cancel_seen=batch.status == "cancelling")
        try:
            content = await self.store.file_content(batch.input_file_id, batch.account_id)
            if content is None:
                p.stop = ("failed", "input_file_missing", f"input file {batch.input_file_id} was deleted")
                await self._finish(p)
                return
            lines, problems = shapes.parse_input(content, batch.endpoint)
            for bad in problems:
                p.add(bad.line, False, shapes.error_line(bad.custom_id, bad.code, bad.message, bad.line))
            await self._run_lines(p, await self._resume(p, lines))
            await self._finish(p)
        except Exception as exc:  # noqa: BLE001 - a bug: the batch fails with what it has, and it is logged
            log.exception("batch %s failed", batch_id)
            p.stop = ("failed", "internal_error", f"internal error in the gateway: {type(exc).__name__}")
            with contextlib.suppress(Exception):
                await self._finish(p)
        finally:
            self._cancelled.discard(batch_id)
            self._lost.discard(batch_id)

    async def _resume(self, p: _Progress, lines: list[shapes.InputLine]) -> list[shapes.InputLine]:
        """The lines still to run: those that no runner sent. A batch taken over from a runner that died keeps
        the answers that runner recorded; a line it sent but has no answer for was in flight when it died, and
        is not sent again (it may have reached the model and been charged): its error is batch_interrupted."""
        sent = await self.store.sent_lines(p.batch.id)
        for r in sent:
            if r.state == "sent" or r.data is None:
                msg = "the gateway running the batch stopped while this request was in flight; its answer was lost"
                data = shapes.error_line(r.custom_id, "batch_interrupted", msg, r.line)
                await self.store.record_line(p.batch.id, r.line, "error", data)
                p.add(r.line, False, data)
            else:
                p.add(r.line, r.state == "output", r.data)
                if r.state == "output":
                    self._add_usage(p, (orjson.loads(r.data).get("response") or {}).get("body"))
        if sent:
            log.info("batch %s: %d of its requests had been sent; running the others", p.batch.id, len(sent))
        done = {r.line for r in sent}
        return [line for line in lines if line.line not in done]

    async def _run_lines(self, p: _Progress, lines: list[shapes.InputLine]) -> None:
        api = shapes.RUNNABLE_ENDPOINTS[p.batch.endpoint]
        origin = BatchOrigin(p.batch.id, p.batch.key_id)
        in_flight: set[asyncio.Task[None]] = set()
        next_check = time.monotonic() + PROGRESS_EVERY_S
        for i, line in enumerate(lines):
            await self._slots.acquire()
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + PROGRESS_EVERY_S
                await self._record_progress(p)
            self._check_stop(p)
            if p.stop is not None:
                self._slots.release()
                self._cut(p, lines[i:])
                break
            if line.body.get("stream"):
                msg = f"line {line.line}: stream is not supported in a batch; leave it out"
                p.add(line.line, False, shapes.error_line(line.custom_id, "invalid_request", msg, line.line))
                self._slots.release()
                continue
            # Recorded here rather than in the task, so that the requests still reach the gateway in input order.
            if not await self._claim_line(p, line):
                self._slots.release()
                continue
            task = asyncio.create_task(
                self._run_line(p, api, origin, line), name=f"distillshield-{p.batch.id}-{line.line}"
            )
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        if in_flight:
            await asyncio.gather(*in_flight)

    def _check_stop(self, p: _Progress) -> None:
        if p.stop is not None:
            return
        if p.batch.id in self._lost:
            p.stop = (_LOST, "", "")
        elif p.batch.id in self._cancelled or p.cancel_seen:
            p.stop = ("cancelled", "batch_cancelled", "the batch was cancelled before this request ran")
        elif self._stopping:
            p.stop = ("failed", "gateway_shutdown", "the gateway shut down before this request ran; submit it again")
        elif time.time() >= (p.batch.times or {}).get("expires_at", float("inf")):
            p.stop = ("expired", "batch_expired", "the batch's completion window ended before this request ran")

    async def _record_progress(self, p: _Progress) -> None:
        """Store the counts so far, and notice a cancel made through another gateway. A store that is away
        only delays both: the batch goes on (its rows go to the audit spool like any request's)."""
        try:
            if await self.store.status(p.batch.id) == "cancelling":
                p.cancel_seen = True
            await self.store.update(p.batch.id, request_counts=self._counts(p))
        except Exception:  # noqa: BLE001
            log.warning("batch %s: cannot record its progress now", p.batch.id, exc_info=True)

    def _counts(self, p: _Progress) -> dict[str, int]:
        counts = {"total": p.batch.request_counts["total"], "completed": p.completed, "failed": p.failed}
        if p.cancelled:
            counts["cancelled"] = p.cancelled
        if p.expired:
            counts["expired"] = p.expired
        return counts

    @staticmethod
    def _cut(p: _Progress, rest: list[shapes.InputLine]) -> None:
        assert p.stop is not None
        _, code, message = p.stop
        for line in rest:
            p.add(line.line, False, shapes.error_line(line.custom_id, code, message, line.line))
            p.cancelled += code == "batch_cancelled"
            p.expired += code == "batch_expired"

    async def _run_line(self, p: _Progress, api: str, origin: BatchOrigin, line: shapes.InputLine) -> None:
        try:
            if p.stop is not None:  # the owner was refused while this line waited: it is not sent
                self._cut(p, [line])
                await self._record_line(p, line.line, False)
                return
            status, request_id, body = await self._call(p.batch, api, origin, line.body)
            ok = 200 <= status < 300
            p.add(line.line, ok, shapes.output_line(line.custom_id, request_id, status, body))
            await self._record_line(p, line.line, ok)
            if ok:
                self._add_usage(p, body)
            elif status in _OWNER_OUT and p.stop is None:
                err = body.get("error") if isinstance(body, dict) else None
                code = (err or {}).get("code") or "account_blocked"
                message = (err or {}).get("message") or "the batch's owner can no longer be served"
                p.stop = ("failed", str(code), f"the batch was stopped: {message}")
        finally:
            self._slots.release()

    async def _record_line(self, p: _Progress, line: int, ok: bool) -> None:
        """Record the answer of a line this runner claimed, for a runner that may take the batch over."""
        try:
            await self.store.record_line(p.batch.id, line, "output" if ok else "error", p.results[line][1])
        except Exception:  # noqa: BLE001 - kept here: it reaches the files when the batch ends on this runner
            log.warning("batch %s: cannot record the answer to line %d now", p.batch.id, line, exc_info=True)

    async def _claim_line(self, p: _Progress, line: shapes.InputLine) -> bool:
        """Record that this runner sends the line, before it does: a runner taking the batch over later sends
        only the lines without a record. False when the line is not to be sent."""
        try:
            if await self.store.claim_line(p.batch.id, line.line, line.custom_id, self.owner):
                return True
        except Exception:  # noqa: BLE001 - unrecorded, it could be sent twice: it is not sent
            log.warning("batch %s: cannot record line %d before sending it", p.batch.id, line.line, exc_info=True)
            msg = "the gateway could not record this request before sending it, so it was not sent; submit it again"
            p.add(line.line, False, shapes.error_line(line.custom_id, "store_unavailable", msg, line.line))
            return False
        if p.stop is None:  # another runner sent it: that runner holds the batch now
            log.warning("batch %s: line %d was sent by another runner; it stops here", p.batch.id, line.line)
            p.stop = (_LOST, "", "")
        return False

    async def _call(
        self, batch: BatchRecord, api: str, origin: BatchOrigin, body: dict[str, Any]
    ) -> tuple[int, str, Any]:
        """One request through the gateway's stages, as an ASGI call from the batch's creator (its address and
        user agent): (status, request id, body)."""
        raw = orjson.dumps(body)
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:  # nothing more comes: the request was whole
                await asyncio.Event().wait()
            sent = True
            return {"type": "http.request", "body": raw, "more_body": False}

        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
        if batch.user_agent:
            headers.append((b"user-agent", batch.user_agent.encode("latin-1", "replace")))
        scope = {
            "type": "http",
            "method": "POST",
            "path": ENDPOINT_OF[api],
            "headers": headers,
            "client": (batch.client_ip, 0) if batch.client_ip else None,  # the batch's creator, as its rows record
        }
        response = await self.gateway.handle(scope, receive, api, origin)
        assert isinstance(response, Response), "a batch request never streams"
        request_id = response.headers.get("x-request-id", "")
        try:
            payload = orjson.loads(bytes(response.body))
        except orjson.JSONDecodeError:
            payload = {"error": {"message": "the answer was not JSON", "type": "server_error", "code": None}}
        return response.status_code, request_id, payload

    @staticmethod
    def _add_usage(p: _Progress, body: Any) -> None:
        usage = body.get("usage") if isinstance(body, dict) else None
        if not isinstance(usage, dict):
            return
        p.input_tokens += int(usage.get("prompt_tokens", usage.get("input_tokens", 0)) or 0)
        p.output_tokens += int(usage.get("completion_tokens", usage.get("output_tokens", 0)) or 0)

    async def _finish(self, p: _Progress) -> None:
        """Write the output and error files (the answers in input order) and move the batch to its final
        status."""
        b = p.batch
        final, code, message = p.stop or ("completed", "", "")
        if final == _LOST:
            return  # the runner that took it over writes its files
        if final == "completed" and not await self.store.transition(
            b.id, ("in_progress",), "finalizing", owner=self.owner
        ):
            if await self.store.status(b.id) != "finalizing":  # finalizing: a runner that died was finishing it
                final = "cancelled"  # a cancel came in as the last request finished: honour it
        answers = [p.results[n] for n in sorted(p.results)]
        outputs, errors = [d for ok, d in answers if ok], [d for ok, d in answers if not ok]
        output_id = error_id = None
        if outputs:
            f = await self.store.create_file(b.account_id, "batch_output", f"{b.id}_output.jsonl", _jsonl(outputs))
            output_id = f.id
        if errors:
            f = await self.store.create_file(b.account_id, "batch_output", f"{b.id}_error.jsonl", _jsonl(errors))
            error_id = f.id
        fields: dict[str, Any] = {
            "output_file_id": output_id,
            "error_file_id": error_id,
            "request_counts": self._counts(p),
            "usage": {"input_tokens": p.input_tokens, "output_tokens": p.output_tokens},
            "lease_until": None,
        }
        if final == "failed":
            fields["errors"] = [{"code": code, "message": message, "line": None, "param": None}]
        moved = await self.store.transition(b.id, RUNNING, final, owner=self.owner, **fields)
        if not moved:
            log.warning("batch %s changed state or runner while finishing; its files are dropped", b.id)
            for fid in (output_id, error_id):
                if fid is not None:
                    await self.store.delete_file(fid, b.account_id)
            return
        try:
            await self.store.drop_lines(b.id)
        except Exception:  # noqa: BLE001 - left over, they take room but change nothing
            log.warning("batch %s: cannot drop its line records now", b.id, exc_info=True)


def _jsonl(lines: list[bytes]) -> bytes:
    return b"\n".join(lines) + b"\n"


# -- the HTTP API ----------------------------------------------------------------------------------------


class BatchApi:
    """The /v1/files and /v1/batches routes. Every call authenticates like any API call; an account sees
    only its own files and batches (anything else is 404)."""

    anthropic = False  # which API's batches this serves: OpenAI's, or Anthropic's Message Batches

    def __init__(self, gateway: Gateway, store: BatchStore, runner: BatchRunner, settings: BatchSettings) -> None:
        self.gateway = gateway
        self.store = store
        self.runner = runner
        self.settings = settings

    def routes(self) -> list[Route]:
        h = self._handler
        return [
            Route("/v1/files", h(self.upload), methods=["POST"]),
            Route("/v1/files", h(self.list_files), methods=["GET"]),
            Route("/v1/files/{file_id}", h(self.get_file), methods=["GET"]),
            Route("/v1/files/{file_id}", h(self.delete_file), methods=["DELETE"]),
            Route("/v1/files/{file_id}/content", h(self.file_content), methods=["GET"]),
            Route("/v1/batches", h(self.create), methods=["POST"]),
            Route("/v1/batches", h(self.list_batches), methods=["GET"]),
            Route("/v1/batches/{batch_id}", h(self.get_batch), methods=["GET"]),
            Route("/v1/batches/{batch_id}/cancel", h(self.cancel), methods=["POST"]),
        ]

    def _handler(
        self, fn: Callable[[Request, KeyContext], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                ctx = await self.gateway.auth.authenticate(request.headers)
                return await fn(request, ctx)
            except ApiError as exc:
                return Response(self._error_body(exc), exc.status, exc.headers, media_type=_JSON)

        return endpoint

    @staticmethod
    def _error_body(exc: ApiError) -> bytes:
        return exc.openai_body()

    # -- files ----------------------------------------------------------------------------------------------

    async def upload(self, request: Request, ctx: KeyContext) -> Response:
        limit = self.settings.max_file_bytes
        raw = await _read_body(request, limit + UPLOAD_OVERHEAD)
        up = shapes.parse_upload(request.headers.get("content-type"), raw)
        if len(up.content) > limit:
            raise ApiError(
                413, f"the file is {len(up.content)} bytes; the limit is {limit} bytes", code="file_too_large"
            )
        n = shapes.count_lines(up.content)
        if n == 0:
            raise bad_request("the file holds no requests: one JSON object per line", param="file")
        if n > self.settings.max_requests:
            raise bad_request(
                f"the file holds {n} requests; a batch takes at most {self.settings.max_requests}", param="file"
            )
        f = await self.store.create_file(ctx.account.id, up.purpose, up.filename, up.content)
        return _json(shapes.file_object(f))

    async def list_files(self, request: Request, ctx: KeyContext) -> Response:
        q = request.query_params
        limit = _limit(q.get("limit"), 10_000, 10_000)
        order = q.get("order", "desc")
        if order not in ("asc", "desc"):
            raise bad_request("order must be 'asc' or 'desc'", param="order")
        found = await self.store.list_files(
            ctx.account.id, purpose=q.get("purpose"), limit=limit + 1, after=q.get("after"), descending=order == "desc"
        )
        return _json(shapes.page([shapes.file_object(f) for f in found[:limit]], len(found) > limit))

    async def get_file(self, request: Request, ctx: KeyContext) -> Response:
        fid = request.path_params["file_id"]
        f = await self.store.get_file(fid, ctx.account.id)
        if f is None:
            raise _not_found("file", fid)
        return _json(shapes.file_object(f))

    async def delete_file(self, request: Request, ctx: KeyContext) -> Response:
        fid = request.path_params["file_id"]
        if not await self.store.delete_file(fid, ctx.account.id):
            raise _not_found("file", fid)
        return _json({"id": fid, "object": "file", "deleted": True})

    async def file_content(self, request: Request, ctx: KeyContext) -> Response:
        fid = request.path_params["file_id"]
        content = await self.store.file_content(fid, ctx.account.id)
        if content is None:
            raise _not_found("file", fid)
        return Response(content, 200, media_type="application/octet-stream")

    # -- batches --------------------------------------------------------------------------------------------

    async def create(self, request: Request, ctx: KeyContext) -> Response:
        raw = await _read_body(request, self.gateway.settings.server.max_body_bytes)
        body = self.gateway._parse_body(raw)
        spec = shapes.parse_create(body)
        f = await self.store.get_file(spec.input_file_id, ctx.account.id)
        if f is None:
            raise _not_found("file", spec.input_file_id)
        if f.purpose != "batch":
            raise bad_request(
                f"file {f.id} has purpose '{f.purpose}'; a batch reads a file uploaded with purpose \"batch\"",
                param="input_file_id",
            )
        refusal = self._policy_refusal(ctx, request)
        if refusal is not None:
            raise refusal
        content = await self.store.file_content(f.id, ctx.account.id)
        total = shapes.count_lines(content or b"")
        b = await self.store.create_batch(
            account_id=ctx.account.id, key_id=ctx.key.id, endpoint=spec.endpoint, input_file_id=f.id,
            completion_window=spec.completion_window, user_metadata=spec.metadata, total=total,
            client_ip=self._client_ip(request), user_agent=request.headers.get("user-agent"),
            window_s=self.settings.completion_window_s,
        )  # fmt: skip
        self.runner.wake()
        return _json(shapes.batch_object(b))

    def _client_ip(self, request: Request) -> str | None:
        """The creator's address, as the request path takes it (gateway/pipeline.py Gateway._start)."""
        ip = request.client.host if request.client else None
        s = self.gateway.settings.server
        forwarded = request.headers.get("x-forwarded-for")
        if s.trust_forwarded_for and forwarded:
            ip = forwarded_client(forwarded, s.forwarded_for_hops) or ip
        return ip

    def _policy_refusal(self, ctx: KeyContext, request: Request) -> ApiError | None:
        """What the policy would answer a live request of this account now, when that is a refusal: a batch is
        refused at create as its first request would be (from the creator's address: an imported indicator's)."""
        policy = self.gateway.policy
        if policy is None:
            return None
        risk = policy.board.get(ctx.account.id)
        hit = policy.intel_match(self._client_ip(request), request.headers.get("user-agent"))
        d = policy.engine.decide(ctx, risk, hit)
        if d is ALLOW or d.shadow:
            return None
        if d.effects.block is not None:
            return block_refusal(d, d.effects.block, ctx, risk.cluster_id if risk is not None else None)
        if d.effects.challenge is not None:
            return challenge_refusal(d, d.effects.challenge, ctx, policy.settings.verification_url)
        return None

    async def get_batch(self, request: Request, ctx: KeyContext) -> Response:
        return _json(shapes.batch_object(await self._own(request, ctx)))

    async def list_batches(self, request: Request, ctx: KeyContext) -> Response:
        q = request.query_params
        limit = _limit(q.get("limit"), 20, 100)
        found = await self.store.list_batches(
            ctx.account.id, limit=limit + 1, after=q.get("after"), endpoints=tuple(shapes.BATCH_ENDPOINTS)
        )
        return _json(shapes.page([shapes.batch_object(b) for b in found[:limit]], len(found) > limit))

    async def cancel(self, request: Request, ctx: KeyContext) -> Response:
        return _json(shapes.batch_object(await self._cancel(request, ctx)))

    async def _cancel(self, request: Request, ctx: KeyContext) -> BatchRecord:
        """Cancel the account's batch: a validating one at once, a running one through cancelling (the runner
        stops launching its requests); a cancelling or cancelled one as it is; 409 for a finished one."""
        b = await self._own(request, ctx)
        for _ in range(3):  # the runner may claim it between our read and our change: read again and retry
            if b.status == "validating" and await self.store.transition(b.id, ("validating",), "cancelled"):
                break
            if b.status == "in_progress" and await self.store.transition(b.id, ("in_progress",), "cancelling"):
                self.runner.cancel(b.id)
                break
            if b.status not in ("validating", "in_progress"):
                if b.status in ("cancelling", "cancelled"):
                    return b
                raise ApiError(
                    409, f"batch {b.id} is {b.status}; only a validating or in_progress batch can be cancelled",
                    code="batch_not_cancellable",
                )  # fmt: skip
            b = await self._own(request, ctx)
        return await self._own(request, ctx)

    async def _own(self, request: Request, ctx: KeyContext) -> BatchRecord:
        bid = request.path_params["batch_id"]
        b = await self.store.get_batch(bid, ctx.account.id)
        if b is None or (b.endpoint == shapes.MESSAGES) != self.anthropic:
            raise _not_found("batch", bid)
        return b


class MessageBatchApi(BatchApi):
    """Anthropic's Message Batches (`client.messages.batches`): the requests come in the create body instead of
    a file, run as `/v1/messages` requests by the same runner, and their results are served in Anthropic's
    result lines. Errors are in Anthropic's shape."""

    anthropic = True

    def routes(self) -> list[Route]:
        h = self._handler
        return [
            Route("/v1/messages/batches", h(self.create), methods=["POST"]),
            Route("/v1/messages/batches", h(self.list_batches), methods=["GET"]),
            Route("/v1/messages/batches/{batch_id}", h(self.get_batch), methods=["GET"]),
            Route("/v1/messages/batches/{batch_id}", h(self.delete), methods=["DELETE"]),
            Route("/v1/messages/batches/{batch_id}/cancel", h(self.cancel), methods=["POST"]),
            Route("/v1/messages/batches/{batch_id}/results", h(self.results), methods=["GET"]),
        ]

    @staticmethod
    def _error_body(exc: ApiError) -> bytes:
        return exc.anthropic_body()

    async def create(self, request: Request, ctx: KeyContext) -> Response:
        raw = await _read_body(request, self.settings.max_file_bytes)
        content = shapes.parse_message_batch(self.gateway._parse_body(raw), self.settings.max_requests)
        refusal = self._policy_refusal(ctx, request)
        if refusal is not None:
            raise refusal
        f = await self.store.create_file(ctx.account.id, "batch", "message_batch_requests.jsonl", content)
        b = await self.store.create_batch(
            account_id=ctx.account.id, key_id=ctx.key.id, endpoint=shapes.MESSAGES, input_file_id=f.id,
            completion_window="24h", user_metadata=None, total=shapes.count_lines(content),
            client_ip=self._client_ip(request), user_agent=request.headers.get("user-agent"),
            window_s=self.settings.completion_window_s,
        )  # fmt: skip
        self.runner.wake()
        return _json(shapes.message_batch_object(b))

    async def get_batch(self, request: Request, ctx: KeyContext) -> Response:
        return _json(shapes.message_batch_object(await self._own(request, ctx)))

    async def list_batches(self, request: Request, ctx: KeyContext) -> Response:
        q = request.query_params
        limit = _limit(q.get("limit"), 20, 1000)
        found = await self.store.list_batches(
            ctx.account.id, limit=limit + 1, after=q.get("after_id"), endpoints=(shapes.MESSAGES,)
        )
        return _json(shapes.page([shapes.message_batch_object(b) for b in found[:limit]], len(found) > limit))

    async def cancel(self, request: Request, ctx: KeyContext) -> Response:
        return _json(shapes.message_batch_object(await self._cancel(request, ctx)))

    async def delete(self, request: Request, ctx: KeyContext) -> Response:
        """Delete an ended message batch with its requests and results (the audit rows of its requests stay); a
        batch still processing is a 400, as Anthropic's API answers: cancel it first."""
        b = await self._own(request, ctx)
        if not b.finished or not await self.store.delete_batch(b.id, ctx.account.id):
            b = await self._own(request, ctx)  # gone meanwhile: 404
            raise bad_request(
                f"message batch {b.id} is still processing; a batch can be deleted once it has ended: cancel it "
                "first, then delete it once its processing_status is 'ended'",
                code="batch_not_ended",
            )
        return _json({"id": b.id, "type": "message_batch_deleted"})

    async def results(self, request: Request, ctx: KeyContext) -> Response:
        b = await self._own(request, ctx)
        if not b.finished:
            raise bad_request(f"message batch {b.id} is still processing; its results come once it has ended")
        lines: list[bytes] = []
        for fid in (b.output_file_id, b.error_file_id):
            content = await self.store.file_content(fid, b.account_id) if fid else None
            for raw in (content or b"").splitlines():
                if raw.strip():
                    lines.append(orjson.dumps(shapes.message_result(orjson.loads(raw))))
        return Response(_jsonl(lines) if lines else b"", 200, media_type="application/x-jsonl")


def _limit(raw: str | None, default: int, most: int) -> int:
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= most:
        raise bad_request(f"limit must be an integer from 1 to {most}", param="limit")
    return int(raw)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body is {declared} bytes; the limit is {limit} bytes", code="body_too_large")
    parts, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body exceeds the limit of {limit} bytes", code="body_too_large")
        parts.append(chunk)
    return b"".join(parts)
