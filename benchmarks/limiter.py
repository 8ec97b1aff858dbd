"""Micro-benchmark: the cost of one request's rate limiting (reserve + settle + release), memory vs Redis.

Each operation is what the gateway does per request: reserve over three scopes (key, account, org; the
key and account with every limit set, high enough never to refuse), settle to a different token count,
release. "single" is one client in a loop; "64 concurrent" is 64 asyncio tasks, each with its own key,
sharing one account and one org (the hot keys). µs/op is wall time / operations (for 64 concurrent:
the throughput cost, not the latency; the latency percentiles are per operation).

    .venv/bin/python benchmarks/limiter.py [--redis-url redis://127.0.0.1:6379/0] [--seconds 2]

Keys go under a unique ds:rl:bench:<id>: prefix, deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from typing import Any

import redis.asyncio as aioredis

from distillshield.config import LimitSet
from distillshield.gateway.limits import MemoryRateLimiter, RateLimiter, Scope
from distillshield.gateway.limits.redis import PREFIX, RedisRateLimiter

HIGH = LimitSet(rpm=10**9, tpm=10**12, concurrent=10**6, tpd=10**15)


def scopes(worker: int) -> tuple[Scope, ...]:
    return (Scope("key", f"k{worker}", HIGH), Scope("account", "bench", HIGH), Scope("org", "bench", LimitSet()))


async def run(limiter: RateLimiter, concurrency: int, seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker(w: int) -> None:
        s = scopes(w)
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            r = await limiter.reserve(s, 300)
            await limiter.settle(r, 120)
            await limiter.release(r)
            latencies.append(time.perf_counter() - t0)

    for w in range(concurrency):  # warm-up: connections, script load
        r = await limiter.reserve(scopes(w), 1)
        await limiter.settle(r, 0)
        await limiter.release(r)
    start = time.perf_counter()
    await asyncio.gather(*[worker(w) for w in range(concurrency)])
    wall = time.perf_counter() - start
    latencies.sort()
    n = len(latencies)
    return {
        "ops": n,
        "us_per_op": wall / n * 1e6,
        "ops_per_s": n / wall,
        "p50_us": statistics.median(latencies) * 1e6,
        "p99_us": latencies[min(n - 1, int(n * 0.99))] * 1e6,
    }


async def round_trips(url: str, seconds: float) -> list[tuple[str, dict[str, float]]]:
    """The floor under any Redis limiter from this client: one PING and one trivial EVALSHA, sequentially."""
    r = aioredis.Redis.from_pool(aioredis.BlockingConnectionPool.from_url(url, max_connections=4))
    out = []
    try:
        noop = r.register_script("return 1")
        await noop(keys=["a"], args=[1])
        for name, call in (("PING", r.ping), ("EVALSHA noop", lambda: noop(keys=["a"], args=[1]))):
            lat: list[float] = []
            end = time.perf_counter() + seconds / 2
            start = time.perf_counter()
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                await call()
                lat.append(time.perf_counter() - t0)
            wall = time.perf_counter() - start
            lat.sort()
            n = len(lat)
            out.append(
                (
                    name,
                    {
                        "ops": n,
                        "us_per_op": wall / n * 1e6,
                        "ops_per_s": n / wall,
                        "p50_us": statistics.median(lat) * 1e6,
                        "p99_us": lat[min(n - 1, int(n * 0.99))] * 1e6,
                    },
                )
            )
    finally:
        await r.aclose()
    return out


async def evalsha_stats(url: str) -> tuple[int, int]:
    r = aioredis.Redis.from_url(url)
    try:
        stats: dict[str, Any] = await r.info("commandstats")
    finally:
        await r.aclose()
    s = stats.get("cmdstat_evalsha", {})
    return int(s.get("calls", 0)), int(s.get("usec", 0))


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    ap.add_argument("--concurrency", type=int, default=64)
    args = ap.parse_args()

    rows: list[tuple[str, str, dict[str, float], str]] = [
        ("redis-py", name, res, "") for name, res in await round_trips(args.redis_url, args.seconds)
    ]
    for conc in (1, args.concurrency):
        label = "single" if conc == 1 else f"{conc} concurrent"
        mem = MemoryRateLimiter()
        rows.append(("memory", label, await run(mem, conc, args.seconds), ""))
        await mem.close()

        prefix = f"{PREFIX}bench:{uuid.uuid4().hex[:8]}:"
        red = RedisRateLimiter(args.redis_url, prefix=prefix)
        calls0, usec0 = await evalsha_stats(args.redis_url)
        res = await run(red, conc, args.seconds)
        calls1, usec1 = await evalsha_stats(args.redis_url)
        await red.close()
        server = f"{(usec1 - usec0) / max(1, calls1 - calls0):.1f}"
        rows.append(("redis", label, res, server))
        r = aioredis.Redis.from_url(args.redis_url)
        try:
            keys = [k async for k in r.scan_iter(match=prefix + "*", count=1000)]
            if keys:
                await r.delete(*keys)
        finally:
            await r.aclose()

    head = f"{'backend':<8} {'mode':<14} {'ops':>8} {'µs/op':>9} {'ops/s':>9} {'p50 µs':>9} {'p99 µs':>9}"
    print(head + f" {'redis µs/script':>16}")
    print("-" * (len(head) + 17))
    for backend, label, r, server in rows:
        print(
            f"{backend:<8} {label:<14} {r['ops']:>8.0f} {r['us_per_op']:>9.1f} {r['ops_per_s']:>9.0f}"
            f" {r['p50_us']:>9.1f} {r['p99_us']:>9.1f} {server:>16}"
        )
    print(
        "one op = reserve + settle + release over 3 scopes (3 round trips for redis);"
        " redis-py rows: one bare round trip, for scale; redis µs/script: Redis server CPU per EVALSHA"
    )


if __name__ == "__main__":
    asyncio.run(main())
