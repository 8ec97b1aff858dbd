"""Batch analysis speed: requests per second through the non-embedding signals, and linearity in volume.

Generates (or reuses) simulator traffic at several sizes, analyses each with `--encoder none` (every
signal but the embedding ones) and reports wall time, CPU time (the process and its extraction
workers), requests/s by both, and peak memory of the main process. Linear in volume means requests/s
stays flat as the file grows (no all-pairs step). CPU-time rates are the steadier figure on a shared
machine; wall-clock rates are what a user waits for.

    .venv/bin/python benchmarks/detect_speed.py                       # smoke (~7.6k) and dev (~60k)
    .venv/bin/python benchmarks/detect_speed.py --large               # also the large scenario (~560k)
    .venv/bin/python benchmarks/detect_speed.py --json-out speed.json --check   # exit 1 below 5,000 req/s CPU
    .venv/bin/python benchmarks/detect_speed.py --large --content both      # content signal off vs on, same run
    .venv/bin/python benchmarks/detect_speed.py --large --model shipped old.json   # two models, same run

`--content` (default on, as `analyze` runs) switches the population-relative content signal and campaigns
(detect/content.py, detect/campaign.py); `both` measures every size without and with it, back to back,
so the cost of content is read against a baseline taken on the same machine in the same minutes.

Each size runs in a fresh subprocess, so peak memory (ru_maxrss) is that size's own.
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

TARGET_RPS = 5000.0


def generate(name: str, seed: int, out: Path) -> None:
    from distillshield.simulate import engine, scenario

    sc, s = scenario.load(name, seed)
    engine.write(sc, s, out)


def _cpu() -> float:
    """CPU time of this process and its finished children (the extraction workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def measure(path: Path, workers: int, content: bool = True, model: str = "shipped") -> dict:
    from distillshield.detect.analyze import analyze_file
    from distillshield.detect.scoring import DetectionModel

    det = DetectionModel.load(None if model == "shipped" else model)
    t0, c0 = time.perf_counter(), _cpu()
    an = analyze_file(path, model=det, encoder=None, workers=workers, content=content)
    wall, cpu = time.perf_counter() - t0, _cpu() - c0
    n = an.report["summary"]["requests"]
    return {
        "file": str(path),
        "content": content,
        "model": model,
        "combiners": len(det.members(False)),
        "requests": n,
        "accounts": an.report["summary"]["accounts"],
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "rps_wall": round(n / wall),
        "rps_cpu": round(n / cpu),
        "phases_s": an.report["summary"]["timings_s"],
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--large", action="store_true", help="include the large scenario (~560k requests)")
    ap.add_argument("--data", type=Path, default=None, help="folder for generated traffic (default: a temp dir)")
    ap.add_argument("--json-out", type=Path, default=None)
    ap.add_argument(
        "--check", action="store_true", help=f"exit 1 when the largest run is below {TARGET_RPS:.0f} req/s CPU"
    )
    ap.add_argument("--workers", type=int, default=2, help="extraction processes (analyze --workers)")
    ap.add_argument("--content", choices=("on", "off", "both"), default="on", help="content signal (default on)")
    ap.add_argument(
        "--model", nargs="+", default=["shipped"], help="model artefacts to measure back to back (shipped: the default)"
    )
    ap.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # internal: measure one file in this process
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.workers, args.content != "off", args.model[0])))
        return 0
    modes = {"on": ["on"], "off": ["off"], "both": ["off", "on"]}[args.content]
    sizes = [("smoke", 5), ("dev", 7)] + ([("large", 7)] if args.large else [])
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or Path(tmp)
        data.mkdir(parents=True, exist_ok=True)
        rows = []
        for name, seed in sizes:
            path = data / f"{name}-{seed}.jsonl"
            if not path.exists():
                print(f"generating {name} (seed {seed}) ...", file=sys.stderr)
                generate(name, seed, path)
            for mode, model in ((mo, md) for mo in modes for md in args.model):
                cmd = [sys.executable, __file__, "--measure", str(path), "--content", mode, "--model", model]
                cmd += ["--workers", str(args.workers)]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True)
                row = json.loads(out.stdout.strip().splitlines()[-1])
                row["scenario"] = name
                rows.append(row)
                print(
                    f"{name:6s} content {mode:3s} model {Path(model).stem} ({row['combiners']}) "
                    f"{row['requests']:>8d} req {row['accounts']:>5d} acc  "
                    f"wall {row['wall_s']:>7.1f}s ({row['rps_wall']:>6d} req/s)  cpu {row['cpu_s']:>7.1f}s "
                    f"({row['rps_cpu']:>6d} req/s)  peak {row['peak_rss_mb']} MB  phases {row['phases_s']}"
                )
    result = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_avg_at_end": os.getloadavg(),
        },
        "runs": rows,
    }
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=2))
    if args.check and rows[-1]["rps_cpu"] < TARGET_RPS:
        print(f"below target: {rows[-1]['rps_cpu']} < {TARGET_RPS:.0f} req/s (CPU time)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
