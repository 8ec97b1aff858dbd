"""The account page's CoT share per hour and verdict history, over plain HTTP, from audit rows written directly."""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any

import pytest

from distillshield.console.queries import COT_SAMPLE_PER_HOUR, PER_PAGE
from tests.conftest import RunningGateway
from tests.console_helpers import login
from tests.fakes import FakeUpstream

QUESTIONS = [
    "what is the capital of France",
    "integrate x squared from zero to one",
    "why is the sky blue on a clear day",
    "list three prime numbers greater than fifty",
    "explain how a hash table resolves collisions",
    "what does the mitochondria do in a cell",
]
COT = "Think step by step and show your complete reasoning before giving the final answer: {q}"
VERDICT_ROW = re.compile(r'<tr data-seq="(\d+)"><td>[^<]*</td><td><span class="verdict verdict-(\w+)">')


@pytest.fixture(params=["sqlite", "postgresql"])
def gw(request: pytest.FixtureRequest) -> RunningGateway:
    """A gateway over SQLite (the default) or PostgreSQL: the CoT sample is one query with window functions."""
    if request.param == "sqlite":
        return request.getfixturevalue("fake_gateway")
    url = request.getfixturevalue("pg_database")
    return request.getfixturevalue("gateway_factory")({"upstream": FakeUpstream()}, store__url=url)


def _row(account_id: str, ts: float, prompt: str, decision: str | None = None) -> dict[str, Any]:
    body = {"model": "m", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": prompt}]}
    return {"ts": ts, "request_id": uuid.uuid4().hex, "account_id": account_id, "org_id": "org-h", "key_id": None,
            "ip": "192.0.2.7", "user_agent": "ua", "endpoint": "/v1/chat/completions", "model": "m", "stream": False,
            "status": 200, "latency_ms": 5.0, "request": json.dumps(body), "response_text": "ok",
            "finish_reason": "stop", "prompt_tokens": 20, "completion_tokens": 5, "decision": decision,
            "error": None}  # fmt: skip


def _write(gw: RunningGateway, rows: list[dict[str, Any]]) -> None:
    rows.sort(key=lambda r: r["ts"])
    gw.run(gw.state.store.append_audit(rows))


def _timeline(html: str) -> dict[str, Any]:
    m = re.search(r'<pre hidden id="account-requests-data">(.*?)</pre>', html, re.S)
    assert m, "no account-requests-data in the page"
    return json.loads(m.group(1))


def test_the_timeline_carries_the_sampled_cot_share_per_hour(gw: RunningGateway) -> None:
    assert gw.admin("POST", "/accounts", json={"id": "cot-1", "org_id": "org-h"}).status_code == 201
    now_hour = int(time.time()) // 3600 * 3600
    cot_hour, plain_hour, busy_hour = now_hour - 3 * 3600, now_hour - 2 * 3600, now_hour - 5 * 3600
    rows = [_row("cot-1", cot_hour + 60 * i + 1, COT.format(q=q)) for i, q in enumerate(QUESTIONS * 2)]
    rows += [_row("cot-1", plain_hour + 60 * i + 1, q) for i, q in enumerate(QUESTIONS * 2)]
    # a busy hour: more requests than are sampled; its last 40% ask for the model's reasoning
    busy = COT_SAMPLE_PER_HOUR + 50
    plain_first = busy * 3 // 5
    rows += [
        _row("cot-1", busy_hour + 10 * i + 1, COT.format(q=QUESTIONS[i % 6]) if i >= plain_first else QUESTIONS[i % 6])
        for i in range(busy)
    ]
    _write(gw, rows)
    client, _ = login(gw)
    page = client.get("/console/accounts/cot-1")
    assert page.status_code == 200 and "account-requests-data" not in page.text  # the page does not wait for it
    assert 'hx-get="/console/accounts/cot-1/timeline" hx-trigger="load"' in page.text
    r = client.get("/console/accounts/cot-1/timeline")
    assert r.status_code == 200
    t = _timeline(r.text)
    at = {ts: i for i, ts in enumerate(t["t"])}
    share, sampled = t["cot_share"], t["cot_sampled"]
    assert share[at[cot_hour]] >= 0.9 and sampled[at[cot_hour]] == 12
    assert share[at[plain_hour]] <= 0.1 and sampled[at[plain_hour]] == 12
    assert t["requests"][at[busy_hour]] == busy and sampled[at[busy_hour]] == COT_SAMPLE_PER_HOUR
    assert 0.35 <= share[at[busy_hour]] <= 0.45  # the sample is spread over the hour, not its first rows
    assert share[at[now_hour - 4 * 3600]] is None and sampled[at[now_hour - 4 * 3600]] == 0  # no requests
    assert 'data-chart="account-cot"' in r.text and "CoT share per hour (sampled)" in r.text
    assert f"at most {COT_SAMPLE_PER_HOUR} requests per hour" in r.text
    # closed hours are classified once and kept; the current hour is read again on every load
    late = [_row("cot-1", plain_hour + 3000 + i, COT.format(q=q)) for i, q in enumerate(QUESTIONS)]
    _write(gw, [*late, *(_row("cot-1", time.time() - 1, COT.format(q=q)) for q in QUESTIONS)])
    again = _timeline(client.get("/console/accounts/cot-1/timeline").text)
    assert again["cot_sampled"][at[plain_hour]] == 12 and again["cot_share"][at[plain_hour]] <= 0.1
    assert again["cot_sampled"][-1] == 6 and again["cot_share"][-1] == 1.0


def _decision(verdict: str, risk: float, signal: str) -> str:
    return json.dumps({"action": "flag", "rule": f"rule-{verdict}", "signals": {signal: risk, "other": 0.01},
                       "shadow": False, "verdict": verdict, "risk": risk})  # fmt: skip


def test_the_verdict_history_lists_only_the_changes_newest_first(gw: RunningGateway) -> None:
    assert gw.admin("POST", "/accounts", json={"id": "vh-1", "org_id": "org-h"}).status_code == 201
    start = time.time() - 20 * 24 * 3600  # older than the charts' window: the history is all time
    steps = [("benign", 0.1, "timing"), ("suspicious", 0.55, "cot"), ("extraction", 0.91, "coverage"),
             ("suspicious", 0.6, "cot")]  # fmt: skip
    rows = []
    for i, (verdict, risk, signal) in enumerate(steps):
        for j in range(3):  # three decisions with the same verdict, and requests no rule was involved in
            ts = start + i * 86400 + j * 60
            rows.append(_row("vh-1", ts, "hi", _decision(verdict, risk, signal)))
            rows.append(_row("vh-1", ts + 1, "hi", "allow"))
    _write(gw, rows)
    client, _ = login(gw)
    html = client.get("/console/accounts/vh-1").text
    table = html.split('<table class="verdict-history">', 1)[1].split("</table>", 1)[0]
    assert [v for _seq, v in VERDICT_ROW.findall(table)] == ["suspicious", "extraction", "suspicious", "benign"]
    seqs = [int(s) for s, _v in VERDICT_ROW.findall(table)]
    assert seqs == sorted(seqs, reverse=True)
    assert "first recorded" in table and "rule-extraction" in table and "coverage" in table and "0.910" in table


def test_the_verdict_history_is_paginated_and_refuses_a_bad_page(fake_gateway: RunningGateway) -> None:
    assert fake_gateway.admin("POST", "/accounts", json={"id": "vh-2", "org_id": "org-h"}).status_code == 201
    start = time.time() - 3 * 3600
    n = PER_PAGE + 10
    verdicts = ["benign" if i % 2 == 0 else "suspicious" for i in range(n)]
    _write(fake_gateway, [_row("vh-2", start + i, "hi", _decision(v, 0.5, "cot")) for i, v in enumerate(verdicts)])
    client, _ = login(fake_gateway)
    first = client.get("/console/accounts/vh-2")
    assert f"1–{PER_PAGE} of {n}" in first.text and 'href="/console/accounts/vh-2?vpage=2"' in first.text
    second = client.get("/console/accounts/vh-2", params={"vpage": "2"})
    got = [v for _s, v in VERDICT_ROW.findall(second.text)]
    assert got == verdicts[: n - PER_PAGE][::-1] and f"{PER_PAGE + 1}–{n} of {n}" in second.text
    past = client.get("/console/accounts/vh-2", params={"vpage": "3"})
    assert past.status_code == 200 and "has 2 pages; there is no page 3" in past.text
    for bad in ("abc", "-1", "0", "1.5", "99999999999"):
        r = client.get("/console/accounts/vh-2", params={"vpage": bad})
        assert r.status_code == 400 and "?vpage= must be a page number" in r.text, (bad, r.status_code)


def test_an_account_without_recorded_verdicts_says_so(fake_gateway: RunningGateway) -> None:
    fake_gateway.create_key("vh-empty")
    client, _ = login(fake_gateway)
    html = client.get("/console/accounts/vh-empty").text
    assert 'id="verdict-history-empty"' in html and '<table class="verdict-history">' not in html
