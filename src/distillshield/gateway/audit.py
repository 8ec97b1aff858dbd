"""The off-path audit log writer.

Handlers hand finished rows to `submit()` (a queue put, no I/O); a background task writes them in
batches, each batch one transaction that extends the hash chain and the Merkle tree. `stop()` drains the
queue, so a graceful shutdown (SIGTERM) loses no accepted request.

With a checkpointer, the writer signs the tree head every `checkpoint_every_rows` rows or
`checkpoint_every_s` seconds (when rows were added), in a task of its own so a slow checkpoint command
never holds up the log, and once more on stop.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from distillshield.store.checkpoint import Checkpointer
from distillshield.store.database import Store

log = logging.getLogger("distillshield.audit")


class AuditWriter:
    def __init__(
        self,
        store: Store,
        batch_size: int = 256,
        flush_interval_s: float = 0.05,
        *,
        checkpointer: Checkpointer | None = None,
        checkpoint_every_rows: int = 1000,
        checkpoint_every_s: float = 60.0,
    ) -> None:
        self.store = store
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self._queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.written = 0
        self.failed_batches = 0
        self.checkpointer = checkpointer
        self.checkpoint_every_rows = checkpoint_every_rows
        self.checkpoint_every_s = checkpoint_every_s
        self.checkpoints = 0
        self.failed_checkpoints = 0
        self._unsigned = 0  # rows written since the last checkpoint began
        self._signing: asyncio.Task[None] | None = None
        self._timer: asyncio.Task[None] | None = None

    def submit(self, row: dict[str, Any]) -> None:
        self._queue.put_nowait(row)

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="distillshield-audit")
        if self.checkpointer is not None:
            self._timer = asyncio.create_task(self._checkpoint_timer(), name="distillshield-checkpoints")

    async def flush(self) -> None:
        """Wait until everything submitted so far is written, and a checkpoint it made due is signed (tests,
        admin)."""
        await self._queue.join()
        if self._signing is not None:
            await self._signing

    async def stop(self) -> None:
        """Write everything queued, then stop."""
        if self._task is None:
            return
        self._queue.put_nowait(None)
        await self._task
        self._task = None
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
                if self._queue.qsize() < self.batch_size:
                    await asyncio.sleep(self.flush_interval_s)  # let a batch gather
            while not self._queue.empty() and (stopping or len(batch) < self.batch_size):
                item = self._queue.get_nowait()
                got += 1
                if item is None:
                    stopping = True  # drain whatever is left behind the stop marker too
                else:
                    batch.append(item)
            if batch:
                await self._write(batch)
                self._maybe_checkpoint()
            for _ in range(got):
                self._queue.task_done()

    async def _write(self, batch: list[dict[str, Any]]) -> None:
        """Write a batch; retry while the database is away, isolate rows it refuses."""
        delay = 0.1
        while True:
            try:
                await self.store.append_audit(batch)
                self.written += len(batch)
                self._unsigned += len(batch)
                return
            except Exception as exc:  # noqa: BLE001 - classified below; the writer must never die
                if await self.store.ping():
                    break  # the database is up but refuses this data: isolate the bad row below
                # The database is unreachable: keep the rows and retry with backoff.
                self.failed_batches += 1
                log.error("audit write of %d rows failed (%s); retrying in %.1f s", len(batch), exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        if len(batch) > 1:
            mid = len(batch) // 2
            await self._write(batch[:mid])
            await self._write(batch[mid:])
            return
        log.error(
            "audit row %s refused by the database; storing it without its texts", batch[0].get("request_id")
        )
        stripped = {
            **batch[0],
            "request": None,
            "response_text": None,
            "user_agent": None,
            "error": "audit row could not be stored in full (the database refused its text)",
        }
        if stripped != batch[0]:
            await self._write([stripped])
