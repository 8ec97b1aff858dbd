"""Shared by the console's HTTP and browser tests: demo traffic with verdicts, and a logged-in client."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson

from tests.conftest import ADMIN_TOKEN, RunningGateway

CSRF_INPUT = re.compile(r'name="csrf_token" value="([^"]+)"')


@dataclass(frozen=True)
class Demo:
    report: dict[str, Any]
    flagged: list[str]  # riskiest first
    benign: list[str]
    traffic: Path | None = None  # the demo's traffic file (JSONL, docs/traffic-format.md)


def seed_demo(gw: RunningGateway, tmp_path: Path) -> Demo:
    """The demo's traffic (`distillshield demo`'s scenario: honest chat users, a CoT harvester, a 5-account
    hydra), analysed offline; its accounts are created in the store and the report loaded into the risk
    board through the admin API, which queues the flagged accounts for review."""
    from distillshield.cli.analyze import DEMO_SCENARIO
    from distillshield.detect.analyze import analyze_file
    from distillshield.simulate import engine, scenario

    path = tmp_path / "demo.jsonl"
    engine.write(scenario.build(DEMO_SCENARIO, "the demo scenario", 3), 3, path)
    orgs: dict[str, str] = {}
    for line in path.read_bytes().splitlines():
        rec = orjson.loads(line)
        orgs.setdefault(rec["account_id"], rec.get("org_id") or "demo-org")
    report = analyze_file(path).report
    for account_id, org in sorted(orgs.items()):
        r = gw.admin("POST", "/accounts", json={"id": account_id, "org_id": org})
        assert r.status_code == 201, r.text
    r = gw.admin("POST", "/risk", json=report)
    assert r.status_code == 200 and r.json()["flagged"] > 0, r.text
    ranked = sorted(report["accounts"], key=lambda a: -a["risk"])
    return Demo(
        report,
        [a["account_id"] for a in ranked if a["verdict"] != "benign"],
        [a["account_id"] for a in ranked if a["verdict"] == "benign"],
        path,
    )


def load_traffic_into_audit_log(gw: RunningGateway, path: Path, accounts: set[str] | None = None) -> int:
    """The traffic file's records (of these accounts) as rows of the gateway's audit log, as if the gateway had
    served them (their own timestamps, IPs, user agents and prompts); returns how many were written."""
    import uuid

    rows = []
    for line in path.read_bytes().splitlines():
        rec = orjson.loads(line)
        if accounts is not None and rec["account_id"] not in accounts:
            continue
        resp = rec.get("response") or {}
        usage = resp.get("usage") or {}
        rows.append(
            {
                "ts": float(rec["ts"]),
                "request_id": uuid.uuid4().hex,
                "account_id": rec["account_id"],
                "org_id": rec.get("org_id"),
                "key_id": rec.get("key_id"),
                "ip": rec.get("ip"),
                "user_agent": rec.get("user_agent"),
                "endpoint": rec["endpoint"],
                "model": rec["request"].get("model"),
                "stream": False,
                "status": int(rec.get("status") or 200),
                "latency_ms": float(rec.get("latency_ms") or 1.0),
                "request": orjson.dumps(rec["request"]).decode(),
                "response_text": resp.get("text"),
                "finish_reason": resp.get("finish_reason"),
                "prompt_tokens": usage.get("prompt_tokens"),
                "completion_tokens": usage.get("completion_tokens"),
                "decision": None,
                "error": None,
            }
        )
    rows.sort(key=lambda r: r["ts"])
    for i in range(0, len(rows), 2000):
        gw.run(gw.state.store.append_audit(rows[i : i + 2000]))
    return len(rows)


def csrf_of(html: str) -> str:
    m = CSRF_INPUT.search(html)
    assert m, "no CSRF token in the page"
    return m.group(1)


def login(gw: RunningGateway, token: str = ADMIN_TOKEN) -> tuple[httpx.Client, str]:
    """A client with a console session, and the session's CSRF token."""
    client = httpx.Client(base_url=gw.base, follow_redirects=False, timeout=30)
    form = client.get("/console/login")
    r = client.post("/console/login", data={"csrf_token": csrf_of(form.text), "token": token, "next": "/console/"})
    assert r.status_code == 303, r.text
    page = client.get("/console/")
    assert page.status_code == 200, page.text
    return client, csrf_of(page.text)


def send_traffic(gw: RunningGateway, account_ids: list[str], per_account: int) -> dict[str, list[int]]:
    """A few chat requests from each account (a key is created for it); their statuses by account."""
    body = {"model": "fake-model", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}
    statuses: dict[str, list[int]] = {}
    with httpx.Client(base_url=gw.base, timeout=30) as client:
        for account_id in account_ids:
            headers = {"authorization": f"Bearer {gw.create_key(account_id)}"}
            statuses[account_id] = [
                client.post("/v1/chat/completions", json=body, headers=headers).status_code for _ in range(per_account)
            ]
    gw.flush_audit()
    return statuses


DEMO_HYDRA = "cl_demo_hydra"


def seed_demo_hydra(gw: RunningGateway, demo: Demo) -> list[str]:
    """The demo's hydra accounts (its traffic's `attack:hydra` label) as one cluster on the risk board, as the
    detector names one (a cluster id, a `coordination` reason), loaded through the admin API (which queues the
    cluster for review); their traffic goes into the audit log. Returns the members."""
    assert demo.traffic is not None
    members = sorted(
        {
            r["account_id"]
            for r in map(orjson.loads, demo.traffic.read_bytes().splitlines())
            if r.get("label") == "attack:hydra"
        }
    )
    assert len(members) >= 3, members
    detail = f"member of cluster {DEMO_HYDRA}: {len(members)} accounts share prompt templates, first requests bunched"
    entries = []
    for a in demo.report["accounts"]:
        if a["account_id"] in members:
            reasons = [*a["reasons"], {"signal": "coordination", "score": 0.9, "detail": detail}]
            entries.append({**a, "cluster_id": DEMO_HYDRA, "reasons": reasons})
    r = gw.admin("POST", "/risk", json={"accounts": entries})
    assert r.status_code == 200, r.text
    load_traffic_into_audit_log(gw, demo.traffic, set(members))
    return members


def admin_acts(gw: RunningGateway, action: str | None = None) -> list[dict[str, Any]]:
    """The administrative acts in the gateway's audit log (store/admin_log.py), oldest first."""
    from distillshield.store.admin_log import AdminLog

    rows, _ = gw.run(AdminLog(gw.state.store).page(10_000))
    return [a.as_dict() for a in reversed(rows) if action is None or a.action == action]
