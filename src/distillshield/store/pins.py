"""Countermeasures pinned by hand: an analyst throttles, degrades or watermarks one account on purpose.

Detection and the policy file act on verdicts; an analyst sometimes knows more (a customer's complaint, a
report from another provider, an account under investigation that should not learn it is watched) and wants
a countermeasure on one account now, without waiting for a verdict and without writing a policy rule for it.
A pin is that act: the action (throttle, degrade or watermark: the graduated ones; suspending an account is
its own act), the action's parameters exactly as the policy file takes them (gateway/policy/rules.py checks
them before they are stored), who pinned it and why, and optionally when it expires.

Pins are rows of `countermeasure_pins`; every gateway replica's policy stage loads the active ones at start
and picks up changes every `policy.review_poll_s` (the replica that took the act applies it at once). The
policy engine merges a pin's effect with whatever the rules decide, the stricter value winning
(engine.py), so a pin never softens a block or challenge. Pinning and lifting are acts of the hash-chained
audit log (store/admin_log.py: `countermeasure_pinned`, `countermeasure_lifted`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from distillshield.store.admin_log import Actor, AdminLog
from distillshield.store.database import Store, StoreError
from distillshield.store.tables import accounts, countermeasure_pins

PIN_ACTIONS = ("throttle", "degrade", "watermark")
MAX_PIN_ID = 2**31 - 1  # countermeasure_pins.id is an INTEGER: a larger id is no pin (not a database error)
MAX_PINS_PER_ACCOUNT = 16  # one per action is the usual; a few more for staged changes, never unbounded


@dataclass(frozen=True)
class Pin:
    id: int
    account_id: str
    action: str
    params: dict[str, Any]
    note: str
    actor: str
    created_at: float
    expires_at: float | None
    lifted_at: float | None
    lifted_by: str | None
    updated_at: float

    def active(self, now: float | None = None) -> bool:
        """Not lifted, and not past its expiry."""
        now = time.time() if now is None else now
        return self.lifted_at is None and (self.expires_at is None or self.expires_at > now)

    @property
    def ref(self) -> str:
        """How the pin is named in a decision's rules and the audit log: pin:<id>."""
        return f"pin:{self.id}"

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "ref": self.ref, "active": self.active()}


def _active_at(now: float) -> Any:
    """`Pin.active` as a SQL condition on countermeasure_pins."""
    c = countermeasure_pins.c
    return sa.and_(c.lifted_at.is_(None), sa.or_(c.expires_at.is_(None), c.expires_at > now))


def _pin(row: Any) -> Pin:
    m = row._mapping
    return Pin(
        id=int(m["id"]),
        account_id=m["account_id"],
        action=m["action"],
        params=dict(m["params"] or {}),
        note=m["note"] or "",
        actor=m["actor"],
        created_at=float(m["created_at"]),
        expires_at=m["expires_at"],
        lifted_at=m["lifted_at"],
        lifted_by=m["lifted_by"],
        updated_at=float(m["updated_at"]),
    )


class PinStore:
    """Pinned countermeasures in a Store (SQLite or PostgreSQL)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def pin(
        self,
        account_id: str,
        action: str,
        params: dict[str, Any],
        *,
        actor: Actor,
        note: str = "",
        expires_at: float | None = None,
        now: float | None = None,
    ) -> Pin:
        """Pin `action` with `params` (already validated: gateway/policy/rules.pin_params) on an account, and
        record the act. StoreError when the account does not exist or holds too many active pins."""
        if action not in PIN_ACTIONS:
            raise StoreError(f"a pinned countermeasure is one of {', '.join(PIN_ACTIONS)}, not '{action}'")
        now = time.time() if now is None else now
        if expires_at is not None and expires_at <= now:
            raise StoreError("the pin's expiry is already past")
        c = countermeasure_pins.c
        async with self.store.engine.begin() as conn:
            found = (await conn.execute(sa.select(accounts.c.id).where(accounts.c.id == account_id))).first()
            if found is None:
                raise StoreError(f"account '{account_id}' does not exist")
            live = sa.and_(c.account_id == account_id, _active_at(now))
            n = (await conn.execute(sa.select(sa.func.count()).select_from(countermeasure_pins).where(live))).scalar()
            if int(n or 0) >= MAX_PINS_PER_ACCOUNT:
                raise StoreError(
                    f"account '{account_id}' already has {MAX_PINS_PER_ACCOUNT} active pins; lift one first"
                )
            values = {
                "account_id": account_id, "action": action, "params": params, "note": note,
                "actor": actor.name[:64], "created_at": now, "expires_at": expires_at, "lifted_at": None,
                "lifted_by": None, "updated_at": now,
            }  # fmt: skip
            try:
                res = await conn.execute(countermeasure_pins.insert().values(**values))
            except IntegrityError:  # the account was deleted between the check and the insert
                raise StoreError(f"account '{account_id}' does not exist") from None
            pin_id = int(res.inserted_primary_key[0])
        pin = Pin(id=pin_id, **values)
        detail = {"action": action, "params": params, "note": note, "expires_at": expires_at, "pin": pin.ref}
        await AdminLog(self.store).record("countermeasure_pinned", actor, subject=account_id, detail=detail)
        return pin

    async def lift(self, pin_id: int, *, actor: Actor, now: float | None = None) -> Pin:
        """Lift a pin (it stops at once on this replica, within a poll on the others), and record the act.
        StoreError when it does not exist or was lifted already."""
        if not 0 < pin_id <= MAX_PIN_ID:
            raise StoreError(f"pin {pin_id} does not exist")
        now = time.time() if now is None else now
        c = countermeasure_pins.c
        async with self.store.engine.begin() as conn:
            res = await conn.execute(
                countermeasure_pins.update()
                .where(c.id == pin_id, c.lifted_at.is_(None))
                .values(lifted_at=now, lifted_by=actor.name[:64], updated_at=now)
            )
            row = (await conn.execute(sa.select(countermeasure_pins).where(c.id == pin_id))).first()
        if row is None:
            raise StoreError(f"pin {pin_id} does not exist")
        if res.rowcount == 0:
            raise StoreError(f"pin {pin_id} was already lifted")
        pin = _pin(row)
        detail = {"action": pin.action, "pin": pin.ref}
        await AdminLog(self.store).record("countermeasure_lifted", actor, subject=pin.account_id, detail=detail)
        return pin

    async def for_account(self, account_id: str, include_past: bool = False, limit: int = 100) -> list[Pin]:
        """The account's pins, newest first: the active ones, or every one (`include_past`)."""
        c = countermeasure_pins.c
        q = sa.select(countermeasure_pins).where(c.account_id == account_id)
        if not include_past:
            q = q.where(_active_at(time.time()))
        async with self.store.engine.connect() as conn:
            return [_pin(r) for r in await conn.execute(q.order_by(sa.desc(c.id)).limit(limit))]

    async def active(self, limit: int | None = None) -> list[Pin]:
        """Every active pin, oldest first (what a replica loads at start); `limit`: the newest that many."""
        c = countermeasure_pins.c
        q = sa.select(countermeasure_pins).where(_active_at(time.time()))
        q = q.order_by(c.id) if limit is None else q.order_by(sa.desc(c.id)).limit(limit)
        async with self.store.engine.connect() as conn:
            return [_pin(r) for r in await conn.execute(q)]

    async def changed_since(self, ts: float) -> list[Pin]:
        """Pins created or lifted since `ts` (what a replica polls for)."""
        c = countermeasure_pins.c
        q = sa.select(countermeasure_pins).where(c.updated_at >= ts).order_by(c.id)
        async with self.store.engine.connect() as conn:
            return [_pin(r) for r in await conn.execute(q)]
