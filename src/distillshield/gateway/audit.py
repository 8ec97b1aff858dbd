"""The off-path audit log writer.

Handlers hand finished rows to `submit()` (a queue put, no I/O); a background task writes them in
batches, each batch one transaction that extends the hash chain. `stop()` drains the queue, so a
graceful shutdown (SIGTERM) loses no accepted request.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from distillshield.store.database import Store

log = logging.getLogger("distillshield.audit")


class AuditWriter:
    def __init__(self, store: Store, batch_size: int = 256, flush_interval_s: float = 0.05) -> None:
        self.store = store
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self._queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.written = 0
        self.failed_batches = 0

    def submit(self, row: dict[str, Any]) -> None:
        self._queue.put_nowait(row)

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="distillshield-audit")

    async def flush(self) -> None:
        """Wait until everything submitted so far is written (tests, admin)."""
        await self._queue.join()

    async def stop(self) -> None:
        """Write everything queued, then stop."""
        if self._task is None:
            return
        self._queue.put_nowait(None)
        await self._task
        self._task = None

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
            for _ in range(got):
                self._queue.task_done()

    async def _write(self, batch: list[dict[str, Any]]) -> None:
        """Write a batch; retry while the database is away, isolate rows it refuses."""
        delay = 0.1
        while True:
            try:
                await self.store.append_audit(batch)
                self.written += len(batch)
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
