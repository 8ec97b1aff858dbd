"""`distillshield worker detect`: online detection over the whole fleet's traffic, off the gateways.

The worker is the `detectors` consumer group of the audit event stream: it sees every request any gateway
replica served, folds them into the same online engine the gateway runs in-process (detect/online.py,
`start_detached`: the same sketches, rescoring and clustering, so the same verdicts as one process serving
all the traffic), and publishes verdicts to the shared risk board (`risk.backend: redis`), which every
replica applies on its next request. At start it replays the log's tail (restart without amnesty) and
takes back the entries it had been given and not acknowledged.

One detector worker per deployment: the engine's cross-account indexes (hydra clusters) live in its
memory, and a second worker in the group would see a random half of each account's traffic. So the worker
holds a lease on the stream (`<stream key>:detector`, renewed every third of `lease_ms`): a second one waits
one lease period for the first one's lease to lapse (a worker killed a moment ago) and otherwise refuses to
start (`DetectorBusy`); a worker that loses its lease (Redis away longer than a lease period, and another
worker took over) stops. Entries are acknowledged once queued for the engine (detection is not the record; a
crash costs the queue, and the replay at the next start covers what reached the log).
"""

from __future__ import annotations

import asyncio
import logging

from distillshield.contracts import RiskBoard
from distillshield.detect.online import DetectionExtension
from distillshield.outage import Outage
from distillshield.store.database import Store
from distillshield.workers.stream import DETECT_GROUP, AuditStream, Entry, Lease, consume

log = logging.getLogger("distillshield.worker.detect")

LEASE_MS = 15_000


class DetectorBusy(Exception):
    """Another detector worker holds the stream's detector lease."""

    def __init__(self, lease: Lease, holder: str) -> None:
        super().__init__(
            f"another detector worker ({holder}) is running on the audit stream {lease.stream.key}: detection is not "
            f"sharded, so run one detector worker per deployment (docs/fleet.md). Its lease, {lease.key}, lapses "
            f"{lease.ttl_ms / 1000:g} s after it stops"
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
    ) -> None:
        self.detection = detection
        self.store = store
        self.stream = stream
        self.board = board
        self.name = name
        self.batch = batch
        self.block_ms = block_ms
        self.received = 0
        self._flushed_at = 0
        self._outage = Outage(log, "acknowledging observed entries (Redis)")
        self.lease = Lease(stream, "detector", name, lease_ms)
        self.lost_lease = False

    async def run(self, stop: asyncio.Event) -> None:
        """Detect until `stop` is set (or the lease is lost); `DetectorBusy` when another worker holds the lease."""
        holder = await self.lease.acquire(stop)
        if holder is not None:
            raise DetectorBusy(self.lease, holder)
        if stop.is_set():  # stopped while waiting for the lease (or for Redis)
            await self._give_back()
            return
        renewing = asyncio.create_task(self._renew(stop))
        try:
            await self.board.start()
            await self.detection.start_detached(self.store, self.board)
            try:
                await consume(self.stream, DETECT_GROUP, self.name, self._observe, stop, batch=self.batch,
                              block_ms=self.block_ms)  # fmt: skip
            finally:
                await self.detection.stop()
                await self.board.stop()
        finally:
            renewing.cancel()
            await self._give_back()

    async def _give_back(self) -> None:
        try:
            await self.lease.release()
        except Exception as exc:  # noqa: BLE001 - Redis away: the lease lapses on its own
            log.warning("could not give back the detector lease (%s): it lapses by itself", exc)

    async def _renew(self, stop: asyncio.Event) -> None:
        outage = Outage(log, "renewing the detector lease (Redis)")
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), self.lease.ttl_ms / 3000)
                return
            except TimeoutError:
                pass
            try:
                holder = await self.lease.hold()
                outage.succeeded()
            except Exception as exc:  # noqa: BLE001 - Redis away: retried; the lease lapses if it stays away
                outage.failed(exc, self.lease.ttl_ms / 3000)
                continue
            if holder != self.lease.token:
                log.error("the detector lease is held by %s now (this worker lost it): stopping", holder)
                self.lost_lease = True
                stop.set()
                return

    async def _observe(self, entries: list[Entry]) -> None:
        if not entries:
            if self.received > self._flushed_at and self.detection.engine is not None:
                # The stream is idle: re-cluster and rescore everyone now, so the board holds the verdicts of
                # everything served rather than those of the last rescoring checkpoint.
                try:
                    await self.detection.flush()
                    self._flushed_at = self.received
                except Exception:  # noqa: BLE001 - a failed rescoring round must not stop the worker
                    log.exception("detection rescoring failed; the next idle moment retries")
            return
        for _eid, row in entries:
            self.detection.observe(row)
        self.received += len(entries)
        try:
            await self.stream.ack(DETECT_GROUP, [eid for eid, _row in entries])
            self._outage.succeeded()
        except Exception as exc:  # noqa: BLE001 - redelivered later: observed twice at worst
            self._outage.failed(exc, 1.0)
