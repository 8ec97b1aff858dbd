"""Detection quality over several simulator seeds: analyze + evaluate each, then pool the per-persona counts.

One seed of the held-out scenario has ~320 benign accounts, too few to resolve a 0.1% false-positive
rate; pooling seeds (each analysed on its own, as separate traffic populations) gives the per-persona
table of docs/detection.md. Every figure comes from `distillshield evaluate`'s metrics JSON per seed.

    .venv/bin/python benchmarks/detect_eval.py --scenario heldout --seeds 10001 10002 10003 --md table.md
    .venv/bin/python benchmarks/detect_eval.py --scenario dev --seeds 5 6 --encoder none

Pooled TPR at a fixed FPR is not the sum of the seeds' (each has its own ROC), so the pooled block
reports verdict-based rates (flagged = suspicious or extraction) and the per-seed ROC-AUC / TPR@FPR.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any


def wilson(k: int, n: int) -> tuple[float, float]:
    if n == 0:
        return (math.nan, math.nan)
    z = 1.959963984540054
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, c - h), min(1.0, c + h)


def run_seed(scenario: str, seed: int, data: Path, encoder: str, model: Path | None) -> dict[str, Any]:
    from distillshield.detect.analyze import analyze_file
    from distillshield.detect.embeddings import load_encoder
    from distillshield.detect.scoring import DetectionModel
    from distillshield.evaluate import evaluate
    from distillshield.simulate import engine
    from distillshield.simulate import scenario as sc_mod

    path = data / f"{scenario}-{seed}.jsonl"
    if not path.exists():
        sc, s = sc_mod.load(scenario, seed)
        engine.write(sc, s, path)
    tag = "shipped" if model is None else model.stem  # runs with different models may share --data
    report_path = data / f"{scenario}-{seed}.{encoder}.{tag}.report.json"
    an = analyze_file(
        path, model=DetectionModel.load(model), encoder=None if encoder == "none" else load_encoder(encoder)
    )
    report_path.write_text(json.dumps(an.report))
    return evaluate(path, report=report_path).metrics


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", default="heldout")
    ap.add_argument("--seeds", type=int, nargs="+", required=True)
    ap.add_argument("--encoder", default="none")
    ap.add_argument("--model", type=Path, default=None, help="model artefact (default: the shipped one)")
    ap.add_argument(
        "--data",
        type=Path,
        default=Path(tempfile.gettempdir()) / "distillshield-detect-eval",
        help="where traffic and reports are kept (reused when present)",
    )
    ap.add_argument("--split", default=None, help="split to report (default: the scenario's)")
    ap.add_argument("--json-out", type=Path)
    ap.add_argument("--md", type=Path, help="write the pooled per-persona table as Markdown")
    args = ap.parse_args()
    args.data.mkdir(parents=True, exist_ok=True)
    per_seed = []
    pooled: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    delays: dict[str, list[float]] = defaultdict(list)
    hydra_members = [0, 0]
    for seed in args.seeds:
        m = run_seed(args.scenario, seed, args.data, args.encoder, args.model)
        split = args.split or ("heldout" if "heldout" in m["splits"] else "dev")
        s = m["splits"][split]
        per_seed.append(
            {
                "seed": seed,
                "split": split,
                "benign": s["accounts"]["benign"],
                "attack": s["accounts"]["attack"],
                "roc_auc": s["roc_auc"]["value"],
                "tpr_at_fpr": {str(r["fpr_target"]): r["tpr"] for r in s["tpr_at_fpr"]},
                "benign_fpr": s["benign_fpr"]["rate"],
                "attack_tpr": s["attack_tpr"]["rate"],
                "median_delay_requests": (s.get("delay") or {}).get("requests"),
                "clusters_detected": s["clusters_detected"],
            }
        )
        for r in s["honest_personas"]:
            pooled[("benign", r["persona"])][0] += r["k"]
            pooled[("benign", r["persona"])][1] += r["n"]
        for r in s["attack_personas"]:
            pooled[("attack", r["persona"])][0] += r["k"]
            pooled[("attack", r["persona"])][1] += r["n"]
            if r["median_delay_requests"] is not None:
                delays[r["persona"]].append(r["median_delay_requests"])
        for c in s["clusters"]:
            hydra_members[0] += c["k"]
            hydra_members[1] += c["n"]
        print(f"seed {seed}: {per_seed[-1]}", file=sys.stderr)
    rows = []
    for (kind, persona), (k, n) in sorted(pooled.items()):
        lo, hi = wilson(k, n)
        d = delays.get(persona)
        rows.append(
            {
                "kind": kind,
                "persona": persona,
                "flagged": k,
                "accounts": n,
                "rate": k / n if n else None,
                "ci95": [lo, hi],
                "median_delay_requests": statistics.median(d) if d else None,
            }
        )
    benign = [
        sum(r["flagged"] for r in rows if r["kind"] == "benign"),
        sum(r["accounts"] for r in rows if r["kind"] == "benign"),
    ]
    attack = [
        sum(r["flagged"] for r in rows if r["kind"] == "attack"),
        sum(r["accounts"] for r in rows if r["kind"] == "attack"),
    ]
    result = {
        "scenario": args.scenario,
        "seeds": args.seeds,
        "encoder": args.encoder,
        "per_seed": per_seed,
        "pooled": {
            "benign_fpr": benign,
            "attack_tpr": attack,
            "cluster_members_flagged": hydra_members,
            "personas": rows,
        },
    }
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=2))
    lines = [
        "| kind | persona | flagged / accounts | rate (95% CI) | median delay (requests) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        rate = "-" if r["rate"] is None else f"{r['rate']:.1%} ({r['ci95'][0]:.1%}-{r['ci95'][1]:.1%})"
        d = "" if r["median_delay_requests"] is None else f"{r['median_delay_requests']:.0f}"
        lines.append(f"| {r['kind']} | {r['persona']} | {r['flagged']} / {r['accounts']} | {rate} | {d} |")
    lines.append(f"| **benign, all** | | {benign[0]} / {benign[1]} | {benign[0] / max(benign[1], 1):.2%} | |")
    lines.append(f"| **attack, all** | | {attack[0]} / {attack[1]} | {attack[0] / max(attack[1], 1):.1%} | |")
    lines.append(
        f"| **cluster members** | | {hydra_members[0]} / {hydra_members[1]} | "
        f"{hydra_members[0] / max(hydra_members[1], 1):.1%} | |"
    )
    table = "\n".join(lines)
    print(table)
    if args.md:
        args.md.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
