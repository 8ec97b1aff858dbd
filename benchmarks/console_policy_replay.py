"""How long the console's Policy page takes with its shadow replay (gateway/policy/replay.py).

A SQLite store with ACCOUNTS accounts and ROWS audit rows spread over the last 24 h, a tenth of the accounts
flagged (their rows record an extraction or suspicious verdict, as the policy stage writes it), the rest
'allow'. The page is loaded through Starlette's TestClient: cold (the replay's 30 s cache emptied before
each load: the GROUP BY over the day, the accounts and review states read, every rule evaluated) and warm
(paging through a rule's accounts from the cache). Prints the median of --loads loads of each.

    .venv/bin/python benchmarks/console_policy_replay.py [--accounts 2000] [--rows 100000] [--loads 5]
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

ADMIN_TOKEN = "bench-admin-token"


def _rows(accounts: int, rows: int, now: float) -> list[dict[str, Any]]:
    out = []
    for i in range(rows):
        a = i % accounts
        if a % 10 == 0:
            verdict, risk = ("extraction", 0.93) if a % 20 == 0 else ("suspicious", 0.6)
            decision = orjson.dumps(
                {"action": "watermark", "rule": "r", "signals": {}, "shadow": False, "verdict": verdict, "risk": risk}
            ).decode()
        else:
            decision = "allow"
        out.append({
            "ts": now - 86000 * (rows - i) / rows, "request_id": uuid.uuid4().hex, "account_id": f"acct-{a:05d}",
            "org_id": "org-1", "key_id": None, "ip": None, "user_agent": None, "endpoint": "/v1/chat/completions",
            "model": "m", "stream": False, "status": 200, "latency_ms": 1.0, "request": "{}", "response_text": None,
            "finish_reason": None, "prompt_tokens": None, "completion_tokens": None, "decision": decision,
            "error": None,
        })  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--accounts", type=int, default=2000)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--loads", type=int, default=5)
    args = ap.parse_args()

    from starlette.testclient import TestClient

    from distillshield.config import load_settings
    from distillshield.console import queries
    from distillshield.gateway.app import build_app

    tmp = Path(tempfile.mkdtemp(prefix="ds-bench-replay-"))
    settings = load_settings(None, store__url=f"sqlite+aiosqlite:///{tmp / 'gw.db'}", admin__token=ADMIN_TOKEN)
    app = build_app(settings, [])
    with TestClient(app, follow_redirects=False) as client:
        store = app.state.ds.store

        async def seed() -> None:
            for a in range(args.accounts):
                await store.create_account(f"acct-{a:05d}", "org-1")
            rows = _rows(args.accounts, args.rows, time.time())
            for i in range(0, len(rows), 5000):
                await store.append_audit(rows[i : i + 5000])

        client.portal.call(seed)  # type: ignore[union-attr]
        form = client.get("/console/login").text
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)  # type: ignore[union-attr]
        client.post("/console/login", data={"csrf_token": csrf, "token": ADMIN_TOKEN, "next": "/console/"})
        cold, warm = [], []
        for _ in range(args.loads):
            queries.ShadowReplay.TTL_S = -1.0  # the cache is stale at once: the replay is computed again
            t = time.perf_counter()
            r = client.get("/console/policy")
            cold.append(time.perf_counter() - t)
            assert r.status_code == 200, r.text[:500]
            queries.ShadowReplay.TTL_S = 30.0
            client.get("/console/policy")  # computed once more, then kept
            t = time.perf_counter()
            r = client.get("/console/policy", params={"rule": "suspicious-watermark", "page": "2"})
            warm.append(time.perf_counter() - t)
            assert r.status_code == 200, r.text[:500]
    found = re.search(r"(\d+) requests of (\d+) accounts", r.text)
    print(f"store: {found.group(0) if found else '?'} in the last 24 h (SQLite)")
    print(f"policy page, replay computed: median {statistics.median(cold) * 1000:.0f} ms of {args.loads}")
    print(f"policy page, a rule's accounts from the cache: median {statistics.median(warm) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
