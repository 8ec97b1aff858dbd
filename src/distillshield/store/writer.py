"""The audit log writer, off the request path: the gateway's, and the audit workers'.

Handlers hand finished rows to `submit()` (a queue put, no I/O); a background task writes them in
batches to its sink (contracts.AuditSink): the database, each batch one transaction that extends the hash
chain and the Merkle tree, or the audit event stream (workers/stream.py) that `worker audit` processes move
into the database with this same writer (`idempotent=True`). `stop()` drains the
queue, so a graceful shutdown (SIGTERM) loses no accepted request.

When the database is unreachable, batches go to a durable local spool (store/spool.py) instead of waiting
in memory, and a drain task moves them into the database, in order and exactly once, as soon as it is
back (and at the next start, for a spool a killed process left behind). The drain writes many spooled
batches per transaction, so it catches up under the load that filled the spool.

Durable answers (`durable=True`, the default: `audit.durable_answers`): `submit` returns a future that is
done once the row is committed (or spooled), and the request answers only then, so no answer a client saw
is unrecorded even if the process is killed the next instant. The writer group-commits: while requests wait,
it does not linger for a batch to gather (`flush_interval_s`) but writes what is queued at once, and
what arrives during one commit forms the next batch. With `durable=False`, rows are acknowledged only while
the database is away (then they wait for the spool). When neither the database nor the spool can take
rows, `accepting` turns false and the gateway answers 503 before serving anything.

With a checkpointer, the writer signs the tree head every `checkpoint_every_rows` rows or
`checkpoint_every_s` seconds (when rows were added), in a task of its own so a slow checkpoint command
never holds up the log, and once more on stop.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from distillshield.contracts import AuditSink
from distillshield.outage import Outage
from distillshield.store.checkpoint import Checkpointer
from distillshield.store.database import Store
from distillshield.store.spool import Spool, SpoolError

log = logging.getLogger("distillshield.audit")

DRAIN_ROWS = 5000  # spooled rows moved into the database per transaction


class AuditWriter:
    def __init__(
        self,
        store: AuditSink,
        batch_size: int = 256,
        flush_interval_s: float = 0.05,
        *,
        checkpointer: Checkpointer | None = None,
        checkpoint_every_rows: int = 1000,
        checkpoint_every_s: float = 60.0,
        spool: Spool | None = None,
        durable: bool = True,
        idempotent: bool = False,
    ) -> None:
        """`store`: the log (store.Store) or the audit event stream (workers/stream.py). `idempotent`: rows
        whose request id the log holds are skipped under the chain lock (the audit workers, whose input is
        delivered at least once)."""
        self.store = store
        self.idempotent = idempotent
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self._queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.written = 0
        self.failed_batches = 0
        self.spool = spool
        self.spooled = 0  # rows written to the spool (all time)
        self.store_down = False  # the last write found the database unreachable
        self.spool_failed: str | None = None  # why the spool refused the last batch it was given
        self.durable = durable
        self._acks: dict[int, asyncio.Future[None]] = {}  # id(row) -> its request's wait for durability
        self._drain_task: asyncio.Task[None] | None = None
        self._drain_wake = asyncio.Event()
        # Cleared while the drain, having reached the database again, moves the spool into it.
        self._drain_idle = asyncio.Event()
        self._drain_idle.set()
        self._drain_outage = Outage(log, "moving the audit spool into the database")
        self.checkpointer = checkpointer
        self.checkpoint_every_rows = checkpoint_every_rows
        self.checkpoint_every_s = checkpoint_every_s
        self.checkpoints = 0
        self.failed_checkpoints = 0
        self._unsigned = 0  # rows written since the last checkpoint began
        self._signing: asyncio.Task[None] | None = None
        self._timer: asyncio.Task[None] | None = None

    def submit(self, row: dict[str, Any]) -> asyncio.Future[None] | None:
        """Queue a finished row. Returns a future that is done once the row is durable (committed or
        spooled) when the writer is durable or the database is away, else None: the request awaits it
        before answering."""
        self._queue.put_nowait(row)
        if not (self.durable or self.store_down):
            return None
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._acks[id(row)] = fut
        return fut

    @property
    def accepting(self) -> bool:
        """False when rows could not be made durable now: the database is unreachable and there is no spool,
        or the spool refused rows (full, disk error). The gateway then refuses new requests with 503."""
        return not self.store_down or (self.spool is not None and self.spool_failed is None)

    @property
    def spool_pending(self) -> int:
        """Batches in the spool, not yet in the database."""
        return len(self.spool) if self.spool is not None else 0

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="distillshield-audit")
        if self.spool is not None:
            self._drain_task = asyncio.create_task(self._drain(), name="distillshield-audit-spool")
        if self.checkpointer is not None:
            self._timer = asyncio.create_task(self._checkpoint_timer(), name="distillshield-checkpoints")

    async def flush(self) -> None:
        """Wait until everything submitted so far is written, and a checkpoint it made due is signed (tests,
        admin)."""
        await self._queue.join()
        if self._signing is not None:
            await self._signing

    async def stop(self) -> None:
        """Write everything queued (to the spool, while the database is away: a shutdown does not wait for
        the database), then stop; spooled batches wait for the next start."""
        if self._task is None:
            return
        self._queue.put_nowait(None)
        await self._task
        self._task = None
        if self._drain_task is not None:
            self._drain_task.cancel()
            await asyncio.gather(self._drain_task, return_exceptions=True)
            self._drain_task = None
        if self._timer is not None:
            self._timer.cancel()
            await asyncio.gather(self._timer, return_exceptions=True)
            self._timer = None
        if self._signing is not None:
            await self._signing
        if self.checkpointer is not None and self._unsigned:
            await self._checkpoint()  # the last rows before shutdown are signed too

    def _maybe_checkpoint(self, force: bool = False) -> None:
        """Start a checkpoint in the background when one is due and none is running."""
        if self.checkpointer is None or not self._unsigned:
            return
        if not force and self._unsigned < self.checkpoint_every_rows:
            return
        if self._signing is None or self._signing.done():
            self._signing = asyncio.create_task(self._checkpoint(), name="distillshield-checkpoint")

    async def _checkpoint_timer(self) -> None:
        while True:
            await asyncio.sleep(self.checkpoint_every_s)
            self._maybe_checkpoint(force=True)

    async def _checkpoint(self) -> None:
        assert self.checkpointer is not None
        self._unsigned = 0
        try:
            assert isinstance(self.store, Store)  # checkpoints are signed where the log is written
            if await self.checkpointer.checkpoint(self.store) is not None:
                self.checkpoints += 1
        except Exception as exc:  # noqa: BLE001 - a failed checkpoint is logged and retried; the log goes on
            self.failed_checkpoints += 1
            log.error("audit checkpoint failed: %s", exc)

    async def _run(self) -> None:
        stopping = False
        while not stopping:
            item = await self._queue.get()
            got = 1
            batch: list[dict[str, Any]] = []
            if item is None:
                stopping = True
            else:
                batch.append(item)
                if not self._acks and self._queue.qsize() < self.batch_size:
                    # Nobody waits for these rows: let a batch gather. (Rows someone waits for are written
                    # at once; those that arrive meanwhile make the next batch: group commit.)
                    await asyncio.sleep(self.flush_interval_s)
            while not self._queue.empty() and (stopping or len(batch) < self.batch_size):
                item = self._queue.get_nowait()
                got += 1
                if item is None:
                    stopping = True  # drain whatever is left behind the stop marker too
                else:
                    batch.append(item)
            if batch:
                if not self._drain_idle.is_set():
                    # The drain is moving the spool into the database, which answers again: wait for it to
                    # finish rather than add batches behind it (under load it would never see the spool
                    # empty), then write directly.
                    await self._drain_idle.wait()
                if self.spool is not None and (self.store_down or self.spool_pending):
                    # Batches already wait in the spool: later ones queue behind them, in order.
                    if not self._to_spool(batch):
                        await self._write(batch)
                else:
                    await self._write(batch)
                self._maybe_checkpoint()
                self._ack(batch)
            for _ in range(got):
                self._queue.task_done()

    def _ack(self, batch: list[dict[str, Any]]) -> None:
        if self._acks:
            for r in batch:
                fut = self._acks.pop(id(r), None)
                if fut is not None and not fut.done():
                    fut.set_result(None)

    def _to_spool(self, batch: list[dict[str, Any]]) -> bool:
        """Spool a batch durably; False (and `accepting` turns false) when the spool refuses it."""
        assert self.spool is not None
        try:
            self.spool.append(batch)
        except SpoolError as exc:
            if self.spool_failed is None:
                log.error("%s; audit rows wait in memory and new requests get 503", exc)
            self.spool_failed = str(exc)
            return False
        self.spool_failed = None
        self.spooled += len(batch)
        self._drain_wake.set()
        return True

    async def _drain(self) -> None:
        """Move spooled batches into the database, oldest first, whenever it answers. Consecutive batches
        go in one transaction of up to DRAIN_ROWS rows (a transaction per small batch could not keep up with
        the load that keeps adding batches behind them). A batch whose rows the database already holds (a
        crash between its commit and the batch's removal) is not written twice."""
        assert self.spool is not None
        delay = 0.1
        while True:
            if not self.spool_pending:
                self._drain_wake.clear()
                await self._drain_wake.wait()
            try:
                while self.spool_pending:
                    group = self.spool.batches(max_rows=DRAIN_ROWS)
                    rows_all = [r for b in group for r in b.rows]
                    held = await self.store.existing_request_ids([r["request_id"] for r in rows_all])
                    self._drain_idle.clear()  # the database answers: the writer stops adding to the spool
                    rows = [r for r in rows_all if r["request_id"] not in held]
                    if rows:
                        await self.store.append_audit(rows)
                        self.written += len(rows)
                        self._unsigned += len(rows)
                    for b in group:
                        self.spool.remove(b)
                # The spool is empty at this instant (no await since the check): later batches go straight
                # to the database.
                self.store_down = False
                self.spool_failed = None
                self._drain_idle.set()
                self._drain_outage.succeeded()
                log.info("audit spool drained into the database")
                delay = 0.1
            except Exception as exc:  # noqa: BLE001 - the database is still away: try again later
                self._drain_idle.set()
                self._drain_outage.failed(exc, 5.0)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _write(self, batch: list[dict[str, Any]]) -> None:
        """Write a batch; retry while the database is away, isolate rows it refuses."""
        delay = 0.1
        while True:
            try:
                await self.store.append_audit(batch, skip_existing=self.idempotent)
                self.written += len(batch)
                self._unsigned += len(batch)
                if self.store_down and not self.spool_pending:
                    self.store_down = False  # back, and nothing waits in a spool
                return
            except Exception as exc:  # noqa: BLE001 - classified below; the writer must never die
                if await self.store.ping():
                    break  # the database is up but refuses this data: isolate the bad row below
                self.failed_batches += 1
                if not self.store_down:
                    log.error("audit write of %d rows failed: the database is unreachable (%s)", len(batch), exc)
                self.store_down = True
                if self.spool is not None and self._to_spool(batch):
                    return  # durable in the spool; the drain task takes it to the database later
                # No spool (or it refuses): keep the rows in memory and retry with backoff.
                log.debug("audit write of %d rows failed (%s); retrying in %.1f s", len(batch), exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        if len(batch) > 1:
            mid = len(batch) // 2
            await self._write(batch[:mid])
            await self._write(batch[mid:])
            return
        log.error("audit row %s refused by the database; storing it without its texts", batch[0].get("request_id"))
        stripped = {
            **batch[0],
            "request": None,
            "response_text": None,
            "user_agent": None,
            "error": "audit row could not be stored in full (the database refused its text)",
        }
        if stripped != batch[0]:
            await self._write([stripped])
