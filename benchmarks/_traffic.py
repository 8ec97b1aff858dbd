"""Traffic files for the per-persona detection benchmarks (detect_variety.py, detect_repeats.py): given files, or
simulator scenario seeds generated into --data when their file is not there yet."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def cli(doc: str) -> tuple[argparse.Namespace, list[Path]]:
    """The benchmark's arguments (the traffic ones and --json-out), and the files they name."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_traffic_args(ap)
    ap.add_argument("--json-out", type=Path)
    args = ap.parse_args()
    return args, traffic_paths(args)


def persona_labels(path: Path) -> dict[str, str]:
    """account -> "kind:persona" from the simulator's labels of a traffic file (to group tables; analysis never
    reads them)."""
    from distillshield.detect.train import read_labels

    with path.open() as f:
        truth = read_labels(json.loads(line) for line in f if line.strip())
    return {a: f"{kind}:{persona}" for a, (kind, persona, _split) in truth.items()}


def add_traffic_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--traffic", type=Path, nargs="*", default=[], help="traffic files to read")
    ap.add_argument("--scenario", help="simulate this scenario (with --seeds) when its file is not in --data")
    ap.add_argument("--seeds", type=int, nargs="*", default=[])
    ap.add_argument("--data", type=Path, default=Path("."), help="folder of SCENARIO-SEED.jsonl files")


def traffic_paths(args: argparse.Namespace) -> list[Path]:
    """The files to read: --traffic, then SCENARIO-SEED.jsonl in --data for each seed (simulated when missing).
    Exits with a one-line message (status 2) when the arguments name none."""
    paths = list(args.traffic)
    if args.seeds and not args.scenario:
        print("error: --seeds needs --scenario", file=sys.stderr)
        raise SystemExit(2)
    for seed in args.seeds:
        path = args.data / f"{args.scenario}-{seed}.jsonl"
        if not path.exists():
            from distillshield.simulate import engine, scenario

            sc, s = scenario.load(args.scenario, seed)
            engine.write(sc, s, path)
        paths.append(path)
    if not paths:
        print("error: give --traffic FILE or --scenario S --seeds N ...", file=sys.stderr)
        raise SystemExit(2)
    return paths
