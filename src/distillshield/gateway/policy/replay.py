"""Shadow replay: what each rule of a policy would have done over the last day's traffic.

The store keeps no verdict history, only what each request's audit row recorded: its `decision`, which is
'allow' when no rule was involved and otherwise JSON carrying the verdict and risk detection gave the
account then (and the signals the rules named). The replay takes those, grouped by account and recorded
decision (one GROUP BY over the window), and evaluates the policy's rules on each, in order, with the
engine's own compiled conditions (`CompiledRule.checks` on an engine `Subject`), as `PolicyEngine._rules`
does: a rule acts on a request when its conditions hold and no terminal rule above it matched first;
shadow rules never stop evaluation. What the rows do not record is taken from now, and `Replay` says so:

- a request whose decision carries no verdict (no rule was involved) is replayed as unscored: benign,
  risk 0, no signals, no cluster, as the engine treats an account detection said nothing about;
- signals other than those the rules named then count 0 (they were not recorded);
- the account's cluster and the cluster's size are the risk board's now; its tier, verification and org
  the store's now; its review state the review queue's now (open and escalated as open, confirmed as
  confirmed, anything else as none: a reviewer's clear or allowlist does not hide an account here, it is
  counted in the rule's honest impact instead);
- the policy file's allowlist applies (those accounts are never acted on).

Honest impact, per rule: of the accounts it would have acted on, those a reviewer dismissed (their review
item is cleared or allowlisted) and those not flagged now (not on the risk board, or scored benign).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import sqlalchemy as sa

from distillshield.contracts import AccountRisk
from distillshield.gateway.policy.engine import CompiledPolicy, LoggedDecision, Subject
from distillshield.store.database import Account, Store
from distillshield.store.tables import accounts, audit_log, review_items

WINDOW_S = 24 * 3600
DISMISSED = frozenset({"cleared", "allowlisted"})
_REVIEW_AS = {"open": "open", "escalated": "open", "confirmed": "confirmed"}


@dataclass(frozen=True)
class LoggedDecisions:
    """`requests` audit rows of one account in the window that recorded the same `decision`."""

    account_id: str
    decision: str | None
    requests: int


@dataclass(frozen=True)
class Now:
    """What the replay takes from the present, per account (see the module's docstring)."""

    account: Account | None = None
    review: str | None = None  # the account's review item status, None when it has none
    board: AccountRisk | None = None  # its risk board entry


@dataclass
class AccountImpact:
    account_id: str
    requests: int = 0
    verdict: str | None = None  # the worst verdict recorded on the requests the rule acted on
    risk: float | None = None  # the highest risk recorded on them
    review: str | None = None
    flagged_now: bool = False

    @property
    def dismissed(self) -> bool:
        return self.review in DISMISSED


@dataclass
class RuleImpact:
    name: str
    action: str
    shadow: bool
    requests: int = 0
    accounts: dict[str, AccountImpact] = field(default_factory=dict)

    @property
    def dismissed(self) -> int:
        return sum(1 for a in self.accounts.values() if a.dismissed)

    @property
    def not_flagged(self) -> int:
        return sum(1 for a in self.accounts.values() if not a.flagged_now)

    def ranked(self) -> list[AccountImpact]:
        """Its accounts, most requests first."""
        return sorted(self.accounts.values(), key=lambda a: (-a.requests, a.account_id))


@dataclass
class Replay:
    rules: list[RuleImpact]
    requests: int = 0  # audit rows of accounts in the window
    accounts: int = 0
    unscored: int = 0  # of those requests, how many recorded no verdict (replayed as unscored)
    allowlisted: int = 0  # requests of accounts on the policy file's allowlist (never acted on)
    since: float = 0.0
    computed_at: float = field(default_factory=time.time)

    def rule(self, name: str) -> RuleImpact | None:
        return next((r for r in self.rules if r.name == name), None)


_VERDICT_RANK = {"benign": 0, "suspicious": 1, "extraction": 2}


def _recorded(decision: str | None) -> tuple[str | None, float | None, dict[str, float]]:
    """(verdict, risk, signals) a row's decision recorded; (None, None, {}) when it recorded none."""
    d = LoggedDecision.parse(decision)
    if d is None or d.verdict is None or d.risk is None:
        return None, None, {}
    return d.verdict, d.risk, d.signals


class _Ctx:
    """The part of a KeyContext the rules' conditions read (the account)."""

    __slots__ = ("account",)

    def __init__(self, account: Account) -> None:
        self.account = account


def _stand_in(account_id: str) -> Account:
    """An account the store does not hold: no org, no tier, unverified."""
    return Account(account_id, "", "", 0.0, "", "none", "")


def replay(
    policy: CompiledPolicy,
    logged: Iterable[LoggedDecisions],
    now: Mapping[str, Now],
    cluster_size: Callable[[str], int],
    since: float = 0.0,
) -> Replay:
    """Evaluate every rule of `policy` on the logged decisions; see the module's docstring."""
    out = Replay([RuleImpact(r.name, r.action, r.shadow) for r in policy.rules], since=since)
    impacts = out.rules
    seen: set[str] = set()
    for group in logged:
        out.requests += group.requests
        seen.add(group.account_id)
        present = now.get(group.account_id, Now())
        account = present.account or _stand_in(group.account_id)
        if account.id in policy.allow_accounts or account.org_id in policy.allow_orgs:
            out.allowlisted += group.requests
            continue
        verdict, risk, signals = _recorded(group.decision)
        if verdict is None:
            out.unscored += group.requests
            as_risk = None
        else:
            cluster = present.board.cluster_id if present.board is not None else None
            as_risk = AccountRisk(group.account_id, risk or 0.0, verdict, cluster, signals)
        subject = Subject(_Ctx(account), as_risk, _REVIEW_AS.get(present.review or "", "none"), cluster_size)  # type: ignore[arg-type]
        for rule, impact in zip(policy.rules, impacts, strict=True):
            if not all(check(subject) for check in rule.checks):
                continue
            impact.requests += group.requests
            a = impact.accounts.get(group.account_id)
            if a is None:
                board = present.board
                a = impact.accounts[group.account_id] = AccountImpact(
                    group.account_id,
                    review=present.review,
                    flagged_now=board is not None and board.verdict != "benign",
                )
            a.requests += group.requests
            if verdict is not None:
                if a.verdict is None or _VERDICT_RANK.get(verdict, 0) > _VERDICT_RANK.get(a.verdict, 0):
                    a.verdict = verdict
                a.risk = max(a.risk or 0.0, risk or 0.0)
            if not rule.shadow and rule.terminal:
                break
    out.accounts = len(seen)
    return out


async def logged_decisions(store: Store, since: float) -> list[LoggedDecisions]:
    """The window's audit rows with an account, grouped by account and recorded decision (one query)."""
    c = audit_log.c
    n = sa.func.count().label("n")
    q = (
        sa.select(c.account_id, c.decision, n)
        .where(c.ts >= since, c.account_id.is_not(None))
        .group_by(c.account_id, c.decision)
    )
    async with store.engine.connect() as conn:
        return [LoggedDecisions(a, d, int(k)) for a, d, k in (await conn.execute(q)).all()]


async def accounts_now(store: Store, ids: Iterable[str], board: Callable[[str], AccountRisk | None]) -> dict[str, Now]:
    """The store's accounts and review statuses and the risk board's entries for these accounts."""
    wanted = sorted(set(ids))
    found: dict[str, Account] = {}
    review: dict[str, str] = {}
    async with store.engine.connect() as conn:
        for i in range(0, len(wanted), 500):
            chunk = wanted[i : i + 500]
            for row in (await conn.execute(accounts.select().where(accounts.c.id.in_(chunk)))).mappings():
                found[row["id"]] = Account(**row)
            q = sa.select(review_items.c.subject, review_items.c.status).where(
                review_items.c.kind == "account", review_items.c.subject.in_(chunk)
            )
            review.update({s: st for s, st in (await conn.execute(q)).all()})
    return {a: Now(found.get(a), review.get(a), board(a)) for a in wanted}


async def replay_window(
    store: Store,
    policy: CompiledPolicy,
    board: Callable[[str], AccountRisk | None],
    cluster_size: Callable[[str], int],
    *,
    now: float | None = None,
    window_s: float = WINDOW_S,
) -> Replay:
    """`replay` over the store's last `window_s` seconds of audit rows."""
    since = (now if now is not None else time.time()) - window_s
    logged = await logged_decisions(store, since)
    present = await accounts_now(store, (g.account_id for g in logged), board)
    return replay(policy, logged, present, cluster_size, since)
