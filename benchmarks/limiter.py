"""Micro-benchmark: the cost of one request's rate limiting (reserve + settle + release), memory vs Redis.

Each operation is what the gateway does per request: reserve over three scopes (key, account, org; the
key and account with every limit set, high enough never to refuse), then end the request with a different
token count, in one of two ways: "split" settles and releases as two calls (three round trips per request
on Redis, how the gateway did it before finish() existed), "finish" does both in one finish() call (two
round trips; what the gateway does now). "single" is one client in a loop; "64 concurrent" is 64 asyncio
tasks, each with its own key, sharing one account and one org (the hot keys). µs/op is wall time /
operations (for 64 concurrent: the throughput cost, not the latency; the latency percentiles are per
operation); end p50 is the median of the end of the request alone (settle + release, or finish). The
split and finish cells run in interleaved rounds (--rounds), so load on the machine hits both alike;
each row pools its rounds.

    .venv/bin/python benchmarks/limiter.py [--redis-url redis://127.0.0.1:6379/0] [--seconds 2] [--rounds 3]

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


class Cell:
    """One row: operations pooled over rounds."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.ends: list[float] = []
        self.wall = 0.0
        self.scripts = 0
        self.server_us = 0
        self.cpu = 0.0  # this process's CPU time (the client side: what a gateway pays)

    def stats(self) -> dict[str, float]:
        lat = sorted(self.latencies)
        n = len(lat)
        return {
            "ops": n,
            "us_per_op": self.wall / n * 1e6,
            "ops_per_s": n / self.wall,
            "p50_us": statistics.median(lat) * 1e6,
            "p99_us": lat[min(n - 1, int(n * 0.99))] * 1e6,
            "end_p50_us": statistics.median(self.ends) * 1e6,
            "client_cpu_us": self.cpu / n * 1e6,
        }


async def run(limiter: RateLimiter, concurrency: int, seconds: float, merged: bool, cell: Cell) -> None:
    deadline = time.perf_counter() + seconds

    async def worker(w: int) -> None:
        s = scopes(w)
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            r = await limiter.reserve(s, 300)
            t1 = time.perf_counter()
            if merged:
                await limiter.finish(r, 120)
            else:
                await limiter.settle(r, 120)
                await limiter.release(r)
            t2 = time.perf_counter()
            cell.latencies.append(t2 - t0)
            cell.ends.append(t2 - t1)

    for w in range(concurrency):  # warm-up: connections, script load
        r = await limiter.reserve(scopes(w), 1)
        await limiter.settle(r, 0)
        await limiter.release(r)
        r = await limiter.reserve(scopes(w), 1)
        await limiter.finish(r, 0)
    start, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*[worker(w) for w in range(concurrency)])
    cell.wall += time.perf_counter() - start
    cell.cpu += time.process_time() - cpu


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
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the split and finish cells")
    args = ap.parse_args()

    rows: list[tuple[str, str, str, dict[str, float], str]] = [
        ("redis-py", name, "", res | {"end_p50_us": float("nan")}, "")
        for name, res in await round_trips(args.redis_url, args.seconds)
    ]
    for conc in (1, args.concurrency):
        label = "single" if conc == 1 else f"{conc} concurrent"
        for merged in (False, True):
            mem, cell = MemoryRateLimiter(), Cell()
            await run(mem, conc, args.seconds, merged, cell)
            rows.append(("memory", label, "finish" if merged else "split", cell.stats(), ""))
            await mem.close()

        prefix = f"{PREFIX}bench:{uuid.uuid4().hex[:8]}:"
        # each script on its own pooled connection (as before _ScriptPipe), and pipelined (the default)
        alone = RedisRateLimiter(args.redis_url, prefix=prefix, pipelined=False)
        piped = RedisRateLimiter(args.redis_url, prefix=prefix, pipelined=True)
        variants = {"split": (alone, False), "finish": (alone, True), "finish, pipelined": (piped, True)}
        cells = {name: Cell() for name in variants}
        for _ in range(args.rounds):
            for name, (limiter, merged) in variants.items():
                calls0, usec0 = await evalsha_stats(args.redis_url)
                await run(limiter, conc, args.seconds / args.rounds, merged, cells[name])
                calls1, usec1 = await evalsha_stats(args.redis_url)
                cells[name].scripts += calls1 - calls0
                cells[name].server_us += usec1 - usec0
        await alone.close()
        await piped.close()
        for name, cell in cells.items():
            st = cell.stats()
            # scripts per op: 3 split, 2 finish (plus the warm-up's few); server CPU per request
            server = f"{cell.scripts / st['ops']:.2f} / {cell.server_us / st['ops']:.1f}"
            rows.append(("redis", label, name, st, server))
        r = aioredis.Redis.from_url(args.redis_url)
        try:
            keys = [k async for k in r.scan_iter(match=prefix + "*", count=1000)]
            if keys:
                await r.delete(*keys)
        finally:
            await r.aclose()

    head = (
        f"{'backend':<8} {'mode':<14} {'end':<17} {'ops':>8} {'µs/op':>9} {'ops/s':>9} {'p50 µs':>9}"
        f" {'p99 µs':>9} {'end p50':>9} {'client CPU µs/op':>16}"
    )
    print(head + f" {'scripts/op / server µs/op':>26}")
    print("-" * (len(head) + 27))
    for backend, label, end, r, server in rows:
        end_p50 = "" if r["end_p50_us"] != r["end_p50_us"] else f"{r['end_p50_us']:.1f}"  # NaN: no end
        print(
            f"{backend:<8} {label:<14} {end:<17} {r['ops']:>8.0f} {r['us_per_op']:>9.1f} {r['ops_per_s']:>9.0f}"
            f" {r['p50_us']:>9.1f} {r['p99_us']:>9.1f} {end_p50:>9} {r.get('client_cpu_us', float('nan')):>16.1f}"
            f" {server:>26}"
        )
    print(
        "one op = reserve + end over 3 scopes; end: split = settle() + release() (3 round trips per op for"
        " redis), finish = finish() (2); end p50: the end of the request alone, µs; redis-py rows: one bare"
        " round trip, for scale; client CPU: this process's CPU per op; scripts/op and server µs/op: EVALSHA calls"
        " and Redis server CPU per request; pipelined: concurrent requests' scripts sent together (_ScriptPipe)"
    )


if __name__ == "__main__":
    asyncio.run(main())
