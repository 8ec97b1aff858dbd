"""How long an account page's CoT share and verdict history take (console/queries.py), for one busy account.

A SQLite store with PER_HOUR audit rows in every hour of the account page's 7-day window (a third of the
prompts ask for step-by-step reasoning; every row's decision records a verdict, which changes once a day).
Measured on the query functions themselves, not through HTTP: the request timeline with its CoT share cold
(nothing kept: the sample read and classified; the first load also loads the prompt classifier, printed
apart) and warm (closed hours kept, only the current hour read again), and the verdict history (every
decision row read, up to VERDICT_ROWS_MAX). Prints the median of --loads loads of each.

    .venv/bin/python benchmarks/console_account_history.py [--per-hour 300] [--loads 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import types
import uuid
from pathlib import Path
from typing import Any

import orjson

PROMPT = "what is the capital of France and why did it become the capital " * 6


def _rows(per_hour: int, now: float) -> list[dict[str, Any]]:
    first = (int(now) // 3600 - 167) * 3600
    out = []
    for h in range(168):
        verdict = ("benign", "suspicious")[(h // 24) % 2]
        decision = orjson.dumps(
            {"action": "watermark", "rule": "r", "signals": {"cot": 0.5}, "shadow": False, "verdict": verdict,
             "risk": 0.4}
        ).decode()  # fmt: skip
        for i in range(per_hour):
            text = ("Think step by step and show your reasoning: " if i % 3 == 0 else "") + PROMPT
            body = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": text}]}).decode()
            out.append({
                "ts": first + h * 3600 + i * 3000 / per_hour, "request_id": uuid.uuid4().hex, "account_id": "busy",
                "org_id": "org-1", "key_id": None, "ip": None, "user_agent": None, "endpoint": "/v1/chat/completions",
                "model": "m", "stream": False, "status": 200, "latency_ms": 1.0, "request": body,
                "response_text": None, "finish_reason": None, "prompt_tokens": 10, "completion_tokens": 5,
                "decision": decision, "error": None,
            })  # fmt: skip
    return out


async def _run(per_hour: int, loads: int, db: Path) -> None:
    from distillshield.console import queries
    from distillshield.store.database import Store

    store = Store(f"sqlite+aiosqlite:///{db}")
    await store.init()
    rows = _rows(per_hour, time.time())
    for i in range(0, len(rows), 5000):
        await store.append_audit(rows[i : i + 5000])
    state: Any = types.SimpleNamespace(store=store)

    t = time.perf_counter()
    await queries.account_timeline(state, "busy", cot=queries.CotShares())
    first = time.perf_counter() - t
    cold, warm, verdicts = [], [], []
    for _ in range(loads):
        kept = queries.CotShares()
        t = time.perf_counter()
        timeline = await queries.account_timeline(state, "busy", cot=kept)
        cold.append(time.perf_counter() - t)
        t = time.perf_counter()
        await queries.account_timeline(state, "busy", cot=kept)
        warm.append(time.perf_counter() - t)
        t = time.perf_counter()
        page, _read = await queries.verdict_history(state, "busy")
        verdicts.append(time.perf_counter() - t)
    await store.close()
    print(f"{len(rows)} audit rows ({per_hour} per hour, 168 hours); {sum(timeline['cot_sampled'])} classified")
    print(f"timeline + CoT share, first load (classifier loaded): {first * 1000:.0f} ms")
    print(f"timeline + CoT share, cold: {statistics.median(cold) * 1000:.0f} ms")
    print(f"timeline + CoT share, warm (closed hours kept): {statistics.median(warm) * 1000:.0f} ms")
    print(f"verdict history ({page.total} changes): {statistics.median(verdicts) * 1000:.0f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-hour", type=int, default=300)
    ap.add_argument("--loads", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(_run(args.per_hour, args.loads, Path(tmp) / "bench.db"))


if __name__ == "__main__":
    main()
