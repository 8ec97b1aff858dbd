"""The policy's admin API (mounted under /admin with the admin token): policy, risk reports, review queue.

    GET  /admin/policy                      the active policy, mode, decision counts, standing blocks
    POST /admin/policy/reload               {"path"?, "mode"?}: reload; 400 names the bad rule, the old policy stays
    POST /admin/risk                        an analyser REPORT.json: loads every account's verdict into the risk board
    GET  /admin/review?status=&kind=        the queue, open items first, riskiest first
    GET  /admin/review/{ref}                one item: evidence, decisions, recent requests, live state
    POST /admin/review/{ref}/decide         {"decision": confirm|clear|allowlist, "note", "reviewer", "org"}
    POST /admin/review/scan                 queue what the risk board flags now (instead of waiting a poll)
    GET  /admin/accounts/{id}/pins?all=     countermeasures pinned on the account by hand (active, or all)
    POST /admin/accounts/{id}/pins          {"action": throttle|degrade|watermark, "params", "note", "expires_in_s"}
    DELETE /admin/pins/{pin_id}             lift a pinned countermeasure

`ref` is an item id, or kind:subject (account:alice, cluster:c3, org:acme), or a bare account id.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Literal

from fastapi import FastAPI, HTTPException, Query, Request
from pydantic import BaseModel, Field

from distillshield.gateway.policy.rules import PolicyError
from distillshield.gateway.risk import risks_from_report
from distillshield.store.admin_log import Actor
from distillshield.store.database import NO_NUL
from distillshield.store.pins import Pin, PinStore
from distillshield.store.review import ReviewStore

if TYPE_CHECKING:
    from distillshield.gateway.app import AppState
    from distillshield.gateway.policy.stage import PolicyStage


class ReloadIn(BaseModel):
    path: str | None = Field(None, pattern=NO_NUL, description="another policy file; default: the one loaded")
    mode: Literal["enforce", "shadow"] | None = Field(None, description="switch mode too")


class DecideIn(BaseModel):
    decision: Literal["confirm", "clear", "allowlist", "escalate"]
    note: str = Field("", pattern=NO_NUL)
    reviewer: str = Field("", max_length=64, pattern=NO_NUL)  # the width of review_decisions.reviewer
    org: bool = Field(False, description="allowlist: the account's whole org instead of the account")


class PinIn(BaseModel):
    action: Literal["throttle", "degrade", "watermark"] = Field(..., description="the countermeasure to pin")
    params: dict[str, Any] = Field(
        default_factory=dict, description="the action's params, as a policy rule takes them (docs/policy.md)"
    )
    note: str = Field("", max_length=2000, pattern=NO_NUL, description="why (kept with the pin and in the audit log)")
    expires_in_s: float | None = Field(
        None, gt=0, le=366 * 86400, description="lift it by itself after this many seconds; default: until lifted"
    )


def register_policy_routes(app: FastAPI, state: AppState, deps: list[Any]) -> None:
    """Add the policy endpoints to the admin app."""

    def stage() -> PolicyStage:
        return policy_stage(state)

    @app.get("/policy", dependencies=deps)
    async def policy_show() -> dict[str, Any]:
        return stage().describe()

    @app.post("/policy/reload", dependencies=deps)
    async def policy_reload(request: Request, body: ReloadIn | None = None) -> dict[str, Any]:
        st = stage()
        body = body or ReloadIn()
        try:
            compiled = await st.reload_recorded(body.path, body.mode, api_actor(request))
        except PolicyError as exc:
            raise HTTPException(400, f"{exc} (the previous policy from {st.policy.source} stays active)") from None
        return {"loaded": compiled.source, "rules": len(compiled.rules), "mode": st.engine.mode}

    @app.post("/risk", dependencies=deps)
    async def risk_load(report: dict[str, Any]) -> dict[str, Any]:
        """Load an analyser report (`distillshield analyze` REPORT.json) into the risk board."""
        try:
            risks = risks_from_report(report)
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        state.risk.update_many(risks)
        queued = 0
        if state.policy is not None and state.policy.review is not None:
            queued = await state.policy.scan()  # queue the flagged accounts now, not at the next poll
        flagged = sum(1 for r in risks if r.verdict != "benign")
        return {"loaded": len(risks), "flagged": flagged, "queued": queued}

    @app.get("/review", dependencies=deps)
    async def review_list(
        status: str | None = None, kind: str | None = None, limit: int = Query(200, ge=1, le=10_000)
    ) -> dict[str, Any]:
        items = await ReviewStore(state.store).list_items(status, kind, limit)
        return {"items": [i.as_dict() for i in items]}

    @app.post("/review/scan", dependencies=deps)
    async def review_scan() -> dict[str, Any]:
        st = stage()
        queued = await st.scan()
        await st.refresh()
        return {"queued": queued}

    @app.get("/review/{ref}", dependencies=deps)
    async def review_show(ref: str) -> dict[str, Any]:
        return await review_detail(state, ref)

    @app.get("/accounts/{account_id}/pins", dependencies=deps)
    async def pins_list(account_id: str, all: bool = False) -> dict[str, Any]:  # noqa: A002 - the query name
        pins = await PinStore(state.store).for_account(account_id, include_past=all)
        return {"pins": [p.as_dict() for p in pins]}

    @app.post("/accounts/{account_id}/pins", status_code=201, dependencies=deps)
    async def pins_add(account_id: str, body: PinIn, request: Request) -> dict[str, Any]:
        """Pin a countermeasure on the account by hand: merged into every decision for it, the stricter value
        winning, until lifted or expired; applied at once here, within policy.review_poll_s on other replicas."""
        return (await pin_countermeasure(state, account_id, body, api_actor(request))).as_dict()

    @app.delete("/pins/{pin_id}", dependencies=deps)
    async def pins_lift(pin_id: int, request: Request) -> dict[str, Any]:
        return (await stage().lift(pin_id, actor=api_actor(request))).as_dict()

    @app.post("/review/{ref}/decide", dependencies=deps)
    async def review_decide(ref: str, body: DecideIn, request: Request) -> dict[str, Any]:
        result = await stage().decide(
            ref, body.decision, actor=api_actor(request), reviewer=body.reviewer, note=body.note, org=body.org
        )
        return result.as_dict()


async def review_detail(state: AppState, ref: str) -> dict[str, Any]:
    """An item with its decisions, its accounts' latest requests and (in a gateway) their live state."""
    store = ReviewStore(state.store)
    item = await store.get(ref)
    if item is None:
        raise HTTPException(404, f"review item '{ref}' does not exist; GET /admin/review lists the queue")
    members = [item.subject] if item.kind == "account" else list((item.evidence or {}).get("members") or [])
    out: dict[str, Any] = {
        "item": item.as_dict(),
        "decisions": [d.as_dict() for d in await store.decisions(item.id)],
        "recent_requests": await store.recent_requests(members, 10),
    }
    if state.policy is not None and item.kind == "account":
        out["live"] = state.policy.live(item.subject)
    return out


def policy_stage(state: AppState) -> PolicyStage:
    """The gateway's policy stage, for an act that needs it (admin API and console); 409 when it is disabled."""
    if state.policy is None:
        raise HTTPException(409, "the policy stage is disabled (policy.enabled: false in the config)")
    return state.policy


async def pin_countermeasure(state: AppState, account_id: str, body: PinIn, actor: Actor) -> Pin:
    """Pin through the policy stage (admin API and console): 409 without one, 400 naming a bad param."""
    stage = policy_stage(state)
    expires_at = time.time() + body.expires_in_s if body.expires_in_s is not None else None
    try:
        return await stage.pin(account_id, body.action, body.params, actor=actor, note=body.note, expires_at=expires_at)
    except PolicyError as exc:
        raise HTTPException(400, str(exc)) from None


def api_actor(request: Request) -> Actor:
    """Who calls the admin API: the admin credential (one for everyone) and the caller's address."""
    return Actor("admin-api", "admin-api", ip=request.client.host if request.client else None)
