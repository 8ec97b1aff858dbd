"""The audit event stream: finished requests on a Redis Stream, between the gateways and the audit workers.

With `audit.sink: redis`, each gateway's audit writer hands its batches to `AuditStream.append_audit` (one
XADD per row, a batch in one MULTI/EXEC) instead of the database; `distillshield worker audit` processes
read them through a consumer group and write them into the hash-chained log. It has the audit sink's shape
(contracts.AuditSink), so the gateway's writer keeps everything it does for the database: durable answers
(the answer waits for the XADD), the local spool while Redis is away, the 503 when nothing can record.

Each kind of worker is a consumer group: `audit-writers` (the log) and `detectors` (online detection), or with
sharded extraction one `extract-<I>of<N>` group per shard (workers/extract.py); every entry reaches every group.
Delivery is at least once (a worker killed between its commit and its XACK leaves
the entries pending, and another worker claims them after `claim_idle_ms`); the log is exactly once because
audit workers write with `skip_existing` (request ids checked under the chain head's lock). The audit workers
trim the stream to what some group has not yet acknowledged (`trim`), so it holds only the backlog.

Redis Streams because the Redis is already there (limits, risk board) and consumer groups give exactly what
is needed: shared consumption, per-consumer pending lists, claiming from dead consumers.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from distillshield.contracts import Backlog
from distillshield.outage import Outage

log = logging.getLogger("distillshield.worker")
Entry = tuple[bytes, Any]  # (entry id, the stream's decoded value: an audit row dict on the audit stream)

AUDIT_GROUP = "audit-writers"
DETECT_GROUP = "detectors"
OBSERVATIONS = "observations"  # the extraction shards' output: `<audit stream key>:observations` (workers/extract.py)


def audit_row(fields: dict[bytes, bytes]) -> dict[str, Any]:
    """An audit stream entry's row (the gateway's audit row, as orjson wrote it)."""
    return orjson.loads(fields[b"row"])


class AuditStream:
    """A Redis Stream read through consumer groups: the audit event stream (rows, `audit_row`), and with another
    `decode` any stream of the workers' (the extraction shards' observation batches, workers/extract.py)."""

    def __init__(
        self,
        url: str,
        key: str = "distillshield:audit:events",
        *,
        client: aioredis.Redis | None = None,
        decode: Callable[[dict[bytes, bytes]], Any] = audit_row,
    ):
        self.url = url
        self.key = key
        self.decode = decode
        self._redis = client or aioredis.from_url(url, socket_timeout=10, socket_connect_timeout=2)

    def view(self, decode: Callable[[dict[bytes, bytes]], Any], suffix: str | None = None) -> AuditStream:
        """This stream read with another decoder, or with `suffix` another stream keyed `<this key>:<suffix>`; on the
        same Redis connection."""
        key = self.key if suffix is None else f"{self.key}:{suffix}"
        return AuditStream(self.url, key, client=self._redis, decode=decode)

    # -- the gateway's side: contracts.AuditSink ------------------------------------------------------------

    async def append_audit(self, rows: Sequence[Mapping[str, Any]], *, skip_existing: bool = False) -> int:
        """Append the rows (a batch is one MULTI/EXEC: all or none); returns how many. The stream does not
        deduplicate (`skip_existing` is the workers' business, under the log's lock)."""
        if not rows:
            return 0
        async with self._redis.pipeline(transaction=True) as pipe:
            for r in rows:
                # The account beside the row: an extraction shard keeps its accounts' rows without decoding the rest.
                account = str(r.get("account_id") or "").encode("utf-8", "surrogatepass")
                pipe.xadd(self.key, {b"row": orjson.dumps(dict(r), default=str), b"account": account})
            await pipe.execute()
        return len(rows)

    async def add(self, fields: Mapping[bytes, bytes], *, maxlen: int | None = None) -> bytes:
        """Append one entry (a worker's output); with `maxlen`, the stream is trimmed to about that many entries
        (Redis's approximate trimming: the oldest go first)."""
        return await self._redis.xadd(self.key, dict(fields), maxlen=maxlen, approximate=True)

    async def put_status(self, role: str, status: Mapping[str, float | int | str]) -> None:
        """A worker's progress (`<key>:<role>:status`, a hash; for operators and benchmarks), kept a minute."""
        key = f"{self.key}:{role}:status"
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=dict(status))
            pipe.expire(key, 60)
            await pipe.execute()

    async def status(self, role: str) -> dict[str, str]:
        """What `put_status` last wrote for the role ({} when nothing, or it is older than a minute)."""
        got = await self._redis.hgetall(f"{self.key}:{role}:status")
        return {_text(k): _text(v) for k, v in got.items()}

    async def existing_request_ids(self, ids: Sequence[str]) -> set[str]:
        """Always empty: the stream does not deduplicate; the workers do (by request id, under the lock)."""
        return set()

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except Exception:  # noqa: BLE001 - any failure means "not reachable"
            return False

    async def close(self) -> None:
        await self._redis.aclose()

    # -- the workers' side -----------------------------------------------------------------------------------

    async def ensure_group(self, group: str) -> None:
        """Create the consumer group (and the stream) when missing; it starts at the stream's beginning."""
        try:
            await self._redis.xgroup_create(self.key, group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def read(self, group: str, consumer: str, count: int, block_ms: int, *, pending: bool = False) -> list[Entry]:
        """New entries for this consumer (blocking up to block_ms), or with `pending` the ones it was given
        before and has not acknowledged (its own backlog after a failure or a restart under the same name)."""
        got = await self._redis.xreadgroup(
            group, consumer, {self.key: "0" if pending else ">"}, count=count, block=None if pending else block_ms
        )
        return self._entries(e for _k, entries in got or () for e in entries)

    async def claim(self, group: str, consumer: str, min_idle_ms: int, count: int) -> list[Entry]:
        """Entries pending on other consumers for at least min_idle_ms (a worker that died): now this one's."""
        res = await self._redis.xautoclaim(self.key, group, consumer, min_idle_ms, start_id="0-0", count=count)
        return self._entries(res[1] if len(res) > 1 else [])

    def _entries(self, raw: Iterable[tuple[bytes, dict[bytes, bytes]]]) -> list[Entry]:
        """Decoded (id, value) pairs of XREADGROUP/XAUTOCLAIM entries (deleted ones come back without fields)."""
        return [(eid, self.decode(fields)) for eid, fields in raw if fields]

    async def entries(self, count: int | None = None) -> list[Entry]:
        """The stream's entries from its start (XRANGE; outside any group: tools and tests), decoded."""
        return self._entries(await self._redis.xrange(self.key, count=count))

    async def ack(self, group: str, ids: Sequence[bytes]) -> None:
        """The group is done with these entries."""
        if ids:
            await self._redis.xack(self.key, group, *ids)

    async def backlog(self, group: str) -> int:
        """Entries the group has not acknowledged: delivered and pending, plus not yet delivered."""
        found = await self._group_backlogs()
        return found[group][0] if group in found else int(await self._redis.xlen(self.key))

    async def backlogs(self) -> dict[str, Backlog] | None:
        """`backlog` of every consumer group and how long its oldest unacknowledged entry has waited
        (contracts.AuditSink: the console's overview); None when Redis does not answer. With sharded
        extraction, the groups of the observation stream too, as `observations:<group>` (the detector's)."""
        try:
            found = await self._own_backlogs()
            if found is None:
                return None
            if await self._redis.exists(f"{self.key}:{OBSERVATIONS}"):
                more = await self.view(self.decode, OBSERVATIONS)._own_backlogs()
                found.update({f"{OBSERVATIONS}:{name}": b for name, b in (more or {}).items()})
            return found
        except (RedisError, OSError):
            return None

    async def _own_backlogs(self) -> dict[str, Backlog] | None:
        try:
            found = await self._group_backlogs()
            if not any(n for n, _info in found.values()):
                return {name: Backlog(0) for name in found}
            sec, usec = await self._redis.time()  # entry ids are Redis's clock: the wait is measured on it too
            now_ms = int(sec) * 1000 + int(usec) / 1000
            return {
                name: Backlog(n, await self._oldest_wait(name, info, now_ms) if n else None)
                for name, (n, info) in found.items()
            }
        except ResponseError as exc:  # no stream yet: nothing published, nothing waits
            return {} if "no such key" in str(exc).lower() else None
        except (RedisError, OSError):
            return None

    async def _oldest_wait(self, group: str, info: dict[Any, Any], now_ms: float) -> float | None:
        """Seconds since the group's oldest unprocessed entry was appended, at Redis's `now_ms`: the older of its
        oldest pending entry (delivered, not acknowledged) and the first one not yet delivered (after the
        group's last-delivered id, from its XINFO GROUPS entry `info`). Entry ids are Redis's clock in
        milliseconds, so replicas' clocks do not enter."""
        oldest: int | None = None
        pending = await self._redis.xpending(self.key, group)
        if pending and pending.get("pending"):
            oldest = stream_id(pending["min"])[0]
        after = await self._redis.xrange(self.key, min="(" + _text(info["last-delivered-id"]), count=1)
        if after:
            ms = stream_id(after[0][0])[0]
            oldest = ms if oldest is None else min(oldest, ms)
        return None if oldest is None else max(0.0, (now_ms - oldest) / 1000)

    async def _group_backlogs(self) -> dict[str, tuple[int, dict[Any, Any]]]:
        """Each group's pending entries plus those not yet delivered to it (its `lag`; Redis before 7 has none,
        then the stream's length stands in), with the group's XINFO GROUPS entry."""
        out: dict[str, tuple[int, dict[Any, Any]]] = {}
        length: int | None = None
        for g in await self._redis.xinfo_groups(self.key):
            lag = g.get("lag")
            if lag is None and length is None:
                length = int(await self._redis.xlen(self.key))
            out[_text(g["name"])] = (int(g["pending"]) + (int(lag) if lag is not None else int(length or 0)), g)
        return out

    async def trim(self) -> int:
        """Drop the entries every group has acknowledged; returns how many were dropped."""
        groups = await self._redis.xinfo_groups(self.key)
        if not groups:
            return 0
        keep: tuple[int, int] | None = None
        for g in groups:
            if int(g["pending"]):
                summary = await self._redis.xpending(self.key, g["name"])
                first = stream_id(summary["min"])
            else:
                ms, seq = stream_id(g["last-delivered-id"])
                first = (ms, seq + 1)
            keep = first if keep is None or first < keep else keep
        assert keep is not None
        return int(await self._redis.xtrim(self.key, minid=f"{keep[0]}-{keep[1]}"))


# A lease is a Redis key holding its holder's token, with an expiry: taken when free or already the caller's,
# renewed by the same script, given back only by its holder. One round trip each, atomic (a script).
_HOLD = """
local cur = redis.call('GET', KEYS[1])
if (not cur) or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return ARGV[1]
end
return cur
"""
_LET_GO = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Lease:
    """One holder at a time for a role on a stream (the detector worker: `<stream key>:detector`).

    The holder renews it every third of `ttl_ms`; a holder that stops renewing (killed) loses it `ttl_ms` later.
    Tokens are `<name>/<host>:<pid>`, so that a second process started under the same name is another holder.
    """

    def __init__(self, stream: AuditStream, role: str, name: str, ttl_ms: int) -> None:
        self.stream = stream
        self.key = f"{stream.key}:{role}"
        self.token = f"{name}/{socket.gethostname()}:{os.getpid()}"
        self.ttl_ms = ttl_ms

    async def hold(self) -> str:
        """Take or renew the lease; the token of whoever holds it afterwards (ours when taken)."""
        return _text(await self.stream._redis.eval(_HOLD, 1, self.key, self.token, self.ttl_ms))

    async def acquire(self, stop: asyncio.Event) -> str | None:
        """Take the lease, waiting up to one lease period for another holder's to lapse (a worker killed a
        moment ago); the other holder's token when it is still held after that (a live worker), else None
        (taken, or `stop` set first). Redis away: logged once, retried every second."""
        outage = Outage(log, f"taking the lease {self.key} (Redis)")
        loop = asyncio.get_running_loop()
        deadline = None
        while not stop.is_set():
            try:
                holder = await self.hold()
                outage.succeeded()
            except Exception as exc:  # noqa: BLE001 - Redis away: wait for it, as the stream's readers do
                outage.failed(exc, 1.0)
                deadline, pause = None, 1.0  # who holds it is unknown until Redis answers again
            else:
                if holder == self.token:
                    return None
                if deadline is None:
                    deadline = loop.time() + self.ttl_ms / 1000 + 0.5
                if loop.time() >= deadline:
                    return holder
                pause = min(0.25, self.ttl_ms / 4000)
            try:
                await asyncio.wait_for(stop.wait(), pause)
            except TimeoutError:
                pass
        return None

    async def release(self) -> None:
        await self.stream._redis.eval(_LET_GO, 1, self.key, self.token)

    async def keep(self, stop: asyncio.Event, on_renewed: Callable[[], Awaitable[None]] | None = None) -> bool:
        """Renew the lease every third of its period until `stop` is set; True (and `stop` set) when another
        holder has it (this one lost it: Redis away longer than a period, and another worker took over).
        Redis away: logged once, retried. `on_renewed` runs after each renewal (a worker's periodic checks)."""
        outage = Outage(log, f"renewing the lease {self.key} (Redis)")
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), self.ttl_ms / 3000)
                return False
            except TimeoutError:
                pass
            try:
                holder = await self.hold()
                outage.succeeded()
            except Exception as exc:  # noqa: BLE001 - Redis away: retried; the lease lapses if it stays away
                outage.failed(exc, self.ttl_ms / 3000)
                continue
            if holder != self.token:
                log.error("the lease %s is held by %s now (this worker lost it): stopping", self.key, holder)
                stop.set()
                return True
            if on_renewed is not None:
                await on_renewed()
        return False

    async def give_back(self) -> None:
        """Release, or when Redis does not answer, leave the lease to lapse by itself (logged)."""
        try:
            await self.release()
        except Exception as exc:  # noqa: BLE001 - Redis away: the lease lapses on its own
            log.warning("could not give back the lease %s (%s): it lapses by itself", self.key, exc)

    async def holder(self) -> str | None:
        """Whoever holds the lease now (None: nobody)."""
        got = await self.stream._redis.get(self.key)
        return None if got is None else _text(got)


async def consume(
    stream: AuditStream,
    group: str,
    consumer: str,
    handle: Callable[[list[Entry]], Awaitable[None]],
    stop: asyncio.Event,
    *,
    batch: int,
    block_ms: int = 1000,
    claim_idle_ms: int | None = None,
) -> None:
    """The loop every worker runs: its own unacknowledged entries first (a restart under the same name), then,
    with `claim_idle_ms`, entries other consumers held that long (a dead worker's), then new ones; each read
    handed to `handle` (an empty list when the stream was idle for `block_ms`), which acknowledges what it is
    done with. Returns when `stop` is set. Redis away: logged once, retried every second."""
    outage = Outage(log, f"reading the audit stream (Redis) as {group}/{consumer}")
    backlog = True
    while not stop.is_set():
        try:
            if backlog:
                await stream.ensure_group(group)
                entries = await stream.read(group, consumer, batch, block_ms, pending=True)
                backlog = bool(entries)
            else:
                entries = []
                if claim_idle_ms is not None:
                    entries = await stream.claim(group, consumer, claim_idle_ms, batch)
                if not entries:
                    entries = await stream.read(group, consumer, batch, block_ms)
            outage.succeeded()
        except Exception as exc:  # noqa: BLE001 - Redis away: retry; the entries wait in the stream
            outage.failed(exc, 1.0)
            backlog = True
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except TimeoutError:
                pass
            continue
        await handle(entries)


def stream_id(raw: bytes | str) -> tuple[int, int]:
    """A Redis stream entry id ("<ms>-<seq>") as a comparable pair."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def _text(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def consumer_name(kind: str) -> str:
    """A worker's default consumer name: `<kind>-<host>-<pid>`."""
    return f"{kind}-{socket.gethostname()}-{os.getpid()}"
