"""Files and batches of the Batch API (gateway/batches.py), in the gateway's store.

A file keeps its bytes in its row (input files are bounded by `batches.max_file_bytes`). Every read and
change names the owning account: another account's file or batch is, to the caller, not there. A batch
moves validating -> in_progress -> finalizing -> completed | failed, or to cancelling -> cancelled; the
runner claims a validating batch with one conditional update, so two gateways sharing a database never
run the same batch twice.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from distillshield.store.tables import batches, files

TERMINAL = frozenset({"completed", "failed", "cancelled", "expired"})
_FILE_COLUMNS = [c for c in files.c if c.name != "content"]


def new_file_id() -> str:
    return "file-" + secrets.token_hex(12)


def new_batch_id() -> str:
    return "batch_" + secrets.token_hex(12)


@dataclass(frozen=True)
class StoredFile:
    id: str
    account_id: str
    purpose: str
    filename: str
    bytes: int
    created_at: float


@dataclass
class BatchRecord:
    id: str
    account_id: str
    key_id: str
    endpoint: str
    input_file_id: str
    completion_window: str
    status: str
    created_at: float
    updated_at: float
    times: dict[str, float] = field(default_factory=dict)
    output_file_id: str | None = None
    error_file_id: str | None = None
    request_counts: dict[str, int] = field(default_factory=lambda: {"total": 0, "completed": 0, "failed": 0})
    errors: list[dict[str, Any]] | None = None
    user_metadata: dict[str, str] | None = None
    usage: dict[str, int] | None = None
    client_ip: str | None = None
    user_agent: str | None = None

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL


def _batch(row: Any) -> BatchRecord:
    return BatchRecord(**dict(row._mapping))


class BatchStore:
    """Files and batches over the store's engine (store.Store.engine)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    # -- files --------------------------------------------------------------------------------------------

    async def create_file(self, account_id: str, purpose: str, filename: str, content: bytes) -> StoredFile:
        f = StoredFile(new_file_id(), account_id, purpose, filename[:500], len(content), time.time())
        async with self.engine.begin() as conn:
            await conn.execute(files.insert().values(**f.__dict__, content=content))
        return f

    async def get_file(self, file_id: str, account_id: str) -> StoredFile | None:
        q = sa.select(*_FILE_COLUMNS).where(files.c.id == file_id, files.c.account_id == account_id)
        async with self.engine.connect() as conn:
            row = (await conn.execute(q)).first()
        return StoredFile(**dict(row._mapping)) if row is not None else None

    async def file_content(self, file_id: str, account_id: str) -> bytes | None:
        q = sa.select(files.c.content).where(files.c.id == file_id, files.c.account_id == account_id)
        async with self.engine.connect() as conn:
            row = (await conn.execute(q)).first()
        return bytes(row[0]) if row is not None else None

    async def list_files(
        self, account_id: str, *, purpose: str | None = None, limit: int = 100, after: str | None = None,
        descending: bool = True,
    ) -> list[StoredFile]:  # fmt: skip
        q = sa.select(*_FILE_COLUMNS).where(files.c.account_id == account_id)
        if purpose is not None:
            q = q.where(files.c.purpose == purpose)
        order = (files.c.created_at.desc(), files.c.id.desc()) if descending else (files.c.created_at, files.c.id)
        async with self.engine.connect() as conn:
            if after is not None:
                at = sa.select(files.c.created_at).where(files.c.id == after, files.c.account_id == account_id)
                cursor = (await conn.execute(at)).first()
                if cursor is not None:
                    t = cursor[0]
                    if descending:
                        q = q.where(
                            sa.or_(files.c.created_at < t, sa.and_(files.c.created_at == t, files.c.id < after))
                        )
                    else:
                        q = q.where(
                            sa.or_(files.c.created_at > t, sa.and_(files.c.created_at == t, files.c.id > after))
                        )
            rows = (await conn.execute(q.order_by(*order).limit(limit))).all()
        return [StoredFile(**dict(r._mapping)) for r in rows]

    async def delete_file(self, file_id: str, account_id: str) -> bool:
        async with self.engine.begin() as conn:
            res = await conn.execute(files.delete().where(files.c.id == file_id, files.c.account_id == account_id))
        return bool(res.rowcount)

    # -- batches ------------------------------------------------------------------------------------------

    async def create_batch(
        self, *, account_id: str, key_id: str, endpoint: str, input_file_id: str, completion_window: str,
        user_metadata: dict[str, str] | None, total: int, client_ip: str | None = None, user_agent: str | None = None,
    ) -> BatchRecord:  # fmt: skip
        now = time.time()
        b = BatchRecord(
            new_batch_id(), account_id, key_id, endpoint, input_file_id, completion_window, "validating", now, now,
            times={"expires_at": now + 24 * 3600}, user_metadata=user_metadata,
            request_counts={"total": total, "completed": 0, "failed": 0}, client_ip=client_ip, user_agent=user_agent,
        )  # fmt: skip
        async with self.engine.begin() as conn:
            await conn.execute(batches.insert().values(**b.__dict__))
        return b

    async def get_batch(self, batch_id: str, account_id: str | None = None) -> BatchRecord | None:
        """The batch; with `account_id`, only when that account owns it."""
        q = sa.select(batches).where(batches.c.id == batch_id)
        if account_id is not None:
            q = q.where(batches.c.account_id == account_id)
        async with self.engine.connect() as conn:
            row = (await conn.execute(q)).first()
        return _batch(row) if row is not None else None

    async def list_batches(
        self, account_id: str, *, limit: int = 20, after: str | None = None, endpoints: Sequence[str] | None = None
    ) -> list[BatchRecord]:
        """The account's batches (of these endpoints), newest first; `after`: those created before that batch
        (the SDK's cursor)."""
        q = sa.select(batches).where(batches.c.account_id == account_id)
        if endpoints is not None:
            q = q.where(batches.c.endpoint.in_(list(endpoints)))
        async with self.engine.connect() as conn:
            if after is not None:
                at = sa.select(batches.c.created_at).where(batches.c.id == after, batches.c.account_id == account_id)
                cursor = (await conn.execute(at)).first()
                if cursor is not None:
                    t = cursor[0]
                    q = q.where(
                        sa.or_(batches.c.created_at < t, sa.and_(batches.c.created_at == t, batches.c.id < after))
                    )
            rows = (await conn.execute(q.order_by(batches.c.created_at.desc(), batches.c.id.desc()).limit(limit))).all()
        return [_batch(r) for r in rows]

    async def waiting(self, limit: int = 16) -> list[str]:
        """Ids of batches waiting to run (validating), oldest first."""
        q = sa.select(batches.c.id).where(batches.c.status == "validating").order_by(batches.c.created_at)
        async with self.engine.connect() as conn:
            return [r[0] for r in (await conn.execute(q.limit(limit))).all()]

    async def transition(self, batch_id: str, from_status: Sequence[str], to_status: str, **fields: Any) -> bool:
        """Move the batch to `to_status` (recording `<to_status>_at` in its times) only if it is in one of
        `from_status`; True when it moved. The one way a batch changes state, so racing changes (a cancel
        during the runner's finish) cannot both win."""
        now = time.time()
        async with self.engine.begin() as conn:
            row = (
                await conn.execute(sa.select(batches.c.times, batches.c.status).where(batches.c.id == batch_id))
            ).first()
            if row is None or row.status not in from_status:
                return False
            times = {**(row.times or {}), f"{to_status}_at": now}
            res = await conn.execute(
                batches.update()
                .where(batches.c.id == batch_id, batches.c.status.in_(list(from_status)))
                .values(status=to_status, times=times, updated_at=now, **fields)
            )
        return bool(res.rowcount)

    async def update(self, batch_id: str, **fields: Any) -> None:
        """Record progress (request counts, usage) without changing the status."""
        async with self.engine.begin() as conn:
            await conn.execute(
                batches.update().where(batches.c.id == batch_id).values(updated_at=time.time(), **fields)
            )

    async def status(self, batch_id: str) -> str | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(batches.c.status).where(batches.c.id == batch_id))).first()
        return row[0] if row is not None else None
