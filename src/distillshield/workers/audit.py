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

from distillshield.outage import Outage
from distillshield.store.checkpoint import Checkpointer
from distillshield.store.database import Store
from distillshield.store.writer import AuditWriter
from distillshield.workers.stream import AUDIT_GROUP, AuditStream, Entry, consume

log = logging.getLogger("distillshield.worker.audit")
TRIM_EVERY = 5000  # entries acknowledged between trims (and whenever the worker has caught up)


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
        self._outage = Outage(log, "acknowledging audit entries (Redis)")

    async def run(self, stop: asyncio.Event) -> None:
        await self.writer.start()
        try:
            await consume(self.stream, AUDIT_GROUP, self.name, self._store, stop, batch=self.batch,
                          block_ms=self.block_ms, claim_idle_ms=self.claim_idle_ms)  # fmt: skip
        finally:
            await self.writer.stop()

    async def _store(self, entries: list[Entry]) -> None:
        if not entries:
            return
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
        self._outage.succeeded()
        self.stored += len(ids)
