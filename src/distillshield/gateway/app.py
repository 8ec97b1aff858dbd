"""ASGI assembly and lifespan: routes, the admin API, health, metrics, start-up and graceful drain.

Start-up opens the store, loads the upstream and starts the audit writer; shutdown (SIGTERM under
uvicorn) waits for in-flight requests, then drains the audit queue before closing the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy.engine import make_url
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.types import Receive, Scope, Send

from distillshield.config import Settings
from distillshield.console import build_console
from distillshield.contracts import AuditSink, DetectionService, IntelWatch, RiskBoard, WatermarkControl
from distillshield.gateway.admin import bearer_refusal, build_admin_app, configured_admin_digest
from distillshield.gateway.auth import Authenticator
from distillshield.gateway.batches import BatchApi, BatchRunner, MessageBatchApi
from distillshield.gateway.errors import ApiError
from distillshield.gateway.extensions import Extension, ExtensionFactory
from distillshield.gateway.limits import RateLimiter, build_limiter
from distillshield.gateway.metrics import GatewayMetrics
from distillshield.gateway.pipeline import ENDPOINT_OF, Gateway
from distillshield.gateway.policy import PolicyStage
from distillshield.gateway.policy.shared import share_blocks
from distillshield.gateway.risk import build_risk_board
from distillshield.gateway.upstream import Upstream, build_upstream
from distillshield.store import Store
from distillshield.store.batches import BatchStore
from distillshield.store.checkpoint import Checkpointer
from distillshield.store.spool import Spool
from distillshield.store.writer import AuditWriter

log = logging.getLogger("distillshield.gateway")
_JSON = "application/json"
GC_GEN0_THRESHOLD = 20_000
STREAM_UNWIND_S = 5.0  # how long a shutdown waits for cut streams to write their audit rows


@dataclass
class AppState:
    settings: Settings
    store: Store
    upstream: Upstream
    limiter: RateLimiter
    auth: Authenticator
    audit: AuditWriter
    metrics: GatewayMetrics
    gateway: Gateway
    extensions: list[Extension]
    risk: RiskBoard
    policy: PolicyStage | None = None
    detection: DetectionService | None = None  # set by online detection when it starts (detect/online.py)
    watermark: WatermarkControl | None = None  # set by the watermark extension (watermark/gateway.py)
    intel: IntelWatch | None = None  # imported indicators, matched per request (intel/live.py), read by the policy
    batches: BatchRunner | None = None  # the Batch API's runner (gateway/batches.py), when batches.enabled


def audit_spool(settings: Settings) -> Spool | None:
    """The audit spool the settings ask for (store/spool.py), or None when it is off."""
    a = settings.audit
    if not a.spool:
        return None
    if a.spool_dir:
        where = Path(a.spool_dir)
    else:
        url = make_url(settings.store.url)
        db = url.database if url.get_backend_name() == "sqlite" else None
        where = Path(f"{db}.spool") if db and db != ":memory:" else Path("distillshield-spool")
    return Spool(where, a.spool_max_mb << 20)


def build_state(
    settings: Settings,
    extensions: Sequence[ExtensionFactory],
    *,
    upstream: Upstream | None = None,
    store: Store | None = None,
    limiter: RateLimiter | None = None,
) -> AppState:
    store = store or Store(settings.store.url)
    upstream = upstream or build_upstream(settings)
    limiter = limiter or build_limiter(settings.limits)
    auth = Authenticator(store, settings.auth.cache_ttl_s, settings.auth.stale_ttl_s)
    cp = settings.checkpoints
    sink: AuditSink = store
    checkpointer = None
    if settings.audit.sink == "redis":  # the audit workers write the log (and sign its checkpoints)
        from distillshield.workers.stream import AuditStream

        sink = AuditStream(settings.audit.redis_url or settings.limits.redis_url, settings.audit.stream_key)
    else:
        checkpointer = Checkpointer.from_settings(cp)  # creates the signing key on first use
    audit = AuditWriter(
        sink,
        settings.audit.batch_size,
        settings.audit.flush_interval_ms / 1000.0,
        checkpointer=checkpointer,
        checkpoint_every_rows=cp.every_rows,
        checkpoint_every_s=cp.every_s,
        spool=audit_spool(settings),
        durable=settings.audit.durable_answers,
    )
    metrics = GatewayMetrics()
    metrics.bind_audit(lambda: audit.pending, lambda: audit.written)
    gateway = Gateway(settings, upstream, limiter, auth, audit, metrics)
    started = [ext for factory in extensions if (ext := factory(settings)) is not None]
    risk = build_risk_board(settings.risk, settings.limits.redis_url)
    policy = None
    if settings.policy.enabled:
        # a fleet (risk.backend: redis) shares its standing blocks too, on the board's Redis
        share = partial(share_blocks, risk=settings.risk, limits_redis_url=settings.limits.redis_url)
        policy = PolicyStage.from_settings(settings.policy, risk, share)
    if policy is not None:
        gateway.policy = policy
        started.insert(0, policy)  # started first and stopped last: it loads the review book
    return AppState(settings, store, upstream, limiter, auth, audit, metrics, gateway, started, risk, policy)


_API_ROUTES = {path: api for api, path in ENDPOINT_OF.items()}


class GatewayApp(Starlette):
    """The Starlette app, with the API POST routes dispatched before Starlette's stack.

    Hand-written because Starlette has no cheaper way to serve a route: every call otherwise runs the
    error and exception middleware, the router's match over every route, the request/response wrappers,
    and two send wrappers around every body write of a stream; together a sizeable share of the per-call
    CPU in py-spy profiles of benchmarks/overhead.py (the send wrappers alone ~10 % on streams). Everything
    else (other paths and methods, lifespan, the admin API) goes through Starlette as before; an
    unexpected exception gets the same logged 500 JSON error.
    """

    gateway: Gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            api = _API_ROUTES.get(scope["path"])
            if api is not None:
                scope["app"] = self
                await self._serve_api(scope, receive, send, api)
                return
        await super().__call__(scope, receive, send)

    async def _serve_api(self, scope: Scope, receive: Receive, send: Send, api: str) -> None:
        try:
            response = await self.gateway.handle(scope, receive, api)
        except Exception:  # as ServerErrorMiddleware: log, answer 500 JSON, re-raise for the server's log
            log.exception("unhandled error on %s", scope["path"])
            body = ApiError(500, "internal error in the gateway; it has been logged").openai_body()
            await Response(body, 500, media_type=_JSON)(scope, receive, send)
            raise
        # Both response kinds send their start message first, so a failure after this point cannot be
        # answered with a 500 any more; the server logs it and closes the connection, as with Starlette.
        await response(scope, receive, send)


def build_app(settings: Settings, extensions: Sequence[ExtensionFactory], **components: Any) -> Starlette:
    """The gateway as an ASGI app, running the extensions the factories make (distillshield.extensions
    `standard_extensions()` is what `distillshield serve` runs; `[]` is a gateway without detection and
    watermarks). `components` may replace the upstream, store or limiter (tests)."""
    state = build_state(settings, extensions, **components)
    gw = state.gateway

    # GatewayApp serves POSTs to these paths itself; the routes stay so that other methods on them
    # get Starlette's 405, and so that a mounted copy of the app still answers.
    async def chat(request: Request) -> Any:
        return await gw.handle(request.scope, request.receive, "chat")

    async def completions(request: Request) -> Any:
        return await gw.handle(request.scope, request.receive, "completions")

    async def messages(request: Request) -> Any:
        return await gw.handle(request.scope, request.receive, "messages")

    async def responses(request: Request) -> Any:
        return await gw.handle(request.scope, request.receive, "responses")

    async def embeddings(request: Request) -> Any:
        return await gw.handle(request.scope, request.receive, "embeddings")

    async def models(request: Request) -> Response:
        try:
            await state.auth.authenticate(request.headers)
        except ApiError as exc:
            return Response(exc.openai_body(), exc.status, media_type=_JSON)
        now = int(time.time())
        data = [
            {"id": m, "object": "model", "created": now, "owned_by": "distillshield"} for m in state.upstream.models()
        ]
        return Response(orjson.dumps({"object": "list", "data": data}), media_type=_JSON)

    async def healthz(_request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type=_JSON)

    async def readyz(_request: Request) -> Response:
        checks = {
            "upstream": state.upstream.ready(),
            "store": await state.store.ping(),
            "limiter": await state.limiter.ping(),
            "audit": state.audit.accepting,
        }
        # A database outage alone leaves the replica ready while the audit spool takes its rows (keys seen
        # recently still authenticate from the cache): like the limiter's refill below, the database is shared
        # by every replica, and pulling them all out at once would turn answers into connection errors.
        # Ready needs rows to be recordable: the database, or the spool while it is away.
        ok = checks["upstream"] and checks["limiter"] and checks["audit"]
        body: dict[str, Any] = {"ready": ok, "checks": checks}
        if state.audit.spool_pending:
            body["audit_spool_batches"] = state.audit.spool_pending
        # After the limiter's Redis lost its data, the windows count as full for up to 60 s (redis.py). That
        # stays READY on purpose: every replica shares the one Redis, so all would leave the load balancer at
        # once and clients would get connection errors or bare 503s instead of 429s whose Retry-After says when
        # to come back; readiness is about whether this replica can serve, and it can. The body says so.
        refill = state.limiter.refill_s()
        if refill > 0:
            body["limiter_refill_s"] = round(refill, 3)
        return Response(orjson.dumps(body), 200 if ok else 503, media_type=_JSON)

    adm = settings.admin
    metrics_digests = [d for d in (configured_admin_digest(adm), adm.metrics_token_sha256) if d]

    async def metrics(request: Request) -> Response:
        # Traffic volumes per endpoint and status are operator data: a scraper sends the metrics token (or
        # the admin token), unless the operator declared /metrics public.
        if not adm.public_metrics:
            refusal = (
                bearer_refusal(request, metrics_digests, "metrics")
                if metrics_digests
                else (403, "/metrics needs a credential: set admin.metrics_token_sha256 or admin.public_metrics")
            )
            if refusal is not None:
                status, msg = refusal
                return Response(ApiError(status, msg).openai_body(), status, media_type=_JSON)
        return Response(state.metrics.render(), media_type=state.metrics.content_type)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        msg = {
            404: f"no such endpoint: {request.method} {request.url.path}",
            405: f"method {request.method} is not allowed on {request.url.path}",
        }.get(exc.status_code, str(exc.detail))
        if request.url.path.startswith("/admin/"):
            # The admin mount did not match (its pattern stops at a newline in an id): answer in the admin
            # API's own error shape, the one its spec declares.
            return Response(orjson.dumps({"detail": msg}), exc.status_code, media_type=_JSON)
        return Response(ApiError(exc.status_code, msg).openai_body(), exc.status_code, media_type=_JSON)

    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s", request.url.path)
        body = ApiError(500, "internal error in the gateway; it has been logged").openai_body()
        return Response(body, 500, media_type=_JSON)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        await state.store.init()
        await state.upstream.start()
        await state.audit.start()
        await state.risk.start()  # before the extensions: detection replays into it, the policy reads it
        for ext in state.extensions:
            await ext.start(state)
        if state.batches is not None:
            await state.batches.start()
        # Start-up objects live for the whole run: keep them out of the cyclic GC, whose full
        # collections otherwise stall the event loop for ~100 ms under load (visible in p99).
        gc.collect()
        gc.freeze()
        # Collect the youngest generation every 20,000 allocations instead of 700: at 2,000 requests/s the
        # default promoted every in-flight request's objects, and a full collection (40-100 ms, over what
        # the detection extension and the audit queue hold) ran about once a second: in gc callbacks, up to
        # a third of the gateway's CPU time under load. Cyclic garbage is still collected, in larger steps.
        thresholds = gc.get_threshold()
        gc.set_threshold(GC_GEN0_THRESHOLD, *thresholds[1:])
        log.info("gateway ready: upstream=%s store=%s", state.upstream.name, state.store.safe_url)
        try:
            yield
        finally:
            if state.batches is not None:  # running batches stop launching requests and write their files
                await state.batches.stop()
            # Streams the server cut at its graceful timeout finish their audit rows as their tasks unwind,
            # concurrently with this shutdown: wait for them (bounded) before the audit writer stops.
            try:
                async with asyncio.timeout(STREAM_UNWIND_S):
                    await gw.streams_closed()
            except TimeoutError:
                log.error("streams still open %g s into shutdown; their audit rows may be lost", STREAM_UNWIND_S)
            for ext in reversed(state.extensions):
                await ext.stop()
            await state.risk.stop()
            await state.audit.stop()  # every accepted request reaches the log before we exit
            if state.audit.store is not state.store:
                await state.audit.store.close()  # the audit stream
            await state.upstream.close()
            await state.limiter.close()
            await state.store.close()
            gc.set_threshold(*thresholds)

    batch_routes: list[Route] = []
    if settings.batches.enabled:
        batch_store = BatchStore(state.store.engine)
        state.batches = BatchRunner(gw, batch_store, settings.batches)
        batch_routes = BatchApi(gw, batch_store, state.batches, settings.batches).routes()
        batch_routes += MessageBatchApi(gw, batch_store, state.batches, settings.batches).routes()

    routes = [
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/messages", messages, methods=["POST"]),
        Route("/v1/responses", responses, methods=["POST"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        *batch_routes,  # /v1/files, /v1/batches, /v1/messages/batches
        Mount("/admin", app=build_admin_app(state)),
        Mount("/console", app=build_console(state)),  # the analyst console (console/app.py)
    ]
    app = GatewayApp(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: http_error, Exception: server_error},
    )
    app.gateway = gw
    app.state.ds = state
    return app
