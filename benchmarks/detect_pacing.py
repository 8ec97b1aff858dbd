"""Does the detector's verdict depend on how fast a campaign sends? The same traffic at its simulated pace
and compressed in time, as `distillshield demo` replays it and as a fast client or a batch would send it.

Builds the demo's scenario (honest chat users, a chain-of-thought harvester and a 5-account hydra; see
`cli/analyze.py: DEMO_SCENARIO`), with every client address set to 127.0.0.1 as in the demo, and analyses
it twice with the default `analyze`: with its simulated timestamps (2 hours), and with the timestamps
compressed by --factor (72: 2 hours in 100 s, the demo's replay) around the first request. Prints, per
account, the verdict and risk of both, and for the attackers the behaviour features that move and the
trained model's per-signal contributions (log-odds).

    .venv/bin/python benchmarks/detect_pacing.py
    .venv/bin/python benchmarks/detect_pacing.py --factor 720 --json-out pacing.json
    .venv/bin/python benchmarks/detect_pacing.py --model model.json   # a model other than the shipped one

Results: docs/detection.md, "Found this round: machine-paced bursts read as honest".
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from distillshield.cli.analyze import DEMO_SCENARIO
from distillshield.detect.analyze import analyze_records
from distillshield.detect.corpus import strip_ground_truth
from distillshield.detect.scoring import DetectionModel
from distillshield.simulate import engine, scenario
from distillshield.traffic import TrafficRecord

FEATURES = ("log_dt", "fast_share", "dt_cv", "diurnal_entropy", "log_peak_hour", "cot_mean")


def run(records: list[dict[str, Any]], factor: float, model: DetectionModel | None = None) -> dict[str, Any]:
    t0 = min(r["ts"] for r in records)
    timed = [
        strip_ground_truth(TrafficRecord.model_validate({**r, "ip": "127.0.0.1", "ts": t0 + (r["ts"] - t0) / factor}))
        for r in records
    ]
    an = analyze_records(timed, model=model)
    out = {}
    for a in an.report["accounts"]:
        acc = an.engine.accounts[a["account_id"]]
        feats = acc.features or {}
        _, _, contrib = an.engine.judge(feats)
        out[a["account_id"]] = {
            "verdict": a["verdict"],
            "risk": round(a["risk"], 3),
            "features": {k: round(float(feats.get(k, 0.0)), 3) for k in FEATURES},
            "contributions": {k: round(float(v), 2) for k, v in sorted(contrib.items())},
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--factor", type=float, default=72.0, help="time compression of the second run")
    ap.add_argument("--seed", type=int, default=3, help="the demo's seed")
    ap.add_argument("--json-out", default=None)
    ap.add_argument("--model", type=Path, default=None, help="model artefact (default: the shipped one)")
    args = ap.parse_args()
    model = DetectionModel.load(args.model) if args.model else None
    sc = scenario.build(DEMO_SCENARIO, "the demo scenario", args.seed)
    records = list(engine.iter_records(sc, args.seed))
    label = {r["account_id"]: r["label"] for r in records}
    paced, burst = run(records, 1.0, model), run(records, args.factor, model)
    result = {"requests": len(records), "factor": args.factor, "accounts": {}}
    print(f"{len(records)} requests; simulated pace vs compressed {args.factor:g}x")
    for a in sorted(paced, key=lambda a: (label[a], a)):
        p, b = paced[a], burst[a]
        result["accounts"][a] = {"label": label[a], "paced": p, "burst": b}
        print(f"{label[a]:24s} {a:20s} paced {p['verdict']:10s} {p['risk']:.2f}", end="")
        print(f"   burst {b['verdict']:10s} {b['risk']:.2f}")
        if label[a].startswith("attack"):
            for k in FEATURES:
                print(f"{'':46s}{k:16s} {p['features'][k]:8.3f} -> {b['features'][k]:8.3f}")
            print(f"{'':46s}contributions    {p['contributions']} -> {b['contributions']}")
    if args.json_out:
        with open(args.json_out, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
