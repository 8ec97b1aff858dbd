"""Two models on the same traffic, account by account: what each flags, and what flagging on either would.

Reads the reports `benchmarks/detect_eval.py` leaves in its --data directory (one per scenario file and
model: `<scenario>-<seed>.none.<model>.report.json`, "shipped" for the packaged model, the artefact's file
stem otherwise) with the traffic files' ground truth, and prints, per file, the attack and benign accounts
of the scenario's split flagged (suspicious or extraction) by the first model, the second, and by either
(a max-risk ensemble of the two), with the personas where they differ.

    .venv/bin/python benchmarks/detect_eval.py --scenario heldout --seeds 10001 --model pace.json
    .venv/bin/python benchmarks/detect_eval.py --scenario heldout --seeds 10001
    .venv/bin/python benchmarks/detect_compare.py shipped pace --files heldout-10001

Results: docs/detection.md, "Round 6".
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import Counter
from pathlib import Path

import orjson


def truth(path: Path) -> dict[str, tuple[str, str]]:
    """account -> (label, split), from the file's ground truth."""
    out: dict[str, tuple[str, str]] = {}
    with path.open("rb") as fh:
        for line in fh:
            r = orjson.loads(line)
            if r["account_id"] not in out:
                out[r["account_id"]] = (r["label"], r["label_meta"]["split"])
    return out


def flagged(report: Path) -> set[str]:
    rep = json.loads(report.read_text())
    return {a["account_id"] for a in rep["accounts"] if a["verdict"] != "benign"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("first", help="model tag of the first report (shipped, or a model file's stem)")
    ap.add_argument("second", help="model tag of the second report")
    ap.add_argument("--files", nargs="+", required=True, help="scenario-seed names, e.g. heldout-10001")
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "distillshield-detect-eval")
    ap.add_argument("--json-out", type=Path)
    args = ap.parse_args()
    results = {}
    for name in args.files:
        lab = truth(args.data / f"{name}.jsonl")
        split = Counter(sp for _, sp in lab.values()).most_common(1)[0][0]  # the scenario's own split
        if any(sp not in ("dev", "heldout") for _, sp in lab.values()):
            split = next(sp for _, sp in lab.values() if sp not in ("dev", "heldout"))
        a = flagged(args.data / f"{name}.none.{args.first}.report.json")
        b = flagged(args.data / f"{name}.none.{args.second}.report.json")
        c: Counter[str] = Counter()
        differ: Counter[str] = Counter()
        for acct, (label, sp) in lab.items():
            if sp != split:
                continue
            kind = "attack" if label.startswith("attack") else "benign"
            c[kind] += 1
            c[f"{kind} first"] += acct in a
            c[f"{kind} second"] += acct in b
            c[f"{kind} either"] += acct in a or acct in b
            if (acct in a) != (acct in b):
                differ[f"{label} only {args.first if acct in a else args.second}"] += 1
        results[name] = {"split": split, **c, "differ": dict(differ)}
        print(
            f"{name} ({split}): attack {args.first} {c['attack first']}, {args.second} {c['attack second']}, "
            f"either {c['attack either']} / {c['attack']}; benign {args.first} {c['benign first']}, "
            f"{args.second} {c['benign second']}, either {c['benign either']} / {c['benign']}"
        )
        for k, n in sorted(differ.items()):
            print(f"    {k}: {n}")
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
