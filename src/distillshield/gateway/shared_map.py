"""A map that every gateway replica holds a copy of, kept current through Redis: the machinery behind the shared
risk board (gateway/risk/redis.py) and the shared standing blocks (gateway/policy/shared.py).

Reads are the caller's own (a local dictionary, looked up on the request path). Writes go to that local copy at
once and are queued here; a background task publishes them, one MULTI/EXEC per batch that sets (or, for a
deletion, removes) each entry in a hash (the map's current state) and appends the batch to a stream (capped).
Every replica reads the stream (XREAD BLOCK) and applies each entry in stream order, its own included, so all
copies converge on the stream's order even when two replicas write the same key at once; an entry this replica
wrote and has not yet published wins over older ones read meanwhile (it is published later, and applied then).

A replica starting up (or reconnecting after an outage) loads the hash, then follows the stream from the id it
saw before the load. While Redis is unreachable, the local copy goes on serving, writes queue (coalesced per key:
only a key's latest value matters) and are published when it is back; the outage is logged once. A Redis that
lost its data (restart without persistence, flush) is noticed by the stream's last id going backwards: each
replica then republishes its copy (`snapshot`), so the shared state is rebuilt.

Redis Streams rather than pub/sub: a reader that was away resumes from its last id instead of missing what was
said meanwhile, and the hash gives a newcomer the whole map without replaying history. Hand-written on redis-py
because no library keeps a local replica of a Redis hash with this ordering and outage behaviour.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from distillshield.outage import Outage
from distillshield.workers.stream import stream_id

PUBLISH_BATCH = 500  # entries per MULTI/EXEC
STREAM_MAX = 100_000  # entries kept in the events stream (approximate trim)

Value = dict[str, Any]  # one entry, a JSON object that names its own key (`key_of`)


class SharedMap:
    """The Redis side of a replicated map of JSON objects: `put` queues a write, `apply` is called with every
    value the replicas published (this one's included) and with the hash's entries at load.

    `key_of(value)` names a value's key; `deleted(value)`: the value is a tombstone (its key is removed from the
    hash, and `apply` is still called with it so that every copy removes the key); `snapshot()`: this replica's
    whole copy, republished when Redis lost its data."""

    def __init__(
        self,
        url: str,
        hash_key: str,
        events_key: str,
        *,
        key_of: Callable[[Value], str],
        apply: Callable[[Value], None],
        snapshot: Callable[[], Iterable[Value]],
        what: str,
        log: logging.Logger,
        deleted: Callable[[Value], bool] = lambda _v: False,
        block_ms: int = 1000,
        client: aioredis.Redis | None = None,
    ) -> None:
        # the socket timeout outlasts a blocking XREAD of block_ms
        self._redis = client or aioredis.from_url(url, socket_timeout=block_ms / 1000 + 5, socket_connect_timeout=2)
        self.hash_key = hash_key
        self.events_key = events_key
        self.key_of = key_of
        self._apply_one = apply
        self.snapshot = snapshot
        self.deleted = deleted
        self.what = what
        self.log = log
        self.block_ms = block_ms
        self._unsent: dict[str, Value] = {}  # written here, not yet published (latest per key)
        self._inflight: set[str] = set()  # keys in the MULTI/EXEC being sent
        self._wake = asyncio.Event()
        self._last_id: tuple[int, int] = (0, 0)  # the last stream entry applied
        self._loaded = False
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._outage = Outage(log, what)
        self.published = 0  # entries published (all time)
        self.received = 0  # entries applied from the stream (all time)

    @property
    def unsent(self) -> int:
        """Entries written here and not yet in Redis (an outage holds them)."""
        return len(self._unsent) + len(self._inflight)

    def put(self, value: Value) -> None:
        """Queue a value (or a tombstone) for publishing; the caller has applied it to its own copy."""
        key = self.key_of(value)
        self._unsent.pop(key, None)  # re-inserted last: the publish order follows the writes
        self._unsent[key] = value
        self._wake.set()

    def pending(self, key: str | None) -> bool:
        """Written here and not yet published (queued, or in the MULTI/EXEC being sent)."""
        return key in self._unsent or key in self._inflight

    # -- life cycle --------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the map (when Redis answers; otherwise the reader keeps trying), then follow and publish."""
        try:
            await self._load()
        except (RedisError, OSError) as exc:
            self._outage.failed(exc, 1.0)
        self._tasks = [
            asyncio.create_task(self._publish_loop(), name=f"distillshield-{self.hash_key}-publish"),
            asyncio.create_task(self._read_loop(), name=f"distillshield-{self.hash_key}-read"),
        ]

    async def stop(self, flush_timeout_s: float = 2.0) -> None:
        """Publish what is still unsent (bounded wait), then stop and close the client."""
        if self._unsent and self._tasks:
            with contextlib.suppress(TimeoutError):
                await self.wait_published(flush_timeout_s)
        if self.unsent:
            self.log.warning("%d entries of %s were not published before shutdown", self.unsent, self.what)
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
        """The whole map from the hash; the stream is then followed from the entry before the load (entries
        applied twice set the same values)."""
        start = await self._head_id()
        n = 0
        async for key, raw in self._redis.hscan_iter(self.hash_key, count=1000):
            if not self.pending(key.decode() if isinstance(key, bytes) else key):
                self._apply_one(orjson.loads(raw))
                n += 1
        self._last_id = start
        self._loaded = True
        self.log.info("%s loaded from Redis: %d entries", self.what, n)

    async def _publish_loop(self) -> None:
        delay = 0.1
        while not self._stopping:
            if not self._unsent:
                self._wake.clear()
                await self._wake.wait()
                if not self._unsent:
                    continue
            batch = [(k, self._unsent.pop(k)) for k in list(self._unsent)[:PUBLISH_BATCH]]
            self._inflight = {k for k, _v in batch}
            try:
                kept = {k: orjson.dumps(v) for k, v in batch if not self.deleted(v)}
                gone = [k for k, v in batch if self.deleted(v)]
                async with self._redis.pipeline(transaction=True) as pipe:
                    if kept:
                        pipe.hset(self.hash_key, mapping=kept)
                    if gone:
                        pipe.hdel(self.hash_key, *gone)
                    pipe.xadd(self.events_key, {b"r": orjson.dumps([v for _k, v in batch])}, maxlen=STREAM_MAX,
                              approximate=True)  # fmt: skip
                    await pipe.execute()
            except (RedisError, OSError) as exc:
                for k, v in batch:  # back in the queue, unless a newer value for the key came meanwhile
                    self._unsent.setdefault(k, v)
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

    async def _head_id(self) -> tuple[int, int]:
        """The events stream's last entry id; (0, 0) when the stream is empty or missing."""
        last = await self._redis.xrevrange(self.events_key, count=1)
        return stream_id(last[0][0]) if last else (0, 0)

    def _apply(self, fields: dict[Any, Any]) -> None:
        raw = fields.get(b"r") or fields.get("r")
        if raw is None:
            return
        for v in orjson.loads(raw):
            # A value this replica wrote after this entry wins: it is published later, and applied then.
            if self.pending(self.key_of(v)):
                continue
            self._apply_one(v)
            self.received += 1

    async def _check_lost(self) -> None:
        """Redis lost its data when the stream's last id is behind the last one applied: republish this
        replica's copy, so that the shared map is rebuilt (every replica does; the values agree)."""
        if self._last_id == (0, 0):
            return
        head = await self._head_id()
        if head != (0, 0) and head >= self._last_id:
            return
        copy = list(self.snapshot())
        self.log.warning("%s: Redis lost its data; republishing %d entries", self.what, len(copy))
        self._last_id = (0, 0)
        for v in copy:
            self._unsent.setdefault(self.key_of(v), v)
        self._wake.set()
