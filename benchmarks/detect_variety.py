"""Prompt variety per simulated persona: distinct prompts per request, as the content signal reads it.

An account that sends at most one distinct prompt per 4 requests (`signals/content.RESEND_VARIETY`, once it
has sent `signals/templates.VARIETY_MIN_REQUESTS`) is read as focused, not a sweep. This prints, per persona
of each traffic file, how many accounts the rule reads so and the spread of their variety, so the margin
between the honest apps that re-send and the attackers is visible (docs/detection.md round 15).

    .venv/bin/python benchmarks/detect_variety.py --scenario fresh4 --seeds 50001 --data /tmp/d
    .venv/bin/python benchmarks/detect_variety.py --traffic some.jsonl --json-out variety.json
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from _traffic import cli, persona_labels


def variety(path: Path) -> dict[str, list[float]]:
    """Persona label ("kind:persona") -> the prompt variety of each of its accounts that has sent enough requests
    to judge."""
    from distillshield.detect.analyze import analyze_file
    from distillshield.detect.signals.templates import VARIETY_MIN_REQUESTS, prompt_variety

    label = persona_labels(path)
    an = analyze_file(path, encoder=None)
    out: dict[str, list[float]] = defaultdict(list)
    for aid, acc in an.engine.accounts.items():
        if acc.templates.prompted >= VARIETY_MIN_REQUESTS:
            out[label.get(aid, "unlabelled")].append(prompt_variety(acc.templates))
    return out


def main() -> int:
    from distillshield.detect.signals.content import RESEND_VARIETY

    args, paths = cli(__doc__)
    pooled: dict[str, list[float]] = defaultdict(list)
    for path in paths:
        for persona, vals in variety(path).items():
            pooled[persona].extend(vals)
    rows: list[dict[str, Any]] = []
    print(f"{'persona':32s} {'accounts':>8s} {'re-send':>8s} {'min':>6s} {'median':>6s} {'max':>6s}")
    for persona in sorted(pooled):
        vals = sorted(pooled[persona])
        low = sum(v <= RESEND_VARIETY for v in vals)
        row = {"persona": persona, "accounts": len(vals), "resend": low, "min": vals[0], "median": vals[len(vals) // 2]}
        row["max"] = vals[-1]
        rows.append(row)
        print(f"{persona:32s} {len(vals):8d} {low:8d} {vals[0]:6.2f} {row['median']:6.2f} {vals[-1]:6.2f}")
    print(f"('re-send': accounts at or under {RESEND_VARIETY} distinct prompts per request, read as focused)")
    if args.json_out:
        args.json_out.write_text(json.dumps({"files": [str(p) for p in paths], "personas": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
