"""The review queue: flagged accounts and clusters with their evidence, and reviewers' decisions.

An item is opened when detection flags an account (or a cluster of accounts) suspicious or extraction;
a reviewer decides on it (the CLI `distillshield review`, or the admin API /admin/review):

- confirm: the flag is right; policy rules with `review: [confirmed]` apply (the default policy blocks);
- clear: a false positive; every action on the account stops at once and stays off until detection
  reports a worse verdict than the one cleared (then the item re-opens);
- allowlist: never act on the account again (or on its whole org, `org=True`);
- escalate: this reviewer cannot decide; the item stays under review (status escalated) for a senior
  reviewer, and the policy treats it as open: detection's own verdicts keep applying.

A decision on a cluster item applies to each of its members (recorded in the decision's `members`).
Items hold the current status; `review_decisions` keeps every decision, who made it and why, for the queue's
own pages; each decision is also a row of the hash-chained audit log (store/admin_log.py), its tamper-evident
record.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from distillshield.store.admin_log import Actor, AdminLog
from distillshield.store.database import Store, StoreError
from distillshield.store.tables import accounts, audit_log, review_decisions, review_items

DECISIONS = {"confirm": "confirmed", "clear": "cleared", "allowlist": "allowlisted", "escalate": "escalated"}
KINDS = ("account", "cluster", "org")
STATUSES = ("open", "confirmed", "cleared", "allowlisted", "escalated")
MAX_ITEM_ID = 2**31 - 1  # review_items.id is an INTEGER
VERDICT_RANK = {None: 0, "benign": 0, "suspicious": 1, "extraction": 2}


@dataclass(frozen=True)
class ReviewItem:
    id: int
    kind: str
    subject: str
    status: str
    verdict: str | None
    risk: float | None
    cluster_id: str | None
    decided_verdict: str | None
    evidence: dict[str, Any] | None
    created_at: float
    updated_at: float

    @property
    def ref(self) -> str:
        return f"{self.kind}:{self.subject}"

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "ref": self.ref}


@dataclass(frozen=True)
class ReviewDecision:
    id: int
    item_id: int
    decision: str
    scope: str
    reviewer: str
    note: str
    verdict: str | None
    members: list[str] | None
    ts: float

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Flag:
    """What detection says about one subject, for `ReviewStore.flag`."""

    kind: str
    subject: str
    verdict: str
    risk: float
    cluster_id: str | None = None
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DecisionResult:
    """A recorded decision and what it changed: the gateway applies it to its review book at once."""

    item: ReviewItem
    decision: ReviewDecision
    status: str
    accounts: list[str]
    orgs: list[str]
    cluster_id: str | None  # set for cluster items: a clear lifts the cluster's standing block

    def as_dict(self) -> dict[str, Any]:
        return {
            "item": self.item.as_dict(),
            "decision": self.decision.as_dict(),
            "status": self.status,
            "accounts": self.accounts,
            "orgs": self.orgs,
        }


def parse_ref(ref: str) -> tuple[int | None, str | None, str | None]:
    """'12' -> by id; 'account:alice', 'cluster:c3', 'org:acme' -> by subject; a bare name is an account.
    Only ASCII digits within the id column's range (32-bit on PostgreSQL) make an id: int() takes other
    digits ('\u0663') or refuses them ('\u00b2'), and the drivers refuse larger numbers."""
    if ref.isascii() and ref.isdigit() and int(ref) <= MAX_ITEM_ID:
        return int(ref), None, None
    kind, sep, subject = ref.partition(":")
    if sep and kind in KINDS and subject:
        return None, kind, subject
    return None, "account", ref


class ReviewStore:
    """Review items and decisions over the Store's engine (SQLite or PostgreSQL, SQLAlchemy Core)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # -- reading ----------------------------------------------------------------------------------

    async def get(self, ref: str) -> ReviewItem | None:
        async with self.store.engine.connect() as conn:
            return await self._get(conn, ref)

    async def _get(self, conn: AsyncConnection, ref: str) -> ReviewItem | None:
        item_id, kind, subject = parse_ref(ref)
        q = review_items.select()
        q = (
            q.where(review_items.c.id == item_id)
            if item_id is not None
            else q.where(review_items.c.kind == kind, review_items.c.subject == subject)
        )
        row = (await conn.execute(q)).mappings().first()
        return ReviewItem(**row) if row else None

    async def list_items(
        self, status: str | None = None, kind: str | None = None, limit: int = 200
    ) -> list[ReviewItem]:
        """Items, most urgent first: open before decided, then by risk."""
        if status is not None and status not in STATUSES:
            raise StoreError(f"unknown status '{status}'; choose one of {', '.join(STATUSES)}")
        if kind is not None and kind not in KINDS:
            raise StoreError(f"unknown kind '{kind}'; choose one of {', '.join(KINDS)}")
        q = review_items.select()
        if status:
            q = q.where(review_items.c.status == status)
        if kind:
            q = q.where(review_items.c.kind == kind)
        open_first = sa.case((review_items.c.status == "open", 0), else_=1)
        q = q.order_by(open_first, sa.desc(sa.func.coalesce(review_items.c.risk, 0)), review_items.c.id).limit(limit)
        async with self.store.engine.connect() as conn:
            return [ReviewItem(**r) for r in (await conn.execute(q)).mappings()]

    async def decisions(self, item_id: int) -> list[ReviewDecision]:
        q = review_decisions.select().where(review_decisions.c.item_id == item_id).order_by(review_decisions.c.id)
        async with self.store.engine.connect() as conn:
            return [ReviewDecision(**r) for r in (await conn.execute(q)).mappings()]

    async def changed_since(self, ts: float) -> list[ReviewItem]:
        """Items updated at or after `ts` (the gateway polls this for its review book)."""
        q = review_items.select().where(review_items.c.updated_at >= ts).order_by(review_items.c.updated_at)
        async with self.store.engine.connect() as conn:
            return [ReviewItem(**r) for r in (await conn.execute(q)).mappings()]

    async def recent_requests(self, account_ids: Sequence[str], limit: int = 10) -> list[dict[str, Any]]:
        """The latest audit rows of these accounts, shortened: what a reviewer checks first."""
        if not account_ids:
            return []
        c = audit_log.c
        q = (
            sa.select(c.seq, c.ts, c.account_id, c.endpoint, c.status, c.decision, c.request, c.response_text)
            .where(c.account_id.in_(list(account_ids)[:1000]))
            .order_by(sa.desc(c.seq))
            .limit(limit)
        )
        async with self.store.engine.connect() as conn:
            rows = [dict(r) for r in (await conn.execute(q)).mappings()]
        for r in rows:
            r["request"] = (r["request"] or "")[:200]
            r["response_text"] = (r["response_text"] or "")[:200]
        return rows

    # -- writing ----------------------------------------------------------------------------------

    async def flag(self, flags: Sequence[Flag], now: float | None = None) -> list[ReviewItem]:
        """Open (or update) an item per flag in one transaction; returns the items opened or re-opened.

        A cleared item re-opens only when the new verdict is worse than the one cleared; an
        allowlisted item keeps its status (its evidence is still updated).
        """
        now = now or time.time()
        opened: list[ReviewItem] = []
        for attempt in range(2):
            try:
                async with self.store.engine.begin() as conn:
                    opened = [item for f in flags if (item := await self._flag_one(conn, f, now)) is not None]
                return opened
            except IntegrityError:  # another writer opened the same item first: the retry updates it
                if attempt == 1:
                    raise
        return opened

    async def _flag_one(self, conn: AsyncConnection, f: Flag, now: float) -> ReviewItem | None:
        cur = await self._get(conn, f"{f.kind}:{f.subject}")
        values = {"verdict": f.verdict, "risk": f.risk, "cluster_id": f.cluster_id, "evidence": f.evidence}
        if cur is None:
            res = await conn.execute(
                review_items.insert().values(
                    kind=f.kind, subject=f.subject, status="open", decided_verdict=None,
                    created_at=now, updated_at=now, **values,
                )
            )  # fmt: skip
            item_id = res.inserted_primary_key[0] if res.inserted_primary_key else None
            return await self._get(conn, str(item_id)) if item_id is not None else None
        reopen = cur.status == "cleared" and VERDICT_RANK.get(f.verdict, 0) > VERDICT_RANK.get(cur.decided_verdict, 0)
        if reopen:
            values["status"] = "open"
            values["updated_at"] = now  # the gateway's poll picks the re-opened mark up
        await conn.execute(review_items.update().where(review_items.c.id == cur.id).values(**values))
        return await self._get(conn, str(cur.id)) if reopen else None

    async def decide(
        self, ref: str, decision: str, *, actor: Actor, reviewer: str = "", note: str = "", org: bool = False
    ) -> DecisionResult:
        """Record a decision on an item and apply it to the accounts (or org) it covers, then append its row
        to the audit log (`actor`: who sent it; `reviewer`: the name they gave, if any)."""
        if decision not in DECISIONS:
            raise StoreError(f"unknown decision '{decision}'; choose one of {', '.join(DECISIONS)}")
        now = time.time()
        async with self.store.engine.begin() as conn:
            item = await self._get(conn, ref)
            if item is None:
                raise StoreError(f"review item '{ref}' does not exist; `distillshield review list` shows the queue")
            status = DECISIONS[decision]
            if item.kind == "org" and decision in ("confirm", "escalate"):
                raise StoreError(f"{item.ref} is an allowlisted org: decide clear (lift the allowlist) or allowlist")
            members = [item.subject] if item.kind == "account" else list((item.evidence or {}).get("members") or [])
            if item.kind == "org":
                members = []
            orgs: list[str] = [item.subject] if item.kind == "org" else []
            scope = item.kind
            if decision == "allowlist" and org and item.kind != "org":
                scope = "org"
                q = sa.select(accounts.c.org_id).where(accounts.c.id.in_(members)).distinct()
                orgs = sorted(r[0] for r in await conn.execute(q))
                if not orgs:
                    raise StoreError(f"no account of {item.ref} exists in the store, so there is no org to allowlist")
                for o in orgs:
                    await self._set_status(conn, "org", o, "allowlisted", None, now)
            else:
                for a in members:
                    await self._set_status(conn, "account", a, status, item.verdict, now)
            await conn.execute(
                review_items.update()
                .where(review_items.c.id == item.id)
                .values(status=status, decided_verdict=item.verdict, updated_at=now)
            )
            res = await conn.execute(
                review_decisions.insert().values(
                    item_id=item.id, decision=decision, scope=scope, reviewer=reviewer, note=note,
                    verdict=item.verdict, members=orgs if scope == "org" else members, ts=now,
                )
            )  # fmt: skip
            rec_id = res.inserted_primary_key[0]
            row = (
                (await conn.execute(review_decisions.select().where(review_decisions.c.id == rec_id))).mappings().one()
            )
            updated = await self._get(conn, str(item.id))
        assert updated is not None
        applied = orgs if scope == "org" else members
        detail = {
            "decision": decision, "status": status, "scope": scope, "reviewer": reviewer, "note": note[:500],
            "verdict": item.verdict, "members": applied[:50], "member_count": len(applied), "record": rec_id,
        }  # fmt: skip
        who = dataclasses.replace(actor, name=reviewer) if reviewer else actor
        await AdminLog(self.store).record("review_decision", who, subject=item.ref, detail=detail)
        accounts_out = [] if scope == "org" else members
        return DecisionResult(
            updated, ReviewDecision(**row), status, accounts_out, orgs, item.subject if item.kind == "cluster" else None
        )

    async def _set_status(
        self, conn: AsyncConnection, kind: str, subject: str, status: str, verdict: str | None, now: float
    ) -> None:
        """Give a member account (or org) its own item with the decided status, creating it if needed."""
        cur = await self._get(conn, f"{kind}:{subject}")
        if cur is None:
            await conn.execute(
                review_items.insert().values(
                    kind=kind, subject=subject, status=status, verdict=verdict, risk=None, cluster_id=None,
                    decided_verdict=verdict, evidence=None, created_at=now, updated_at=now,
                )
            )  # fmt: skip
            return
        decided = max(cur.verdict, verdict, key=lambda v: VERDICT_RANK.get(v, 0))
        await conn.execute(
            review_items.update()
            .where(review_items.c.id == cur.id)
            .values(status=status, decided_verdict=decided, updated_at=now)
        )
