"""Simulator generation speed: how fast `distillshield simulate` writes a scenario (records/s).

Each run is the real CLI in a fresh process (imports and start-up included), writing to a temporary
file that is deleted afterwards. Reported per run: wall time, the generator's own time and rate (from
the CLI's JSON summary), output size and the child's peak RSS. The first run starts with an empty
question-bank cache (`DISTILLSHIELD_CACHE_DIR` pointed at a fresh folder: reasoning-gym is imported
and the banks are generated), the following ones reuse it, which is what a user sees from the second
run on. Warm runs alternate `--workers 1` (one process) and `--workers 2` (two generator processes
merged by the parent; the same bytes). For the large scenario the run also checks the issue's scale
floor (>= 2,000 accounts, >= 500,000 requests over a simulated week).

    .venv/bin/python benchmarks/simulate_speed.py                       # large: 1 cold + 2x2 warm runs
    .venv/bin/python benchmarks/simulate_speed.py --scenario dev --runs 1 --workers 1
    .venv/bin/python benchmarks/simulate_speed.py --json-out results.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def one_run(scenario: str, seed: int | None, cache_dir: str, workdir: Path, workers: int) -> dict[str, Any]:
    out = workdir / "traffic.jsonl"
    cmd = [sys.executable, "-m", "distillshield", "simulate", "--scenario", scenario, "--out", str(out), "--json"]
    cmd += ["--workers", str(workers)]
    if seed is not None:
        cmd += ["--seed", str(seed)]
    env = {**os.environ, "DISTILLSHIELD_CACHE_DIR": cache_dir}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"simulate failed ({proc.returncode}): {proc.stderr.strip()}")
    summary = json.loads(proc.stdout[proc.stdout.index("{") :])
    out.unlink(missing_ok=True)
    return {
        "wall_s": round(wall, 2),
        "generate_s": summary["elapsed_s"],
        "records": summary["records"],
        "accounts": summary["accounts"],
        "records_per_s_generator": summary["records_per_s"],
        "records_per_s_wall": round(summary["records"] / wall, 1),
        "mib": round(summary["bytes"] / 2**20, 1),
        "cpu_s": round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 2),
        # Records per CPU-second of the child: varies much less than wall rates on a shared machine.
        "records_per_cpu_s": round(
            summary["records"] / max(1e-9, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)), 1
        ),
        "peak_rss_mib": round(after.ru_maxrss / 1024, 1),  # Linux: KiB; max over children so far
        "span_days": round((summary["end"] - summary["start"]) / 86400, 2),
        "workers": workers,
        "by_label": summary["by_label"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", default="large")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--runs", type=int, default=2, help="warm runs per worker count (after one cold run)")
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts to measure")
    ap.add_argument("--json-out", type=Path, default=None)
    args = ap.parse_args()

    load = os.getloadavg()
    results = []
    counts = [int(x) for x in args.workers.split(",")]
    # One cold run (empty bank cache), then warm runs alternating the worker counts (interleaved, so
    # drift in the machine's load hits every setting alike).
    plan = [(counts[0], "cold")] + [(w, "warm") for _ in range(args.runs) for w in counts]
    with tempfile.TemporaryDirectory(prefix="ds-simbench-") as tmp:
        cache = str(Path(tmp) / "cache")
        for i, (workers, cache_state) in enumerate(plan):
            r = one_run(args.scenario, args.seed, cache, Path(tmp), workers)
            r["cache"] = cache_state
            results.append(r)
            print(
                f"run {i + 1} ({r['cache']}, {workers} worker{'s' if workers > 1 else ''}): "
                f"{r['records']:,} records, {r['accounts']:,} accounts, {r['mib']} MiB in "
                f"{r['wall_s']} s wall ({r['records_per_s_wall']:,.0f} rec/s); generator {r['generate_s']} s "
                f"({r['records_per_s_generator']:,.0f} rec/s); cpu {r['cpu_s']} s "
                f"({r['records_per_cpu_s']:,.0f} rec per cpu-s); peak RSS {r['peak_rss_mib']} MiB; "
                f"load {os.getloadavg()[0]:.1f}",
                flush=True,
            )
    report: dict[str, Any] = {
        "scenario": args.scenario,
        "machine": f"{os.cpu_count()} CPUs, {platform.machine()}, Python {platform.python_version()}",
        "load_average_at_start": [round(x, 2) for x in load],
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "runs": results,
        "median_warm": {},
    }
    for w in counts:
        warm = [r for r in results if r["cache"] == "warm" and r["workers"] == w]
        if not warm:
            continue
        med = {
            "records_per_s_wall": statistics.median(r["records_per_s_wall"] for r in warm),
            "records_per_s_generator": statistics.median(r["records_per_s_generator"] for r in warm),
            "records_per_cpu_s": statistics.median(r["records_per_cpu_s"] for r in warm),
        }
        report["median_warm"][w] = med
        print(
            f"median (warm cache, {w} worker{'s' if w > 1 else ''}): {med['records_per_s_wall']:,.0f} records/s wall, "
            f"{med['records_per_s_generator']:,.0f} records/s in the generator, "
            f"{med['records_per_cpu_s']:,.0f} records per CPU-second"
        )
    if args.scenario == "large":
        r = results[0]
        ok = r["accounts"] >= 2000 and r["records"] >= 500_000 and r["span_days"] >= 7
        report["scale_floor_met"] = ok
        print(f"scale floor (>= 2,000 accounts, >= 500,000 requests, 7 days): {'met' if ok else 'NOT met'}")
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
