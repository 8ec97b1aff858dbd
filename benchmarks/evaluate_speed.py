"""How fast is `distillshield evaluate` on a large scenario? (docs/performance.md, section "Evaluator")

Generates a labelled traffic file itself (default 500,000 requests over 2,000 accounts: honest and
attack personas, hydra clusters, dev/heldout split by persona seed) plus a synthetic online analyser
report, then times the CLI end to end in a fresh process (wall time, records/s, peak RSS) in two
modes: `--baseline` (ground-truth pass + online replay) and `--report` (one pass). A per-phase
breakdown is measured in this process.

    .venv/bin/python benchmarks/evaluate_speed.py [--records 500000] [--accounts 2000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

# persona: (kind, share of accounts, mean requests per account relative to others, hydra cluster size)
PERSONAS: dict[str, tuple[str, float, float, int]] = {
    "chat": ("benign", 0.40, 0.3, 0),
    "enterprise_batch": ("benign", 0.05, 6.0, 0),
    "eval_run": ("benign", 0.05, 2.0, 0),
    "coding_assistant": ("benign", 0.10, 1.0, 0),
    "agent": ("benign", 0.08, 1.5, 0),
    "multilingual": ("benign", 0.07, 0.4, 0),
    "bulk_harvest": ("attack", 0.02, 8.0, 0),
    "cot_harvest": ("attack", 0.03, 3.0, 0),
    "capability_sweep": ("attack", 0.03, 2.0, 0),
    "hydra": ("attack", 0.15, 0.5, 25),
    "reseller_mix": ("attack", 0.02, 2.5, 0),
}
WEEK = 7 * 86400.0
START = 1_767_225_600.0  # 2026-01-01


def generate(path: Path, report_path: Path, n_records: int, n_accounts: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    names = list(PERSONAS)
    shares = np.array([PERSONAS[p][1] for p in names])
    persona_of = rng.choice(len(names), size=n_accounts, p=shares / shares.sum())
    weight = np.array([PERSONAS[names[p]][2] for p in persona_of]) * rng.lognormal(0, 0.6, n_accounts)
    volumes = np.maximum(1, np.round(weight / weight.sum() * n_records)).astype(int)
    volumes[np.argmax(volumes)] += n_records - volumes.sum()  # hit the total exactly
    accounts = []
    for i, p in enumerate(persona_of):
        persona = names[p]
        kind, _, _, cluster_size = PERSONAS[persona]
        persona_seed = int(rng.integers(0, 4))  # the simulator's "seed": splits go by (persona, seed)
        split = "heldout" if persona_seed % 2 else "dev"
        cluster = f"{persona}-{split}-{i % 5}" if cluster_size else None
        accounts.append({"id": f"acct-{i:05d}", "persona": persona, "kind": kind, "split": split,
                         "cluster": cluster, "campaign": f"camp-{persona}" if kind == "attack" else None})  # fmt: skip
    owner = np.repeat(np.arange(n_accounts), volumes)
    start = rng.uniform(0, WEEK * 0.7, n_accounts)
    span = rng.uniform(0.05, 0.3, n_accounts) * WEEK
    ts = START + start[owner] + rng.uniform(0, 1, owner.size) * span[owner]
    order = np.argsort(ts, kind="stable")
    owner, ts = owner[order], ts[order]
    tokens = rng.integers(20, 600, owner.size)

    templates = []
    for i, a in enumerate(accounts):
        templates.append({
            "endpoint": "/v1/chat/completions", "org_id": f"org-{a['id'][-3:]}", "key_id": f"key-{a['id']}",
            "ip": f"10.{i % 250}.0.1", "user_agent": "python-httpx/0.27",
            "label": f"{a['kind']}:{a['persona']}",
            "label_meta": {"persona": a["persona"], "campaign_id": a["campaign"], "cluster_id": a["cluster"],
                           "split": a["split"], "end_user": None},
        })  # fmt: skip
    prompt = "Explain, step by step, how the following function works and what it returns: " * 2
    answer = "The function iterates over the input and accumulates a running total. " * 4
    seen = np.zeros(n_accounts, dtype=np.int64)
    flag_at = {}  # account -> (ts, index) of the synthetic analyser's first flag
    flag_index = np.where([a["kind"] == "attack" for a in accounts], rng.integers(5, 200, n_accounts), -1)
    with open(path, "wb") as fh:
        for k in range(owner.size):
            i = int(owner[k])
            rec = {"ts": float(ts[k]), "account_id": accounts[i]["id"], **templates[i],
                   "request": {"model": "m", "messages": [{"role": "user", "content": prompt}], "max_tokens": 512},
                   "response": {"text": answer, "finish_reason": "stop",
                                "usage": {"prompt_tokens": 40, "completion_tokens": int(tokens[k])}},
                   "status": 200, "latency_ms": 350.0}  # fmt: skip
            if seen[i] == flag_index[i]:
                flag_at[i] = (float(ts[k]), int(seen[i]))
            seen[i] += 1
            fh.write(orjson.dumps(rec) + b"\n")

    # A synthetic online analyser: attack accounts mostly score higher; flagged ones say when.
    entries, clusters = [], {}
    for i, a in enumerate(accounts):
        risk = float(np.clip(rng.normal(0.7 if a["kind"] == "attack" else 0.2, 0.15), 0, 1))
        verdict = "extraction" if risk > 0.8 else "suspicious" if risk > 0.6 else "benign"
        fts, fidx = flag_at.get(i, (None, None)) if verdict != "benign" else (None, None)
        if verdict != "benign" and fts is None:  # flagged before its threshold index existed: its first request
            fts, fidx = None, 0
        cid = f"K-{a['cluster']}" if a["cluster"] and rng.random() < 0.8 else None
        if cid:
            clusters.setdefault(cid, []).append(a["id"])
        entries.append({"account_id": a["id"], "risk": risk, "verdict": verdict, "cluster_id": cid,
                        "reasons": [], "first_flag_ts": fts, "first_flag_index": fidx})  # fmt: skip
    report = {
        "accounts": entries,
        "summary": {"detector": "synthetic"},
        "clusters": [{"cluster_id": c, "accounts": m, "risk": 0.9, "reasons": []} for c, m in clusters.items()],
    }
    report_path.write_bytes(orjson.dumps(report))
    return {"records": int(owner.size), "accounts": n_accounts, "bytes": path.stat().st_size,
            "attack_accounts": sum(a["kind"] == "attack" for a in accounts)}  # fmt: skip


def run_cli(args: list[str]) -> tuple[float, float, int]:
    """(wall seconds, peak RSS MiB, exit code) of one `distillshield evaluate` process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "distillshield", "evaluate", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_maxrss / 1024, proc.returncode  # ru_maxrss is KiB on Linux


def phases(traffic: Path, report: Path) -> dict[str, float]:
    """Seconds per stage, in this process (imports excluded)."""
    from distillshield.evaluate.baseline import VolumeBaseline, run_baseline
    from distillshield.evaluate.harness import evaluate
    from distillshield.evaluate.report import render_html
    from distillshield.evaluate.truth import read_truth

    out: dict[str, float] = {}
    t = time.perf_counter()
    truth = read_truth(traffic)
    out["ground-truth pass"] = time.perf_counter() - t
    t = time.perf_counter()
    run_baseline(traffic, VolumeBaseline.fit_truth(truth))
    out["baseline online replay"] = time.perf_counter() - t
    t = time.perf_counter()
    result = evaluate(traffic, report=report)
    out["evaluate --report (read + join + metrics)"] = time.perf_counter() - t
    t = time.perf_counter()
    render_html(result.metrics, result.scored)
    out["HTML report (3-4 charts)"] = time.perf_counter() - t
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=500_000)
    ap.add_argument("--accounts", type=int, default=2_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--keep", type=Path, help="write the files here and keep them")
    args = ap.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="ds-evalbench-"))
    work.mkdir(parents=True, exist_ok=True)
    traffic, report = work / "traffic.jsonl", work / "report.json"

    t = time.perf_counter()
    info = generate(traffic, report, args.records, args.accounts, args.seed)
    print(f"generated {info['records']:,} records, {info['accounts']:,} accounts ({info['attack_accounts']} attack), "
          f"{info['bytes'] / 2**20:.0f} MiB in {time.perf_counter() - t:.1f} s")  # fmt: skip

    print("\n| run | wall s | records/s | peak RSS MiB |\n|---|---:|---:|---:|")
    for name, cli_args in [
        ("evaluate --baseline --out --html", [str(traffic), "--baseline", "--out", str(work / "m1.json"),
                                              "--html", str(work / "r1.html")]),
        ("evaluate --report --out --html", [str(traffic), "--report", str(report), "--out", str(work / "m2.json"),
                                            "--html", str(work / "r2.html")]),
    ]:  # fmt: skip
        wall, rss, rc = run_cli(cli_args)
        if rc != 0:
            sys.exit(f"{name} failed with exit code {rc}")
        print(f"| `{name}` | {wall:.1f} | {info['records'] / wall:,.0f} | {rss:.0f} |")

    print("\n| phase (in-process) | s | records/s |\n|---|---:|---:|")
    for name, secs in phases(traffic, report).items():
        print(f"| {name} | {secs:.2f} | {info['records'] / secs:,.0f} |")
    if not args.keep:
        for f in work.iterdir():
            f.unlink()
        work.rmdir()


if __name__ == "__main__":
    main()
