"""The policy stage of the request path, and its upkeep beside it.

In the request path (`apply`, between parse and limits): read the account's risk from the risk board,
match the request against imported threat-intelligence indicators when a rule reads `intel_match`
(`state.intel`, intel/live.py: its client address, user agent and template frame, so a new account is acted
on at its first matching request), decide, record the decision in the audit row, then enforce: 403 for
block and challenge; request caps (before the token reservation, which is computed from max_tokens and
n); throttled scopes for the limiter; the account's watermark; and a response transform for the
upstream's answer.

Beside it (`start`/`stop`, a gateway extension): load the review book from the store, then every
`policy.review_poll_s` queue newly flagged accounts and clusters from the risk board and pick up review
decisions and countermeasures pinned by hand (store/pins.py) made elsewhere (the CLI, another replica).
Decisions and pins made through this replica's admin API or console apply at once. SIGHUP (and POST
/admin/policy/reload) reloads the policy file; an invalid file is rejected with a message naming the rule and
the previous policy stays active.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distillshield.config import ConfigError, PolicySettings
from distillshield.contracts import VERDICT_RANK, AccountRisk, IntelHit, RiskBoard
from distillshield.gateway.limits import Scope
from distillshield.gateway.policy.actions import Throttler, block_refusal, challenge_refusal
from distillshield.gateway.policy.engine import (
    ALLOW,
    BlockBook,
    CompiledPolicy,
    Decision,
    Mark,
    PinnedEffect,
    PolicyEngine,
    compile_policy,
)
from distillshield.gateway.policy.rules import DEFAULT_POLICY, PolicyError, WatermarkParams, load_policy, pin_params
from distillshield.gateway.transforms import ResponseTransform, cap_request
from distillshield.gateway.upstream.base import GenRequest
from distillshield.outage import Outage
from distillshield.store.admin_log import Actor, AdminLog
from distillshield.store.database import KeyContext, StoreError
from distillshield.store.pins import Pin, PinStore
from distillshield.store.review import DecisionResult, Flag, ReviewItem, ReviewStore

if TYPE_CHECKING:
    from distillshield.gateway.app import AppState
    from distillshield.gateway.policy.shared import SharedBlocks

log = logging.getLogger("distillshield.policy")
_POLL_MARGIN_S = 5.0  # re-read a little before the last poll: clocks of replicas and the CLI differ


class PolicyStage:
    name = "policy"

    def __init__(
        self,
        settings: PolicySettings,
        board: RiskBoard,
        share: Callable[[BlockBook], SharedBlocks | None] | None = None,
    ) -> None:
        self.settings = settings
        self.board = board
        self.path = Path(settings.file) if settings.file else DEFAULT_POLICY
        self.engine = PolicyEngine(self._load(self.path), cluster_size=board.cluster_size, mode=settings.mode)
        # standing blocks shared with the other replicas (a fleet: policy/shared.py), or this process's alone
        self.shared_blocks = share(self.engine.blocks) if share is not None else None
        self.throttler = Throttler()
        self.counts: Counter[str] = Counter()  # decisions by action ('shadow:<action>' when not enforced)
        self.review: ReviewStore | None = None
        self.pins: PinStore | None = None
        self._state: AppState | None = None
        self._task: asyncio.Task[None] | None = None
        self._seen = 0.0
        self._queued: dict[tuple[str, str], tuple[Any, ...]] = {}
        self._watermarked: dict[str, tuple[str, str | None]] = {}
        self._sighup = False
        self._background: set[asyncio.Task[None]] = set()  # SIGHUP reloads in flight (held: not collected)
        self._outage = Outage(log, "policy upkeep (review book scan and refresh)")

    @classmethod
    def from_settings(
        cls, settings: PolicySettings, board: RiskBoard, share: Callable[[BlockBook], SharedBlocks | None] | None = None
    ) -> PolicyStage:
        try:
            return cls(settings, board, share)
        except PolicyError as exc:
            raise ConfigError(f"policy.file: {exc}") from None

    @staticmethod
    def _load(path: Path) -> CompiledPolicy:
        return compile_policy(load_policy(path), str(path))

    @property
    def policy(self) -> CompiledPolicy:
        return self.engine.policy

    # -- the request path -------------------------------------------------------------------------

    def apply(
        self, ctx: KeyContext, gen: GenRequest, scopes: tuple[Scope, ...], row: dict[str, Any]
    ) -> tuple[tuple[Scope, ...], ResponseTransform | None, Decision | None]:
        """Decide and enforce for one request: (scopes for the limiter, response transform, decision).

        Raises PolicyRefusal (403) for block and challenge. Records the decision in `row`.
        """
        risk = self.board.get(ctx.account.id)
        d = self.engine.decide(ctx, risk, self.intel_match(row.get("ip"), row.get("user_agent"), gen.body, gen.api))
        if d is ALLOW:
            row["decision"] = "allow"
            return scopes, None, None
        row["decision"] = d.audit()
        if d.shadow:
            self.counts["shadow:" + d.action] += 1
            return scopes, None, d
        self.counts[d.action] += 1
        e = d.effects
        cluster_id = risk.cluster_id if risk is not None else None
        if e.block is not None:
            raise block_refusal(d, e.block, ctx, cluster_id)
        if e.challenge is not None:
            raise challenge_refusal(d, e.challenge, ctx, self.settings.verification_url)
        transform = None
        g = e.degrade
        if g is not None:
            cap_request(gen, drop_logprobs=g.drop_logprobs, max_tokens=g.max_tokens, n=g.n)
            if g.reasoning != "keep" or g.drop_logprobs:
                transform = ResponseTransform(
                    gen.api,
                    reasoning=g.reasoning,
                    sections=g.sections,
                    summary_chars=g.summary_chars,
                    open_at_start=g.open_at_start,
                    drop_logprobs=g.drop_logprobs,
                )
        if e.watermark is not None:
            self._watermark(ctx.account.id, e.watermark, cluster_id)
        if e.throttle is not None:
            scopes = self.throttler.scopes(scopes, e.throttle, cluster_id)
        return scopes, transform, d

    def intel_match(
        self, ip: str | None, user_agent: str | None, body: dict[str, Any] | None = None, api: str = "chat"
    ) -> IntelHit | None:
        """The imported indicator a request matches (`state.intel`, intel/live.py), when a rule of the policy
        reads `intel_match`; None otherwise, or when no indicators are loaded."""
        intel = self._state.intel if self._state is not None else None
        if intel is None or not self.engine.policy.uses_intel:
            return None
        return intel.match_request(ip, user_agent, body, api)

    def _watermark(self, account_id: str, w: WatermarkParams, cluster_id: str | None) -> None:
        want = (w.mode, cluster_id if w.key == "cluster" else None)
        if self._watermarked.get(account_id) == want:
            return
        # Integration point: the watermark extension publishes its registry as state.watermark; without
        # it (no watermark.secret configured) the decision still records the intent in the audit log.
        registry = self._state.watermark if self._state is not None else None
        if registry is None:
            return
        if want[1] is not None:
            registry.set(account_id, w.mode, key_scope="cluster", cluster_id=want[1])
        else:
            registry.set(account_id, w.mode, key_scope="account")
        self._watermarked[account_id] = want

    # -- reload -----------------------------------------------------------------------------------

    def reload(self, path: str | Path | None = None, mode: str | None = None) -> CompiledPolicy:
        """Load the policy file again (or another one); on PolicyError the current policy stays."""
        p = Path(path) if path else self.path
        compiled = self._load(p)
        self.engine.policy = compiled  # one assignment: requests see the old or the new policy, whole
        self.path = p
        if mode is not None:
            self.engine.set_mode(mode)
        log.info("policy loaded from %s: %d rules, mode %s", p, len(compiled.rules), self.engine.mode)
        return compiled

    def describe(self) -> dict[str, Any]:
        p = self.policy
        return {
            "source": p.source,
            "mode": self.engine.mode,
            "loaded_at": p.loaded_at,
            "rules": [r.model_dump(by_alias=True, exclude_defaults=True) for r in p.doc.rules],
            "allowlist": p.doc.allowlist.model_dump(),
            "decisions": dict(self.counts),
            "standing_blocks": [
                {
                    "scope": b.scope,
                    "subject": b.subject,
                    "rule": b.decision.rule,
                    "since": b.ts,
                    "shadow": b.decision.shadow,
                }
                for b in self.engine.blocks.all()
            ],
            "review_book": {
                "accounts": len(self.engine.book.accounts),
                "allowlisted_orgs": sorted(self.engine.book.orgs),
            },
            "pinned": sum(len(p) for p in self.engine.pins.accounts.values()),
        }

    # -- upkeep: review book, queue ---------------------------------------------------------------

    async def start(self, state: AppState) -> None:
        self._state = state
        self.review = ReviewStore(state.store)
        self.pins = PinStore(state.store)
        if self.shared_blocks is not None:  # the blocks that stand in the fleet, before the review book lifts any
            await self.shared_blocks.start()
        await self.refresh(full=True)
        self._task = asyncio.create_task(self._upkeep(), name="distillshield-policy")
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError, AttributeError):
            # only possible on the main thread's loop (not where tests run the server in a thread)
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._on_sighup)
            self._sighup = True
        log.info("policy %s: %d rules, mode %s", self.path, len(self.policy.rules), self.engine.mode)

    async def stop(self) -> None:
        if self._sighup:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.shared_blocks is not None:
            await self.shared_blocks.stop()

    async def reload_recorded(self, path: str | Path | None, mode: str | None, actor: Actor) -> CompiledPolicy:
        """`reload`, then record it in the audit log (store/admin_log.py) as `actor`'s act; a bad file raises
        PolicyError and the old policy stays: nothing happened, nothing is recorded."""
        compiled = self.reload(path, mode)
        assert self._state is not None
        await AdminLog(self._state.store).record(
            "policy_reload", actor, subject=compiled.source,
            detail={"rules": len(compiled.rules), "mode": self.engine.mode},
        )  # fmt: skip
        return compiled

    def _on_sighup(self) -> None:
        task = asyncio.create_task(self._sighup_reload(), name="policy-reload-sighup")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _sighup_reload(self) -> None:
        try:
            await self.reload_recorded(None, None, Actor("sighup", "signal"))
        except PolicyError as exc:
            log.error("policy reload on SIGHUP rejected, the previous policy stays active: %s", exc)
        except StoreError as exc:  # reloaded, but not recorded
            log.error("policy reloaded on SIGHUP, but the audit log could not record it: %s", exc)

    async def _upkeep(self) -> None:
        while True:
            await asyncio.sleep(self.settings.review_poll_s)
            await self.upkeep_once()

    async def upkeep_once(self) -> None:
        """One tick of upkeep: scan for new verdicts, refresh the review book. A failure (the store away) is
        logged once per outage; the next tick retries and the request path is unaffected."""
        try:
            await self.scan()
            await self.refresh()
        except Exception as exc:  # noqa: BLE001 - retried on the next tick
            self._outage.failed(exc, self.settings.review_poll_s)
        else:
            self._outage.succeeded()

    async def refresh(self, full: bool = False) -> int:
        """Apply review items and pins changed since the last poll (all of them when `full`) to the review book
        and the pin book; returns how many changes were read."""
        assert self.review is not None and self.pins is not None
        started = time.time()
        since = 0.0 if full else self._seen - _POLL_MARGIN_S
        items = await self.review.changed_since(since)
        for item in items:
            self._apply_item(item)
        pins = await (self.pins.active() if full else self.pins.changed_since(since))
        for pin in pins:
            self._apply_pin(pin)
        for account_id, gone in self.engine.pins.expired(started):
            self._unwatermark(account_id, gone)
        self._seen = started
        return len(items) + len(pins)

    def _apply_pin(self, pin: Pin) -> None:
        book = self.engine.pins
        if not pin.active():
            gone = book.drop(pin.account_id, pin.ref)
            if gone is not None:
                self._unwatermark(pin.account_id, gone)
            return
        if pin.ref in book.accounts.get(pin.account_id, {}):
            return  # a pin does not change once made: seen already
        try:
            params = pin_params(pin.action, pin.params)
        except PolicyError as exc:  # written by a release whose params this one does not read
            log.warning("pin %s on account %s not applied: %s", pin.ref, pin.account_id, exc)
            return
        book.set(pin.account_id, PinnedEffect(pin.ref, pin.action, params, pin.expires_at))

    def _unwatermark(self, account_id: str, gone: PinnedEffect) -> None:
        """A watermark pin ended: drop the account's watermark; a rule that still asks for one sets it again at
        the account's next request."""
        if gone.action != "watermark" or self._watermarked.pop(account_id, None) is None:
            return
        registry = self._state.watermark if self._state is not None else None
        if registry is not None:
            registry.clear(account_id)

    async def pin(
        self,
        account_id: str,
        action: str,
        params: dict[str, Any] | None,
        *,
        actor: Actor,
        note: str = "",
        expires_at: float | None = None,
    ) -> Pin:
        """Pin a countermeasure on an account by hand (checked like a policy rule's params: PolicyError names
        the field), record the act, and apply it to this gateway at once."""
        assert self.pins is not None
        parsed = pin_params(action, params)
        pin = await self.pins.pin(
            account_id, action, parsed.model_dump(mode="json"), actor=actor, note=note, expires_at=expires_at
        )
        self._apply_pin(pin)
        return pin

    async def lift(self, pin_id: int, *, actor: Actor) -> Pin:
        """Lift a pinned countermeasure, record the act, and stop it on this gateway at once."""
        assert self.pins is not None
        pin = await self.pins.lift(pin_id, actor=actor)
        self._apply_pin(pin)
        return pin

    def _apply_item(self, item: ReviewItem) -> None:
        book, blocks = self.engine.book, self.engine.blocks
        if item.kind == "org":
            book.allow_org(item.subject, item.status == "allowlisted")
            return
        if item.kind == "cluster":
            if item.status in ("cleared", "allowlisted"):
                blocks.lift("cluster", item.subject, set_before=item.updated_at + _POLL_MARGIN_S)
            return
        mark = Mark(item.status, VERDICT_RANK.get(item.decided_verdict or "benign", 0), item.updated_at)
        if book.accounts.get(item.subject) == mark:
            return  # seen already: re-applying a clear would lift blocks set since
        book.set(item.subject, mark)
        if item.status in ("cleared", "allowlisted"):
            # what stood when the decision was made (replicas' clocks differ: a margin), not a block set since on
            # a worse verdict: a replica that starts loads the fleet's blocks, then replays the whole review book
            blocks.lift_account(item.subject, set_before=item.updated_at + _POLL_MARGIN_S)
            if self._watermarked.pop(item.subject, None) is not None:
                registry = self._state.watermark if self._state is not None else None
                if registry is not None:
                    registry.clear(item.subject)

    async def scan(self) -> int:
        """Queue accounts and clusters the risk board flags (and whose flag changed) for review; returns
        how many items were opened or updated."""
        assert self.review is not None
        flags: list[Flag] = []
        clusters: dict[str, list[AccountRisk]] = {}
        for r in self.board.all():
            if r.cluster_id:
                clusters.setdefault(r.cluster_id, []).append(r)
            if r.verdict == "benign":
                continue
            sig = (r.verdict, round(r.risk, 2), r.cluster_id)
            if self._queued.get(("account", r.account_id)) != sig:
                self._queued[("account", r.account_id)] = sig
                evidence = {
                    "reasons": list(r.reasons)[:12],
                    "signals": dict(r.signals),
                    "source": r.source,
                    "detected_at": r.updated_at,
                }
                flags.append(Flag("account", r.account_id, r.verdict, r.risk, r.cluster_id, evidence))
        for cid, members in clusters.items():
            flagged = [m for m in members if m.verdict != "benign"]
            if not flagged:
                continue
            worst = max(flagged, key=lambda m: (VERDICT_RANK[m.verdict], m.risk))
            ids = sorted(m.account_id for m in members)
            sig = (worst.verdict, round(worst.risk, 2), tuple(ids), len(flagged))
            if self._queued.get(("cluster", cid)) == sig:
                continue
            self._queued[("cluster", cid)] = sig
            reasons: dict[str, dict[str, Any]] = {}
            for m in flagged:
                for reason in m.reasons:
                    name = str(reason.get("signal"))
                    if name not in reasons or float(reason.get("score") or 0) > float(reasons[name].get("score") or 0):
                        reasons[name] = {**reason, "account_id": m.account_id}
            evidence = {
                "members": ids,
                "flagged": len(flagged),
                "member_risk": {m.account_id: round(m.risk, 4) for m in members},
                "reasons": sorted(reasons.values(), key=lambda x: -float(x.get("score") or 0))[:12],
            }
            flags.append(Flag("cluster", cid, worst.verdict, worst.risk, cid, evidence))
        if not flags:
            return 0
        for item in await self.review.flag(flags):  # opened or re-opened: their marks apply at once
            self._apply_item(item)
        return len(flags)

    async def decide(
        self, ref: str, decision: str, *, actor: Actor, reviewer: str = "", note: str = "", org: bool = False
    ) -> DecisionResult:
        """Record a review decision (and its audit-log row) and apply it to this gateway at once."""
        assert self.review is not None
        result = await self.review.decide(ref, decision, actor=actor, reviewer=reviewer, note=note, org=org)
        await self.refresh()
        if result.cluster_id is not None and result.status in ("cleared", "allowlisted"):
            self.engine.blocks.lift("cluster", result.cluster_id)
        return result

    def live(self, account_id: str) -> dict[str, Any]:
        """What the gateway holds about one account now: risk, review mark, standing blocks."""
        risk = self.board.get(account_id)
        mark = self.engine.book.accounts.get(account_id)
        blocks = [
            {"scope": b.scope, "subject": b.subject, "rule": b.decision.rule}
            for b in self.engine.blocks.all()
            if b.account_id == account_id
            or (risk is not None and b.scope == "cluster" and b.subject == risk.cluster_id)
        ]
        pins = self.engine.pins.active(account_id, time.time())
        return {
            "risk": risk.as_dict() if risk is not None else None,
            "review": {"state": mark.state, "since": mark.ts} if mark is not None else None,
            "standing_blocks": blocks,
            "pins": [{"ref": p.ref, "action": p.action, "expires_at": p.expires_at} for p in pins],
            "watermark": self._watermarked.get(account_id, (None,))[0],
        }
