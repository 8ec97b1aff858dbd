"""`distillshield worker detect`: online detection over the whole fleet's traffic, off the gateways.

The worker is the `detectors` consumer group of the audit event stream: it sees every request any gateway
replica served, folds them into the same online engine the gateway runs in-process (detect/online.py,
`start_detached`: the same sketches, rescoring and clustering, so the same verdicts as one process serving
all the traffic), and publishes verdicts to the shared risk board (`risk.backend: redis`), which every
replica applies on its next request. At start it replays the log's tail (restart without amnesty) and
takes back the entries it had been given and not acknowledged.

Sharded (`shards` > 0, `worker detect --shards N`): extraction, the larger part of the cost per request, runs
in N extraction shards (`worker extract`, workers/extract.py), each owning the accounts whose id hashes to
it; this worker then reads their observation batches (`<stream key>:observations`, detect/wire.py) instead
of the rows, and only folds and scores. Folding and scoring stay in one engine: an account's features read
the population's indexes (who shares a template, an IP range, the service's content) at every rescore, and
the hydra clusters are found over all accounts, so there is one cross-account view and no partition of it.
The worker checks at each lease renewal that every shard has a worker, and says so once when one has none.

One detector worker per deployment either way: the engine's cross-account indexes live in its memory, and a
second worker in the group would see a random half of each account's traffic. So the worker holds a lease on
the stream (`<stream key>:detector`, renewed every third of `lease_ms`): a second one waits one lease period
for the first one's lease to lapse (a worker killed a moment ago) and otherwise refuses to start
(`DetectorBusy`); a worker that loses its lease (Redis away longer than a lease period, and another worker
took over) stops. Entries are acknowledged once queued for the engine (detection is not the record; a crash
costs the queue, and the replay at the next start covers what reached the log).
"""

from __future__ import annotations

import asyncio
import logging
import time

from distillshield.contracts import RiskBoard
from distillshield.detect.online import DetectionExtension
from distillshield.detect.wire import ObservationBatch, WireError
from distillshield.outage import Outage
from distillshield.store.database import Store
from distillshield.workers.extract import decode_batch, shard_lease
from distillshield.workers.stream import DETECT_GROUP, OBSERVATIONS, AuditStream, Entry, Lease, consume, stream_id

log = logging.getLogger("distillshield.worker.detect")

LEASE_MS = 15_000
TRIM_EVERY = 100  # observation batches acknowledged between trims (and whenever the worker has caught up)


class DetectorBusy(Exception):
    """Another detector worker holds the stream's detector lease."""

    def __init__(self, lease: Lease, holder: str) -> None:
        super().__init__(
            f"another detector worker ({holder}) is running on the audit stream {lease.stream.key}: one detection "
            f"engine per deployment (scale extraction with --shards and `worker extract`, docs/fleet.md). Its "
            f"lease, {lease.key}, lapses {lease.ttl_ms / 1000:g} s after it stops"
        )
        self.holder = holder


class DetectWorker:
    def __init__(
        self,
        detection: DetectionExtension,
        store: Store,
        stream: AuditStream,
        board: RiskBoard,
        name: str,
        *,
        batch: int = 2000,
        block_ms: int = 1000,
        lease_ms: int = LEASE_MS,
        shards: int = 0,
    ) -> None:
        self.detection = detection
        self.store = store
        self.stream = stream
        self.board = board
        self.name = name
        self.batch = batch
        self.block_ms = block_ms
        self.shards = shards
        # What the engine reads: the rows themselves, or the extraction shards' observation batches.
        self.source = stream.view(decode_batch, OBSERVATIONS) if shards else stream
        self.received = 0  # requests observed (rows, or observations of the shards)
        self.duplicates = 0  # observation batches dropped as already seen (a shard's redelivery)
        self._upto: dict[tuple[int, int], tuple[int, int]] = {}  # per shard: the last audit entry it covered
        self._flushed_at = 0
        self._outage = Outage(log, "acknowledging observed entries (Redis)")
        self.lease = Lease(stream, "detector", name, lease_ms)
        self._missing: set[int] = set()
        self._other_counts: set[int] = set()  # shard counts of batches that differ from `shards` (warned once)
        self._reported_at = -1.0
        self._batches = 0  # observation batches acknowledged since the observation stream was last trimmed
        self.lost_lease = False

    async def run(self, stop: asyncio.Event) -> None:
        """Detect until `stop` is set (or the lease is lost); `DetectorBusy` when another worker holds the lease."""
        holder = await self.lease.acquire(stop)
        if holder is not None:
            raise DetectorBusy(self.lease, holder)
        if stop.is_set():  # stopped while waiting for the lease (or for Redis)
            await self.lease.give_back()
            return
        renewing = asyncio.create_task(self._renew(stop))
        try:
            await self.board.start()
            await self.detection.start_detached(self.store, self.board)
            try:
                await self._check_shards()
                # claim_idle_ms=0: the lease makes this the only live detector, so entries another consumer left
                # unacknowledged (a worker killed, restarted under another name) are taken at once.
                await consume(self.source, DETECT_GROUP, self.name, self._observe, stop, batch=self.batch,
                              block_ms=self.block_ms, claim_idle_ms=0)  # fmt: skip
            finally:
                await self.detection.stop()
                await self.board.stop()
        finally:
            renewing.cancel()
            await self.lease.give_back()

    async def _renew(self, stop: asyncio.Event) -> None:
        self.lost_lease = await self.lease.keep(stop, self._check_shards if self.shards else None)

    async def _check_shards(self) -> None:
        """Log once when an extraction shard has no worker (its accounts' requests wait in the stream), and once
        when it has one again."""
        if not self.shards:
            return
        try:
            held = [await shard_lease(self.stream, i, self.shards, "-", 1).holder() for i in range(self.shards)]
        except Exception:  # noqa: BLE001 - Redis away: the lease renewal already says so
            return
        missing = {i for i, h in enumerate(held) if h is None}
        for i in sorted(missing - self._missing):
            log.warning("extraction shard %d/%d has no worker: its accounts' requests wait in the stream "
                        "(start `distillshield worker extract --shard %d --shards %d`)", i, self.shards, i,
                        self.shards)  # fmt: skip
        for i in sorted(self._missing - missing):
            log.info("extraction shard %d/%d has a worker again", i, self.shards)
        self._missing = missing

    async def _observe(self, entries: list[Entry]) -> None:
        if not entries:
            await self._report()
            if self.received > self._flushed_at and self.detection.engine is not None:
                # The stream is idle: re-cluster and rescore everyone now, so the board holds the verdicts of
                # everything served rather than those of the last rescoring checkpoint.
                try:
                    await self.detection.flush()
                    self._flushed_at = self.received
                except Exception:  # noqa: BLE001 - a failed rescoring round must not stop the worker
                    log.exception("detection rescoring failed; the next idle moment retries")
            return
        if self.shards:
            for _eid, batch in entries:
                self._fold(batch)
        else:
            for _eid, row in entries:
                self.detection.observe(row)
            self.received += len(entries)
        try:
            await self.source.ack(DETECT_GROUP, [eid for eid, _value in entries])
            self._outage.succeeded()
            if self.shards:
                self._batches += len(entries)
                if self._batches >= TRIM_EVERY or len(entries) < self.batch:
                    self._batches = 0
                    await self.source.trim()  # the batches read leave the observation stream
        except Exception as exc:  # noqa: BLE001 - redelivered later: observed twice at worst
            self._outage.failed(exc, 1.0)
        await self._report()

    async def _report(self) -> None:
        """The engine's progress on Redis (`<stream key>:detector:status`), at most twice a second: entries are
        acknowledged once queued, so the stream's backlog alone does not say whether detection has caught up."""
        now = time.monotonic()
        if now - self._reported_at < 0.5:
            return
        self._reported_at = now
        st = self.detection.status()
        status = {k: st[k] for k in ("processed", "queued", "dropped")}
        try:
            await self.stream.put_status("detector", {**status, "received": self.received, "at": time.time()})
        except Exception:  # noqa: BLE001 - progress is informative; the acknowledgements report Redis outages
            pass

    def _fold(self, batch: ObservationBatch | WireError) -> None:
        if isinstance(batch, WireError):
            log.error("an observation batch was dropped: %s", batch)
            return
        if batch.shards != self.shards and batch.shards not in self._other_counts:
            self._other_counts.add(batch.shards)  # said once per shard count, not once per batch
            log.warning("an observation batch from shard %d/%d, this engine expects %d shards: folded anyway "
                        "(restart every `worker extract` with --shards %d)", batch.shard, batch.shards,
                        self.shards, self.shards)  # fmt: skip
        upto = stream_id(batch.upto)
        last = self._upto.get((batch.shard, batch.shards))
        if last is not None and upto <= last:
            self.duplicates += 1  # the shard published it again after a crash, before acknowledging its rows
            return
        self._upto[(batch.shard, batch.shards)] = upto
        self.detection.observe_extracted(batch.observations)
        self.received += len(batch.observations)
