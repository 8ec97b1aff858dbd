"""Rate limiter shared by every gateway replica through one Redis: exact sliding windows, no overshoot.

Hand-written Lua, on purpose: no library does reserve-then-settle token accounting with exact sliding
windows across several scopes (key, account, org) in one atomic step. Each decision is ONE Lua script
(EVALSHA), which Redis runs atomically: it checks every scope and commits to every scope, or commits
nothing. Time is Redis server time (TIME), never a replica's clock, so replicas agree on the windows.
A request therefore costs two scripts: reserve() before the upstream call and finish() (settle and
release in one script) at its end; settle() and release() on their own remain for callers that need
them apart. The scripts of concurrent requests share round trips: those started in the same turn of the
event loop go out as one pipeline (_ScriptPipe), each still atomic on its own.

Keys, per scope ("ds:rl:" + "kind:id"), each with an expiry so idle scopes vanish:
  <p>:w  ZSET  reservation id -> start time (µs): the 60 s window of requests and token reservations
  <p>:t  HASH  reservation id -> tokens (settle replaces it), and field "s" = their sum
  <p>:c  ZSET  reservation id -> lease expiry (µs): the slots in flight
  <p>:d  HASH  "day" (UTC day number) and "t" (tokens that day)
and one per Redis, without expiry: "ds:rl:epoch" HASH "id", "since" (µs), "lost" ("1": began with a loss).

Slots are short leases (limits.redis_lease_s, 30 s by default) that one background task per limiter renews
every lease/3 for every reservation still alive (one script call for all of them), so a long stream keeps its
slot and a slot nobody renews (its replica crashed, or its release failed) comes back within one lease. A
release that meets a Redis error is retried in the background (RELEASE_RETRY_DELAYS); a reservation the
gateway dropped without releasing is no longer renewed (the limiter holds it weakly).

Data loss: the epoch key is written with the first reserve on an empty Redis. A replica that had seen an epoch
and finds it gone (a restart without persistence, FLUSHDB) or replaced knows the windows of the last minute
are lost; by default (limits.redis_fresh_policy: closed) every scope's request and token windows then count as
full until 60 s after the new epoch began (429 with a Retry-After that says when), since the requests accepted
in the lost minute are unknown; "open" accepts at once. A replica whose first request meets an empty Redis
cannot tell a loss from a new deployment, and a Redis that evicts keys (maxmemory-policy allkeys-*) can evict
the marker: run it with noeviction or volatile-*.

Differences from memory.py: the windows follow the Redis server's wall clock (a server clock step moves
them); settle(), release() and finish() log and swallow Redis errors instead of failing a request whose
answer is ready (the reservation then stays at its estimate; the release is retried, and the slot expires
with its lease in any case); a reserve whose reply is lost on the network and retried once may count twice
(over-counting, never overshoot). All scopes' keys must live on one Redis (no Redis Cluster).

Tests only: set `_clock` to a callable returning seconds to replace Redis TIME in the scripts (like
memory.py's `_mono`/`_wall`), to test exact retry-after values, leases and UTC midnight without waiting;
`_mono` and the `sleep` argument drive the background task's schedule.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.commands.core import AsyncScript as Script
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from distillshield.gateway.errors import ApiError
from distillshield.gateway.limits.base import (
    Reason,
    Reservation,
    Scope,
    ScopeCount,
    limit_exceeded,
    rate_status,
)

log = logging.getLogger("distillshield.limits")

PREFIX = "ds:rl:"
PING_TIMEOUT_S = 1.0  # readiness: a Redis that does not answer within this is not ready
LEASE_S = 30.0  # a slot's lease; renewed every LEASE_S / 3 while its request lives
RELEASE_RETRY_DELAYS = (0.5, 2.0, 8.0)  # a failed release is retried after these (cumulative 10.5 s < a lease)
RENEW_BATCH = 500  # reservations per renewal script call (bounds how long one call blocks Redis)
FreshPolicy = Literal["closed", "open"]

# Times are integer microseconds (exact in a Lua double); numbers go to redis.call as '%d' strings,
# since Redis would format a Lua number with too few digits.
_COMMON = """
local function int(x) return string.format('%d', x) end
local function now_us(override)
  if override ~= '' then return tonumber(override) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local WINDOW = 60000000
local DAY = 86400000000
local CHUNK = 256
"""

# KEYS: per scope w, t, c, d, then the epoch key. ARGV: id, tokens, lease (µs), clock override ('' = TIME),
# the epoch this replica knows ('' = none yet), 'closed' or 'open' (limits.redis_fresh_policy),
# then per scope rpm, tpm, concurrent, tpd (0 = no limit).
# Returns {ok, epoch id, lost, epoch since (µs), now (µs), full for (µs), day or scope index, reason, wait µs,
# in_flight or token_sum, then per scope: requests, token sum, µs until the newest request leaves the window,
# µs until the newest reservation holding tokens leaves it} (the scopes' state before this request; the two
# resets are 0 when an admitted request holds tokens: it is then the newest entry, and rate_status does not read
# them); ok is 1 when the request was admitted, 0 when the scope at the index refused it for the reason.
_RESERVE = (
    _COMMON
    + """
local id, tokens, lease = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_us(ARGV[4])
local known, closed = ARGV[5], ARGV[6] == 'closed'
local day = math.floor(now / DAY)
local horizon = int(now - WINDOW)
local n = (#KEYS - 1) / 4
-- the epoch: written with the first reserve on an empty Redis; gone or replaced = Redis lost its data
local ek = KEYS[#KEYS]
local e = redis.call('HMGET', ek, 'id', 'since', 'lost')
local eid, since, lost = e[1], tonumber(e[2]), e[3] == '1'
if not eid then
  eid, since, lost = id, now, known ~= ''
  redis.call('HSET', ek, 'id', eid, 'since', int(now), 'lost', lost and '1' or '0')
elseif known ~= '' and eid ~= known and not lost then
  -- a replica that never saw the old epoch wrote this one; this replica did: it began with a loss
  lost = true
  redis.call('HSET', ek, 'lost', '1')
end
local full_for = 0
if lost and closed and now < since + WINDOW then full_for = since + WINDOW - now end
local counts, sums, flights, day_tokens, same_day = {}, {}, {}, {}, {}
-- Visit a window's entries with the tokens each holds, oldest first in pages of CHUNK, or newest first in pages
-- of 1, 4, 16, ... CHUNK (the entry sought is almost always the newest, and reading a whole CHUNK per scope per
-- request was most of Redis's work on a full window); stops at the first non-nil visit(start, tokens) and
-- returns it, nil when none.
local function scan(w, t, newest, visit)
  local start, page = 0, newest and 1 or CHUNK
  while true do
    local e = redis.call(newest and 'ZREVRANGE' or 'ZRANGE', w, start, start + page - 1, 'WITHSCORES')
    if #e == 0 then return nil end
    local ids = {}
    for j = 1, #e, 2 do ids[#ids + 1] = e[j] end
    local vals = redis.call('HMGET', t, unpack(ids))
    for j = 1, #ids do
      local found = visit(tonumber(e[2 * j]), tonumber(vals[j]) or 0)
      if found ~= nil then return found end
    end
    start = start + page
    page = math.min(page * 4, CHUNK)
  end
end
-- when a scope's windows are back to their full limits: the newest request, the newest reservation holding tokens.
-- Read only when the answer needs them (a refusal, or a request of no tokens): an admitted request with tokens is
-- itself the newest entry of every window, so rate_status never reads them, and they were a fifth of the calls.
local function resets(i)
  local w, t = KEYS[4*i-3], KEYS[4*i-2]
  local req_reset, tok_reset = 0, nil
  if counts[i] > 0 then
    local last = redis.call('ZRANGE', w, -1, -1, 'WITHSCORES')
    req_reset = tonumber(last[2]) + WINDOW - now
  end
  if sums[i] > 0 then
    tok_reset = scan(w, t, true, function(start, held)
      if held > 0 then return start + WINDOW - now end
    end)
  end
  return req_reset, tok_reset or 0  -- 0: no reservation in the window holds tokens
end
for i = 1, n do
  local w, t, c, d = KEYS[4*i-3], KEYS[4*i-2], KEYS[4*i-1], KEYS[4*i]
  -- prune: expired slot leases, reservations that left the window (start <= now - 60 s)
  redis.call('ZREMRANGEBYSCORE', c, '-inf', int(now))
  local sum = tonumber(redis.call('HGET', t, 's')) or 0
  local pruned = false
  while true do
    local old = redis.call('ZRANGEBYSCORE', w, '-inf', horizon, 'LIMIT', 0, CHUNK)
    if #old == 0 then break end
    local vals = redis.call('HMGET', t, unpack(old))
    for j = 1, #old do sum = sum - (tonumber(vals[j]) or 0) end
    redis.call('HDEL', t, unpack(old))
    redis.call('ZREM', w, unpack(old))
    pruned = true
    if #old < CHUNK then break end
  end
  if pruned then redis.call('HSET', t, 's', int(sum)) end
  local dd = redis.call('HMGET', d, 'day', 't')
  local dt = 0
  same_day[i] = tonumber(dd[1]) == day
  if same_day[i] then dt = tonumber(dd[2]) or 0 end
  counts[i], sums[i], flights[i], day_tokens[i] = redis.call('ZCARD', w), sum, redis.call('ZCARD', c), dt
end
-- the scopes' state before this request: resets read now, before the commit, when an admission will need them
local before = {}
if tokens == 0 then for i = 1, n do before[i] = {resets(i)} end end
local function answer(ok, a, reason, wait, state)
  local out = {ok, eid, lost and 1 or 0, int(since), int(now), int(full_for), a, reason, wait, int(state)}
  for i = 1, n do
    local r = before[i] or (ok == 0 and {resets(i)}) or {0, 0}
    out[#out + 1] = counts[i]
    out[#out + 1] = int(sums[i])
    out[#out + 1] = int(r[1])
    out[#out + 1] = int(r[2])
  end
  return out
end
-- checks, in memory.py's order (a lost window counts as full after the concurrency check)
for i = 1, n do
  local w, t = KEYS[4*i-3], KEYS[4*i-2]
  local a = 6 + 4 * (i - 1)
  local rpm, tpm = tonumber(ARGV[a+1]), tonumber(ARGV[a+2])
  local conc, tpd = tonumber(ARGV[a+3]), tonumber(ARGV[a+4])
  local count, sum = counts[i], sums[i]
  if conc > 0 and flights[i] >= conc then return answer(0, i, 'concurrent', '', flights[i]) end
  if full_for > 0 and (rpm > 0 or tpm > 0) and not (tpm > 0 and tokens > tpm) then
    return answer(0, i, 'refill', int(full_for), count)
  end
  if rpm > 0 and count >= rpm then
    local e = redis.call('ZRANGE', w, count - rpm, count - rpm, 'WITHSCORES')
    return answer(0, i, 'requests', int(tonumber(e[2]) + WINDOW - now), count)
  end
  if tpm > 0 then
    if tokens > tpm then return answer(0, i, 'too_large', '', sum) end
    if sum + tokens > tpm then
      -- wait until enough of the oldest reservations leave the window
      local need = sum + tokens - tpm
      local wait = scan(w, t, false, function(start, held)
        need = need - held
        if need <= 0 then return start + WINDOW - now end
      end)
      return answer(0, i, 'tokens', int(wait or WINDOW), sum)
    end
  end
  local dt = day_tokens[i]
  if tpd > 0 and dt + tokens > tpd then return answer(0, i, 'tokens_per_day', int((day + 1) * DAY - now), dt) end
end
-- every check passed: commit to every scope
local ts, expiry = int(now), int(now + lease)
local slot_ttl = math.floor(lease / 1000) + 1000
local day_ttl = int(math.floor(((day + 1) * DAY - now) / 1000) + 3600000)
for i = 1, n do
  local w, t, c, d = KEYS[4*i-3], KEYS[4*i-2], KEYS[4*i-1], KEYS[4*i]
  redis.call('ZADD', w, ts, id)
  redis.call('HSET', t, id, ARGV[2], 's', int(sums[i] + tokens))
  redis.call('ZADD', c, expiry, id)
  redis.call('HSET', d, 'day', int(day), 't', int(day_tokens[i] + tokens))
  redis.call('PEXPIRE', w, 61000)
  redis.call('PEXPIRE', t, 61000)
  -- never shorten: a replica configured with a longer lease may hold a slot here
  if redis.call('PTTL', c) < slot_ttl then redis.call('PEXPIRE', c, int(slot_ttl)) end
  -- set with the day: HSET keeps a key's expiry, so a counter already on today keeps the one it was given
  if not same_day[i] then redis.call('PEXPIRE', d, day_ttl) end
end
return answer(1, int(day), '', '', 0)
"""
)

# One scope's settle: the reservation's tokens in the window (t) and that day's counter (d) go from
# `reserved` to `used`. A key that expired stays absent (never recreated without a TTL).
_SETTLE_SCOPE = """
local function settle_scope(t, d, id, used, reserved, day)
  local old = redis.call('HGET', t, id)
  if old then  -- still in the window
    redis.call('HSET', t, id, int(used))
    redis.call('HINCRBY', t, 's', int(used - tonumber(old)))
  end
  if redis.call('HGET', d, 'day') == day then  -- same UTC day
    local dt = (tonumber(redis.call('HGET', d, 't')) or 0) + used - reserved
    if dt < 0 then dt = 0 end
    redis.call('HSET', d, 't', int(dt))
  end
end
"""

# KEYS: per scope t, d. ARGV: id, tokens used, tokens reserved, day of the reservation.
_SETTLE = (
    _COMMON
    + _SETTLE_SCOPE
    + """
local id, used, reserved = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
for i = 1, #KEYS / 2 do settle_scope(KEYS[2*i-1], KEYS[2*i], id, used, reserved, ARGV[4]) end
return 1
"""
)

# settle + release in one step, the normal end of a request: one round trip instead of two.
# KEYS: per scope t, d, c. ARGV: id, tokens used, tokens reserved, day of the reservation,
# '1' to settle ('0': the usage equals the reservation, only the slots go).
_FINISH = (
    _COMMON
    + _SETTLE_SCOPE
    + """
local id, used, reserved = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local settle = ARGV[5] == '1'
for i = 1, #KEYS / 3 do
  if settle then settle_scope(KEYS[3*i-2], KEYS[3*i-1], id, used, reserved, ARGV[4]) end
  redis.call('ZREM', KEYS[3*i], id)
end
return 1
"""
)

# KEYS: the c of every scope of every reservation. ARGV: per reservation its id and how many of KEYS are its.
_RELEASE = """
local k = 1
for a = 1, #ARGV, 2 do
  local id, n = ARGV[a], tonumber(ARGV[a + 1])
  for j = k, k + n - 1 do redis.call('ZREM', KEYS[j], id) end
  k = k + n
end
return 1
"""

# Lease renewal. KEYS and ARGV as _RELEASE's, after two leading ARGV: lease (µs), clock override.
# ZADD XX: a slot that is gone (released, by a release this call overtook, or reclaimed after its lease
# expired) is never brought back.
_RENEW = (
    _COMMON
    + """
local lease = tonumber(ARGV[1])
local now = now_us(ARGV[2])
local expiry = int(now + lease)
local ttl = math.floor(lease / 1000) + 1000
local k, renewed = 1, 0
for a = 3, #ARGV, 2 do
  local id, n = ARGV[a], tonumber(ARGV[a + 1])
  for j = k, k + n - 1 do
    renewed = renewed + redis.call('ZADD', KEYS[j], 'XX', 'CH', expiry, id)
    if redis.call('PTTL', KEYS[j]) < ttl then redis.call('PEXPIRE', KEYS[j], int(ttl)) end
  end
  k = k + n
end
return renewed
"""
)

# KEYS: c. ARGV: clock override. Slots whose lease has not expired.
_IN_FLIGHT = (
    _COMMON
    + """
return redis.call('ZCOUNT', KEYS[1], '(' .. int(now_us(ARGV[1])), '+inf')
"""
)


@dataclass
class _Handle:
    id: str
    day: int
    settle_keys: list[str]  # t, d per scope
    slot_keys: list[str]  # c per scope
    finish_keys: list[str]  # t, d, c per scope


@dataclass
class _PendingRelease:
    """A release that met a Redis error: tried again at `due` (the limiter's monotonic clock)."""

    handle: _Handle
    attempts: int  # failed so far
    due: float


async def _round_trip(conn: Any, packed: list[bytes]) -> list[Any]:
    """Send the packed commands in one write and read their replies; a reply that is an error is that command's."""
    await conn.send_packed_command(packed, check_health=False)
    out: list[Any] = []
    for _ in packed:
        try:
            out.append(await conn.read_response())
        except ResponseError as exc:
            out.append(exc)
    return out


_Call = tuple[Script, list[str], list[Any], asyncio.Future[Any]]  # a script, its KEYS and ARGV, its caller's answer


class _ScriptPipe:
    """Sends the scripts that requests start in the same turn of the event loop as one pipeline: one socket write
    and one read for all of them, instead of a pool checkout, a write and a read each.

    Hand-written because redis-py has no auto-pipelining (ioredis's enableAutoPipelining is the model). At most
    `depth` pipelines are in flight at once; calls that arrive meanwhile wait for the next one, so under load the
    batches grow instead of the connections. A call's outcome is its own: a script error or NOSCRIPT fails (or
    reloads and retries) that call only; a connection error fails every call of that pipeline, as it would have
    failed each of them alone. Semantics per call are EVALSHA's: each script is atomic, none is retried twice.
    """

    def __init__(self, client: aioredis.Redis, depth: int = 2) -> None:
        self._client = client
        self._depth = depth
        self._queue: list[_Call] = []
        self._flying = 0
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def call(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((script, keys, args, fut))
        self._kick()
        return await fut

    def _kick(self) -> None:
        # Sent on the loop's next turn, so that every request resumed in this turn joins the batch.
        if self._queue and not self._scheduled and self._flying < self._depth:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._launch)

    def _launch(self) -> None:
        self._scheduled = False
        if not self._queue or self._flying >= self._depth:
            return
        batch, self._queue = self._queue, []
        self._flying += 1
        task = asyncio.get_running_loop().create_task(self._send(batch), name="ratelimit-pipeline")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[_Call]) -> None:
        try:
            results = await self._execute(batch)
            reload = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
            if reload:  # Redis restarted or flushed its scripts: load them and run those calls again, once
                for script in {id(batch[i][0]): batch[i][0] for i in reload}.values():
                    await self._client.script_load(script.script)
                again = await self._execute([batch[i] for i in reload])
                for i, r in zip(reload, again, strict=True):
                    results[i] = r
            for (_, _, _, fut), r in zip(batch, results, strict=True):
                if fut.done():  # the caller was cancelled: the script ran, nobody waits for its answer
                    continue
                if isinstance(r, BaseException):
                    fut.set_exception(r)
                else:
                    fut.set_result(r)
        except BaseException as exc:  # the connection failed (or the task was cancelled): every call fails
            for *_, fut in batch:
                if not fut.done():
                    fut.set_exception(exc if isinstance(exc, Exception) else RedisConnectionError(str(exc)))
            if not isinstance(exc, Exception):
                raise
        finally:
            self._flying -= 1
            self._kick()

    async def _execute(self, batch: list[_Call]) -> list[Any]:
        """One round trip for the batch, on one pooled connection: each outcome is its reply or its own error.

        Packed by hiredis in one C call per script: redis-py's generic packing encodes each of a reserve's ~30
        arguments in Python, which was about a tenth of a fleet replica's samples. A connection that went
        stale (Redis restarted) is reconnected and the batch sent again, once, as redis-py's own retry does.
        """
        packed = [
            hiredis.pack_command(("EVALSHA", script.sha, len(keys), *keys, *args)) for script, keys, args, _ in batch
        ]
        pool = self._client.connection_pool
        conn = await pool.get_connection()
        try:
            return await conn.retry.call_with_retry(lambda: _round_trip(conn, packed), lambda _exc: conn.disconnect())
        finally:
            await pool.release(conn)

    async def close(self) -> None:
        """Wait for the pipelines in flight (their callers are waiting for them)."""
        while self._tasks or self._queue:
            if self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)
            else:
                await asyncio.sleep(0)


def _slot_args(handles: list[_Handle]) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of _RELEASE and _RENEW for these reservations."""
    keys: list[str] = []
    args: list[Any] = []
    for h in handles:
        keys += h.slot_keys
        args += [h.id, len(h.slot_keys)]
    return keys, args


def safe_url(url: str) -> str:
    """The URL without its password (for messages and logs)."""
    parts = urlsplit(url)
    pairs = parse_qsl(parts.query)
    if parts.password is None and not any(k.lower() == "password" for k, _ in pairs):
        return url
    query = urlencode([(k, v) for k, v in pairs if k.lower() != "password"])
    netloc = parts.netloc
    if parts.password is not None:
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        if parts.port is not None:
            host = f"{host}:{parts.port}"
        netloc = f"{parts.username}@{host}" if parts.username else host
    return urlunsplit(parts._replace(netloc=netloc, query=query))


class RedisRateLimiter:
    """The RateLimiter for several gateway replicas: limits are enforced exactly across all of them."""

    def __init__(
        self,
        url: str,
        *,
        lease_s: float = LEASE_S,
        fresh_policy: FreshPolicy = "closed",
        prefix: str = PREFIX,
        max_connections: int = 64,
        timeout_s: float = 5.0,
        pipelined: bool = True,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """lease_s: a slot's lease (renewed every lease_s / 3 while its request lives); fresh_policy: what to
        do after Redis lost its data (module docstring); pipelined: concurrent requests' scripts go out together
        (_ScriptPipe; False sends each on its own connection, for benchmarks to compare); sleep: how the background
        task waits (tests)."""
        self.url = url
        self.safe_url = safe_url(url)
        self.lease_s = lease_s
        self.renew_every_s = lease_s / 3
        self.fresh_policy: FreshPolicy = fresh_policy
        self.prefix = prefix
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout_s,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            # one quick retry reconnects a pooled connection that went stale (Redis restarted)
            retry=Retry(ExponentialBackoff(cap=0.05, base=0.005), 1),
        )
        self._redis = aioredis.Redis.from_pool(pool)
        self._reserve = self._redis.register_script(_RESERVE)
        self._settle = self._redis.register_script(_SETTLE)
        self._release = self._redis.register_script(_RELEASE)
        self._finish = self._redis.register_script(_FINISH)
        self._renew = self._redis.register_script(_RENEW)
        self._in_flight = self._redis.register_script(_IN_FLIGHT)
        self._pipe = _ScriptPipe(self._redis) if pipelined else None
        self._clock: Callable[[], float] | None = None  # tests only: replaces Redis TIME
        self._mono: Callable[[], float] = time.monotonic  # the background task's schedule
        self._sleep = sleep
        # Reservations holding slots, renewed by the background task. Weak: one the gateway dropped without
        # releasing it (a bug) stops being renewed, and its slot expires with its lease.
        self._live: weakref.WeakValueDictionary[str, Reservation] = weakref.WeakValueDictionary()
        self._pending: list[_PendingRelease] = []  # failed releases, retried by the background task
        self._wake = asyncio.Event()  # a release was queued: the background task reschedules
        self._task: asyncio.Task[None] | None = None
        self._epoch: str | None = None  # the epoch id last seen in Redis
        self._epoch_lost = False  # ... and whether it began with a loss
        self._refill_end: float | None = None  # _local_now() at which the last seen refill period ends

    async def _run(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        """One script call on the request path: pipelined with other requests' (_ScriptPipe), or alone."""
        if self._pipe is not None:
            return await self._pipe.call(script, keys, args)
        return await script(keys=keys, args=args)

    def _now_arg(self) -> str:
        return "" if self._clock is None else str(round(self._clock() * 1_000_000))

    def _local_now(self) -> float:
        return self._clock() if self._clock is not None else self._mono()

    def _key(self, scope_key: str, part: str) -> str:
        return f"{self.prefix}{scope_key}:{part}"

    def _unavailable(self, exc: Exception) -> ApiError:
        if isinstance(exc, RedisConnectionError | RedisTimeoutError | OSError):
            msg = f"rate limiter unavailable: cannot reach Redis at {self.safe_url}"
        else:
            msg = f"rate limiter unavailable: Redis at {self.safe_url} answered an error: {exc}"
        log.error("%s (%s: %s)", msg, type(exc).__name__, exc)
        return ApiError(503, msg, code="limiter_unavailable")

    async def reserve(self, scopes: tuple[Scope, ...], tokens: int) -> Reservation:
        rid = uuid.uuid4().hex
        if not scopes:
            return Reservation(scopes, tokens, None, _Handle(rid, 0, [], [], []))
        keys: list[str] = []
        args: list[Any] = [
            rid,
            tokens,
            round(self.lease_s * 1_000_000),
            self._now_arg(),
            self._epoch or "",
            self.fresh_policy,
        ]
        for s in scopes:
            keys += [self._key(s.key, "w"), self._key(s.key, "t"), self._key(s.key, "c"), self._key(s.key, "d")]
            lim = s.limits
            args += [lim.rpm or 0, lim.tpm or 0, lim.concurrent or 0, lim.tpd or 0]
        keys.append(self.prefix + "epoch")
        try:
            res = await self._run(self._reserve, keys, args)
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from exc
        ok, epoch, lost = int(res[0]), res[1].decode(), bool(int(res[2]))
        since, now, full_for = int(res[3]), int(res[4]), int(res[5])
        self._saw_epoch(epoch, lost, since, now, full_for)
        tail = [int(x) for x in res[10:]]
        counts = [
            ScopeCount(tail[j], tail[j + 1], tail[j + 2] / 1e6, tail[j + 3] / 1e6) for j in range(0, len(tail), 4)
        ]
        at = now / 1e6
        if ok == 0:
            index, reason, wait, state = int(res[6]), res[7].decode(), res[8], int(res[9])
            if reason == "concurrent":
                retry_after: float | None = 1.0
            elif reason == "too_large":
                retry_after = None
            else:
                retry_after = int(wait) / 1_000_000
            raise limit_exceeded(
                scopes[index - 1],
                cast(Reason, reason),
                retry_after,
                tokens=tokens,
                in_flight=state,
                token_sum=state,
                rate=rate_status(scopes, counts, at, None, full_for / 1e6),
            )
        finish_keys = keys[:-1]
        del finish_keys[::4]  # w, t, c, d per scope -> t, c, d
        for i in range(0, len(finish_keys), 3):  # -> t, d, c
            finish_keys[i + 1], finish_keys[i + 2] = finish_keys[i + 2], finish_keys[i + 1]
        handle = _Handle(
            rid,
            int(res[6]),
            [k for i, k in enumerate(finish_keys) if i % 3 != 2],
            finish_keys[2::3],
            finish_keys,
        )
        reservation = Reservation(scopes, tokens, rate_status(scopes, counts, at, tokens, full_for / 1e6), handle)
        self._live[rid] = reservation
        self._start_task()
        return reservation

    def _saw_epoch(self, epoch: str, lost: bool, since_us: int, now_us: int, full_for_us: int) -> None:
        """Note the epoch a reserve found; log one line when it shows this replica that Redis lost its data."""
        self._refill_end = self._local_now() + full_for_us / 1e6 if full_for_us > 0 else None
        known, known_lost = self._epoch, self._epoch_lost
        if epoch == known and lost == known_lost:
            return
        self._epoch, self._epoch_lost = epoch, lost
        changed = epoch != known
        # a replica that had seen another epoch detected the loss itself; one that had not (it started on the
        # empty Redis, or wrote the new marker itself) only learns of it from the marker, and only matters
        # while the windows count as full
        if not (changed and known is not None) and not (lost and full_for_us > 0):
            return
        if full_for_us:
            outcome = (
                f"every scope's request and token windows count as full for {full_for_us / 1e6:.1f} s more "
                "(limits.redis_fresh_policy: closed)"
            )
        elif self.fresh_policy == "open":
            outcome = "limits start again from empty windows (limits.redis_fresh_policy: open)"
        else:
            outcome = "nothing is refused for it: the loss is more than a window old"
        replaced = f", replacing {known}" if changed and known is not None else ""
        log.warning(
            "rate limiter: Redis at %s lost its data (a restart without persistence, or a flush): its epoch marker "
            "%s was written %.1f s ago%s; the last minute's requests are unknown, so %s",
            self.safe_url,
            epoch,
            (now_us - since_us) / 1e6,
            replaced,
            outcome,
        )

    def refill_s(self) -> float:
        if self._refill_end is None:
            return 0.0
        return max(0.0, self._refill_end - self._local_now())

    async def settle(self, reservation: Reservation, tokens_used: int) -> None:
        if reservation.settled:
            return
        reservation.settled = True
        handle: _Handle = reservation.handle
        if tokens_used == reservation.tokens or not handle.settle_keys:
            return
        try:
            await self._run(self._settle, handle.settle_keys, [handle.id, tokens_used, reservation.tokens, handle.day])
        except (RedisError, OSError) as exc:
            log.warning(
                "rate limiter: could not settle reservation %s on Redis at %s (%s); it keeps its estimate",
                handle.id,
                self.safe_url,
                exc,
            )

    async def release(self, reservation: Reservation) -> None:
        if reservation.released:
            return
        reservation.released = True
        await self._release_slots(reservation.handle)

    async def _release_slots(self, handle: _Handle) -> None:
        self._live.pop(handle.id, None)  # no longer renewed, whatever happens next
        if not handle.slot_keys:
            return
        try:
            await self._run(self._release, handle.slot_keys, [handle.id, len(handle.slot_keys)])
        except (RedisError, OSError) as exc:
            self._retry_release(handle, exc)

    def _retry_release(self, handle: _Handle, exc: BaseException) -> None:
        log.warning(
            "rate limiter: could not release reservation %s on Redis at %s (%s); retrying in the background, "
            "and its slot expires within %g s in any case",
            handle.id,
            self.safe_url,
            exc,
            self.lease_s,
        )
        self._pending.append(_PendingRelease(handle, 1, self._mono() + RELEASE_RETRY_DELAYS[0]))
        self._wake.set()
        self._start_task()

    async def finish(self, reservation: Reservation, tokens_used: int) -> None:
        """settle() and release() in one script: one round trip, atomic across the scopes."""
        if reservation.released:
            await self.settle(reservation, tokens_used)
            return
        if reservation.settled:
            await self.release(reservation)
            return
        reservation.settled = reservation.released = True
        handle: _Handle = reservation.handle
        self._live.pop(handle.id, None)
        if not handle.finish_keys:
            return
        settle = tokens_used != reservation.tokens
        try:
            await self._run(
                self._finish, handle.finish_keys, [handle.id, tokens_used, reservation.tokens, handle.day, int(settle)]
            )
        except (RedisError, OSError) as exc:
            # The script ran or it did not: the release (idempotent) is retried, the settle is not (the day
            # counter would move twice), so at worst the reservation keeps its estimate.
            log.warning(
                "rate limiter: could not settle reservation %s on Redis at %s (%s); it keeps its estimate",
                handle.id,
                self.safe_url,
                exc,
            )
            self._retry_release(handle, exc)
        except asyncio.CancelledError:
            # Cancelled in flight: the script ran or it did not. Give the slot back again (ZREM of an id
            # that is gone changes nothing); the settle is not repeated (the day counter would move twice),
            # so at worst the reservation keeps its estimate: over-counting, never overshoot.
            await self._release_slots(handle)
            raise

    # -- the background task: lease renewal and release retries ------------------------------------------

    def _start_task(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._maintain(), name="ratelimit-leases")

    async def _maintain(self) -> None:
        """Renew every live reservation's leases every renew_every_s; retry failed releases when due."""
        next_renewal = self._mono() + self.renew_every_s
        while True:
            try:
                now = self._mono()
                wake_at = min([next_renewal, *(p.due for p in self._pending)])
                if wake_at > now:
                    await self._pause(wake_at - now)
                    continue  # slept, or woken early by a queued release: look again
                if now >= next_renewal:
                    next_renewal = now + self.renew_every_s
                    await self.renew_leases()
                await self._retry_releases(now)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here must not end the renewals: every live slot would lapse
                log.exception("rate limiter: lease maintenance failed; trying again in %g s", self.renew_every_s)
                await self._pause(self.renew_every_s)

    async def _pause(self, delay: float) -> None:
        """Wait `delay` seconds, or less when a release is queued."""
        self._wake.clear()
        sleeper = asyncio.ensure_future(self._sleep(delay))
        waker = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait((sleeper, waker), return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            waker.cancel()

    async def renew_leases(self) -> int:
        """Extend the lease of every slot held by a live reservation of this limiter to lease_s from now, in
        one script call per RENEW_BATCH reservations. Returns how many reservations were renewed; a Redis error
        is logged (their leases run on, and the next renewal tries again)."""
        handles = [r.handle for r in list(self._live.values()) if not r.released and r.handle.slot_keys]
        for i in range(0, len(handles), RENEW_BATCH):
            keys, args = _slot_args(handles[i : i + RENEW_BATCH])
            try:
                await self._renew(keys=keys, args=[round(self.lease_s * 1_000_000), self._now_arg(), *args])
            except (RedisError, OSError) as exc:
                log.warning(
                    "rate limiter: could not renew the leases of %d requests on Redis at %s (%s); trying again "
                    "in %g s, and a slot whose lease runs out (%g s after its last renewal) is freed early",
                    len(handles) - i,
                    self.safe_url,
                    exc,
                    self.renew_every_s,
                    self.lease_s,
                )
                return i
        return len(handles)

    async def _retry_releases(self, now: float) -> None:
        """Retry, in one script call, every failed release that is due; requeue or give up on failures."""
        due = [p for p in self._pending if p.due <= now]
        if not due:
            return
        self._pending = [p for p in self._pending if p.due > now]
        keys, args = _slot_args([p.handle for p in due])
        try:
            await self._release(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            for p in due:
                if p.attempts < len(RELEASE_RETRY_DELAYS):
                    retry = _PendingRelease(p.handle, p.attempts + 1, now + RELEASE_RETRY_DELAYS[p.attempts])
                    self._pending.append(retry)
            gave_up = [p.handle.id for p in due if p.attempts >= len(RELEASE_RETRY_DELAYS)]
            if gave_up:
                log.warning(
                    "rate limiter: gave up releasing %d reservations on Redis at %s after %d attempts (%s); "
                    "their slots expire with their leases (within %g s)",
                    len(gave_up),
                    self.safe_url,
                    len(RELEASE_RETRY_DELAYS) + 1,
                    exc,
                    self.lease_s,
                )

    @property
    def pending_releases(self) -> int:
        """Releases that failed and wait for a retry (metrics and tests)."""
        return len(self._pending)

    async def in_flight(self, scope_key: str) -> int:
        try:
            return int(await self._in_flight(keys=[self._key(scope_key, "c")], args=[self._now_arg()]))
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from exc

    async def ping(self) -> bool:
        try:
            return bool(await asyncio.wait_for(self._redis.ping(), timeout=PING_TIMEOUT_S))
        except (TimeoutError, RedisError, OSError):
            return False

    async def close(self) -> None:
        """Stop the background task, try the pending releases once more, and close the connections."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._pending:
            await self._retry_releases(float("inf"))
            if self._pending:  # not given up on yet, but there is no later: say so once
                log.warning(
                    "rate limiter: closing with %d releases that failed on Redis at %s; their slots expire with "
                    "their leases (within %g s)",
                    len(self._pending),
                    self.safe_url,
                    self.lease_s,
                )
                self._pending.clear()
        if self._pipe is not None:
            await self._pipe.close()
        await self._redis.aclose()
