"""`distillshield worker extract --shard I --shards N`: one extraction shard of a fleet's online detection.

Extraction turns an audit row into what the detection engine folds (detect/corpus.py's Obs: frames and hashes,
the CoT classifier's score, MinHash and content vectors of sampled requests): more than half of online
detection's cost per request, and it depends only on the request and on its own account's earlier requests
(the per-account counters that decide what is sampled). So it is sharded by account: shard I of N owns the
accounts with `wire.shard_of(account) == I`, reads the audit stream as its own consumer group
(`extract-<I>of<N>`: every shard sees every entry and keeps its accounts'), extracts its accounts' rows in
stream order, and publishes one observation batch per read to `<stream key>:observations`, which the one
detection engine (`worker detect --shards N`, workers/detect.py) folds and scores.

Each shard holds a lease (`<stream key>:extract-<I>of<N>`), so two workers never extract the same shard; the
engine checks that every shard has one. A batch is published before its rows are acknowledged, so a shard
killed in between publishes it again after its restart; batches carry the last audit entry id they cover,
and the engine drops one it has seen. At start the shard counts its accounts' requests in the log's tail, as
the engine's replay does, so that the requests sampled after a restart are the ones an unbroken run samples.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from distillshield.detect.corpus import Extractor, Obs
from distillshield.detect.online import trusted_record
from distillshield.detect.wire import ObservationBatch, WireError, shard_of
from distillshield.outage import Outage
from distillshield.store.database import Store
from distillshield.workers.stream import OBSERVATIONS, AuditStream, Entry, Lease, audit_row, consume

log = logging.getLogger("distillshield.worker.extract")

# Observation batches kept at most (Redis's approximate trimming; the detector trims what it has read): with the
# engine away for long, the oldest go, as the engine's own queue drops its oldest when full; its replay at start
# covers what reached the log. A batch is one read of up to `batch` rows, of which this shard's share.
OBSERVATIONS_MAXLEN = 5_000
LEASE_MS = 15_000


def decode_batch(fields: dict[bytes, bytes]) -> ObservationBatch | WireError:
    """The observation stream's decoder: a batch, or the error that names what is wrong with it (the engine logs
    and drops it; a bad entry must not stop the stream)."""
    try:
        return ObservationBatch.from_fields(fields)
    except WireError as exc:
        return exc


def shard_lease(stream: AuditStream, shard: int, shards: int, name: str, ttl_ms: int) -> Lease:
    return Lease(stream, f"extract-{shard}of{shards}", name, ttl_ms)


class ShardBusy(Exception):
    """Another worker holds this extraction shard's lease."""

    def __init__(self, lease: Lease, holder: str) -> None:
        super().__init__(
            f"another worker ({holder}) is extracting this shard of {lease.stream.key}: one worker per shard. Its "
            f"lease, {lease.key}, lapses {lease.ttl_ms / 1000:g} s after it stops"
        )
        self.holder = holder


class ExtractWorker:
    def __init__(
        self,
        extractor: Extractor,
        store: Store,
        stream: AuditStream,
        shard: int,
        shards: int,
        name: str,
        *,
        batch: int = 2000,
        block_ms: int = 1000,
        lease_ms: int = LEASE_MS,
        warm_rows: int = 200_000,
        maxlen: int = OBSERVATIONS_MAXLEN,
    ) -> None:
        if shards < 1 or not 0 <= shard < shards:
            raise ValueError(f"shard must be in 0..{shards - 1} of {shards} shards, got {shard}")
        self.extractor = extractor
        self.store = store
        self.stream = stream
        self.observations = stream.view(decode_batch, OBSERVATIONS)
        self.shard = shard
        self.shards = shards
        self.name = name
        self.batch = batch
        self.block_ms = block_ms
        self.warm_rows = warm_rows
        self.maxlen = maxlen
        self.group = f"extract-{shard}of{shards}"
        self.rows = stream.view(self._own_row)  # the audit stream, decoding this shard's rows only
        self.lease = shard_lease(stream, shard, shards, name, lease_ms)
        self.read = 0  # audit entries read
        self.extracted = 0  # of them, this shard's requests (observations published)
        self.warmed = 0  # this shard's requests counted in the log's tail at start
        self.lost_lease = False
        self._outage = Outage(log, f"publishing observations of shard {shard}/{shards} (Redis)")
        self._stop = asyncio.Event()

    def owns(self, account_id: str | None) -> bool:
        return bool(account_id) and shard_of(str(account_id), self.shards) == self.shard

    def _own_row(self, fields: dict[bytes, bytes]) -> dict[str, Any] | None:
        """An audit entry's row when its account is this shard's, else None without decoding it (every shard reads
        every entry: decoding them all cost each shard about 40 us per request, docs/fleet.md). Entries without
        the account field (appended by an older gateway) are decoded to find it."""
        account = fields.get(b"account")
        if account is not None:
            return audit_row(fields) if self.owns(account.decode("utf-8", "surrogatepass")) else None
        row = audit_row(fields)
        return row if self.owns(row.get("account_id")) else None

    async def run(self, stop: asyncio.Event) -> None:
        """Extract until `stop` is set (or the lease is lost); `ShardBusy` when another worker holds the shard."""
        holder = await self.lease.acquire(stop)
        if holder is not None:
            raise ShardBusy(self.lease, holder)
        if stop.is_set():
            await self.lease.give_back()
            return
        self._stop = stop
        renewing = asyncio.create_task(self._renew(stop))
        try:
            await self._warm()
            # claim_idle_ms=0: the lease makes this the shard's only live consumer, so whatever another consumer
            # of the group holds unacknowledged (a worker killed, restarted under another name) is taken at once.
            await consume(self.rows, self.group, self.name, self._extract, stop, batch=self.batch,
                          block_ms=self.block_ms, claim_idle_ms=0)  # fmt: skip
        finally:
            renewing.cancel()
            await self.lease.give_back()

    async def _renew(self, stop: asyncio.Event) -> None:
        self.lost_lease = await self.lease.keep(stop)

    async def _warm(self) -> None:
        """Count this shard's requests in the log's last `warm_rows` rows (the engine replays the same rows). A log
        that cannot be read costs the counts (sampling starts afresh), never the shard."""
        if self.warm_rows <= 0:
            return
        counts: dict[str, int] = {}
        try:
            head = (await self.store.chain_head())[0]
            if head > 0:
                async for row in self.store.iter_audit(max(1, head - self.warm_rows + 1), head):
                    if self.owns(row.get("account_id")) and trusted_record(row) is not None:
                        counts[row["account_id"]] = counts.get(row["account_id"], 0) + 1
        except Exception as exc:  # noqa: BLE001 - the database away: detection starts without the history
            log.warning("shard %d/%d: the log could not be read (%s); its accounts' sampling starts afresh",
                        self.shard, self.shards, exc)  # fmt: skip
            return
        for account, n in counts.items():
            self.extractor.counts[account] = self.extractor.counts.get(account, 0) + n
        self.warmed = sum(counts.values())
        log.info("shard %d/%d: %d of its requests counted in the log's tail", self.shard, self.shards, self.warmed)

    def _observations(self, rows: list[dict[str, Any]]) -> list[Obs]:
        from distillshield.detect.content import single_threaded_blas

        records = [r for r in map(trusted_record, rows) if r is not None]
        with single_threaded_blas():
            return list(self.extractor.extract(records)) if records else []

    async def _extract(self, entries: list[Entry]) -> None:
        if not entries:
            return
        mine = [row for _eid, row in entries if row is not None]
        obs = await asyncio.to_thread(self._observations, mine) if mine else []
        if obs:
            batch = ObservationBatch(self.shard, self.shards, entries[-1][0].decode(), obs).to_fields()
            while True:  # published before the rows are acknowledged: a crash in between republishes, never loses
                try:
                    await self.observations.add(batch, maxlen=self.maxlen)
                    self._outage.succeeded()
                    break
                except Exception as exc:  # noqa: BLE001 - Redis away: the batch waits here
                    self._outage.failed(exc, 1.0)
                    if self._stop.is_set():
                        return  # unacknowledged: the rows are read again at the next start
                    await asyncio.sleep(1.0)
        try:
            await self.rows.ack(self.group, [eid for eid, _row in entries])
        except Exception as exc:  # noqa: BLE001 - redelivered later: the engine drops the batch it has seen
            self._outage.failed(exc, 1.0)
        self.read += len(entries)
        self.extracted += len(obs)
