"""The analyst console: server-rendered pages (Jinja2 + htmx) mounted by the gateway at /console.

    GET  /login, POST /login, POST /logout     the admin token in, a session cookie out
    GET  /                                     overview: verdicts, open review items, countermeasures, traffic
    GET  /accounts?q=&sort=&dir=&verdict=&page= accounts, paginated on the server
    GET  /accounts/{id}?vpage=                 one account: every reason, limits, policy state, review, verdict history
    POST /accounts/{id}/limits                 change its limits          (admin.set_account_limits)
    POST /accounts/{id}/suspend|activate       suspend or reactivate it   (admin.set_account_status)
    POST /accounts/{id}/reveal                 its sample prompts unredacted (an audit-log row first)
    POST /accounts/{id}/evidence               its evidence bundle as a zip (an audit-log row first)
    GET  /review?status=&page=                 the review queue
    GET  /review/{ref}                         one item with its evidence (policy.admin.review_detail)
    POST /review/{ref}/decide                  confirm, clear, allowlist or escalate with a note (PolicyStage.decide)
    GET  /audit?page=&apage=                   every review decision, and what analysts revealed or looked up
    GET  /policy?rule=&page=                   the active policy; what each rule would have done in the last 24 h
    POST /policy/reload                        reload its file, switch enforce/shadow
    GET  /watermark, POST /watermark           look leaked text up (logged): which accounts' keys mark it
    GET  /clusters?page=                       clusters of accounts (risk board and review queue)
    GET  /clusters/{id}?page=                  one cluster: its graph, what links its members, why and when each joined

Actions call the same functions as the admin API's endpoints, in process. Every asset is in `static/`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import io
import tempfile
import zipfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote

import jinja2
import yaml
from fastapi import HTTPException
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from distillshield.config import LimitSet
from distillshield.console import clusters, queries
from distillshield.console import watermark as wm
from distillshield.console.session import CSRF_FIELD, Session, SessionSigner, csrf_matches
from distillshield.evidence import EvidenceError, build_bundle, chained_traffic, watermark_detector
from distillshield.gateway.admin import (
    _detection,
    admin_token_digest,
    configured_admin_digest,
    set_account_limits,
    set_account_status,
    store_error_status,
)
from distillshield.gateway.errors import ApiError
from distillshield.gateway.limits import LimitExceeded, Scope
from distillshield.gateway.policy.admin import PinIn, pin_countermeasure, policy_stage, review_detail
from distillshield.gateway.policy.rules import PolicyError
from distillshield.store.admin_log import Actor, AdminLog
from distillshield.store.database import StoreError
from distillshield.store.pins import PinStore
from distillshield.store.review import DECISIONS

if TYPE_CHECKING:
    from distillshield.gateway.app import AppState

MAX_FORM_BYTES = 64 * 1024
CSRF_REFUSED = "the form's CSRF token is missing or wrong: reload the page and try again"
# Scripts only from the console's own files: no inline script, no CDN, no eval.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)
# The account page's pin form: how long a pin lasts ("" = until lifted), in seconds.
PIN_EXPIRIES: dict[str, float | None] = {"": None, "1h": 3600.0, "24h": 86400.0, "7d": 7 * 86400.0}
DECISION_LABELS = {"confirm": "Confirm", "clear": "Dismiss (clear)", "allowlist": "Allowlist", "escalate": "Escalate"}

Handler = Callable[[Request, Session], Awaitable[Response]]


def _utc(ts: float | None) -> str:
    if ts is None:
        return "—"
    return dt.datetime.fromtimestamp(float(ts), dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("distillshield.console", "templates"),
        autoescape=jinja2.select_autoescape(default=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["utc"] = _utc
    env.filters["quote"] = lambda s: quote(str(s), safe="")
    env.filters["yaml"] = lambda v: yaml.safe_dump(v, sort_keys=False, default_flow_style=None, allow_unicode=True)
    return env


class Console:
    """The console's routes over the gateway's AppState."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        digest = configured_admin_digest(state.settings.admin)
        self.digest = digest
        self.signer = SessionSigner(digest) if digest else None
        self.env = _environment()
        self.traffic = queries.TrafficSeries(3600, 24)  # the overview's charts: 24 hours, 14 days
        self.daily = queries.TrafficSeries(86400, 14)
        self.volume = queries.VolumeRanking()
        self.replay = queries.ShadowReplay()
        self.cot = queries.CotShares()
        self.graphs = clusters.ClusterGraphs()  # the cluster page's graphs, kept 30 s

    # -- plumbing -----------------------------------------------------------------------------------

    def render(
        self, request: Request, template: str, *, code: int = 200, session: Session | None = None, **ctx: Any
    ) -> HTMLResponse:
        base = request.scope.get("root_path", "")
        html = self.env.get_template(template).render(
            base=base, csrf=session.csrf if session else "", csrf_field=CSRF_FIELD, request=request, **ctx
        )
        return HTMLResponse(html, code, headers=_security_headers())

    def error(self, request: Request, status: int, message: str, session: Session | None = None) -> HTMLResponse:
        return self.render(request, "error.html", code=status, session=session, status=status, message=message, nav="")

    def page(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        """A GET handler that needs a session: without one the browser goes to the login page."""

        async def endpoint(request: Request) -> Response:
            session = self._session(request)
            if isinstance(session, Response):
                return session
            try:
                return await handler(request, session)
            except HTTPException as exc:
                return self.error(request, exc.status_code, str(exc.detail), session)

        return endpoint

    def action(self, handler: Callable[[Request, Session, dict[str, str]], Awaitable[Response]]) -> Any:
        """A POST handler: needs a session and the session's CSRF token; gets the parsed form."""

        async def endpoint(request: Request) -> Response:
            session = self._session(request)
            if isinstance(session, Response):
                return session
            form = await _form(request)
            if form is None:
                return self.error(request, 413, f"the form is larger than {MAX_FORM_BYTES} bytes", session)
            if not csrf_matches(session, request, form):
                return self.error(request, 403, CSRF_REFUSED, session)
            try:
                return await handler(request, session, form)
            except (HTTPException, StoreError) as exc:
                status = exc.status_code if isinstance(exc, HTTPException) else store_error_status(exc)
                message = str(exc.detail) if isinstance(exc, HTTPException) else str(exc)
                return self.error(request, status, message, session)

        return endpoint

    def upload(self, handler: Callable[[Request, Session, wm.Upload], Awaitable[Response]]) -> Any:
        """A POST handler for a multipart form with a file: as `action` (session, CSRF token), with a larger
        body limit (wm.MAX_UPLOAD_BYTES); the handler answers refusals itself."""

        async def endpoint(request: Request) -> Response:
            session = self._session(request)
            if isinstance(session, Response):
                return session
            try:
                form = await wm.read_multipart(request)
            except wm.LookupRefused as exc:
                if exc.status == 413:
                    return self.error(request, 413, str(exc), session)
                form = wm.Upload({}, "", b"")  # unreadable: only a CSRF refusal can follow
            if not csrf_matches(session, request, form.fields):
                return self.error(request, 403, CSRF_REFUSED, session)
            return await handler(request, session, form)

        return endpoint

    def _session(self, request: Request) -> Session | Response:
        """The request's session, or the response that refuses it: the console is disabled, or there is no
        session (the browser goes to the login page)."""
        refused = self._disabled(request)
        if refused is not None:
            return refused
        assert self.signer is not None
        session = self.signer.read(request)
        return self._to_login(request) if session is None else session

    def _disabled(self, request: Request) -> Response | None:
        if self.signer is None:
            return self.error(
                request, 403, "the console is disabled: set admin.token_sha256 (see `distillshield init`)"
            )
        return None

    def _to_login(self, request: Request) -> Response:
        base = request.scope.get("root_path", "")
        target = f"{base}/login"
        if request.method == "GET":
            here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            target += f"?next={quote(here, safe='')}"
        if request.headers.get("hx-request"):
            return Response(status_code=204, headers={"HX-Redirect": target})
        return RedirectResponse(target, 303)

    def redirect(self, request: Request, path: str) -> RedirectResponse:
        return RedirectResponse(request.scope.get("root_path", "") + path, 303)

    # -- login --------------------------------------------------------------------------------------

    async def login_form(self, request: Request) -> Response:
        refused = self._disabled(request)
        if refused is not None:
            return refused
        return self._login_page(request, "", _safe_next(request, request.query_params.get("next")))

    def _login_page(self, request: Request, error: str, next_url: str, status: int = 200) -> Response:
        assert self.signer is not None
        token = self.signer.new_login_token()
        response = self.render(request, "login.html", code=status, error=error, next=next_url, nav="", login_csrf=token)
        self.signer.set_login_cookie(request, response, token)
        return response

    async def login(self, request: Request) -> Response:
        refused = self._disabled(request)
        if refused is not None:
            return refused
        assert self.signer is not None and self.digest is not None
        form = await _form(request) or {}
        next_url = _safe_next(request, form.get("next"))
        # Every attempt counts against its address's login limit in the gateway's own limiter (shared by the
        # replicas when it is Redis), before the token is compared: guessing costs a minute per few tries.
        client = request.client.host if request.client else "unknown"
        try:
            limits = LimitSet(rpm=self.state.settings.admin.console_login_rpm)
            held = await self.state.limiter.reserve((Scope("console-login", client, limits),), 0)
        except LimitExceeded as exc:
            page = self._login_page(request, f"Too many login attempts from {client}: {exc.message}.", next_url, 429)
            page.headers.update(exc.headers())
            return page
        except ApiError as exc:  # the limiter is away (Redis): no login until it is back, it fails closed
            return self._login_page(request, f"Logging in is unavailable: {exc.message}.", next_url, exc.status)
        await self.state.limiter.finish(held, 0)
        if not self.signer.login_token_matches(request, form.get(CSRF_FIELD, "")):
            return self._login_page(request, "The login form expired: enter the token again.", next_url, 403)
        token = form.get("token", "").strip()
        if not token or not hmac.compare_digest(admin_token_digest(token), self.digest):
            return self._login_page(request, "That is not the admin token.", next_url, 401)
        response = RedirectResponse(next_url, 303)
        self.signer.start(request, response)
        return response

    async def logout(self, request: Request, session: Session, form: dict[str, str]) -> Response:
        assert self.signer is not None
        response = self.redirect(request, "/login")
        self.signer.end(request, response)
        return response

    # -- pages --------------------------------------------------------------------------------------

    async def overview(self, request: Request, session: Session) -> Response:
        data = await queries.overview(self.state, self.traffic, self.daily)
        return self.render(request, "overview.html", session=session, nav="overview", o=data)

    async def accounts(self, request: Request, session: Session) -> Response:
        p = request.query_params
        sort = p.get("sort", "risk")
        if sort not in queries.SORTS:
            sort = "risk"
        desc = p.get("dir", "desc" if sort in queries.DESC_BY_DEFAULT else "asc") == "desc"
        q = p.get("q", "").strip()[:200]
        verdict = p.get("verdict", "")
        page = await queries.account_list(
            self.state, self.volume, q=q, sort=sort, desc=desc, verdict=verdict, page=strict_page(p.get("page"), "page")
        )
        return self.render(
            request,
            "accounts.html",
            session=session,
            nav="accounts",
            page=page,
            q=q,
            sort=sort,
            desc=desc,
            verdict=verdict if verdict in queries.VERDICTS else "",
            verdicts=queries.VERDICTS,
            board_sorts=queries.BOARD_SORTS,
        )

    async def account(self, request: Request, session: Session) -> Response:
        return await self._account_page(request, session, request.path_params["account_id"])

    async def _account_page(
        self, request: Request, session: Session, account_id: str, revealed: list[dict[str, Any]] | None = None
    ) -> Response:
        st = self.state
        acct = await st.store.get_account(account_id)
        board = st.risk.get(account_id)
        # The risk board is what the policy acts on; online detection's latest view (what GET
        # /admin/accounts/{id} reports first) can differ from it, e.g. after a report was loaded.
        detection = board.as_dict() if board is not None else _detection(st, account_id)
        online = st.detection.account(account_id) if st.detection is not None else None
        if acct is None and detection is None:
            raise HTTPException(404, f"account '{account_id}' does not exist")
        review = await queries.account_review(st, account_id)
        verdicts, verdicts_read = await queries.verdict_history(
            st, account_id, page=strict_page(request.query_params.get("vpage"), "vpage")
        )
        ctx: dict[str, Any] = {
            "account_id": account_id,
            "acct": acct,
            "detection": detection,
            "online": online if online is not None and detection is not None and online != detection else None,
            "keys": [k.public() for k in await st.store.list_keys(account_id)] if acct else [],
            "usage": await st.store.account_usage(account_id),
            "in_flight": await st.limiter.in_flight(f"account:{account_id}"),
            "live": st.policy.live(account_id) if st.policy is not None else None,
            "pins": await PinStore(st.store).for_account(account_id, include_past=True, limit=20),
            "pin_expiries": PIN_EXPIRIES,
            "review": review,
            "limits": queries.effective_limits(st, acct.tier, acct.limits) if acct else None,
            "limit_fields": list(LimitSet.model_fields),
            "recent": (await _recent_requests(st, account_id)),
            "risk_history": await queries.account_risk_history(st, account_id, review),
            "timeline_days": queries.TIMELINE_HOURS // 24,
            "verdicts": verdicts,
            "verdicts_read": verdicts_read,
            "notice": request.query_params.get("done", ""),
            # redacted unless this is the reveal action's answer (revealing is logged: `reveal`)
            "samples": revealed if revealed is not None else await queries.sample_prompts(st, account_id),
            "revealed": revealed is not None,
            "sample_n": queries.SAMPLE_PROMPTS,
        }
        return self.render(request, "account.html", session=session, nav="accounts", **ctx)

    async def account_timeline(self, request: Request, session: Session) -> Response:
        """The account page's request timeline with its CoT share, a fragment the page loads after itself
        (htmx): classifying a busy account's sampled prompts the first time takes seconds, the page does not
        wait for it."""
        st = self.state
        account_id = request.path_params["account_id"]
        if await st.store.get_account(account_id) is None and _detection(st, account_id) is None:
            raise HTTPException(404, f"account '{account_id}' does not exist")
        timeline = await queries.account_timeline(st, account_id, cot=self.cot)
        return self.render(request, "account_timeline.html", session=session, timeline=timeline,
                           timeline_days=queries.TIMELINE_HOURS // 24)  # fmt: skip

    async def reveal(self, request: Request, session: Session, form: dict[str, str]) -> Response:
        """The account's sample prompts as sent: an audit-log row first (who, which account, which
        requests), then the account page with them unredacted. Never a GET: a page view sends none."""
        account_id = request.path_params["account_id"]
        actor = _actor(request, session, form)
        st = self.state
        if await st.store.get_account(account_id) is None and st.risk.get(account_id) is None:
            raise HTTPException(404, f"account '{account_id}' does not exist")
        prompts = await queries.sample_prompts(st, account_id, reveal=True)
        await AdminLog(st.store).record(
            "reveal_prompts",
            actor,
            subject=account_id,
            detail={"requests": [p["seq"] for p in prompts], "count": len(prompts)},
        )
        return await self._account_page(request, session, account_id, revealed=prompts)

    async def evidence(self, request: Request, session: Session, form: dict[str, str]) -> Response:
        """The account's evidence bundle as a zip download, built from the audit log as `distillshield evidence
        ACCOUNT` builds it (findings from the risk board; with `watermark.secret`, its served answers tested
        for its own watermark key, as the CLI does). It holds prompts and answers, so it is recorded in the
        audit log (who, its rows, its sha256) before it is sent; a bundle that cannot be recorded is not
        sent."""
        account_id = request.path_params["account_id"]
        actor = _actor(request, session, form)
        st = self.state
        entry = st.risk.get(account_id)
        if entry is None and await st.store.get_account(account_id) is None:
            raise HTTPException(404, f"account '{account_id}' does not exist")
        report = {"accounts": [entry.as_dict()], "clusters": []} if entry is not None else None
        traffic = await chained_traffic(st.store, st.settings.checkpoints, [account_id])
        name = "evidence-" + "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in account_id)[:80]
        with tempfile.TemporaryDirectory(prefix="distillshield-evidence-") as tmp:

            def build() -> dict[str, Any]:  # the tokenizer, watermark tests, charts and files: off the event loop
                wm = watermark_detector(st.settings.watermark)
                return build_bundle(account_id, Path(tmp) / name, traffic, report=report, wm=wm)

            try:
                manifest = await asyncio.to_thread(build)
            except EvidenceError as exc:
                raise HTTPException(409, str(exc)) from None
            except (ValueError, FileNotFoundError) as exc:
                raise HTTPException(409, f"cannot set up watermark detection: {exc}") from None
            data = await asyncio.to_thread(_zip_folder, Path(tmp) / name)
        proof = manifest["chain_proof"]
        detail = {
            "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "rows_cited": proof.get("rows_cited"),
            "row_range": proof.get("row_range"), "chain_head": proof.get("chain_head"),
        }  # fmt: skip
        await AdminLog(st.store).record("evidence_bundle", actor, subject=account_id, detail=detail)
        headers = {**_security_headers(), "content-disposition": f'attachment; filename="{name}.zip"'}
        return Response(data, 200, headers, media_type="application/zip")

    async def change_limits(self, request: Request, session: Session, form: dict[str, str]) -> Response:
        account_id = request.path_params["account_id"]
        raw = {f: form.get(f, "").strip() for f in LimitSet.model_fields}
        try:
            limits = LimitSet(**{f: int(v) for f, v in raw.items() if v})
        except (ValueError, ValidationError) as exc:
            raise HTTPException(
                400, f"limits must be whole numbers of at least 1, or empty for the default: {exc}"
            ) from None
        await set_account_limits(self.state, account_id, limits, _actor(request, session, form))
        return self.redirect(request, f"/accounts/{quote(account_id, safe='')}?done=limits")

    async def pin(self, request: Request, session: Session, form: dict[str, str]) -> Response:
        """Pin a countermeasure on the account by hand (the admin API's POST /accounts/{id}/pins): the form's
        action and the fields of that action only; the policy stage checks them as a policy rule's params."""
        account_id = request.path_params["account_id"]
        action = form.get("action", "")
        params: dict[str, Any] = {}
        try:
            if action == "throttle":
                params["factor"] = float(form.get("factor", "").strip())
            elif action == "degrade":
                params["reasoning"] = form.get("reasoning", "strip")
                params["drop_logprobs"] = form.get("drop_logprobs") == "on"
                if form.get("max_tokens", "").strip():
                    params["max_tokens"] = int(form["max_tokens"])
            elif action == "watermark":
                params["mode"] = form.get("mode", "on")
        except ValueError:
            raise HTTPException(400, "the throttle factor is a number above 0 and at most 1; max tokens a whole "
                                "number") from None  # fmt: skip
        expiry = form.get("expires", "")
        if expiry not in PIN_EXPIRIES:
            raise HTTPException(400, f"expires must be one of {', '.join(k or 'never' for k in PIN_EXPIRIES)}")
        try:
            body = PinIn(action=action, params=params, note=form.get("note", ""), expires_in_s=PIN_EXPIRIES[expiry])
        except ValidationError as exc:
            raise HTTPException(400, "; ".join(str(e["msg"]) for e in exc.errors())) from None
        made = await pin_countermeasure(self.state, account_id, body, _actor(request, session, form))
        return self.redirect(request, f"/accounts/{quote(account_id, safe='')}?done={quote(made.ref)}+pinned")

    async def lift_pin(self, request: Request, session: Session, form: dict[str, str]) -> Response:
        raw = request.path_params["pin_id"]
        if not raw.isascii() or not raw.isdigit() or len(raw) > 10:
            raise HTTPException(404, f"pin '{raw[:40]}' does not exist")
        lifted = await policy_stage(self.state).lift(int(raw), actor=_actor(request, session, form))
        return self.redirect(request, f"/accounts/{quote(lifted.account_id, safe='')}?done={lifted.ref}+lifted")

    async def suspend(self, request: Request, session: Session, form: dict[str, str]) -> Response:
        account_id = request.path_params["account_id"]
        await set_account_status(self.state, account_id, "suspended", _actor(request, session, form))
        return self.redirect(request, f"/accounts/{quote(account_id, safe='')}?done=suspended")

    async def activate(self, request: Request, session: Session, form: dict[str, str]) -> Response:
        account_id = request.path_params["account_id"]
        await set_account_status(self.state, account_id, "active", _actor(request, session, form))
        return self.redirect(request, f"/accounts/{quote(account_id, safe='')}?done=activated")

    async def review(self, request: Request, session: Session) -> Response:
        p = request.query_params
        status = p.get("status", "open")
        page = await queries.review_list(self.state, status=status, page=strict_page(p.get("page"), "page"))
        return self.render(request, "review.html", session=session, nav="review", page=page, status=status)

    async def review_item(self, request: Request, session: Session) -> Response:
        detail = await review_detail(self.state, request.path_params["ref"])
        return self.render(
            request,
            "review_item.html",
            session=session,
            nav="review",
            d=detail,
            decisions=DECISION_LABELS,
            policy_enabled=self.state.policy is not None,
        )

    async def decide(self, request: Request, session: Session, form: dict[str, str]) -> Response:
        ref = request.path_params["ref"]
        decision = form.get("decision", "")
        if decision not in DECISIONS:
            raise HTTPException(400, f"unknown decision '{decision}'; choose one of {', '.join(DECISIONS)}")
        stage = policy_stage(self.state)
        note, actor = form.get("note", ""), _actor(request, session, form)
        if "\x00" in note:
            raise HTTPException(400, "the note and reviewer may not contain NUL; the reviewer is at most 64 characters")
        # The admin API's POST /admin/review/{ref}/decide path: recorded in the store and the audit log,
        # applied at once.
        result = await stage.decide(ref, decision, actor=actor, reviewer=actor.name, note=note)
        return self.redirect(request, f"/review/{result.item.id}")

    async def policy(self, request: Request, session: Session) -> Response:
        described = self.state.policy.describe() if self.state.policy is not None else None
        ctx: dict[str, Any] = {"replay": None, "chosen": None, "accounts": None}
        if described is not None:
            p = request.query_params
            rule = p.get("rule", "").strip()
            out, chosen, accounts_page = await queries.policy_replay(
                self.state, self.replay, rule=rule, page=strict_page(p.get("page"), "page")
            )
            if rule and chosen is None:
                raise HTTPException(404, f"the active policy has no rule '{rule[:100]}'")
            ctx = {"replay": out, "chosen": chosen, "accounts": accounts_page}
        return self.render(request, "policy.html", session=session, nav="policy", p=described, **ctx)

    async def reload_policy(self, request: Request, session: Session, form: dict[str, str]) -> Response:
        st = policy_stage(self.state)
        mode = form.get("mode") or None
        if mode not in (None, "enforce", "shadow"):
            raise HTTPException(400, f"unknown mode '{mode}'; choose enforce or shadow")
        try:  # as POST /admin/policy/reload, for the file already loaded
            await st.reload_recorded(None, mode, _actor(request, session, form))
        except PolicyError as exc:
            raise HTTPException(400, f"{exc} (the previous policy from {st.policy.source} stays active)") from None
        return self.redirect(request, "/policy?done=reloaded")

    async def watermark(self, request: Request, session: Session) -> Response:
        return self._watermark_page(request, session)

    def _watermark_page(
        self,
        request: Request,
        session: Session,
        *,
        code: int = 200,
        error: str = "",
        found: dict[str, Any] | None = None,
        text: str = "",
        pool: bool = False,
    ) -> HTMLResponse:
        cfg = self.state.settings.watermark
        return self.render(
            request,
            "watermark.html",
            code=code,
            session=session,
            nav="watermark",
            enabled=cfg.keyed,
            scheme=cfg.scheme,
            error=error,
            found=found,
            text=text,
            pool=pool,
            fmt_p=wm.fmt_p,
            max_mib=wm.MAX_UPLOAD_BYTES // (1024 * 1024),
            max_texts=wm.MAX_TEXTS,
            alpha=wm.ALPHA,
        )

    async def watermark_lookup(self, request: Request, session: Session, form: wm.Upload) -> Response:
        text = form.fields.get("text", "")
        pool = form.fields.get("pool") == "1"
        try:
            actor = _actor(request, session, form.fields)
        except HTTPException as exc:
            return self._watermark_page(request, session, code=400, error=str(exc.detail), text=text, pool=pool)
        try:
            texts = wm.texts_of(form)
            found = await wm.lookup(self.state, texts, pool)
        except wm.LookupRefused as exc:
            return self._watermark_page(request, session, code=exc.status, error=str(exc), text=text, pool=pool)
        # A lookup that ran is logged before its answer is sent: who, how much was looked up, who it named.
        detail = wm.audit_detail(form, found)
        top = detail["attributed"][0] if detail["attributed"] else None
        subject = top.removeprefix("account:") if top and top.startswith("account:") else None
        try:
            await AdminLog(self.state.store).record("watermark_lookup", actor, subject=subject, detail=detail)
        except StoreError as exc:  # not recorded: not shown
            return self._watermark_page(request, session, code=store_error_status(exc), error=str(exc), text=text)
        return self._watermark_page(request, session, found=found, text=text, pool=pool)

    async def cluster_list(self, request: Request, session: Session) -> Response:
        page = await clusters.cluster_list(self.state, page=strict_page(request.query_params.get("page"), "page"))
        return self.render(request, "clusters.html", session=session, nav="clusters", page=page)

    async def cluster(self, request: Request, session: Session) -> Response:
        cluster_id = request.path_params["cluster_id"]
        detail = await clusters.cluster_detail(
            self.state, cluster_id, page=strict_page(request.query_params.get("page"), "page"), graphs=self.graphs
        )
        if detail is None:
            raise HTTPException(404, f"cluster '{cluster_id}' does not exist (not on the risk board, never queued)")
        return self.render(request, "cluster.html", session=session, nav="clusters", c=detail)

    async def audit(self, request: Request, session: Session) -> Response:
        p = request.query_params
        page = await queries.decision_log(self.state, page=strict_page(p.get("page"), "page"))
        acts = await queries.admin_actions(self.state, page=strict_page(p.get("apage"), "apage"))
        return self.render(request, "audit.html", session=session, nav="audit", page=page, acts=acts)


def _zip_folder(folder: Path) -> bytes:
    """A folder's files as a zip archive (in memory: a bundle is a few megabytes), under the folder's name."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, f"{folder.name}/{path.relative_to(folder).as_posix()}")
    return buf.getvalue()


def strict_page(raw: str | None, name: str) -> int:
    """A page number from the query string (every list's `page`, the account page's `vpage`, the decision log's
    `apage`): absent or empty is page 1; anything but a whole number from 1 is a 400 naming the parameter."""
    if raw is None or raw == "":
        return 1
    if not raw.isascii() or not raw.isdigit() or len(raw) > 9 or int(raw) < 1:
        raise HTTPException(400, f"?{name}= must be a page number, a whole number from 1; got '{raw[:40]}'")
    return int(raw)


def _actor(request: Request, session: Session, form: dict[str, str]) -> Actor:
    """Who acts, as the audit log and review decisions record it: the reviewer name the form gives, else
    "console" (the admin credential, shared by everyone who has it), with the console session's fingerprint
    and the browser's address."""
    reviewer = form.get("reviewer", "").strip() or "console"
    if "\x00" in reviewer or len(reviewer) > 64:
        raise HTTPException(400, "the note and reviewer may not contain NUL; the reviewer is at most 64 characters")
    return Actor(reviewer, "console", _fingerprint(session), request.client.host if request.client else None)


def _fingerprint(session: Session) -> str:
    """Which console session acted: a digest of its CSRF token (one per login), not the token itself."""
    return hashlib.sha256(session.csrf.encode()).hexdigest()[:16]


async def _recent_requests(state: AppState, account_id: str) -> list[dict[str, Any]]:
    from distillshield.store.review import ReviewStore

    rows = await ReviewStore(state.store).recent_requests([account_id], 20)
    # Prompts and answers stay out of this table: the page's sample prompts are redacted, revealing is logged.
    return [{k: v for k, v in r.items() if k not in ("request", "response_text")} for r in rows]


async def _form(request: Request) -> dict[str, str] | None:
    """The urlencoded form (one value per field), None when too large."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return None
    return dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))


def _safe_next(request: Request, raw: str | None) -> str:
    """Where to go after logging in: a path inside the console only (no open redirect)."""
    base = request.scope.get("root_path", "")
    if raw and raw.startswith(base + "/") and not raw.startswith("//") and "\\" not in raw and "\n" not in raw:
        return raw
    return base + "/"


def _security_headers() -> dict[str, str]:
    return {
        "content-security-policy": CSP,
        "x-content-type-options": "nosniff",
        "referrer-policy": "same-origin",
        "cache-control": "no-store",
    }


def build_console(state: AppState) -> Starlette:
    """The console as an ASGI app; the gateway mounts it at /console (gateway/app.py)."""
    c = Console(state)
    routes = [
        Route("/login", c.login_form, methods=["GET"]),
        Route("/login", c.login, methods=["POST"]),
        Route("/logout", c.action(c.logout), methods=["POST"]),
        Route("/", c.page(c.overview), methods=["GET"]),
        Route("/accounts", c.page(c.accounts), methods=["GET"]),
        Route("/accounts/{account_id:path}/limits", c.action(c.change_limits), methods=["POST"]),
        Route("/accounts/{account_id:path}/suspend", c.action(c.suspend), methods=["POST"]),
        Route("/accounts/{account_id:path}/activate", c.action(c.activate), methods=["POST"]),
        Route("/accounts/{account_id:path}/reveal", c.action(c.reveal), methods=["POST"]),
        Route("/accounts/{account_id:path}/evidence", c.action(c.evidence), methods=["POST"]),
        Route("/accounts/{account_id:path}/pins", c.action(c.pin), methods=["POST"]),
        Route("/pins/{pin_id}/lift", c.action(c.lift_pin), methods=["POST"]),
        Route("/accounts/{account_id:path}/timeline", c.page(c.account_timeline), methods=["GET"]),
        Route("/accounts/{account_id:path}", c.page(c.account), methods=["GET"]),
        Route("/review", c.page(c.review), methods=["GET"]),
        Route("/review/{ref:path}/decide", c.action(c.decide), methods=["POST"]),
        Route("/review/{ref:path}", c.page(c.review_item), methods=["GET"]),
        Route("/audit", c.page(c.audit), methods=["GET"]),
        Route("/watermark", c.page(c.watermark), methods=["GET"]),
        Route("/watermark", c.upload(c.watermark_lookup), methods=["POST"]),
        Route("/clusters", c.page(c.cluster_list), methods=["GET"]),
        Route("/clusters/{cluster_id:path}", c.page(c.cluster), methods=["GET"]),
        Route("/policy", c.page(c.policy), methods=["GET"]),
        Route("/policy/reload", c.action(c.reload_policy), methods=["POST"]),
        Mount("/static", app=StaticFiles(packages=[("distillshield.console", "static")]), name="static"),
    ]
    return Starlette(routes=routes)
