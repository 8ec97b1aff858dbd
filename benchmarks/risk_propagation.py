"""How fast a verdict reaches every replica through the shared risk board (risk.backend: redis).

Starts --replicas processes, each holding a RedisRiskBoard on one namespace. Replica 0 writes --verdicts
verdicts at --rate per second (as online detection publishes them); every other replica records, for each
verdict, the time from its write (the wall clock in the verdict's `updated_at`) to the moment its local copy
holds it. Reports p50/p99/max per replica, and the same for a burst (all verdicts written at once, as a report
loaded through the admin API).

    .venv/bin/python benchmarks/risk_propagation.py --replicas 3 --verdicts 2000 --rate 500 --json-out prop.json

Needs Redis (--redis-url). Replicas are processes, so that the clocks compared are one machine's wall clock
and no replica's event loop is shared with the writer's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import sys
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from distillshield.contracts import AccountRisk  # noqa: E402
from distillshield.gateway.risk.redis import RedisRiskBoard  # noqa: E402


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


async def _reader(url: str, ns: str, expect: int, phase: str, ready: Any, out: Any) -> None:
    board = RedisRiskBoard(url, namespace=ns, block_ms=1000)
    await board.start()
    seen: dict[str, float] = {}
    ready.set()
    deadline = time.monotonic() + 120
    while len(seen) < expect and time.monotonic() < deadline:
        now = time.time()
        for r in board.all():
            if r.account_id.startswith(phase) and r.account_id not in seen:
                seen[r.account_id] = now - r.updated_at
        await asyncio.sleep(0.0005)
    await board.stop(flush_timeout_s=0.1)
    out.put(list(seen.values()))


def reader_main(url: str, ns: str, expect: int, phase: str, ready: Any, out: Any) -> None:
    asyncio.run(_reader(url, ns, expect, phase, ready, out))


async def _write(url: str, ns: str, n: int, rate: float | None, phase: str) -> None:
    board = RedisRiskBoard(url, namespace=ns)
    await board.start()
    t0 = time.perf_counter()
    for i in range(n):
        if rate:
            wait = t0 + i / rate - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
        board.update(AccountRisk(f"{phase}-{i}", 0.95, "extraction", updated_at=time.time()))
    await board.wait_published(60)
    await board.stop()


def run_phase(url: str, ns: str, replicas: int, n: int, rate: float | None, phase: str) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = []
    for _ in range(replicas - 1):
        ready = ctx.Event()
        p = ctx.Process(target=reader_main, args=(url, ns, n, phase, ready, out))
        p.start()
        ready.wait(60)
        procs.append(p)
    asyncio.run(_write(url, ns, n, rate, phase))
    per_replica = []
    for _ in procs:
        delays = out.get(timeout=180)
        per_replica.append(
            {
                "received": len(delays),
                "p50_ms": round(_pct(delays, 0.5) * 1000, 2),
                "p99_ms": round(_pct(delays, 0.99) * 1000, 2),
                "max_ms": round(max(delays) * 1000, 2) if delays else None,
            }
        )
    for p in procs:
        p.join(30)
    return {"phase": phase, "verdicts": n, "rate_per_s": rate, "replicas": per_replica}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--verdicts", type=int, default=2000)
    ap.add_argument("--rate", type=float, default=500.0)
    ap.add_argument("--json-out", type=Path)
    a = ap.parse_args()
    ns = f"dsbench-{uuid.uuid4().hex[:8]}"
    results = [
        run_phase(a.redis_url, ns, a.replicas, a.verdicts, a.rate, "steady"),
        run_phase(a.redis_url, ns, a.replicas, a.verdicts, None, "burst"),
    ]
    import redis

    r = redis.Redis.from_url(a.redis_url)
    r.delete(f"{ns}:risk:board", f"{ns}:risk:events")
    for res in results:
        for i, rep in enumerate(res["replicas"], 1):
            print(
                f"{res['phase']:>6} ({res['verdicts']} verdicts, rate {res['rate_per_s'] or 'all at once'}): "
                f"replica {i}: received {rep['received']}, p50 {rep['p50_ms']} ms, p99 {rep['p99_ms']} ms, "
                f"max {rep['max_ms']} ms"
            )
    if a.json_out:
        a.json_out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
