"""Does one detector worker keep up with the fleet? The audit stream's backlog for `distillshield worker detect`
while requests arrive at a given rate.

Takes a simulated scenario's traffic (`--scenario`, `--seed`) as audit rows, starts one detector worker process
(`python -m distillshield -c CFG worker detect`, on real Redis, an empty SQLite log so nothing is replayed),
appends the rows to a fresh audit stream at `--rate` rows per second for `--seconds`, and samples the
`detectors` group's backlog (entries not yet acknowledged) every half second. Reports the rate achieved, the
backlog's peak and its value at the end of the load, how long the worker then took to catch up, and the worker's
own rate (rows over the time until it caught up).

With `--shards N`, N extraction shards (`worker extract --shard i --shards N`) read the stream and the detector
worker (`worker detect --shards N`) folds their observations. Either way the engine's progress is read from the
worker's status on Redis (`<stream key>:detector:status`; entries are acknowledged once queued, so the stream's
backlog alone does not say detection caught up): "engine caught up" is when it has processed every row sent.
Each worker process's CPU seconds (/proc, Linux) are reported, and CPU microseconds per row for each role: the
engine's is what one detection engine can take at most per core, however many shards extract.

    .venv/bin/python benchmarks/detect_worker_lag.py --scenario smoke --seed 1 --rate 3000 --seconds 20
    .venv/bin/python benchmarks/detect_worker_lag.py --scenario smoke --seed 1 --rate 3000 --seconds 20 --shards 2

Needs Redis (--redis-url). The producer, Redis and the worker share this machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import redis.asyncio as aioredis  # noqa: E402

from distillshield.cli.serve import write_config  # noqa: E402
from distillshield.simulate import engine, scenario  # noqa: E402
from distillshield.store.export import record_to_row  # noqa: E402
from distillshield.traffic import TrafficRecord  # noqa: E402
from distillshield.workers.stream import DETECT_GROUP, AuditStream  # noqa: E402


def rows_of(name: str, seed: int, limit: int) -> list[dict[str, Any]]:
    """`limit` audit rows of the scenario; a scenario with fewer is replayed again after its end (same accounts,
    later timestamps, new request ids), as its traffic would go on."""
    sc, seed = scenario.load(name, seed)
    base = []
    for rec in engine.iter_records(sc, seed):
        base.append(record_to_row(TrafficRecord.model_validate(rec)))
        if len(base) >= limit:
            break
    span = (base[-1]["ts"] - base[0]["ts"] + 1.0) if base else 0.0
    out = []
    while base and len(out) < limit:
        shift = span * (len(out) // len(base))
        for row in base[: limit - len(out)]:
            out.append({**row, "ts": row["ts"] + shift, "request_id": uuid.uuid4().hex})
    return out


async def run(a: argparse.Namespace, rows: list[dict[str, Any]], work: Path) -> dict[str, Any]:
    key = f"dsbench:audit:{uuid.uuid4().hex[:8]}"
    cfg = work / "worker.yaml"
    write_config(cfg, store_url=f"sqlite+aiosqlite:///{work / 'log.db'}")
    env = {
        **os.environ,
        "DISTILLSHIELD_AUDIT__SINK": "redis",
        "DISTILLSHIELD_AUDIT__STREAM_KEY": key,
        "DISTILLSHIELD_RISK__BACKEND": "redis",
        "DISTILLSHIELD_RISK__NAMESPACE": key.replace(":", "-"),
        "DISTILLSHIELD_LIMITS__REDIS_URL": a.redis_url,
    }
    stream = AuditStream(a.redis_url, key)
    groups = [f"extract-{i}of{a.shards}" for i in range(a.shards)] or [DETECT_GROUP]
    for g in groups:
        await stream.ensure_group(g)
    log = (work / "worker.log").open("wb")
    cmd = [sys.executable, "-m", "distillshield", "-c", str(cfg), "worker"]
    shards_arg = ["--shards", str(a.shards)] if a.shards else []
    worker = subprocess.Popen([*cmd, "detect", "--name", "bench", *shards_arg], env=env, stdout=log,
                              stderr=subprocess.STDOUT)  # fmt: skip
    extractors = [
        subprocess.Popen(
            [*cmd, "extract", "--shard", str(i), "--shards", str(a.shards), "--name", f"bench-x{i}"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        for i in range(a.shards)
    ]
    samples: list[tuple[float, int]] = []

    async def backlog() -> int:
        return max([await stream.backlog(g) for g in groups])

    async def engine_processed() -> int:
        st = await stream.status("detector")
        return int(st.get("processed", 0)) + int(st.get("dropped", 0))

    cpu0 = {}
    try:
        await asyncio.sleep(a.warmup_s)  # the workers load their model
        cpu0 = {p.pid: cpu_s(p.pid) for p in [worker, *extractors]}
        t0 = time.perf_counter()
        sent = 0
        next_sample = 0.0
        batch = max(1, int(a.rate / 50))  # 50 appends a second
        while sent < len(rows) and time.perf_counter() - t0 < a.seconds:
            due = int((time.perf_counter() - t0) * a.rate)
            if due > sent:
                n = min(due - sent, batch * 4, len(rows) - sent)
                await stream.append_audit(rows[sent : sent + n])
                sent += n
            now = time.perf_counter() - t0
            if now >= next_sample:
                samples.append((round(now, 2), await backlog()))
                next_sample += 0.5
            await asyncio.sleep(1 / 100)
        load_s = time.perf_counter() - t0
        at_end = await backlog()
        while (b := await backlog()) > 0 and time.perf_counter() - t0 < load_s + a.drain_timeout_s:
            samples.append((round(time.perf_counter() - t0, 2), b))
            await asyncio.sleep(0.5)
        caught_up_s = time.perf_counter() - t0
        left = await backlog()
        # The worker acknowledges entries once they are queued for its engine: wait until the engine has
        # processed them (or dropped them: its queue is bounded), as its status on Redis says.
        while await engine_processed() < sent and time.perf_counter() - t0 < load_s + a.drain_timeout_s:
            await asyncio.sleep(0.25)
        engine_s = time.perf_counter() - t0
        engine_done = await engine_processed() >= sent
        cpu = {p.pid: cpu_s(p.pid) - cpu0[p.pid] for p in [worker, *extractors]}
        await asyncio.sleep(a.settle_s)
    finally:
        for p in [worker, *extractors]:
            p.terminate()
        for p in [worker, *extractors]:
            p.wait(60)
        log.close()
        r = aioredis.from_url(a.redis_url)
        await r.delete(key, f"{key}:observations", f"{key.replace(':', '-')}:risk:board",
                       f"{key.replace(':', '-')}:risk:events")  # fmt: skip
        await r.aclose()
        await stream.close()
    said = (work / "worker.log").read_text(errors="replace")
    import re

    said = " ".join(said.split())  # the worker's console wraps long lines
    m = re.search(r"(\d+) requests observed, (\d+) processed by the engine, (\d+) dropped", said)
    engine_cpu = cpu.get(worker.pid, 0.0)
    extract_cpu = sum(cpu.get(p.pid, 0.0) for p in extractors)
    return {
        "shards": a.shards,
        "engine_caught_up_after_load_s": round(engine_s - load_s, 2) if engine_done else None,
        "engine_rows_per_s": round(sent / engine_s, 1) if engine_done else None,
        "cpu_s": {"engine": round(engine_cpu, 2), "extract_shards": round(extract_cpu, 2)},
        "cpu_us_per_row": {
            "engine": round(engine_cpu / sent * 1e6, 1),
            "extract_shards": round(extract_cpu / sent * 1e6, 1),
        },
        "engine_processed": int(m.group(2)) if m else None,
        "engine_dropped": int(m.group(3)) if m else None,
        "rows_sent": sent,
        "load_s": round(load_s, 2),
        "rate_achieved": round(sent / load_s, 1),
        "backlog_peak": max((b for _t, b in samples), default=0),
        "backlog_at_load_end": at_end,
        "caught_up_after_load_s": None if left else round(caught_up_s - load_s, 2),
        "backlog_left": left,
        "worker_rows_per_s": None if left else round(sent / caught_up_s, 1),
        "samples": samples,
    }


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used so far (/proc/<pid>/stat, Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", default="smoke")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--rate", type=float, default=3000.0, help="rows per second appended to the stream")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--warmup-s", type=float, default=8.0, help="wait for the worker to load its model")
    ap.add_argument("--drain-timeout-s", type=float, default=120.0)
    ap.add_argument("--settle-s", type=float, default=5.0, help="after the stream drained: for the engine's queue")
    ap.add_argument("--shards", type=int, default=0, help="extraction shards; 0: the worker extracts")
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--json-out", type=Path)
    a = ap.parse_args()
    rows = rows_of(a.scenario, a.seed, int(a.rate * a.seconds))
    with tempfile.TemporaryDirectory(prefix="ds-lag-") as tmp:
        res = asyncio.run(run(a, rows, Path(tmp)))
    res = {"scenario": a.scenario, "seed": a.seed, "rate": a.rate, "seconds": a.seconds, **res}
    print(
        f"{res['rows_sent']:,} rows in {res['load_s']} s ({res['rate_achieved']:,}/s asked {a.rate:,.0f}/s); "
        f"backlog peak {res['backlog_peak']:,}, {res['backlog_at_load_end']:,} at the end of the load; "
        + (
            f"caught up {res['caught_up_after_load_s']} s later; worker {res['worker_rows_per_s']:,} rows/s"
            if res["backlog_left"] == 0
            else f"{res['backlog_left']:,} still waiting after {a.drain_timeout_s} s"
        )
        + f"; the engine processed {res['engine_processed']} and dropped {res['engine_dropped']}"
        + (
            f", caught up {res['engine_caught_up_after_load_s']} s after the load ({res['engine_rows_per_s']:,} rows/s)"
            if res["engine_caught_up_after_load_s"] is not None
            else ", did not catch up"
        )
        + f"; CPU per row: engine {res['cpu_us_per_row']['engine']} us, extraction shards "
        + f"{res['cpu_us_per_row']['extract_shards']} us"
    )
    if a.json_out:
        a.json_out.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
