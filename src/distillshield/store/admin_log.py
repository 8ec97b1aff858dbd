"""What operators did: one row of the hash-chained audit log per administrative act.

Review decisions, suspending or reactivating an account, changing its limits, pinning or lifting a
countermeasure by hand, creating or revoking a key, reloading the policy, and the console's acts that expose
data (revealing an account's prompts, a watermark lookup) are appended to the same audit log as the requests,
so `logs verify`, the Merkle tree and the signed checkpoints cover them: an act cannot be removed or edited
afterwards without the log showing it.

An act's row has the endpoint `admin/<action>`, a request id of its own (`adm_...`), no account, key or org
(the rows are not traffic: export, analysis and detection read only rows with an account), status 200, and
as its request body a JSON object: who acted (`actor`: the reviewer name given, else "console", "admin-api"
or "cli:<user>"), through what (`via`), the console session's fingerprint, the subject (an account, key,
review item or policy) and a small `detail`. The row is written once the act is done and before its answer is
sent; if it cannot be written, the act's caller gets an error (the act itself may have taken effect: the
error says so).

Read back newest first through a partial index on the admin rows (tables.py), so the console's list does not
scan the request rows.
"""

from __future__ import annotations

import getpass
import sqlite3
import time
import uuid
from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from distillshield.store.database import ApiKey, Store, StoreError
from distillshield.store.tables import ADMIN_ENDPOINT_PREFIX, audit_log, is_admin_row

ACTIONS = (
    "review_decision",
    "account_status",
    "account_limits",
    "key_created",
    "key_revoked",
    "policy_reload",
    "reveal_prompts",
    "watermark_lookup",
    "evidence_bundle",
    "countermeasure_pinned",
    "countermeasure_lifted",
)


class AdminLogUnavailable(StoreError):
    """An act's row could not be written (the database is away): the caller answers 503, not 4xx."""


@dataclass(frozen=True)
class Actor:
    """Who acts: a name (the reviewer named, else "console", "admin-api" or "cli:<user>"), the surface they
    act through (`via`: console, admin-api, cli), the console session's fingerprint, and the address the act
    came from."""

    name: str
    via: str
    session: str = ""
    ip: str | None = None

    @classmethod
    def cli(cls) -> Actor:
        """The operator running a CLI command: "cli:" and the OS user."""
        try:
            user = getpass.getuser()
        except (KeyError, OSError):  # no user name in the environment or the password database
            user = "unknown"
        return cls(f"cli:{user}", "cli")


@dataclass(frozen=True)
class AdminAction:
    """One act, as read back from its audit row (`seq` is the row's place in the chain)."""

    seq: int
    ts: float
    action: str
    actor: str
    via: str
    session: str
    subject: str | None
    detail: dict[str, Any] | None
    ip: str | None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def admin_row(
    action: str,
    actor: Actor,
    *,
    subject: str | None = None,
    detail: dict[str, Any] | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """The audit row for one act (not yet chained: `Store.append_audit` numbers and links it)."""
    if action not in ACTIONS:
        raise ValueError(f"unknown admin action '{action}'; one of {', '.join(ACTIONS)}")
    body = {
        "actor": actor.name[:64], "via": actor.via, "session": actor.session[:32], "subject": subject,
        "detail": detail or {},
    }  # fmt: skip
    return {
        "ts": now if now is not None else time.time(),
        "request_id": "adm_" + uuid.uuid4().hex,
        "account_id": None,
        "org_id": None,
        "key_id": None,
        "ip": actor.ip,
        "user_agent": None,
        "endpoint": ADMIN_ENDPOINT_PREFIX + action,
        "model": None,
        "stream": False,
        "status": 200,
        "latency_ms": 0.0,
        "request": orjson.dumps(body).decode(),
        "response_text": None,
        "finish_reason": None,
        "prompt_tokens": None,
        "completion_tokens": None,
        "decision": None,
        "error": None,
    }


def parse_row(row: dict[str, Any]) -> AdminAction:
    """An admin row of the audit log as an `AdminAction` (a body that is not the expected object reads as
    empty: the row's hash still says whether it was edited)."""
    try:
        body = orjson.loads(row.get("request") or "{}")
    except orjson.JSONDecodeError:
        body = {}
    body = body if isinstance(body, dict) else {}
    detail = body.get("detail")
    subject = body.get("subject")
    return AdminAction(
        seq=int(row["seq"]),
        ts=float(row["ts"]),
        action=str(row["endpoint"]).removeprefix(ADMIN_ENDPOINT_PREFIX),
        actor=str(body.get("actor") or ""),
        via=str(body.get("via") or ""),
        session=str(body.get("session") or ""),
        subject=str(subject) if subject is not None else None,
        detail=detail if isinstance(detail, dict) else None,
        ip=row.get("ip"),
    )


class AdminLog:
    """Administrative acts in the audit log of a Store (SQLite or PostgreSQL)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def record(
        self, action: str, actor: Actor, *, subject: str | None = None, detail: dict[str, Any] | None = None
    ) -> int:
        """Append one act's row to the chain; returns its seq. `AdminLogUnavailable` if it cannot."""
        row = admin_row(action, actor, subject=subject, detail=detail)
        try:
            return await self.store.append_audit([row])
        except (DBAPIError, sqlite3.Error, OSError) as exc:
            raise AdminLogUnavailable(
                f"the audit log could not record this {action.replace('_', ' ')} ({type(exc).__name__}); "
                "if the act changed something, it took effect but is not in the log: retry once the store is back"
            ) from None

    async def page(self, limit: int, offset: int = 0) -> tuple[list[AdminAction], int]:
        """Newest first: `limit` acts from `offset`, and how many there are in all."""
        c = audit_log.c
        where = is_admin_row()
        q = (
            sa.select(c.seq, c.ts, c.endpoint, c.request, c.ip)
            .where(where)
            .order_by(sa.desc(c.seq))
            .limit(limit)
            .offset(offset)
        )
        async with self.store.engine.connect() as conn:
            total = (await conn.execute(sa.select(sa.func.count()).select_from(audit_log).where(where))).scalar_one()
            rows = [parse_row(dict(r)) for r in (await conn.execute(q)).mappings()]
        return rows, int(total)


async def record_key_change(store: Store, action: str, key: ApiKey, actor: Actor) -> int:
    """A key created or revoked (`key_created`, `key_revoked`): its id, account and name, never the secret."""
    detail = {"account_id": key.account_id, "name": key.name}
    return await AdminLog(store).record(action, actor, subject=key.id, detail=detail)


async def set_account_status(store: Store, account_id: str, status: str, actor: Actor) -> None:
    """Suspend or reactivate an account, and record it."""
    await store.set_account_status(account_id, status)
    await AdminLog(store).record("account_status", actor, subject=account_id, detail={"status": status})


async def set_account_limits(store: Store, account_id: str, limits: dict[str, int] | None, actor: Actor) -> None:
    """Replace an account's own limits (None: its tier's defaults), and record it."""
    await store.set_account_limits(account_id, limits)
    await AdminLog(store).record("account_limits", actor, subject=account_id, detail={"limits": limits})
