"""Batch analysis on Ray Data against the local engine: requests/s and agreement, in one run.

Generates (or reuses, with --data) the simulator's large scenario (detect_speed.py's generation, seed 7,
~560k requests), then analyses it with `--encoder none` four times, each in a fresh process: the local
engine (a fork pool) at --workers 1 and 2, and the Ray engine (a local Ray started on that many CPUs, as
`analyze --engine ray` does) at --workers 1 and 2. It reports wall time (Ray's start and stop included:
what a user waits for), the extraction and scoring phases, requests/s by wall time, the peak memory of the
driver process, and how far each Ray report agrees with the local one: the share of accounts with the
same verdict (target: at least 99 %), and whether the reports are identical but for timings and engine.

    .venv/bin/python benchmarks/analyze_ray.py --json-out analyze_ray.json
    .venv/bin/python benchmarks/analyze_ray.py --data /tmp/bench --parquet     # also the same runs on Parquet

Takes several minutes of every core (each run reads and scores the whole file).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from detect_speed import generate

SCENARIO, SEED = "large", 7
RUNS = (("local", 1), ("local", 2), ("ray", 1), ("ray", 2))


def measure(path: Path, engine: str, workers: int, report_out: Path) -> dict[str, Any]:
    """One analysis in this process; the report goes to `report_out`."""
    from distillshield.detect.analyze import analyze_file

    t0 = time.perf_counter()
    if engine == "ray":
        from distillshield.detect.ray_engine import analyze_file_ray

        an = analyze_file_ray(path, encoder=None, workers=workers)
    else:
        an = analyze_file(path, encoder=None, workers=workers)
    wall = time.perf_counter() - t0
    report_out.write_text(json.dumps(an.report))
    s = an.report["summary"]
    return {
        "engine": engine,
        "workers": workers,
        "file": str(path),
        "requests": s["requests"],
        "accounts": s["accounts"],
        "wall_s": round(wall, 1),
        "rps_wall": round(s["requests"] / wall),
        "phases_s": s["timings_s"],
        "driver_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def source_stamp() -> float:
    """The newest modification time of the package's source: runs are comparable only if it stays put."""
    import distillshield

    return max(p.stat().st_mtime for p in Path(distillshield.__path__[0]).rglob("*.py"))


def core(report: dict[str, Any]) -> dict[str, Any]:
    summary = {k: v for k, v in report["summary"].items() if k not in ("timings_s", "engine", "source")}
    return {**report, "summary": summary}


def agreement(a: dict[str, Any], b: dict[str, Any]) -> float:
    """Share of accounts (of the union) with the same verdict in both reports."""
    va = {x["account_id"]: x["verdict"] for x in a["accounts"]}
    vb = {x["account_id"]: x["verdict"] for x in b["accounts"]}
    ids = set(va) | set(vb)
    return sum(va.get(i) == vb.get(i) for i in ids) / max(1, len(ids))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=None, help="folder for the generated traffic (reused if there)")
    ap.add_argument("--json-out", type=Path, default=None, help="write the runs and the agreement here")
    ap.add_argument("--parquet", action="store_true", help="also run everything on a Parquet copy of the file")
    ap.add_argument("--scenario", default=SCENARIO, help="simulator scenario (default large; smoke for a quick try)")
    ap.add_argument("--measure", nargs=4, help=argparse.SUPPRESS)  # internal: PATH ENGINE WORKERS REPORT_OUT
    args = ap.parse_args()
    if args.measure:
        path, engine, workers, out = args.measure
        print(json.dumps(measure(Path(path), engine, int(workers), Path(out))))
        return 0
    stamp = source_stamp()
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or Path(tmp)
        data.mkdir(parents=True, exist_ok=True)
        files = [data / f"{args.scenario}-{SEED}.jsonl"]
        if not files[0].exists():
            print(f"generating {args.scenario} (seed {SEED}) ...", file=sys.stderr)
            generate(args.scenario, SEED, files[0])
        if args.parquet:
            files.append(files[0].with_suffix(".parquet"))
            if not files[1].exists():
                from distillshield.traffic import read_jsonl, write_parquet

                write_parquet(read_jsonl(files[0])[0], files[1])
        rows, reports = [], {}
        for path in files:
            for engine, workers in RUNS:
                report_out = Path(tmp) / f"report-{path.suffix[1:]}-{engine}-{workers}.json"
                cmd = [sys.executable, __file__, "--measure", str(path), engine, str(workers), str(report_out)]
                print(f"{path.name}: {engine} engine, {workers} workers ...", file=sys.stderr)
                out = subprocess.run(cmd, capture_output=True, text=True, check=True)
                row = json.loads(out.stdout.strip().splitlines()[-1])
                row["format"] = path.suffix[1:]
                reports[(row["format"], engine, workers)] = json.loads(report_out.read_text())
                rows.append(row)
        baseline = reports[("jsonl", "local", 1)]
        for row in rows:
            rep = reports[(row["format"], row["engine"], row["workers"])]
            row["verdict_agreement"] = round(agreement(rep, baseline), 6)
            row["identical_report"] = core(rep) == core(baseline)
    print(
        f"\n{'file':<8} {'engine':<6} {'workers':>7} {'requests':>9} {'wall s':>8} {'req/s':>7} "
        f"{'extract s':>9} {'score s':>8} {'driver MB':>9} {'agree':>7} {'identical':>9}"
    )
    for r in rows:
        print(
            f"{r['format']:<8} {r['engine']:<6} {r['workers']:>7} {r['requests']:>9} {r['wall_s']:>8.1f} "
            f"{r['rps_wall']:>7} {r['phases_s']['extract_s']:>9.1f} {r['phases_s']['score_s']:>8.1f} "
            f"{r['driver_peak_rss_mb']:>9} {r['verdict_agreement']:>7.2%} {str(r['identical_report']):>9}"
        )
    result = {
        "scenario": {"name": args.scenario, "seed": SEED},
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_avg_at_end": os.getloadavg(),
        },
        "runs": rows,
    }
    result["source_changed_during_run"] = changed = source_stamp() != stamp
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=2))
    if changed:  # a shared checkout: someone edited the code between two runs, which then ran different code
        print("the package's source changed during the run: the runs are not comparable; run again", file=sys.stderr)
        return 2
    worst = min(r["verdict_agreement"] for r in rows)
    if worst < 0.99:
        print(f"verdict agreement {worst:.2%} is below 99 %", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
