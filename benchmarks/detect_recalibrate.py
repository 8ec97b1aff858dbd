"""Recalibrate a trained model's extraction threshold on the *peak* risk of honest accounts over time.

    .venv/bin/python benchmarks/detect_recalibrate.py --scenario dev --seeds 4 5 6 [--write]

Thresholds set on each benign training account's final state bound how many honest accounts a single
analysis calls extraction; but a gateway rescores every account again and again (online, or an hourly
`distillshield analyze`), and an honest account is then judged by its worst moment, not its last. This
script replays labelled simulator traffic (dev split only: never the held-out scenario or seeds) through
the model, takes each benign account's highest logit over its rescores with at least MIN_EVIDENCE
requests, and raises the extraction threshold just above the `--fpr` quantile of those peaks (never
lowers it; the suspicious threshold is untouched). It prints, for the old and the new threshold, what
an engine acting from an account's first rescore at or above it would do: honest accounts and honest
requests caught from then on, attack requests served before; `--write` saves the model (default: the
shipped artefact).

It also records the calibration deployments' population level (scoring.OperatingPoint: the lower
quartile of every account's final log-odds, labels unused), which a deployment's own level is compared
with to raise the suspicious threshold where ordinary accounts score higher than they did here.

`distillshield train` does the same on out-of-fold logits of its own training rows (scoring.calibrate's
`benign_peaks`, and the population level per training file); this is for a model trained before that.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from importlib import resources
from pathlib import Path

import numpy as np

from distillshield.detect.scoring import POPULATION_QUANTILE, Combiner, DetectionModel, population_level
from distillshield.detect.train import Trace, streaming_traces
from distillshield.simulate import engine, scenario

HELDOUT_SEEDS = 10000  # seeds above this are held out: never calibrate on them


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", default="dev")
    ap.add_argument("--seeds", type=int, nargs="+", required=True)
    ap.add_argument("--model", type=Path, help="model artefact (default: the shipped one)")
    ap.add_argument("--fpr", type=float, default=0.0002, help="share of benign accounts allowed to peak above")
    ap.add_argument("--write", action="store_true", help="save the recalibrated model (over --model or the shipped)")
    ap.add_argument("--json-out", type=Path)
    args = ap.parse_args()
    if args.scenario == "heldout" or any(s > HELDOUT_SEEDS for s in args.seeds):
        ap.error("calibrating on the held-out scenario or seeds is not allowed")

    path = args.model or Path(str(resources.files("distillshield.detect") / "data" / "default-model.json"))
    model = DetectionModel.load(path)
    members = model.members(False)
    traces: list[dict[str, Trace]] = [{} for _ in members]
    levels: list[list[float]] = [[] for _ in members]
    for seed in args.seeds:
        sc, s = scenario.load(args.scenario, seed)
        recs = list(engine.iter_records(sc, s))
        seed_levels = []
        for i, seed_traces in enumerate(streaming_traces(recs, model, f"{args.scenario}-{seed}")):
            for aid, t in seed_traces.items():
                traces[i][f"{seed}/{aid}"] = t
            # The deployment's population level: every account's final log-odds (labels unused), as the
            # engine's OperatingPoint computes it on a live deployment.
            level = population_level([t.scores[-1][1] for t in seed_traces.values() if t.scores])
            seed_levels.append(level)
            if level is not None:
                levels[i].append(level)
        print(f"{args.scenario} seed {seed}: {len(recs)} requests, population level per combiner {seed_levels}")
    source = f"{args.scenario} seeds {' '.join(map(str, args.seeds))}"
    out = []
    for i, comb in enumerate(members):
        if len(members) > 1:
            print(f"-- combiner {i + 1} of {len(members)} (the ensemble's {'primary' if i == 0 else 'member'})")
        out.append(recalibrate(comb, traces[i], levels[i], args.fpr, source))
    if args.json_out:
        doc = out[0] if len(out) == 1 else {"members": out}
        args.json_out.write_text(json.dumps(doc, indent=2))
    if args.write:
        model.save(path)
        print(f"saved {path}")


def recalibrate(comb: Combiner, traces: dict[str, Trace], levels: list[float], fpr: float, source: str) -> dict:
    """Raise one combiner's extraction threshold on the benign peaks and set its population reference; print
    and return what that changes."""
    benign = [t for t in traces.values() if t.kind == "benign"]
    attack = [t for t in traces.values() if t.kind == "attack"]
    peaks = np.asarray([t.peak for t in benign if t.scores])
    old_s, old_e = comb.t_suspicious, comb.t_extraction
    comb.recalibrate_extraction(peaks, fpr, source)
    new_e = comb.t_extraction
    old_ref = comb.population_reference
    ref = comb.set_population_reference(levels, source)
    print(f"population reference (log-odds, quantile {POPULATION_QUANTILE}): {old_ref} -> {ref:.4f} "
          f"(per deployment: {[round(v, 4) for v in levels]})")  # fmt: skip
    print(f"thresholds (log-odds): suspicious {old_s:.3f}; extraction {old_e:.3f} -> {new_e:.3f} "
          f"(benign accounts scored with >= MIN_EVIDENCE requests: {len(peaks)}, fpr {fpr})")  # fmt: skip

    # Online-like: an account is acted on from the first rescore at or above the threshold onwards.
    h_req = sum(t.requests for t in benign)
    a_req = sum(t.requests for t in attack)
    summary = {}
    for name, th in (("old", old_e), ("new", new_e)):
        h_aff = sum(t.after_first(th) for t in benign)
        a_before = sum(t.requests - t.after_first(th) for t in attack)
        summary[name] = {
            "t_extraction": th,
            "honest_accounts_ever_extraction": sum(t.peak >= th for t in benign),
            "honest_requests_after_first_extraction": h_aff,
            "attack_accounts_ever_extraction": sum(t.peak >= th for t in attack),
            "attack_requests_before_first_extraction": a_before,
        }
        print(f"extraction at {th:7.3f}: honest accounts ever called extraction "
              f"{summary[name]['honest_accounts_ever_extraction']} of {len(benign)}, honest requests from then on "
              f"{h_aff} of {h_req} ({100 * h_aff / max(h_req, 1):.3f}%); attack accounts ever "
              f"{summary[name]['attack_accounts_ever_extraction']} of {len(attack)}, attack requests before it "
              f"{a_before} of {a_req} ({100 * a_before / max(a_req, 1):.2f}%)")  # fmt: skip
    by: dict[str, list[float]] = defaultdict(list)
    for t in traces.values():
        by[f"{t.kind}:{t.persona}"].append(t.peak)
    print(f"{'persona':28s} {'accounts':>8s} {'ever susp.':>10s} {'ever extr. old':>14s} {'ever extr. new':>14s}")
    rows = []
    for p in sorted(by):
        vs = np.asarray(by[p])
        row = {"persona": p, "accounts": len(vs), "suspicious": int((vs >= old_s).sum()),
               "extraction_old": int((vs >= old_e).sum()), "extraction_new": int((vs >= new_e).sum())}  # fmt: skip
        rows.append(row)
        print(f"{p:28s} {row['accounts']:8d} {row['suspicious']:10d} {row['extraction_old']:14d} "
              f"{row['extraction_new']:14d}")  # fmt: skip
    top = np.sort(peaks)[-5:]
    print("highest benign peaks (log-odds above the old extraction threshold):", np.round(top - old_e, 3).tolist())
    return {"summary": summary, "rows": rows}


if __name__ == "__main__":
    main()
