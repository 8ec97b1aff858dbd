"""How much each simulated persona asks the same thing again: the measures tried for telling a class from a harvester.

A tutor app's class sends one assignment dozens of times within minutes; a harvest pays for new questions. Three
ways of reading "asks the same thing again", per persona of each traffic file (labels are read only to group the
table; the measures come from what analysis keeps and from the raw prompts):

- `near-copies`: share of an account's content window (its last 64 distinct sampled prompts, the service's
  boilerplate projected out, as `detect/content.py` compares them) that has another prompt of the same window at
  cosine NEAR_COPY or more;
- `re-asked`: share of the account's first REASK_REQUESTS requests whose user text shares a verbatim run of
  RUN_WORDS words with a different text the account sent within REASK_WINDOW_S, leaving out the runs that occur in
  more than FRAME_SHARE of its requests (its own frames: a template is not a re-ask);
- `tpl_repeat`: the templates signal's share of requests in exact prompts sent at least twice, as the trained
  model reads it (docs/detection.md, "Where detection stands": it reads Space-Saving counts without their error).

    .venv/bin/python benchmarks/detect_repeats.py --scenario heldout --seeds 10001 --data /tmp/d
    .venv/bin/python benchmarks/detect_repeats.py --traffic some.jsonl --json-out repeats.json
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from _traffic import cli, persona_labels

NEAR_COPY = 0.8
RUN_WORDS = 10
REASK_WINDOW_S = 3600.0
REASK_REQUESTS = 400
FRAME_SHARE = 0.1
MIN_WINDOW = 16  # accounts with fewer window prompts are left out of near-copies
MIN_REQUESTS = 40  # ...and with fewer requests out of re-asked
_WORD = re.compile(r"\w+")


def reasked(texts: list[tuple[float, str]]) -> float:
    """Share of (ts, text) requests sharing a verbatim RUN_WORDS-word run, not one of the account's frames, with a
    different text sent within REASK_WINDOW_S."""
    runs = []
    for _ts, t in texts:
        w = _WORD.findall(t.lower())
        runs.append({" ".join(w[i : i + RUN_WORDS]) for i in range(max(len(w) - RUN_WORDS + 1, 0))})
    df = Counter(r for rs in runs for r in rs)
    frames = {r for r, c in df.items() if c > FRAME_SHARE * len(texts)}
    where: dict[str, list[int]] = defaultdict(list)
    for i, rs in enumerate(runs):
        for r in rs - frames:
            where[r].append(i)
    hits = 0
    for i, (ts, t) in enumerate(texts):
        hits += any(
            j != i and texts[j][1] != t and abs(texts[j][0] - ts) < REASK_WINDOW_S
            for r in runs[i] - frames
            for j in where[r]
        )
    return hits / max(len(texts), 1)


def measure(path: Path) -> dict[str, dict[str, list[float]]]:
    """Persona label ("kind:persona") -> measure name -> one value per account that has enough to measure."""
    from distillshield.detect.analyze import analyze_file
    from distillshield.detect.text import request_texts

    texts: dict[str, list[tuple[float, str]]] = defaultdict(list)
    with path.open() as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                acc = texts[r["account_id"]]
                if len(acc) < REASK_REQUESTS and isinstance(r.get("request"), dict):
                    acc.append((float(r["ts"]), request_texts(r.get("endpoint", ""), r["request"])[0]))
    label = persona_labels(path)
    an = analyze_file(path, encoder=None)
    eng = an.engine
    pop = eng.population.content
    out: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for aid, acc in eng.accounts.items():
        row = out[label.get(aid, "unlabelled")]
        st = acc.content
        if st.window is not None and st.m >= MIN_WINDOW:
            w = pop.centred(st.window[: st.m].astype(np.float32))
            sims = w @ w.T
            np.fill_diagonal(sims, -1.0)
            row["near-copies"].append(float((sims.max(axis=1) >= NEAR_COPY).mean()))
        if acc.n >= MIN_REQUESTS:
            row["re-asked"].append(reasked(texts[aid]))
            row["tpl_repeat"].append(eng.features(acc)[0]["tpl_repeat"])
    return out


def main() -> int:
    args, paths = cli(__doc__)
    pooled: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for path in paths:
        for persona, measures in measure(path).items():
            for name, vals in measures.items():
                pooled[persona][name].extend(vals)
    names = ("near-copies", "re-asked", "tpl_repeat")
    print(f"{'persona':32s} " + " ".join(f"{n + ' (n, min-median-max)':>30s}" for n in names))
    rows: list[dict[str, Any]] = []
    for persona in sorted(pooled):
        row: dict[str, Any] = {"persona": persona}
        cells = []
        for n in names:
            vals = sorted(pooled[persona].get(n, []))
            if vals:
                row[n] = {"accounts": len(vals), "min": vals[0], "median": statistics.median(vals), "max": vals[-1]}
                cells.append(f"{len(vals):4d}  {vals[0]:.2f}-{statistics.median(vals):.2f}-{vals[-1]:.2f}")
            else:
                cells.append("-")
        rows.append(row)
        print(f"{persona:32s} " + " ".join(f"{c:>30s}" for c in cells))
    if args.json_out:
        args.json_out.write_text(json.dumps({"files": [str(p) for p in paths], "personas": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
