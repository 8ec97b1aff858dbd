"""One risk board for every gateway replica, on the Redis the limiter already uses.

Reads stay local: each replica keeps a `LocalRiskBoard` as its copy and the policy looks verdicts up there
on every request, as with the in-process board. Writes (online detection's verdicts, a report loaded through
the admin API, a review decision) apply to the local copy at once and are published by a background task:
one MULTI/EXEC that sets the accounts in a hash (`<ns>:risk:board`, the board's current state) and appends
them to a stream (`<ns>:risk:events`, capped). Every replica reads the stream (XREAD BLOCK) and applies each
entry in stream order, its own included, so all copies converge on the stream's order even when two replicas
write the same account at once; the staleness of a copy is the publish round trip plus the read wake-up,
milliseconds on a LAN (benchmarks/risk_propagation.py measures it).

A replica starting up (or reconnecting after an outage) loads the hash, then follows the stream from the id
it saw before the load. While Redis is unreachable, reads go on from the local copy, writes queue (coalesced
per account: only an account's latest verdict matters) and are published when it is back; the outage is
logged once. A Redis that lost its data (restart without persistence, flush) is noticed by the stream's last
id going backwards: each replica then republishes its copy, so the shared state is rebuilt.

Redis Streams rather than pub/sub: a reader that was away resumes from its last id instead of missing
what was said meanwhile, and the hash gives a newcomer the whole board without replaying history.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from distillshield.contracts import AccountRisk
from distillshield.gateway.risk.local import LocalRiskBoard
from distillshield.outage import Outage
from distillshield.workers.stream import stream_id

log = logging.getLogger("distillshield.risk")

PUBLISH_BATCH = 500  # accounts per MULTI/EXEC
STREAM_MAX = 100_000  # entries kept in the events stream (approximate trim)


class RedisRiskBoard:
    """contracts.RiskBoard shared through Redis; reads are local dictionary lookups."""

    def __init__(
        self,
        url: str,
        *,
        namespace: str = "distillshield",
        block_ms: int = 1000,
        client: aioredis.Redis | None = None,
    ) -> None:
        self.local = LocalRiskBoard()
        self.url = url
        self._redis = client or aioredis.from_url(url, socket_timeout=block_ms / 1000 + 5, socket_connect_timeout=2)
        self.board_key = f"{namespace}:risk:board"
        self.events_key = f"{namespace}:risk:events"
        self.block_ms = block_ms
        self._unsent: dict[str, AccountRisk] = {}  # written here, not yet published (latest per account)
        self._inflight: set[str] = set()  # accounts in the MULTI/EXEC being sent
        self._wake = asyncio.Event()
        self._last_id: tuple[int, int] = (0, 0)  # the last stream entry applied
        self._loaded = False
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._outage = Outage(log, "the shared risk board (Redis)")
        self.published = 0  # accounts published (all time)
        self.received = 0  # accounts applied from the stream (all time)

    # -- reads: the local copy ---------------------------------------------------------------------------

    def get(self, account_id: str) -> AccountRisk | None:
        return self.local.get(account_id)

    def cluster_members(self, cluster_id: str) -> set[str]:
        return self.local.cluster_members(cluster_id)

    def cluster_size(self, cluster_id: str) -> int:
        return self.local.cluster_size(cluster_id)

    def all(self) -> list[AccountRisk]:
        return self.local.all()

    @property
    def unsent(self) -> int:
        """Verdicts written here and not yet in Redis (an outage holds them)."""
        return len(self._unsent) + len(self._inflight)

    # -- writes: local at once, published in the background ----------------------------------------------

    def update(self, risk: AccountRisk) -> None:
        self.local.update(risk)  # validates (ValueError) before anything is queued
        self._unsent.pop(risk.account_id, None)  # re-inserted last: the publish order follows the writes
        self._unsent[risk.account_id] = risk
        self._wake.set()

    def update_many(self, risks: Iterable[AccountRisk], *, keep_stronger_reports: bool = False) -> int:
        n = 0
        for r in risks:
            if keep_stronger_reports and self.local.outranked(r):
                continue
            self.update(r)
            n += 1
        return n

    # -- life cycle --------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the shared board (when Redis answers; otherwise the reader keeps trying) and start following
        it and publishing to it."""
        try:
            await self._load()
        except (RedisError, OSError) as exc:
            self._outage.failed(exc, 1.0)
        self._tasks = [
            asyncio.create_task(self._publish_loop(), name="distillshield-risk-publish"),
            asyncio.create_task(self._read_loop(), name="distillshield-risk-read"),
        ]

    async def stop(self, flush_timeout_s: float = 2.0) -> None:
        """Publish what is still unsent (bounded wait), then stop."""
        if self._unsent and self._tasks:
            with contextlib.suppress(TimeoutError):
                await self.wait_published(flush_timeout_s)
        if self.unsent:
            log.warning("%d risk-board verdicts were not published before shutdown", self.unsent)
        # The loops end at their next turn (the reader's within one block interval). Not cancelled first:
        # redis-py can leave a cancelled blocking read hanging.
        self._stopping = True
        self._wake.set()
        if self._tasks:
            _done, left = await asyncio.wait(self._tasks, timeout=self.block_ms / 1000 + 2.0)
            for t in left:
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self._redis.aclose()

    async def wait_published(self, timeout_s: float = 5.0) -> None:
        """Until everything written here is in Redis (tests, admin)."""
        async with asyncio.timeout(timeout_s):
            while self._unsent or self._inflight:
                self._wake.set()
                await asyncio.sleep(0.005)

    # -- background ------------------------------------------------------------------------------------

    async def _load(self) -> None:
        """The whole board from the hash; the stream is then followed from the entry before the load (entries
        applied twice set the same values)."""
        start = await self._head_id()
        n = 0
        async for account_id, raw in self._redis.hscan_iter(self.board_key, count=1000):
            if not self._pending(account_id.decode() if isinstance(account_id, bytes) else account_id):
                self.local.update(AccountRisk.from_dict(orjson.loads(raw)))
                n += 1
        self._last_id = start
        self._loaded = True
        log.info("risk board loaded from Redis: %d accounts", n)

    async def _publish_loop(self) -> None:
        delay = 0.1
        while not self._stopping:
            if not self._unsent:
                self._wake.clear()
                await self._wake.wait()
                if not self._unsent:
                    continue
            batch: list[AccountRisk] = []
            for aid in list(self._unsent)[:PUBLISH_BATCH]:
                batch.append(self._unsent.pop(aid))
            self._inflight = {r.account_id for r in batch}
            try:
                payload = [r.as_dict() for r in batch]
                async with self._redis.pipeline(transaction=True) as pipe:
                    pipe.hset(self.board_key, mapping={d["account_id"]: orjson.dumps(d) for d in payload})
                    pipe.xadd(self.events_key, {b"r": orjson.dumps(payload)}, maxlen=STREAM_MAX, approximate=True)
                    await pipe.execute()
            except (RedisError, OSError) as exc:
                for r in batch:  # back in the queue, unless a newer verdict for the account came meanwhile
                    self._unsent.setdefault(r.account_id, r)
                self._inflight = set()
                self._outage.failed(exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self._inflight = set()
            self.published += len(batch)
            self._outage.succeeded()
            delay = 0.1

    async def _read_loop(self) -> None:
        delay = 0.1
        while not self._stopping:
            try:
                if not self._loaded:
                    await self._load()
                last = f"{self._last_id[0]}-{self._last_id[1]}"
                got = await self._redis.xread({self.events_key: last}, count=1000, block=self.block_ms)
                if got:
                    for _stream, entries in got:
                        for entry_id, fields in entries:
                            self._apply(fields)
                            self._last_id = stream_id(entry_id)
                else:
                    await self._check_lost()
                self._outage.succeeded()
                delay = 0.1
            except (RedisError, OSError) as exc:
                self._loaded = False  # reload on reconnect: what was said meanwhile is in the hash
                self._outage.failed(exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _pending(self, account_id: str | None) -> bool:
        """Written here and not yet published (queued, or in the MULTI/EXEC being sent)."""
        return account_id in self._unsent or account_id in self._inflight

    async def _head_id(self) -> tuple[int, int]:
        """The events stream's last entry id; (0, 0) when the stream is empty or missing."""
        last = await self._redis.xrevrange(self.events_key, count=1)
        return stream_id(last[0][0]) if last else (0, 0)

    def _apply(self, fields: dict[Any, Any]) -> None:
        raw = fields.get(b"r") or fields.get("r")
        if raw is None:
            return
        for d in orjson.loads(raw):
            # A verdict this replica wrote after this entry wins: it is published later, and applied then.
            if self._pending(d.get("account_id")):
                continue
            self.local.update(AccountRisk.from_dict(d))
            self.received += 1

    async def _check_lost(self) -> None:
        """Redis lost its data when the stream's last id is behind the last one applied: republish this
        replica's copy, so that the shared board is rebuilt (every replica does; the values agree)."""
        if self._last_id == (0, 0):
            return
        head = await self._head_id()
        if head != (0, 0) and head >= self._last_id:
            return
        log.warning("the shared risk board's Redis lost its data; republishing %d verdicts", len(self.local.all()))
        self._last_id = (0, 0)
        for r in self.local.all():
            self._unsent.setdefault(r.account_id, r)
        self._wake.set()
