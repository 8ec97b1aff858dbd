"""How the shipped prompt classifier reads each persona's system prompt on its own.

The CoT head reads `corpus.classifier_text`: the first 200 characters of the system prompt with the start and
end of the user's turn. An app's system prompt is the same in every request, so a system prompt the classifier
reads as a reasoning ask makes every request of that account count as one. This prints, per simulated persona,
how many accounts send a system prompt, and how many of those system prompts alone score at least the flag
level (`signals/cot.FLAG_AT`), with the range of P(reasoning ask). docs/detection.md round 15 quotes it.

    .venv/bin/python benchmarks/detect_system_prompts.py fresh4-50003.jsonl heldout-10001.jsonl
    .venv/bin/python benchmarks/detect_system_prompts.py some.jsonl --json-out system.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any


def first_system_prompts(paths: list[Path]) -> dict[str, tuple[str, str]]:
    """Each account's label and the system prompt of its first request (as the classifier reads it)."""
    from distillshield.detect import text as T

    out: dict[str, tuple[str, str]] = {}
    for path in paths:
        with path.open() as f:
            for line in f:
                rec = json.loads(line)
                account = rec["account_id"]
                if account in out:
                    continue
                _user, system, _turns, _n = T.request_texts(rec["endpoint"], rec["request"])
                out[account] = (rec.get("label") or "unlabelled", system[:200])
    return out


def main() -> int:
    from distillshield.detect.scoring import DetectionModel
    from distillshield.detect.signals.cot import FLAG_AT, PromptClassifier

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("traffic", type=Path, nargs="+", help="traffic files (JSONL) with the simulator's labels")
    ap.add_argument("--model", type=Path, default=None, help="model artefact (default: the shipped one)")
    ap.add_argument("--json-out", type=Path)
    args = ap.parse_args()
    missing = [str(p) for p in args.traffic if not p.is_file()]
    if missing:
        print(f"error: no such traffic file: {', '.join(missing)}", file=sys.stderr)
        return 2
    clf = PromptClassifier.from_dict(DetectionModel.load(args.model).classifier)
    accounts = first_system_prompts(args.traffic)
    per: dict[str, list[float | None]] = defaultdict(list)
    texts = sorted({s for _label, s in accounts.values() if s.strip()})
    p_of = dict(zip(texts, (float(p) for p in clf(texts)[0]), strict=True)) if texts else {}
    for label, system in accounts.values():
        per[label].append(p_of.get(system))
    rows: list[dict[str, Any]] = []
    print(f"{'persona':32s} {'accounts':>8s} {'system':>7s} {'>=flag':>7s} {'min P':>6s} {'max P':>6s}")
    for label in sorted(per):
        ps = [p for p in per[label] if p is not None]
        row: dict[str, Any] = {"persona": label, "accounts": len(per[label]), "with_system": len(ps)}
        row["at_flag"] = sum(p >= FLAG_AT for p in ps)
        row["min"], row["max"] = (min(ps), max(ps)) if ps else (None, None)
        rows.append(row)
        if ps:
            print(f"{label:32s} {len(per[label]):8d} {len(ps):7d} {row['at_flag']:7d} {min(ps):6.2f} {max(ps):6.2f}")
    print(f"('>=flag': system prompts that alone score P(reasoning ask) >= {FLAG_AT})")
    if args.json_out:
        args.json_out.write_text(json.dumps({"files": [str(p) for p in args.traffic], "personas": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
