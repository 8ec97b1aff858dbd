"""The content-campaign grouping of thin accounts, group by group: who is in each group and how it is judged.

`detect/campaign.py` groups thin accounts by what they ask (HDBSCAN over their mean prompt vectors), then judges
each group on its pooled prompts: far from real users' prompts, or mostly reasoning asks over a sweep of topic
areas. This prints, for the groups of the final grouping of an analysed file: size, the simulator's labels of its
members (when the file has them; analysis never reads them), the content judgement's score, the share of its
classified prompts that ask for the model's reasoning (and how surprising that share would be if it were half:
docs/detection.md round 17 tried calling only a share over half beyond chance) against the rest of the service's,
the topic areas its prompts cover, the largest wave in which its members' accounts were created
(detect/cohort.py), whether it is a campaign, and the heavier accounts that join it because they ask as its members
do (campaign.Joining). With
`--cot-excess X` it also says which groups a deployment-relative reasoning test would call campaigns: at least
X more of their prompts asking for reasoning than the rest of the service's, significantly (binomial tail
< 1e-6), over a sweep of areas (docs/detection.md round 9: tried, not shipped).

`--heavy` shows the heavier accounts' grouping instead (more than THIN_MAX requests: those no thin campaign took),
as `campaign.ContentCampaigns._find_heavier` reads it at the end (docs/detection.md round 16): for each density
group, its members' simulator personas, its core members (`campaign.group_core`), their own evidence
(`Engine.own_evidence`: median, how many reach HEAVY_ELEVATED and how many the flag), whether that calls it a
campaign, how many of its members the final report flags, and the figures its pooled prompts would be judged on as a
thin group's are; and the lighter accounts (THIN_MAX requests or fewer, in no thin campaign) that pass its core's
test (`campaign.Lighter`, docs/detection.md round 19): how many, their personas and their closeness to the group's
mean against the bar, beside the closest lighter account that does not pass.

    .venv/bin/python benchmarks/detect_campaigns.py --scenario fresh2_thin --seed 30002 --cot-excess 0.2
    .venv/bin/python benchmarks/detect_campaigns.py --traffic traffic.jsonl --json-out groups.json
    .venv/bin/python benchmarks/detect_campaigns.py --scenario heldout --seed 10002 --heavy
    .venv/bin/python benchmarks/detect_campaigns.py --scenario fresh4 --seed 50006 --heavy --model model.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from distillshield.detect.engine import Engine

MIN_P = 1e-6


def analysed(path: Path, model: Path | None = None) -> tuple[dict[str, tuple[str, str]], dict[str, Any], Engine]:
    """Each account's simulator truth from the file, (label, persona) ("?" where missing; analysis never reads
    them), and the file's analysis: its report and the engine it ran on."""
    from distillshield.detect.analyze import analyze_file
    from distillshield.detect.scoring import DetectionModel

    truth: dict[str, tuple[str, str]] = {}
    with path.open("rb") as f:
        for line in f:
            rec = json.loads(line)
            persona = (rec.get("label_meta") or {}).get("persona", "?")
            truth.setdefault(rec["account_id"], (str(rec.get("label") or "?"), str(persona)))
    engines: list[Engine] = []
    report = analyze_file(path, model=DetectionModel.load(model), on_engine=engines.append).report
    return truth, report, engines[0]


def groups(path: Path, cot_excess: float | None) -> list[dict[str, Any]]:
    from distillshield.detect import campaign as C
    from distillshield.detect.signals.content import AREAS_SWEEP, far_logp

    truth, _report, engine = analysed(path)
    labels = {a: label for a, (label, _persona) in truth.items()}
    accounts, pop = engine.accounts, engine.population
    thin = C.thin_accounts(accounts)
    if len(thin) < C.MIN_CAMPAIGN:
        return []
    grouped = C.density_groups(thin)
    joining = C.Joining.of(thin, grouped.vecs, accounts)
    out = []
    placed: set[str] = set()
    for level, members in C.candidates(grouped, thin, placed):
        ev = C.group_evidence(members, accounts, pop)
        call = C.campaign_call(ev)
        campaign = call is not None
        held = C.campaign_members(members, ev, call) if call is not None else []
        joined = joining.joiners(held, call) if call is not None else []  # the heavier accounts that join it
        placed.update(held, joined)  # as ContentCampaigns.find: a called group's accounts are no later candidate's
        base = ev.rest_share if ev.rest_asked > 0 else 1.0
        share = ev.reasoning_share
        row: dict[str, Any] = {
            "level": level,
            "accounts": len(members),
            "labels": dict(Counter(labels.get(m, "?") for m in members).most_common()),
            "content_score": round(float(ev.content.score), 3),
            "reasoning_share": round(share, 3),
            "reasoning_share_rest": round(base, 3),
            # how surprising the share would be if it were half: -log10 of the binomial tail of the count at
            # GROUP_COT (the reasoning-sweep call reads the share alone; docs/detection.md round 17)
            "over_half_logp": round(far_logp(ev.reasoning, ev.asked, C.GROUP_COT), 1),
            "areas": round(ev.areas, 1),
            # The largest wave in which the members' accounts were created (detect/cohort.py), when judged
            "cohort": None
            if ev.cohort is None
            else {
                "together": ev.cohort.together,
                "of": ev.cohort.members,
                "window_h": ev.cohort.window_s / 3600,
                "expected": round(ev.cohort.expected, 2),
                "logp": round(ev.cohort.logp, 1),
                "significant": ev.cohort.significant,
            },
            "campaign": campaign,
            "joined": {
                "accounts": len(joined),
                "labels": dict(Counter(labels.get(m, "?") for m in joined).most_common()),
            },
        }
        if cot_excess is not None:
            significant = ev.asked > 0 and share > base and far_logp(ev.reasoning, ev.asked, base) > -math.log10(MIN_P)
            row["campaign_by_cot_excess"] = campaign or (
                ev.areas >= AREAS_SWEEP and significant and share - base >= cot_excess
            )
        out.append(row)
    return out


def heavy_groups(path: Path, model: Path | None = None) -> list[dict[str, Any]]:
    """The heavier accounts' density groups as the end of the analysis reads them: who they are, their core, their
    own evidence and the call."""
    from distillshield.detect import campaign as C
    from distillshield.detect.scoring import RISK_SUSPICIOUS

    truth, report, engine = analysed(path, model)
    personas = {a: f"{label}:{persona}" for a, (label, persona) in truth.items()}
    flagged = {a["account_id"] for a in report["accounts"] if a["verdict"] != "benign"}
    accounts, pop = engine.accounts, engine.population
    finder = engine.campaigns
    taken = {m for k, c in finder.campaigns.items() if k not in finder.heavier for m in c.campaign}
    heavy = [a for a in C.heavier_accounts(accounts) if a.account_id not in taken]
    if len(heavy) < C.MIN_CAMPAIGN:
        return []
    groups = C.density_groups(heavy)
    index = {a.account_id: i for i, a in enumerate(heavy)}
    called = {m for k in finder.heavier for m in finder.campaigns[k].campaign}
    lighter = C.Lighter.of(accounts, taken)
    out = []
    for level, members in C.candidates(groups, heavy, set()):  # the candidates _find_heavier judges, both levels
        grouped = C.group_core(members, groups.vecs, index)
        core = grouped.members if grouped is not None else []
        light: dict[str, Any] = {"accounts": 0}
        if grouped is not None and lighter.ids:
            sims = lighter.closeness(grouped)
            passers = lighter.like(grouped)  # nothing taken here: every lighter account that passes the core's test
            chosen = set(passers)
            passed = np.asarray([a in chosen for a in lighter.ids], dtype=bool)
            light = {
                "accounts": len(passers),
                "elevated": sum(engine.own_evidence(accounts[a]) >= C.HEAVY_ELEVATED for a in passers),
                "labels": dict(Counter(personas.get(a, "?") for a in passers).most_common()),
                "closeness": [round(float(sims[passed].min()), 3), round(float(sims[passed].max()), 3)]
                if passed.any()
                else None,
                "bar": round(grouped.bar, 3),
                "closest_other": round(float(sims[~passed].max()), 3) if (~passed).any() else None,
            }
        own = np.asarray([engine.own_evidence(accounts[m]) for m in core])
        ev = C.group_evidence(members, accounts, pop)
        out.append(
            {
                "level": level,
                "accounts": len(members),
                "labels": dict(Counter(personas.get(m, "?") for m in members).most_common()),
                "core": len(core),
                "core_labels": dict(Counter(personas.get(m, "?") for m in core).most_common()),
                "own_median": round(float(np.median(own)), 3) if len(own) else None,
                "own_elevated": int((own >= C.HEAVY_ELEVATED).sum()),
                "own_flagged": int((own >= RISK_SUSPICIOUS).sum()),
                "campaign": bool(core) and set(core) <= called,
                "flagged": sum(m in flagged for m in members),
                "content_score": round(float(ev.content.score), 3),
                "reasoning_share": round(ev.reasoning_share, 3),
                "reasoning_share_rest": round(ev.rest_share, 3),
                "areas": round(ev.areas, 1),
                "lighter": light,
            }
        )
    return out


def _lighter_text(light: dict[str, Any]) -> str:
    if not light["accounts"]:
        return ""
    lo, hi = light["closeness"]
    return (
        f"; {light['accounts']} lighter accounts pass its core's test (closeness {lo:.2f}-{hi:.2f} over the bar "
        f"{light['bar']:.2f}; closest other lighter account {light['closest_other']}), {light['elevated']} of them "
        f"with own evidence at HEAVY_ELEVATED or more: {light['labels']}"
    )


def _cohort_text(c: dict[str, Any] | None) -> str:
    if c is None:
        return "creation times: not enough known"
    mark = " (a wave)" if c["significant"] else ""
    return (
        f"created together: {c['together']} of {c['of']} within {c['window_h']:g} h, {c['expected']:.1f} expected, "
        f"-log10 p {c['logp']:.1f}{mark}"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--traffic", type=Path, help="a traffic JSONL file (else --scenario and --seed)")
    ap.add_argument("--scenario", default="fresh2_thin")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "distillshield-detect-eval")
    ap.add_argument("--cot-excess", type=float, default=None, help="also judge by a deployment-relative CoT test")
    ap.add_argument("--heavy", action="store_true", help="show the heavier accounts' grouping instead")
    ap.add_argument("--model", type=Path, default=None, help="model artefact (default: the shipped one)")
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
    if args.heavy:
        from distillshield.detect.campaign import HEAVY_ELEVATED

        rows = heavy_groups(path, args.model)
        for i, r in enumerate(rows):
            own = "no core" if r["own_median"] is None else f"own evidence median {r['own_median']:.2f}"
            print(
                f"heavier group {i} ({r['level']}): {r['accounts']} accounts, core {r['core']} ({own}, "
                f"{r['own_elevated']} at {HEAVY_ELEVATED} or more, {r['own_flagged']} over the flag); "
                f"campaign={r['campaign']}; {r['flagged']} flagged in the report; content {r['content_score']:.2f}; "
                f"reasoning asks {r['reasoning_share']:.0%} (rest of the service {r['reasoning_share_rest']:.0%}); "
                f"{r['areas']:.1f} topic areas; {r['labels']}; core {r['core_labels']}" + _lighter_text(r["lighter"])
            )
        if args.json_out:
            args.json_out.write_text(json.dumps({"traffic": str(path), "heavy_groups": rows}, indent=1))
        return 0
    rows = groups(path, args.cot_excess)
    for i, r in enumerate(rows):
        extra = f" by-cot-excess={r['campaign_by_cot_excess']}" if "campaign_by_cot_excess" in r else ""
        print(
            f"group {i} ({r['level']}): {r['accounts']} accounts, campaign={r['campaign']}{extra}; "
            f"content {r['content_score']:.2f}; "
            f"reasoning asks {r['reasoning_share']:.0%} (over half: -log10 p {r['over_half_logp']:.1f}; rest of the "
            f"service {r['reasoning_share_rest']:.0%}); {r['areas']:.1f} topic areas; {_cohort_text(r['cohort'])}; "
            f"labels {r['labels']}"
            + (
                f"; joined by {r['joined']['accounts']} heavier accounts {r['joined']['labels']}"
                if r["joined"]["accounts"]
                else ""
            )
        )
    if args.json_out:
        args.json_out.write_text(json.dumps({"traffic": str(path), "groups": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
