"""What the enforcing actions do to a request: scaled limits, and the 403s for block and challenge.

Throttle scales the limits of the request's scopes (key, account, org) by a factor; with
`scope: cluster` every member of the cluster also shares one extra scope, 'cluster:<id>', whose limits
are by default one throttled account's: a hydra of a thousand accounts gets the budget of one.
"""

from __future__ import annotations

import math

from distillshield.config import LimitSet
from distillshield.gateway.errors import ApiError
from distillshield.gateway.limits import Scope
from distillshield.gateway.policy.engine import Decision
from distillshield.gateway.policy.rules import BlockParams, ChallengeParams, ThrottleParams
from distillshield.store.database import VERIFICATION_LEVELS, KeyContext

BLOCK_CODES = {"key": "key_blocked", "account": "account_blocked", "org": "org_blocked", "cluster": "cluster_blocked"}


class PolicyRefusal(ApiError):
    """A 403 the policy decided; carries the decision so the audit row records rule and signals."""

    def __init__(self, message: str, code: str, decision: Decision) -> None:
        super().__init__(403, message, code=code)
        self.decision = decision


def scaled(limits: LimitSet, factor: float) -> LimitSet:
    """Every finite limit times `factor`, at least 1; unlimited stays unlimited."""

    def f(v: int | None) -> int | None:
        return None if v is None else max(1, math.floor(v * factor))

    return LimitSet(rpm=f(limits.rpm), tpm=f(limits.tpm), concurrent=f(limits.concurrent), tpd=f(limits.tpd))


_Entry = tuple[tuple[Scope, ...], LimitSet | None, tuple[Scope, ...]]


class Throttler:
    """Throttled scopes per (scopes, parameters, cluster), cached: the same caller gets the same objects."""

    def __init__(self, max_entries: int = 50_000) -> None:
        # keyed by id(scopes): the entry holds the tuple itself, so that id cannot be reused meanwhile
        self._cache: dict[tuple[int, float, str, str | None], _Entry] = {}
        self.max_entries = max_entries

    def scopes(self, scopes: tuple[Scope, ...], t: ThrottleParams, cluster_id: str | None) -> tuple[Scope, ...]:
        key = (id(scopes), t.factor, t.scope, cluster_id if t.scope == "cluster" else None)
        hit = self._cache.get(key)
        if hit is not None and hit[0] is scopes and hit[1] == t.cluster_limits:
            return hit[2]
        out = [Scope(s.kind, s.id, scaled(s.limits, t.factor)) for s in scopes]
        if t.scope == "cluster" and cluster_id:
            account = next((s for s in out if s.kind == "account"), out[0])
            out.append(Scope("cluster", cluster_id, t.cluster_limits or account.limits))
        result = tuple(out)
        if len(self._cache) >= self.max_entries:
            self._cache.clear()
        self._cache[key] = (scopes, t.cluster_limits, result)
        return result


def block_refusal(decision: Decision, block: BlockParams, ctx: KeyContext, cluster_id: str | None) -> PolicyRefusal:
    scope = block.scope if (block.scope != "cluster" or cluster_id) else "account"
    what = {
        "key": f"API key {ctx.key.id}",
        "account": f"account {ctx.account.id}",
        "org": f"org {ctx.account.org_id}",
        "cluster": f"account {ctx.account.id} (as a member of a blocked group of accounts)",
    }[scope]
    message = block.message or (
        f"{what} is blocked by the provider's usage policy (rule '{decision.rule}'): the traffic matches "
        "automated extraction of model outputs. If this is a mistake, contact support and quote this request's id "
        "(x-request-id header) to have it reviewed."
    )
    return PolicyRefusal(message, BLOCK_CODES[scope], decision)


def challenge_refusal(decision: Decision, ch: ChallengeParams, ctx: KeyContext, url: str) -> PolicyRefusal:
    levels = VERIFICATION_LEVELS[VERIFICATION_LEVELS.index(ch.level) :]
    if ch.message:
        message = ch.message.format(url=url, level=ch.level, account=ctx.account.id)
    else:
        message = (
            f"verification required: account {ctx.account.id} must verify its identity (level '{ch.level}' or "
            f"above: {', '.join(levels)}; now '{ctx.account.verification}') before this API serves it again. "
            f"Verify at {url}, then retry the request."
        )
    return PolicyRefusal(message, "verification_required", decision)
