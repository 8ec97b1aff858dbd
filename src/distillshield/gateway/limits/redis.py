"""Rate limiter shared by every gateway replica through one Redis: exact sliding windows, no overshoot.

Hand-written Lua, on purpose: no library does reserve-then-settle token accounting with exact sliding
windows across several scopes (key, account, org) in one atomic step. Each decision is ONE Lua script
(EVALSHA), which Redis runs atomically: it checks every scope and commits to every scope, or commits
nothing. Time is Redis server time (TIME), never a replica's clock, so replicas agree on the windows.
A request therefore costs two round trips: reserve() before the upstream call and finish() (settle and
release in one script) at its end; settle() and release() on their own remain for callers that need
them apart.

Keys, per scope ("ds:rl:" + "kind:id"), each with an expiry so idle scopes vanish:
  <p>:w  ZSET  reservation id -> start time (µs): the 60 s window of requests and token reservations
  <p>:t  HASH  reservation id -> tokens (settle replaces it), and field "s" = their sum
  <p>:c  ZSET  reservation id -> lease expiry (µs): the slots in flight. A replica that crashes before
               release() or finish() leaks nothing for long: its slots expire after the lease (default
               600 s), so a request that runs longer than the lease loses its slot early.
  <p>:d  HASH  "day" (UTC day number) and "t" (tokens that day)

Differences from memory.py: the windows follow the Redis server's wall clock (a server clock step moves
them); settle(), release() and finish() log and swallow Redis errors instead of failing a request whose
answer is ready (the reservation then stays at its estimate, the slot expires with its lease); a reserve whose
reply is lost on the network and retried once may count twice (over-counting, never overshoot). All
scopes' keys must live on one Redis (no Redis Cluster).

Tests only: set `_clock` to a callable returning seconds to replace Redis TIME in the scripts (like
memory.py's `_mono`/`_wall`), to test exact retry-after values and UTC midnight without waiting.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from distillshield.gateway.errors import ApiError
from distillshield.gateway.limits.base import Reason, Reservation, Scope, limit_exceeded, rate_headers

log = logging.getLogger("distillshield.limits")

PREFIX = "ds:rl:"
PING_TIMEOUT_S = 1.0  # readiness: a Redis that does not answer within this is not ready

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

# KEYS: per scope w, t, c, d. ARGV: id, tokens, lease (µs), clock override ('' = TIME),
# then per scope rpm, tpm, concurrent, tpd (0 = no limit).
# Returns {1, day, requests_1, token_sum_1, ...} (the scopes' state before this request)
# or {0, scope index, reason, wait µs or '', in_flight or token_sum}.
_RESERVE = (
    _COMMON
    + """
local id, tokens, lease = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_us(ARGV[4])
local day = math.floor(now / DAY)
local horizon = int(now - WINDOW)
local n = #KEYS / 4
local out = {1, day}
local day_tokens, sums = {}, {}
for i = 1, n do
  local w, t, c, d = KEYS[4*i-3], KEYS[4*i-2], KEYS[4*i-1], KEYS[4*i]
  local a = 4 + 4 * (i - 1)
  local rpm, tpm = tonumber(ARGV[a+1]), tonumber(ARGV[a+2])
  local conc, tpd = tonumber(ARGV[a+3]), tonumber(ARGV[a+4])
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
  -- checks, in memory.py's order
  local in_flight = redis.call('ZCARD', c)
  if conc > 0 and in_flight >= conc then return {0, i, 'concurrent', '', in_flight} end
  local count = redis.call('ZCARD', w)
  if rpm > 0 and count >= rpm then
    local e = redis.call('ZRANGE', w, count - rpm, count - rpm, 'WITHSCORES')
    return {0, i, 'requests', int(tonumber(e[2]) + WINDOW - now), count}
  end
  if tpm > 0 then
    if tokens > tpm then return {0, i, 'too_large', '', sum} end
    if sum + tokens > tpm then
      -- wait until enough of the oldest reservations leave the window
      local need, wait, start = sum + tokens - tpm, WINDOW, 0
      while need > 0 do
        local e = redis.call('ZRANGE', w, start, start + CHUNK - 1, 'WITHSCORES')
        if #e == 0 then break end
        local ids = {}
        for j = 1, #e, 2 do ids[#ids + 1] = e[j] end
        local vals = redis.call('HMGET', t, unpack(ids))
        for j = 1, #ids do
          need = need - (tonumber(vals[j]) or 0)
          if need <= 0 then
            wait = tonumber(e[2 * j]) + WINDOW - now
            break
          end
        end
        start = start + CHUNK
      end
      return {0, i, 'tokens', int(wait), sum}
    end
  end
  local dd = redis.call('HMGET', d, 'day', 't')
  local dt = 0
  if tonumber(dd[1]) == day then dt = tonumber(dd[2]) or 0 end
  if tpd > 0 and dt + tokens > tpd then return {0, i, 'tokens_per_day', int((day + 1) * DAY - now), dt} end
  day_tokens[i], sums[i] = dt, sum
  out[#out + 1] = count
  out[#out + 1] = sum
end
-- every check passed: commit to every scope
local ts, expiry = int(now), int(now + lease)
local slot_ttl = int(math.floor(lease / 1000) + 1000)
local day_ttl = int(math.floor(((day + 1) * DAY - now) / 1000) + 3600000)
for i = 1, n do
  local w, t, c, d = KEYS[4*i-3], KEYS[4*i-2], KEYS[4*i-1], KEYS[4*i]
  redis.call('ZADD', w, ts, id)
  redis.call('HSET', t, id, ARGV[2], 's', int(sums[i] + tokens))
  redis.call('ZADD', c, expiry, id)
  redis.call('HSET', d, 'day', int(day), 't', int(day_tokens[i] + tokens))
  redis.call('PEXPIRE', w, 61000)
  redis.call('PEXPIRE', t, 61000)
  redis.call('PEXPIRE', c, slot_ttl)
  redis.call('PEXPIRE', d, day_ttl)
end
return out
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

# KEYS: every scope's c. ARGV: id.
_RELEASE = """
for i = 1, #KEYS do redis.call('ZREM', KEYS[i], ARGV[1]) end
return 1
"""

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
        lease_s: float = 600.0,
        prefix: str = PREFIX,
        max_connections: int = 64,
        timeout_s: float = 5.0,
    ) -> None:
        self.url = url
        self.safe_url = safe_url(url)
        self.lease_s = lease_s
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
        self._in_flight = self._redis.register_script(_IN_FLIGHT)
        self._clock: Callable[[], float] | None = None  # tests only: replaces Redis TIME

    def _now_arg(self) -> str:
        return "" if self._clock is None else str(round(self._clock() * 1_000_000))

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
            return Reservation(scopes, tokens, {}, _Handle(rid, 0, [], [], []))
        keys: list[str] = []
        args: list[Any] = [rid, tokens, round(self.lease_s * 1_000_000), self._now_arg()]
        for s in scopes:
            keys += [self._key(s.key, "w"), self._key(s.key, "t"), self._key(s.key, "c"), self._key(s.key, "d")]
            lim = s.limits
            args += [lim.rpm or 0, lim.tpm or 0, lim.concurrent or 0, lim.tpd or 0]
        try:
            res = await self._reserve(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from exc
        if res[0] == 0:
            _, index, reason, wait, state = res
            scope = scopes[int(index) - 1]
            reason = reason.decode()
            if reason == "concurrent":
                retry_after: float | None = 1.0
            elif reason == "too_large":
                retry_after = None
            else:
                retry_after = int(wait) / 1_000_000
            raise limit_exceeded(
                scope, cast(Reason, reason), retry_after, tokens=tokens, in_flight=int(state), token_sum=int(state)
            )
        remaining: dict[str, tuple[int | None, int | None]] = {}
        for i, s in enumerate(scopes):
            count, token_sum = int(res[2 + 2 * i]), int(res[3 + 2 * i])
            lim = s.limits
            remaining[s.key] = (
                lim.rpm - count - 1 if lim.rpm else None,
                lim.tpm - token_sum - tokens if lim.tpm else None,
            )
        finish_keys = keys.copy()
        del finish_keys[::4]  # w, t, c, d per scope -> t, c, d
        for i in range(0, len(finish_keys), 3):  # -> t, d, c
            finish_keys[i + 1], finish_keys[i + 2] = finish_keys[i + 2], finish_keys[i + 1]
        handle = _Handle(
            rid,
            int(res[1]),
            [k for i, k in enumerate(finish_keys) if i % 3 != 2],
            finish_keys[2::3],
            finish_keys,
        )
        return Reservation(scopes, tokens, rate_headers(scopes, remaining), handle)

    async def settle(self, reservation: Reservation, tokens_used: int) -> None:
        if reservation.settled:
            return
        reservation.settled = True
        handle: _Handle = reservation.handle
        if tokens_used == reservation.tokens or not handle.settle_keys:
            return
        try:
            await self._settle(keys=handle.settle_keys, args=[handle.id, tokens_used, reservation.tokens, handle.day])
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
        if not handle.slot_keys:
            return
        try:
            await self._release(keys=handle.slot_keys, args=[handle.id])
        except (RedisError, OSError) as exc:
            log.warning(
                "rate limiter: could not release reservation %s on Redis at %s (%s); its slot expires in %g s",
                handle.id,
                self.safe_url,
                exc,
                self.lease_s,
            )

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
        if not handle.finish_keys:
            return
        settle = tokens_used != reservation.tokens
        try:
            await self._finish(
                keys=handle.finish_keys, args=[handle.id, tokens_used, reservation.tokens, handle.day, int(settle)]
            )
        except (RedisError, OSError) as exc:
            log.warning(
                "rate limiter: could not settle and release reservation %s on Redis at %s (%s); "
                "it keeps its estimate and its slot expires in %g s",
                handle.id,
                self.safe_url,
                exc,
                self.lease_s,
            )
        except asyncio.CancelledError:
            # Cancelled in flight: the script ran or it did not. Give the slot back again (ZREM of an id
            # that is gone changes nothing); the settle is not repeated (the day counter would move twice),
            # so at worst the reservation keeps its estimate: over-counting, never overshoot.
            await self._release_slots(handle)
            raise

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
        await self._redis.aclose()
