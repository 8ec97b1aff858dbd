"""Countermeasures pinned by hand (store/pins.py): an analyst throttles, degrades or watermarks one account
through the admin API, the console or the CLI; the running gateway applies it at once (or within a poll when
it was pinned elsewhere), merged with the policy's own decisions, until lifted or expired; both acts are rows
of the hash-chained audit log."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from distillshield.cli import app as cli_app
from distillshield.contracts import AccountRisk
from tests.conftest import RunningGateway, make_settings, start_gateway
from tests.console_helpers import admin_acts, login
from tests.fakes import ReasoningUpstream
from tests.test_policy import UNLIMITED, _eventually
from tests.test_policy import oa as _client
from tests.test_policy import status as _status

MODEL = "fake-model"
POLICY = """
version: 1
allowlist: {orgs: [trusted-org]}
rules:
  - {name: verify, when: {verdict: [extraction]}, action: block}
  - {name: mark, when: {verdict: [suspicious], signals: {cot: {gte: 0.5}}}, action: watermark, continue: true}
  - {name: watch, when: {verdict: [suspicious]}, action: monitor}
"""


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    policy = tmp_path_factory.mktemp("pins-policy") / "policy.yaml"
    policy.write_text(POLICY)
    settings = make_settings(
        tmp_path_factory.mktemp("pins-gw"),
        policy__file=str(policy),
        policy__review_poll_s=0.2,
        limits__account=UNLIMITED,
        limits__key=UNLIMITED,
        watermark__secret="test-watermark-secret-0123456789",
        watermark__mode="off",  # the default marks every account; these tests see a pin switch one on
    )
    g = start_gateway(settings, upstream=ReasoningUpstream())
    yield g
    g.stop()


def _decisions(gw: RunningGateway, account_id: str) -> list[Any]:
    rows = [r for r in gw.request_rows() if r["account_id"] == account_id]
    return [r["decision"] if r["decision"] == "allow" else orjson.loads(r["decision"]) for r in rows]


def _pin(gw: RunningGateway, account_id: str, **body: Any) -> dict[str, Any]:
    r = gw.admin("POST", f"/accounts/{account_id}/pins", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def test_a_pinned_throttle_limits_an_account_detection_calls_benign_until_lifted(gw: RunningGateway) -> None:
    key = gw.create_key("pin-throttled")
    neighbour = gw.create_key("pin-neighbour")
    assert _status(gw, key) == 200
    pin = _pin(gw, "pin-throttled", action="throttle", params={"factor": 0.03}, note="case 42")
    assert pin["ref"].startswith("pin:") and pin["active"] and pin["params"]["factor"] == 0.03
    # rpm 100 x 0.03 = 3 per minute: one used before the pin, two more, then 429
    assert [_status(gw, key) for _ in range(3)] == [200, 200, 429]
    assert [_status(gw, neighbour) for _ in range(4)] == [200] * 4
    d = _decisions(gw, "pin-throttled")
    assert d[0] == "allow" and d[1]["action"] == "throttle" and d[1]["rule"] == pin["ref"]
    assert d[-1]["refuse"] == "rate_limit_requests"
    live = gw.admin("GET", "/accounts/pin-throttled/pins").json()["pins"]
    assert [p["ref"] for p in live] == [pin["ref"]]

    lifted = gw.admin("DELETE", f"/pins/{pin['id']}")
    assert lifted.status_code == 200 and lifted.json()["active"] is False and lifted.json()["lifted_by"] == "admin-api"
    assert _status(gw, key) == 200  # the account's own limit again (4 of 100 used this minute)
    assert _decisions(gw, "pin-throttled")[-1] == "allow"
    assert gw.admin("GET", "/accounts/pin-throttled/pins").json()["pins"] == []
    assert len(gw.admin("GET", "/accounts/pin-throttled/pins", params={"all": "true"}).json()["pins"]) == 1

    acts = [a for a in admin_acts(gw) if a["subject"] == "pin-throttled"]
    assert [a["action"] for a in acts] == ["countermeasure_pinned", "countermeasure_lifted"]
    assert acts[0]["actor"] == "admin-api" and acts[0]["ip"] == "127.0.0.1"
    assert acts[0]["detail"]["params"]["factor"] == 0.03 and acts[0]["detail"]["note"] == "case 42"
    assert acts[1]["detail"]["pin"] == pin["ref"]


def test_a_pin_merges_with_the_policy_the_stricter_value_winning(gw: RunningGateway) -> None:
    key = gw.create_key("pin-degraded")
    gw.state.risk.update(AccountRisk("pin-degraded", 0.6, "suspicious", None, {"cot": 0.9}, source="report"))
    pin = _pin(gw, "pin-degraded", action="degrade", params={"reasoning": "strip", "max_tokens": 5})
    r = _client(gw, key).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "q"}], logprobs=True, max_tokens=20
    )
    msg = r.choices[0].message
    assert "reasoning_content" not in (msg.model_extra or {}) and r.choices[0].logprobs is None
    assert gw.state.watermark.mode_for("pin-degraded") == "on"  # the policy's own watermark rule still acts
    d = _decisions(gw, "pin-degraded")[-1]
    assert d["action"] == "degrade" and d["rule"] == pin["ref"] and d["rules"] == ["mark", "watch", pin["ref"]]
    assert d["verdict"] == "suspicious"

    # a pin never softens the policy: an account the policy blocks stays blocked under a pinned throttle
    blocked = gw.create_key("pin-blocked")
    gw.state.risk.update(AccountRisk("pin-blocked", 0.95, "extraction", None, {}, source="report"))
    pinned = _pin(gw, "pin-blocked", action="throttle", params={"factor": 0.5})
    assert _status(gw, blocked) == 403
    d = _decisions(gw, "pin-blocked")[-1]
    assert d["action"] == "block" and d["rule"] == "verify" and d["rules"] == ["verify", pinned["ref"]]


def test_a_pinned_watermark_applies_to_an_allowlisted_account_and_stops_when_lifted(gw: RunningGateway) -> None:
    key = gw.create_key("pin-trusted", org="trusted-org")
    assert _status(gw, key) == 200 and gw.state.watermark.mode_for("pin-trusted") == "off"
    pin = _pin(gw, "pin-trusted", action="watermark", params={"mode": "strong"})
    assert _status(gw, key) == 200
    assert gw.state.watermark.mode_for("pin-trusted") == "strong"
    d = _decisions(gw, "pin-trusted")[-1]
    assert d["action"] == "watermark" and d["rules"] == ["allowlist", pin["ref"]]
    assert gw.admin("DELETE", f"/pins/{pin['id']}").status_code == 200
    assert gw.state.watermark.mode_for("pin-trusted") == "off"
    assert _status(gw, key) == 200 and _decisions(gw, "pin-trusted")[-1]["rule"] == "allowlist"


def test_a_pin_that_expires_stops_by_itself(gw: RunningGateway) -> None:
    key = gw.create_key("pin-expiring")
    pin = _pin(gw, "pin-expiring", action="throttle", params={"factor": 0.01}, expires_in_s=1.5)
    assert pin["expires_at"] is not None
    assert [_status(gw, key) for _ in range(2)] == [200, 429]
    assert _eventually(lambda: _status(gw, key) == 200, timeout=10)
    assert gw.admin("GET", "/accounts/pin-expiring/pins").json()["pins"] == []


def test_bad_pins_are_refused_with_a_message_and_record_nothing(gw: RunningGateway) -> None:
    gw.create_key("pin-bad")
    before = len(admin_acts(gw))
    cases = [
        ({"action": "block"}, 422, "throttle"),
        ({"action": "throttle", "params": {"factor": 5}}, 400, "params.factor"),
        ({"action": "throttle"}, 400, "params.factor"),
        ({"action": "degrade", "params": {"reasoning": "shout"}}, 400, "params.reasoning"),
        ({"action": "watermark", "params": {"colour": "red"}}, 400, "params.colour"),
        ({"action": "throttle", "params": {"factor": 0.5}, "expires_in_s": 0}, 422, "expires_in_s"),
    ]
    for body, code, named in cases:
        r = gw.admin("POST", "/accounts/pin-bad/pins", json=body)
        assert r.status_code == code and named in r.text, (body, r.status_code, r.text)
    missing = gw.admin("POST", "/accounts/nobody-here/pins", json={"action": "watermark"})
    assert missing.status_code == 404 and "does not exist" in missing.json()["detail"]
    for pin_id in ("999999", str(2**40)):
        r = gw.admin("DELETE", f"/pins/{pin_id}")
        assert r.status_code == 404 and "does not exist" in r.json()["detail"]
    assert len(admin_acts(gw)) == before
    pin = _pin(gw, "pin-bad", action="watermark")
    assert gw.admin("DELETE", f"/pins/{pin['id']}").status_code == 200
    again = gw.admin("DELETE", f"/pins/{pin['id']}")
    assert again.status_code == 409 and "already lifted" in again.json()["detail"]
    assert len(admin_acts(gw)) == before + 2


def test_the_cli_pins_and_lifts_and_the_running_gateway_follows(gw: RunningGateway, tmp_path: Path) -> None:
    key = gw.create_key("pin-cli")
    cfg = tmp_path / "cli.yaml"
    cfg.write_text(f"store:\n  url: {gw.settings.store.url}\n")
    runner = CliRunner()
    r = runner.invoke(cli_app, ["-c", str(cfg), "accounts", "pin", "pin-cli", "throttle", "--params",
                                '{"factor": 0.01}', "--note", "ticket 7", "--expires", "24h", "--json"])  # fmt: skip
    assert r.exit_code == 0, r.output
    made = orjson.loads(r.output)
    assert made["active"] and made["actor"].startswith("cli:") and made["expires_at"] > time.time() + 86000
    # pinned in the store by another process: this gateway applies it within policy.review_poll_s
    assert _eventually(lambda: _status(gw, key) == 429)
    shown = runner.invoke(cli_app, ["-c", str(cfg), "accounts", "show", "pin-cli", "--json"])
    assert shown.exit_code == 0 and [p["ref"] for p in orjson.loads(shown.output)["pins"]] == [made["ref"]]
    assert [p["ref"] for p in gw.admin("GET", "/accounts/pin-cli").json()["pins"]] == [made["ref"]]
    listed = runner.invoke(cli_app, ["-c", str(cfg), "accounts", "pins", "pin-cli", "--json"])
    assert listed.exit_code == 0 and [p["ref"] for p in orjson.loads(listed.output)] == [made["ref"]]
    table = runner.invoke(cli_app, ["-c", str(cfg), "accounts", "pins", "pin-cli", "--all"])
    assert table.exit_code == 0 and made["ref"] in table.output and "ticket 7" in table.output
    lifted = runner.invoke(cli_app, ["-c", str(cfg), "accounts", "unpin", made["ref"]])
    assert lifted.exit_code == 0 and f"lifted {made['ref']}" in lifted.output
    assert _eventually(lambda: gw.state.policy is not None and gw.state.policy.live("pin-cli")["pins"] == [])
    acts = [a for a in admin_acts(gw) if a["subject"] == "pin-cli"]
    assert [(a["action"], a["via"]) for a in acts] == [
        ("countermeasure_pinned", "cli"),
        ("countermeasure_lifted", "cli"),
    ]

    for args, message in (
        (["accounts", "pin", "pin-cli", "throttle", "--params", "{factor"], "--params is not JSON"),
        (["accounts", "pin", "pin-cli", "throttle", "--params", '{"factor": 3}'], "params.factor"),
        (["accounts", "pin", "pin-cli", "block"], "one of throttle, degrade, watermark"),
        (["accounts", "pin", "pin-cli", "watermark", "--expires", "soon"], "--expires"),
        (["accounts", "unpin", "twelve"], "is not a pin"),
        (["accounts", "unpin", "pin:999999"], "does not exist"),
    ):
        bad = subprocess.run([sys.executable, "-m", "distillshield", "-c", str(cfg), *args],
                             capture_output=True, text=True, timeout=60)  # fmt: skip
        assert bad.returncode == 2, (args, bad.stderr)
        assert bad.stderr.startswith("error:") and message in bad.stderr and len(bad.stderr.splitlines()) == 1


def test_the_console_pins_and_lifts_from_the_account_page(gw: RunningGateway) -> None:
    key = gw.create_key("pin-console")
    client, csrf = login(gw)
    page = client.get("/console/accounts/pin-console")
    assert page.status_code == 200 and 'id="pins-none"' in page.text
    r = client.post("/console/accounts/pin-console/pins", data={
        "csrf_token": csrf, "action": "throttle", "factor": "0.01", "expires": "1h", "note": "seen on a forum",
        "reviewer": "ana", "reasoning": "strip", "mode": "on",
    })  # fmt: skip
    assert r.status_code == 303, r.text
    page = client.get(r.headers["location"])
    assert "pinned" in page.text and "seen on a forum" in page.text and "<strong>active</strong>" in page.text
    assert [_status(gw, key) for _ in range(2)] == [200, 429]
    act = [a for a in admin_acts(gw, "countermeasure_pinned") if a["subject"] == "pin-console"][0]
    assert act["actor"] == "ana" and act["via"] == "console" and act["detail"]["params"]["factor"] == 0.01
    assert act["detail"]["expires_at"] is not None

    refused = client.post("/console/accounts/pin-console/pins", data={"csrf_token": csrf, "action": "throttle",
                                                                      "factor": "2", "expires": ""})  # fmt: skip
    assert refused.status_code == 400 and "params.factor" in refused.text
    no_csrf = client.post("/console/accounts/pin-console/pins", data={"action": "watermark", "expires": ""})
    assert no_csrf.status_code == 403
    pin_id = gw.admin("GET", "/accounts/pin-console/pins").json()["pins"][0]["id"]
    lifted = client.post(f"/console/pins/{pin_id}/lift", data={"csrf_token": csrf, "reviewer": ""})
    assert lifted.status_code == 303
    assert "lifted by console" in client.get(lifted.headers["location"]).text
    assert client.post("/console/pins/abc/lift", data={"csrf_token": csrf}).status_code == 404
    assert len([a for a in admin_acts(gw) if a["subject"] == "pin-console"]) == 2


def test_a_pin_is_enforced_in_shadow_mode(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    g = start_gateway(
        make_settings(tmp_path, policy__file=str(policy), policy__mode="shadow", limits__account=UNLIMITED,
                      limits__key=UNLIMITED),
        upstream=ReasoningUpstream(),
    )  # fmt: skip
    try:
        key = g.create_key("pin-shadow")
        g.state.risk.update(AccountRisk("pin-shadow", 0.95, "extraction", None, {}, source="report"))
        pin = _pin(g, "pin-shadow", action="throttle", params={"factor": 0.01})
        assert [_status(g, key) for _ in range(2)] == [200, 429]  # the block is shadowed, the pin is not
        d = _decisions(g, "pin-shadow")[0]
        assert d["action"] == "throttle" and d["rule"] == pin["ref"] and d["shadow"] is False
        assert d["shadowed"] == [{"rule": "verify", "action": "block"}]
    finally:
        g.stop()


def test_the_overview_lists_the_active_pins(gw: RunningGateway) -> None:
    gw.create_key("pin-overview")
    client, _csrf = login(gw)
    pin = _pin(gw, "pin-overview", action="degrade", params={"reasoning": "summarize"}, note="overview case")
    page = client.get("/console/").text
    assert 'id="overview-pins"' in page and "pin-overview" in page and pin["ref"] in page and "overview case" in page
    assert gw.admin("DELETE", f"/pins/{pin['id']}").status_code == 200
    assert "overview case" not in client.get("/console/").text


def test_without_the_policy_stage_pinning_is_a_409_that_says_why(gateway_factory: Any) -> None:
    from tests.fakes import FakeUpstream

    g = gateway_factory({"upstream": FakeUpstream()}, policy__enabled=False)
    g.create_key("pin-nostage")
    for method, path, body in (("POST", "/accounts/pin-nostage/pins", {"action": "watermark"}),
                               ("DELETE", "/pins/1", None), ("POST", "/policy/reload", {})):  # fmt: skip
        r = g.admin(method, path, json=body)
        assert r.status_code == 409 and "policy stage is disabled" in r.json()["detail"], (path, r.text)
    assert admin_acts(g, "countermeasure_pinned") == []
