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
    )


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
