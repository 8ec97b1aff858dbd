"""How long the console's cluster page takes for a large cluster (console/clusters.py `cluster_detail`).

A SQLite store with one cluster of --members accounts on the risk board, each with --rows audit rows (prompts
of one template with varied numbers, addresses in 40 /24 ranges, 7 user agents). Measured on the page's
query function itself, not through HTTP: every page of the member table in turn, first with the graph kept
between loads (`ClusterGraphs`, as the console keeps it: drawn once, then reused while its 30 s last), then
without (drawn on every load, as before it was kept). Prints each load's time and the medians.

    .venv/bin/python benchmarks/console_cluster_page.py [--members 500] [--rows 200] [--pages 10]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
import types
import uuid
from pathlib import Path
from typing import Any

import orjson


def _rows(members: list[str], per: int) -> list[dict[str, Any]]:
    rng = random.Random(1)
    t0 = time.time() - 86_400
    out = []
    for i, a in enumerate(members):
        for j in range(per):
            q = f"Explain step by step: question {rng.randint(0, 10**6)} about topic {rng.randint(0, 50)}"
            out.append(
                {"ts": t0 + i * 10 + j * 60 + rng.random(), "request_id": uuid.uuid4().hex, "account_id": a,
                 "org_id": "org-c", "key_id": None, "ip": f"203.0.{i % 40}.{rng.randint(1, 250)}",
                 "user_agent": f"ua-{i % 7}", "endpoint": "/v1/chat/completions", "model": "m", "stream": False,
                 "status": 200, "latency_ms": 5.0,
                 "request": orjson.dumps({"model": "m", "messages": [{"role": "user", "content": q}]}).decode(),
                 "response_text": "ok", "finish_reason": "stop", "prompt_tokens": 20, "completion_tokens": 5,
                 "decision": "allow", "error": None}
            )  # fmt: skip
    out.sort(key=lambda r: r["ts"])
    return out


async def run(args: argparse.Namespace) -> None:
    from distillshield.console.clusters import ClusterGraphs, cluster_detail
    from distillshield.contracts import AccountRisk
    from distillshield.gateway.risk import LocalRiskBoard
    from distillshield.store import Store

    with tempfile.TemporaryDirectory() as tmp:
        store = Store(f"sqlite+aiosqlite:///{Path(tmp) / 'clusters.db'}")
        await store.init()
        members = [f"m-{i:04d}" for i in range(args.members)]
        for a in members:
            await store.create_account(a, "org-c")
        rows = _rows(members, args.rows)
        for k in range(0, len(rows), 5000):
            await store.append_audit(rows[k : k + 5000])
        board = LocalRiskBoard()
        reason = [{"signal": "coordination", "score": 0.9, "detail": "member of c-big"}]
        for i, a in enumerate(members):
            board.update(AccountRisk(a, 0.5 + (i % 50) / 100, "suspicious", "c-big", {"coordination": 0.9},
                                     reasons=reason, source="report"))  # fmt: skip
        state = types.SimpleNamespace(store=store, risk=board)  # the parts of AppState the page reads
        pages = range(1, args.pages + 1)
        for label, graphs in (("graph kept", ClusterGraphs()), ("graph drawn on every load", None)):
            times = []
            for p in pages:
                t = time.perf_counter()
                await cluster_detail(state, "c-big", page=p, graphs=graphs)  # type: ignore[arg-type]
                times.append(time.perf_counter() - t)
            later = statistics.median(times[1:]) if len(times) > 1 else float("nan")
            print(f"{label}: first page {times[0] * 1000:.0f} ms, pages 2-{args.pages} median {later * 1000:.0f} ms "
                  f"({', '.join(f'{x * 1000:.0f}' for x in times)} ms)")  # fmt: skip
        await store.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--members", type=int, default=500, help="accounts in the cluster (default 500)")
    ap.add_argument("--rows", type=int, default=200, help="audit rows per member (default 200)")
    ap.add_argument("--pages", type=int, default=10, help="pages of the member table loaded in turn (default 10)")
    asyncio.run(run(ap.parse_args()))


if __name__ == "__main__":
    main()
