"""Give a model artefact the prompt classifier that `distillshield train` fits today, keeping its combiners.

The prompt classifier (signals/cot.py) is fitted on a labelled prompt set (`train.prompt_dataset`), apart from
the combiners, which read its per-account rates. Round 15 added ordinary apps' system prompts to its negatives
(`train.APP_SYSTEM_NEGATIVE`): without them an app whose system prompt says "answer the customer's question using
the articles below" had about half its ordinary requests read as reasoning asks. This fits the classifier as
`train_classifier(seed)` does, prints its held-out precision and recall and, with --traffic, how many requests per
persona it flags against the artefact's current classifier, and how many accounts' system prompts alone each reads
as a reasoning ask; `--write` saves the artefact with the new classifier,
the combiners and thresholds untouched, and says so in its metadata (`meta.prompt_classifier_replaced`).

    .venv/bin/python benchmarks/detect_reclassify.py --traffic dev-5.jsonl heldout-10001.jsonl
    .venv/bin/python benchmarks/detect_reclassify.py --write          # over the shipped artefact

The combiners were trained on the rates the previous classifier gave. Where the new one reads differently (an app's
ordinary requests, no longer reasoning asks) the rates fall, towards what the combiners saw of honest accounts;
retraining the combiners with the new classifier (`distillshield train`) is the complete step, not done here.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections import defaultdict
from importlib import resources
from pathlib import Path
from typing import Any


def read_requests(paths: list[Path]) -> list[tuple[str, str, str, str]]:
    """(account, persona label, user text, system prompt) of every request of the traffic files, in file order."""
    from distillshield.detect import text as T

    out = []
    for path in paths:
        with path.open() as f:
            for line in f:
                rec = json.loads(line)
                user, system, _turns, _n = T.request_texts(rec["endpoint"], rec["request"])
                out.append((rec["account_id"], rec.get("label") or "unlabelled", user, system))
    return out


def flags_by_persona(
    requests: list[tuple[str, str, str, str]], old: Any, new: Any, per_account: int = 40
) -> dict[str, list[int]]:
    """persona label -> [requests read, flagged by old, flagged by new], over the first `per_account` requests of
    each account (what the classifier reads: `corpus.classifier_text`)."""
    from distillshield.detect.corpus import classifier_text
    from distillshield.detect.signals.cot import FLAG_AT

    seen: dict[str, int] = defaultdict(int)
    texts: list[str] = []
    labels: list[str] = []
    for account, label, user, system in requests:
        if seen[account] >= per_account:
            continue
        seen[account] += 1
        texts.append(classifier_text(user, system))
        labels.append(label)
    p_old, p_new = old(texts)[0], new(texts)[0]
    out: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for label, a, b in zip(labels, p_old, p_new, strict=True):
        row = out[label]
        row[0] += 1
        row[1] += int(a >= FLAG_AT)
        row[2] += int(b >= FLAG_AT)
    return dict(out)


def system_prompts_by_persona(requests: list[tuple[str, str, str, str]], old: Any, new: Any) -> dict[str, list[int]]:
    """persona label -> [accounts, accounts sending a system prompt, those whose system prompt alone the old
    classifier reads as a reasoning ask, the same for the new one] (each account's first request's system prompt,
    its first 200 characters as `corpus.classifier_text` reads it)."""
    from distillshield.detect.signals.cot import FLAG_AT

    first: dict[str, tuple[str, str]] = {}
    for account, label, _user, system in requests:
        if account not in first:
            first[account] = (label, system[:200])
    texts = sorted({s for _label, s in first.values() if s.strip()})
    p_old = dict(zip(texts, old(texts)[0].tolist(), strict=True)) if texts else {}
    p_new = dict(zip(texts, new(texts)[0].tolist(), strict=True)) if texts else {}
    out: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for label, system in first.values():
        row = out[label]
        row[0] += 1
        if system in p_old:
            row[1] += 1
            row[2] += int(p_old[system] >= FLAG_AT)
            row[3] += int(p_new[system] >= FLAG_AT)
    return dict(out)


def main() -> int:
    from distillshield.detect.scoring import DetectionModel
    from distillshield.detect.signals.cot import PromptClassifier
    from distillshield.detect.train import train_classifier

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="model artefact (default: the shipped one)")
    ap.add_argument("--seed", type=int, default=0, help="the prompt set's seed (as `distillshield train --seed`)")
    ap.add_argument("--traffic", type=Path, nargs="*", default=[], help="labelled traffic to compare the two on")
    ap.add_argument("--write", action="store_true", help="save the artefact with the new classifier (over --model)")
    ap.add_argument("--json-out", type=Path)
    args = ap.parse_args()
    missing = [str(p) for p in args.traffic if not p.is_file()]
    if missing:
        print(f"error: no such traffic file: {', '.join(missing)}", file=sys.stderr)
        return 2
    path = args.model or Path(str(resources.files("distillshield.detect") / "data" / "default-model.json"))
    model = DetectionModel.load(path)
    old = PromptClassifier.from_dict(model.classifier)
    new, metrics = train_classifier(args.seed)
    same = old.agrees_with(new)
    print(f"held-out templates (one in four): {json.dumps(metrics['heldout'])}")
    print(f"the artefact's classifier {'already agrees with' if same else 'differs from'} the one fitted today")
    doc: dict[str, Any] = {"model": model.version, "heldout": metrics["heldout"], "same": same}
    if args.traffic:
        requests = read_requests(args.traffic)
        rows = flags_by_persona(requests, old, new)
        print(f"{'persona':32s} {'requests':>8s} {'old':>7s} {'new':>7s}  (share read as reasoning asks)")
        for label in sorted(rows):
            n, a, b = rows[label]
            print(f"{label:32s} {n:8d} {a / n:7.3f} {b / n:7.3f}")
        doc["flags"] = {k: {"requests": v[0], "old": v[1], "new": v[2]} for k, v in rows.items()}
        systems = system_prompts_by_persona(requests, old, new)
        print(f"\n{'persona':32s} {'accounts':>8s} {'system':>7s} {'old':>7s} {'new':>7s}  (system prompts alone")
        print(f"{'':32s} {'':8s} {'':7s} {'':7s} {'':7s}   read as reasoning asks)")
        for label in sorted(systems):
            n, k, a, b = systems[label]
            if k:
                print(f"{label:32s} {n:8d} {k:7d} {a:7d} {b:7d}")
        doc["system_prompts"] = {
            k: {"accounts": v[0], "with_system": v[1], "old": v[2], "new": v[3]} for k, v in systems.items()
        }
    if args.json_out:
        args.json_out.write_text(json.dumps(doc, indent=2))
    if args.write and not same:
        d = model.to_dict()
        d["classifier"] = new.to_dict()
        d["version"] = f"{model.version}+{dt.date.today():%Y.%m.%d}-clf"
        meta = dict(d.get("meta") or {})
        meta["prompt_classifier"] = metrics
        meta["prompt_classifier_replaced"] = (
            f"{dt.date.today().isoformat()}: prompt classifier refitted by benchmarks/detect_reclassify.py "
            f"(train_classifier({args.seed}), with ordinary apps' system prompts among its negatives); combiners "
            f"and thresholds are {model.version}'s, trained on the previous classifier's rates"
        )
        d["meta"] = meta
        DetectionModel.from_dict(d).save(path)
        print(f"saved {path} ({d['version']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
