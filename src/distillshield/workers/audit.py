"""`distillshield worker audit`: moves the audit event stream into the hash-chained log, exactly once.

Each worker is a consumer (its name) in the stream's consumer group. It first takes back what it was given
before and did not acknowledge (a restart under the same name), then claims entries pending for more than
`claim_idle_ms` on other consumers (a worker that died), then reads new entries. Rows go through a
`store.writer.AuditWriter` on the database (batched transactions, retries while the database is away, a row
the database refuses stored without its texts, signed checkpoints when configured) with `idempotent=True`:
rows the log already holds are skipped under the chain lock, so a redelivered entry is never stored twice.
An entry is acknowledged only once its row is committed: a worker killed at any point loses
nothing. Scale by starting more workers (different names); with checkpoints, enable them on one of them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Any

from distillshield.outage import Outage
from distillshield.store.checkpoint import Checkpointer
from distillshield.store.database import Store
from distillshield.store.writer import AuditWriter
from distillshield.workers.stream import AUDIT_GROUP, AuditStream

log = logging.getLogger("distillshield.worker.audit")
TRIM_EVERY = 5000  # entries acknowledged between trims (and whenever the worker has caught up)


def default_name() -> str:
    return f"audit-{socket.gethostname()}-{os.getpid()}"


class AuditWorker:
    def __init__(
        self,
        store: Store,
        stream: AuditStream,
        name: str,
        *,
        batch: int = 1000,
        block_ms: int = 1000,
        claim_idle_ms: int = 30_000,
        checkpointer: Checkpointer | None = None,
        checkpoint_every_rows: int = 1000,
        checkpoint_every_s: float = 60.0,
    ) -> None:
        self.store = store
        self.stream = stream
        self.name = name
        self.batch = batch
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self.writer = AuditWriter(
            store,
            batch_size=batch,
            checkpointer=checkpointer,
            checkpoint_every_rows=checkpoint_every_rows,
            checkpoint_every_s=checkpoint_every_s,
            durable=True,
            idempotent=True,
        )
        self.stored = 0  # entries acknowledged (their rows in the log)
        self._outage = Outage(log, "reading the audit stream (Redis)")

    async def run(self, stop: asyncio.Event) -> None:
        await self.writer.start()
        try:
            backlog = True  # our own unacknowledged entries first
            while not stop.is_set():
                try:
                    if backlog:
                        await self.stream.ensure_group(AUDIT_GROUP)
                        entries = await self.stream.read(
                            AUDIT_GROUP, self.name, self.batch, self.block_ms, pending=True
                        )
                        backlog = bool(entries)
                    else:
                        entries = await self.stream.claim(AUDIT_GROUP, self.name, self.claim_idle_ms, self.batch)
                        if not entries:
                            entries = await self.stream.read(AUDIT_GROUP, self.name, self.batch, self.block_ms)
                    self._outage.succeeded()
                except Exception as exc:  # noqa: BLE001 - Redis away: retry; entries wait in the stream
                    self._outage.failed(exc, 1.0)
                    backlog = True
                    await _sleep_or_stop(stop, 1.0)
                    continue
                if entries:
                    await self._store(entries)
        finally:
            await self.writer.stop()

    async def _store(self, entries: list[tuple[bytes, dict[str, Any]]]) -> None:
        acks = [self.writer.submit(row) for _eid, row in entries]
        await asyncio.gather(*[a for a in acks if a is not None])  # committed (the writer retries meanwhile)
        ids = [eid for eid, _row in entries]
        while True:
            try:
                await self.stream.ack(AUDIT_GROUP, ids)
                if self.stored // TRIM_EVERY != (self.stored + len(ids)) // TRIM_EVERY or len(ids) < self.batch:
                    await self.stream.trim()  # what every group has acknowledged leaves the stream
                break
            except Exception as exc:  # noqa: BLE001 - unacknowledged entries would be redelivered: harmless
                self._outage.failed(exc, 1.0)
                await asyncio.sleep(1.0)
        self.stored += len(ids)


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass
