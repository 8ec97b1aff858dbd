"""The admin API (FastAPI, mounted at /admin): accounts, keys, audit-log checks.

It has its own credential: a bearer token whose sha256 is in the config (admin.token_sha256), compared
in constant time. With no admin token configured the admin API answers 403 to everything.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field, field_validator

from distillshield.config import AdminSettings, LimitSet
from distillshield.gateway.policy.admin import api_actor, register_policy_routes
from distillshield.store import admin_log
from distillshield.store.admin_log import Actor, AdminLogUnavailable, record_key_change
from distillshield.store.database import NO_NUL, TIERS, VERIFICATION_LEVELS, StoreError, check_created_at
from distillshield.store.pins import PinStore

if TYPE_CHECKING:
    from distillshield.gateway.app import AppState

# Swagger UI (swagger-ui-dist 5.35.0, Apache-2.0) ships in the package (gateway/static/): the page works offline.
SWAGGER_UI = "static"
DOCS_PAGE = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>DistillShield admin API</title>
<link rel="stylesheet" href="{SWAGGER_UI}/swagger-ui.css"></head>
<body>
<form id="login" style="font-family:sans-serif;margin:2em">
  <label>Admin token <input id="token" type="password" autocomplete="off" size="48"></label>
  <button>Load the API</button> <span id="msg"></span>
</form>
<div id="ui"></div>
<script src="{SWAGGER_UI}/swagger-ui-bundle.js"></script>
<script>
document.getElementById("login").addEventListener("submit", async (ev) => {{
  ev.preventDefault();
  const token = document.getElementById("token").value.trim();
  const r = await fetch("openapi.json", {{headers: {{"Authorization": "Bearer " + token}}}});
  if (!r.ok) {{ document.getElementById("msg").textContent = (await r.json()).detail; return; }}
  document.getElementById("login").style.display = "none";
  const ui = SwaggerUIBundle({{spec: await r.json(), dom_id: "#ui",
    requestInterceptor: (req) => {{ req.headers["Authorization"] = "Bearer " + token; return req; }}}});
}});
</script></body></html>
"""


# Lengths are the store's column widths (store/tables.py): PostgreSQL refuses longer text, SQLite would keep it.
class AccountIn(BaseModel):
    id: str = Field(..., min_length=1, max_length=64, pattern=NO_NUL)
    org_id: str = Field("default", min_length=1, max_length=64, pattern=NO_NUL)
    name: str = Field("", max_length=200, pattern=NO_NUL)
    tier: str = Field("standard", description=f"one of {', '.join(TIERS)}")
    verification: str = Field("none", description=f"one of {', '.join(VERIFICATION_LEVELS)}")
    limits: LimitSet | None = None
    created_at: float | None = Field(
        None,
        gt=0,
        description="when the account was created, Unix seconds, for accounts brought over from another system "
        "(default: now); not in the future",
    )

    @field_validator("created_at")
    @classmethod
    def _not_future(cls, v: float | None) -> float | None:
        if v is not None:
            try:
                check_created_at(v)  # the store's rule, checked here so the answer is a 422 naming the field
            except StoreError as exc:
                raise ValueError(str(exc)) from None
        return v


class KeyIn(BaseModel):
    account_id: str = Field(..., min_length=1, max_length=64, pattern=NO_NUL)
    name: str = Field("", max_length=200, pattern=NO_NUL)
    limits: LimitSet | None = None


def admin_token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def configured_admin_digest(adm: AdminSettings) -> str | None:
    """The admin token's sha256 (from token_sha256, or hashed from a plain token); None: admin disabled."""
    return adm.token_sha256 or (admin_token_digest(adm.token) if adm.token else None)


def bearer_refusal(request: Request, digests: list[str], what: str) -> tuple[int, str] | None:
    """None when the request's bearer token hashes to one of `digests` (compared in constant time, every
    digest tried), else the (status, message) to refuse it with."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return 401, f"missing {what} token: send 'Authorization: Bearer <{what} token>'"
    got = admin_token_digest(token.strip())
    ok = False
    for d in digests:
        ok |= hmac.compare_digest(got, d)
    return None if ok else (401, f"invalid {what} token")


_ERRORS = {
    "400": "bad input: a malformed value, or a NUL character in an id or query parameter",
    "401": "missing or invalid admin token",
    "403": "the admin API is disabled (no admin token configured)",
}


def _declare_errors(doc: dict[str, Any]) -> None:
    """Declare in the spec the errors every operation can answer besides FastAPI's 422, all with the body
    {"detail": "..."}: 400/401/403 everywhere, 404 where a path names something, 409 where a POST creates."""
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas["AdminError"] = {
        "title": "AdminError",
        "type": "object",
        "properties": {"detail": {"type": "string", "title": "Detail"}},
        "required": ["detail"],
    }
    body = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/AdminError"}}}}
    for path, ops in doc.get("paths", {}).items():
        for method, op in ops.items():
            errors = dict(_ERRORS)
            if "{" in path:
                errors["404"] = "no such object"
            if method == "post":
                errors["409"] = "it exists already, or conflicts with its current state"
            responses = op.setdefault("responses", {})
            for status, what in errors.items():
                responses.setdefault(status, {"description": what, **body})


def build_admin_app(state: AppState) -> FastAPI:
    """`state` is the gateway's AppState (store, auth, limiter, audit, settings)."""
    # The spec and its docs page are served by the routes below, behind the admin token like the rest.
    app = FastAPI(title="DistillShield admin API", docs_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(packages=[("distillshield.gateway", "static")]), name="static")
    expected = configured_admin_digest(state.settings.admin)

    async def require_admin(request: Request) -> None:
        # PostgreSQL text cannot hold NUL: an id with one can name nothing, and the driver would raise.
        if "\x00" in request.url.path or "%00" in request.url.query.lower():
            raise HTTPException(400, "ids and query parameters may not contain NUL characters (%00)")
        if expected is None:
            raise HTTPException(403, "the admin API is disabled: set admin.token_sha256 (see `distillshield init`)")
        refusal = bearer_refusal(request, [expected], "admin")
        if refusal is not None:
            raise HTTPException(*refusal)

    @app.exception_handler(StoreError)
    async def _store_error(_request: Request, exc: StoreError) -> JSONResponse:
        status = store_error_status(exc)
        headers = {"retry-after": "5"} if status == 503 else None
        return JSONResponse({"detail": str(exc)}, status_code=status, headers=headers)

    deps = [Depends(require_admin)]

    def spec(root_path: str) -> dict[str, Any]:
        """The OpenAPI document, with the admin bearer scheme declared so that clients (and the docs
        page's "Try it out") send the token, and the mount point as its server."""
        if app.openapi_schema is None:
            servers = [{"url": root_path}] if root_path else None
            doc = get_openapi(title=app.title, version=app.version, routes=app.routes, servers=servers)
            doc.setdefault("components", {})["securitySchemes"] = {
                "adminBearer": {"type": "http", "scheme": "bearer", "description": "the admin token"}
            }
            doc["security"] = [{"adminBearer": []}]
            _declare_errors(doc)
            app.openapi_schema = doc
        return app.openapi_schema

    @app.get("/openapi.json", dependencies=deps, include_in_schema=False)
    async def openapi_json(request: Request) -> dict[str, Any]:
        return spec(request.scope.get("root_path", ""))

    @app.get("/docs", include_in_schema=False)
    async def docs_page() -> HTMLResponse:
        # A page, not data: it asks for the admin token, then loads the spec with it (the spec itself
        # is only served with the token) and hands it to Swagger UI.
        return HTMLResponse(DOCS_PAGE)

    @app.get("/accounts", dependencies=deps)
    async def list_accounts(org_id: str | None = None) -> dict[str, Any]:
        return {"accounts": [a.__dict__ for a in await state.store.list_accounts(org_id)]}

    @app.post("/accounts", status_code=201, dependencies=deps)
    async def create_account(body: AccountIn) -> dict[str, Any]:
        limits = body.limits.model_dump(exclude_none=True) if body.limits else None
        acct = await state.store.create_account(
            body.id,
            body.org_id,
            name=body.name,
            tier=body.tier,
            verification=body.verification,
            limits=limits,
            created_at=body.created_at,
        )
        return acct.__dict__

    @app.get("/accounts/{account_id}", dependencies=deps)
    async def show_account(account_id: str) -> dict[str, Any]:
        acct = await state.store.get_account(account_id)
        if acct is None:
            raise HTTPException(404, f"account '{account_id}' does not exist")
        return {
            **acct.__dict__,
            "keys": [k.public() for k in await state.store.list_keys(account_id)],
            "usage": await state.store.account_usage(account_id),
            "in_flight": await state.limiter.in_flight(f"account:{account_id}"),
            "detection": _detection(state, account_id),
            # countermeasures pinned by hand that are active (store/pins.py; GET .../pins?all=true: every one)
            "pins": [p.as_dict() for p in await PinStore(state.store).for_account(account_id)],
        }

    @app.get("/risk", dependencies=deps)
    async def risk_board(min_risk: float = 0.0, verdict: str | None = None) -> dict[str, Any]:
        """Every account's latest detection verdict (online or loaded from a report), riskiest first."""
        rows = [r.as_dict() for r in state.risk.all()]
        rows = [r for r in rows if r["risk"] >= min_risk and (verdict is None or r["verdict"] == verdict)]
        det = state.detection
        return {"accounts": sorted(rows, key=lambda r: -r["risk"]), "detection": det.status() if det else None}

    @app.post("/accounts/{account_id}/suspend", dependencies=deps)
    async def suspend(account_id: str, request: Request) -> dict[str, str]:
        await set_account_status(state, account_id, "suspended", api_actor(request))
        return {"id": account_id, "status": "suspended"}

    @app.post("/accounts/{account_id}/activate", dependencies=deps)
    async def activate(account_id: str, request: Request) -> dict[str, str]:
        await set_account_status(state, account_id, "active", api_actor(request))
        return {"id": account_id, "status": "active"}

    @app.post("/accounts/{account_id}/limits", dependencies=deps)
    async def change_limits(account_id: str, body: LimitSet, request: Request) -> dict[str, Any]:
        """Replace the account's own limits (a field left out: the configured default for its tier applies)."""
        limits = await set_account_limits(state, account_id, body, api_actor(request))
        return {"id": account_id, "limits": limits}

    @app.get("/keys", dependencies=deps)
    async def list_keys(account_id: str | None = None) -> dict[str, Any]:
        return {"keys": [k.public() for k in await state.store.list_keys(account_id)]}

    @app.post("/keys", status_code=201, dependencies=deps)
    async def create_key(body: KeyIn, request: Request) -> dict[str, Any]:
        limits = body.limits.model_dump(exclude_none=True) if body.limits else None
        key, plaintext = await state.store.create_key(body.account_id, body.name, limits)
        await record_key_change(state.store, "key_created", key, api_actor(request))
        return {**key.public(), "key": plaintext, "note": "store this key now: it is not shown again"}

    @app.delete("/keys/{key_id}", dependencies=deps)
    async def revoke_key(key_id: str, request: Request) -> dict[str, Any]:
        key = await state.store.revoke_key(key_id)
        state.auth.invalidate(key_id=key_id)
        await record_key_change(state.store, "key_revoked", key, api_actor(request))
        return key.public()

    @app.get("/limits/{kind}/{scope_id}", dependencies=deps)
    async def limits_state(kind: str, scope_id: str) -> dict[str, Any]:
        if kind not in ("key", "account", "org"):
            raise HTTPException(400, "kind must be key, account or org")
        return {
            "scope": f"{kind}:{scope_id}",
            "in_flight": await state.limiter.in_flight(f"{kind}:{scope_id}"),
        }

    @app.post("/audit/flush", dependencies=deps)
    async def audit_flush() -> dict[str, Any]:
        await state.audit.flush()
        seq, head = await state.store.chain_head()
        return {"written": state.audit.written, "head_seq": seq, "head_hash": head}

    @app.get("/audit/verify", dependencies=deps)
    async def audit_verify() -> dict[str, Any]:
        await state.audit.flush()
        return (await state.store.verify_chain()).as_dict()

    register_policy_routes(app, state, deps)  # /policy, /risk (POST), /review: gateway/policy/admin.py
    return app


def store_error_status(exc: StoreError) -> int:
    """The HTTP status for a store refusal (admin API and console): 503 when the audit log could not record
    an act, 404 for a missing object, 409 for one that already is as asked, else 400."""
    if isinstance(exc, AdminLogUnavailable):
        return 503
    text = str(exc)
    return 404 if "does not exist" in text else 409 if "already" in text else 400


async def set_account_status(state: AppState, account_id: str, status: str, actor: Actor) -> None:
    """Suspend or activate an account (recorded in the audit log); its keys' cached lookups are dropped so
    the next request sees it."""
    try:
        await admin_log.set_account_status(state.store, account_id, status, actor)
    finally:  # recorded or not, the store holds the new status
        state.auth.invalidate(account_id=account_id)


async def set_account_limits(state: AppState, account_id: str, limits: LimitSet, actor: Actor) -> dict[str, Any] | None:
    """Replace an account's own limits (recorded in the audit log); the next request of any of its keys is
    limited by them."""
    stored = limits.model_dump(exclude_none=True) or None
    try:
        await admin_log.set_account_limits(state.store, account_id, stored, actor)
    finally:
        state.auth.invalidate(account_id=account_id)
    return stored


def _detection(state: AppState, account_id: str) -> dict[str, Any] | None:
    """The account's risk, verdict and reasons from online detection (or the risk board), None if unscored."""
    det = state.detection
    found = det.account(account_id) if det is not None else None
    if found is None:
        board_entry = state.risk.get(account_id)
        found = board_entry.as_dict() if board_entry is not None else None
    return found
