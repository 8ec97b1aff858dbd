"""The content-campaign grouping of thin accounts, group by group: who is in each group and how it is judged.

`detect/campaign.py` groups thin accounts by what they ask (HDBSCAN over their mean prompt vectors), then judges
each group on its pooled prompts: far from real users' prompts, or mostly reasoning asks over a sweep of topic
areas. This prints, for the groups of the final grouping of an analysed file: size, the simulator's labels of its
members (when the file has them; analysis never reads them), the content judgement's score, the share of its
classified prompts that ask for the model's reasoning against the rest of the service's, the topic areas its
prompts cover, and whether it is a campaign. With `--cot-excess X` it also says which groups a deployment-relative
reasoning test would call campaigns: at least X more of their prompts asking for reasoning than the rest of the
service's, significantly (binomial tail < 1e-6), over a sweep of areas (docs/detection.md round 9: tried, not
shipped).

    .venv/bin/python benchmarks/detect_campaigns.py --scenario fresh2_thin --seed 30002 --cot-excess 0.2
    .venv/bin/python benchmarks/detect_campaigns.py --traffic traffic.jsonl --json-out groups.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

MIN_P = 1e-6


def groups(path: Path, cot_excess: float | None) -> list[dict[str, Any]]:
    from scipy.stats import binom

    from distillshield.detect import campaign as C
    from distillshield.detect.analyze import analyze_file
    from distillshield.detect.engine import Engine
    from distillshield.detect.scoring import RISK_SUSPICIOUS
    from distillshield.detect.signals.content import AREAS_SWEEP, judge, spread

    labels: dict[str, str] = {}
    with path.open("rb") as f:
        for line in f:
            rec = json.loads(line)
            labels.setdefault(rec["account_id"], str(rec.get("label") or "?"))
    engines: list[Engine] = []
    analyze_file(path, on_engine=engines.append)
    engine = engines[0]
    accounts, pop = engine.accounts, engine.population
    thin = sorted((a for a in accounts.values() if C._eligible(a)), key=lambda a: -a.behaviour.last_ts)
    thin = thin[: C.MAX_ACCOUNTS]
    if len(thin) < C.MIN_CAMPAIGN:
        return []
    vecs = np.stack([C._mean_vector(a) for a in thin])
    found = C._density_clusters(np.clip(1.0 - vecs @ vecs.T, 0.0, 2.0).astype(np.float64))
    service_n = sum(a.cot.n for a in accounts.values())
    service_hits = sum(a.cot.either_hits for a in accounts.values())
    out = []
    for label in sorted(set(found.tolist()) - {-1}):
        members = sorted(thin[i].account_id for i in np.flatnonzero(found == label))
        per = max(1, C.POOLED_MAX // len(members))
        rows = [accounts[m].content.window[: min(accounts[m].content.m, per)] for m in members]
        x = np.concatenate([r for r in rows if r is not None]).astype(np.float32)
        null = pop.content.group_null(set(members))
        verdict, _ = judge(
            "content",
            pop.content.reference_typicality(x),
            np.zeros(len(x), dtype=bool),
            pop.content.area_of(x),
            null,
            0.0,
            x,
            excess_min=C.GROUP_EXCESS,
            rank_gap=C.GROUP_GAP,
        )
        asked = sum(accounts[m].cot.n for m in members)
        hits = sum(accounts[m].cot.either_hits for m in members)
        rest_n, rest_hits = service_n - asked, service_hits - hits
        base = rest_hits / rest_n if rest_n > 0 else 1.0
        share = hits / max(asked, 1)
        areas = spread(pop.content.area_of(x))
        row: dict[str, Any] = {
            "accounts": len(members),
            "labels": dict(Counter(labels.get(m, "?") for m in members).most_common()),
            "content_score": round(float(verdict.score), 3),
            "reasoning_share": round(share, 3),
            "reasoning_share_rest": round(base, 3),
            "areas": round(areas, 1),
            "campaign": engine.campaigns._judge(members, accounts, pop) is not None,
        }
        if cot_excess is not None:
            significant = asked > 0 and share > base and float(binom.sf(hits - 1, asked, base)) < MIN_P
            row["campaign_by_cot_excess"] = bool(
                verdict.score >= RISK_SUSPICIOUS
                or (areas >= AREAS_SWEEP and (share >= C.GROUP_COT or (significant and share - base >= cot_excess)))
            )
        out.append(row)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--traffic", type=Path, help="a traffic JSONL file (else --scenario and --seed)")
    ap.add_argument("--scenario", default="fresh2_thin")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "distillshield-detect-eval")
    ap.add_argument("--cot-excess", type=float, default=None, help="also judge by a deployment-relative CoT test")
    ap.add_argument("--json-out", type=Path)
    args = ap.parse_args()
    path = args.traffic
    if path is None:
        from distillshield.simulate import engine, scenario

        sc, seed = scenario.load(args.scenario, args.seed)
        args.data.mkdir(parents=True, exist_ok=True)
        path = args.data / f"{args.scenario}-{seed}.jsonl"
        if not path.exists():
            engine.write(sc, seed, path)
    elif not path.is_file():
        print(f"error: {path} is not a file", file=sys.stderr)
        return 2
    rows = groups(path, args.cot_excess)
    for i, r in enumerate(rows):
        extra = f" by-cot-excess={r['campaign_by_cot_excess']}" if "campaign_by_cot_excess" in r else ""
        print(
            f"group {i}: {r['accounts']} accounts, campaign={r['campaign']}{extra}; content {r['content_score']:.2f}; "
            f"reasoning asks {r['reasoning_share']:.0%} (rest of the service {r['reasoning_share_rest']:.0%}); "
            f"{r['areas']:.1f} topic areas; labels {r['labels']}"
        )
    if args.json_out:
        args.json_out.write_text(json.dumps({"traffic": str(path), "groups": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
