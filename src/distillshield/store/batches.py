"""Files and batches of the Batch API (gateway/batches.py), in the gateway's store.

A file keeps its bytes in its row (input files are bounded by `batches.max_file_bytes`). Every read and
change names the owning account: another account's file or batch is, to the caller, not there. A batch
moves validating -> in_progress -> finalizing -> completed | failed, or to cancelling -> cancelled; the
runner claims a validating batch with one conditional update, so two gateways sharing a database never
run the same batch twice. The claim is a lease (`claimed_by`, `lease_until`) that the runner renews while it
runs the batch; a batch whose lease ran out (its gateway died) is taken over by another runner, which runs only
the lines without a row in `batch_lines` (each written before its request is sent), so no request is sent twice.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from distillshield.store.tables import batch_lines, batches, files

TERMINAL = frozenset({"completed", "failed", "cancelled", "expired"})
RUNNING = ("in_progress", "finalizing", "cancelling")  # a runner holds the batch (by lease)
DEFAULT_WINDOW_S = 24 * 3600
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
    claimed_by: str | None = None  # the runner that holds the batch (BatchRunner.owner)
    lease_until: float | None = None  # until when; past it, another runner may take the batch over

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL


@dataclass(frozen=True)
class LineRecord:
    """A request of a batch that was sent: `state` sent (no answer recorded yet), output or error (`data`: the
    line of the output or error file)."""

    line: int
    custom_id: str
    state: str
    data: bytes | None


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
        window_s: float = DEFAULT_WINDOW_S,
    ) -> BatchRecord:  # fmt: skip
        """A new batch, `validating` until a runner claims it; it expires `window_s` after now."""
        now = time.time()
        b = BatchRecord(
            new_batch_id(), account_id, key_id, endpoint, input_file_id, completion_window, "validating", now, now,
            times={"expires_at": now + window_s}, user_metadata=user_metadata,
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

    async def orphaned(self, limit: int = 16) -> list[str]:
        """Ids of running batches whose lease ran out (their runner stopped renewing it), oldest first. A batch
        a release before leases left running has none, and is not among them: which of its lines ran is not
        known."""
        q = (
            sa.select(batches.c.id)
            .where(batches.c.status.in_(RUNNING), batches.c.lease_until < time.time())
            .order_by(batches.c.created_at)
        )
        async with self.engine.connect() as conn:
            return [r[0] for r in (await conn.execute(q.limit(limit))).all()]

    async def take_over(self, batch_id: str, owner: str, lease_s: float) -> bool:
        """Make `owner` the runner of a running batch whose lease ran out; True when it did (one of several
        runners trying at once does)."""
        now = time.time()
        async with self.engine.begin() as conn:
            res = await conn.execute(
                batches.update()
                .where(batches.c.id == batch_id, batches.c.status.in_(RUNNING), batches.c.lease_until < now)
                .values(claimed_by=owner, lease_until=now + lease_s, updated_at=now)
            )
        return bool(res.rowcount)

    async def renew(self, batch_ids: Sequence[str], owner: str, lease_s: float) -> set[str]:
        """Extend `owner`'s lease on these batches; the ids it still holds (another runner took over the rest)."""
        ids = list(batch_ids)
        mine = (batches.c.id.in_(ids), batches.c.claimed_by == owner)
        async with self.engine.begin() as conn:
            await conn.execute(batches.update().where(*mine).values(lease_until=time.time() + lease_s))
            return {r[0] for r in (await conn.execute(sa.select(batches.c.id).where(*mine))).all()}

    async def transition(
        self, batch_id: str, from_status: Sequence[str], to_status: str, *, owner: str | None = None, **fields: Any
    ) -> bool:
        """Move the batch to `to_status` (recording `<to_status>_at` in its times) only if it is in one of
        `from_status` (and, with `owner`, still held by that runner); True when it moved. The one way a batch
        changes state, so racing changes (a cancel during the runner's finish) cannot both win."""
        now = time.time()
        where = [batches.c.id == batch_id, batches.c.status.in_(list(from_status))]
        if owner is not None:
            where.append(batches.c.claimed_by == owner)
        async with self.engine.begin() as conn:
            row = (await conn.execute(sa.select(batches.c.times).where(*where))).first()
            if row is None:
                return False
            times = {**(row.times or {}), f"{to_status}_at": now}
            res = await conn.execute(
                batches.update().where(*where).values(status=to_status, times=times, updated_at=now, **fields)
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

    async def delete_batch(self, batch_id: str, account_id: str) -> bool:
        """Delete the account's batch once it has ended, with its input, output and error files (the audit rows
        of its requests stay); False when it is not there or still running."""
        async with self.engine.begin() as conn:
            row = (
                await conn.execute(
                    sa.select(batches.c.input_file_id, batches.c.output_file_id, batches.c.error_file_id).where(
                        batches.c.id == batch_id, batches.c.account_id == account_id
                    )
                )
            ).first()
            if row is None:
                return False
            res = await conn.execute(
                batches.delete().where(
                    batches.c.id == batch_id, batches.c.account_id == account_id, batches.c.status.in_(TERMINAL)
                )
            )
            if not res.rowcount:
                return False
            file_ids = [f for f in row if f is not None]
            await conn.execute(files.delete().where(files.c.id.in_(file_ids), files.c.account_id == account_id))
            await conn.execute(batch_lines.delete().where(batch_lines.c.batch_id == batch_id))
        return True

    # -- the lines a runner sent --------------------------------------------------------------------------

    async def claim_line(self, batch_id: str, line: int, custom_id: str, owner: str) -> bool:
        """Record that `owner` sends this line now; False when the line already has a row (another runner sent
        it): the caller must not send it."""
        try:
            async with self.engine.begin() as conn:
                await conn.execute(
                    batch_lines.insert().values(
                        batch_id=batch_id, line=line, custom_id=custom_id, state="sent", claimed_by=owner
                    )
                )
        except IntegrityError:
            return False
        return True

    async def record_line(self, batch_id: str, line: int, state: str, data: bytes) -> None:
        """The line's answer (`state` output or error, `data` its file line)."""
        async with self.engine.begin() as conn:
            await conn.execute(
                batch_lines.update()
                .where(batch_lines.c.batch_id == batch_id, batch_lines.c.line == line)
                .values(state=state, data=data)
            )

    async def sent_lines(self, batch_id: str) -> list[LineRecord]:
        """The batch's lines that were sent, by line number."""
        cols = (batch_lines.c.line, batch_lines.c.custom_id, batch_lines.c.state, batch_lines.c.data)
        q = sa.select(*cols).where(batch_lines.c.batch_id == batch_id).order_by(batch_lines.c.line)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        return [LineRecord(r.line, r.custom_id, r.state, bytes(r.data) if r.data is not None else None) for r in rows]

    async def drop_lines(self, batch_id: str) -> None:
        """Forget the batch's sent lines (its files hold their answers now)."""
        async with self.engine.begin() as conn:
            await conn.execute(batch_lines.delete().where(batch_lines.c.batch_id == batch_id))
