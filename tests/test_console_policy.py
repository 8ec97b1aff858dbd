"""The Policy page's shadow replay over HTTP: what each rule of the active policy would have done in the last
24 h of the audit log, per rule, with a paginated list of the accounts a rule would have acted on."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RunningGateway
from tests.console_helpers import login
from tests.fakes import FakeUpstream
from tests.test_policy_replay import POLICY, _decision, _row


@pytest.fixture
def replay_gateway(gateway_factory: Any, tmp_path: Path) -> RunningGateway:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    gw = gateway_factory({"upstream": FakeUpstream()}, policy__file=str(path))
    now = time.time()
    rows = []
    for i in range(60):  # 60 accounts of 2 requests each the risk board does not flag now
        gw.run(gw.state.store.create_account(f"risky-{i:02d}", "org-1"))
        rows += [_row(f"risky-{i:02d}", _decision("extraction", 0.8), now - 100 - i) for _ in range(2)]
    gw.run(gw.state.store.create_account("pro-1", "org-1", tier="pro"))
    rows += [_row("pro-1", "allow", now - 50) for _ in range(3)]
    rows += [_row("risky-00", _decision("extraction", 0.8), now - 2 * 86400)]  # older than a day
    gw.run(gw.state.store.append_audit(sorted(rows, key=lambda r: r["ts"])))
    return gw


def _summary(html: str, rule: str) -> list[str]:
    m = re.search(rf'<tr id="replay-{rule}"[^>]*>(.*?)</tr>', html, re.S)
    assert m, f"no replay row for {rule}"
    return re.findall(r'<td class="num">(\d+)</td>', m.group(1))


def test_the_policy_page_replays_each_rule_over_the_last_day(replay_gateway: RunningGateway) -> None:
    client, _ = login(replay_gateway)
    page = client.get("/console/policy")
    assert page.status_code == 200, page.text
    assert "123 requests of 61 accounts" in page.text and "3 recorded none" in page.text
    # (requests, accounts, dismissed by a reviewer, not flagged now)
    assert _summary(page.text, "wm-extraction") == ["120", "60", "0", "60"]
    assert _summary(page.text, "throttle-risky") == ["120", "60", "0", "60"]
    assert _summary(page.text, "pro-monitor") == ["3", "1", "0", "1"]
    assert _summary(page.text, "block-confirmed") == ["0", "0", "0", "0"]


def test_a_rule_s_accounts_are_paginated_on_the_server(replay_gateway: RunningGateway) -> None:
    client, _ = login(replay_gateway)
    ids = re.compile(r'<td class="id"><a href="/console/accounts/([^"]+)">')
    first = client.get("/console/policy", params={"rule": "throttle-risky"})
    assert first.status_code == 200
    listed = first.text.split('id="replay-accounts"')[1]
    assert ids.findall(listed) == [f"risky-{i:02d}" for i in range(50)] and "1–50 of 60" in listed
    second = client.get("/console/policy", params={"rule": "throttle-risky", "page": "2"})
    assert ids.findall(second.text.split('id="replay-accounts"')[1]) == [f"risky-{i:02d}" for i in range(50, 60)]
    pro = client.get("/console/policy", params={"rule": "pro-monitor"}).text.split('id="replay-accounts"')[1]
    assert ids.findall(pro) == ["pro-1"] and "unscored" in pro


def test_an_unknown_rule_is_a_404_with_a_message(replay_gateway: RunningGateway) -> None:
    client, _ = login(replay_gateway)
    r = client.get("/console/policy", params={"rule": "no-such-rule"})
    assert r.status_code == 404 and "the active policy has no rule &#39;no-such-rule&#39;" in r.text
