"""Countermeasures end to end: a running gateway, the official openai and anthropic SDKs, every action,
cluster-wide blocks, the review queue (admin API and CLI), hot reload, shadow mode, the audit row."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest
from typer.testing import CliRunner

from distillshield.cli import app as cli_app
from distillshield.contracts import AccountRisk
from tests.conftest import RunningGateway, make_settings, start_gateway
from tests.fakes import ReasoningUpstream

MODEL = "fake-model"
URL = "https://verify.example.org/start"
POLICY = """
version: 1
allowlist: {orgs: [trusted-org]}
rules:
  - {name: confirmed-cluster, when: {review: [confirmed], in_cluster: true}, action: block, params: {scope: cluster}}
  - {name: confirmed, when: {review: [confirmed]}, action: block}
  - name: hydra
    when: {verdict: [extraction], in_cluster: true, signals: {templates: {gte: 0.9}}}
    action: block
    params: {scope: cluster}
  - {name: org-block, when: {signals: {org_abuse: {gte: 0.9}}}, action: block, params: {scope: org}}
  - {name: key-block, when: {signals: {key_abuse: {gte: 0.9}}}, action: block, params: {scope: key}}
  - {name: verify, when: {verdict: [extraction], verification: [none]}, action: challenge}
  - {name: strip, when: {verdict: [extraction]}, action: degrade, params: {reasoning: strip, max_tokens: 7, n: 1}}
  - name: cluster-throttle
    when: {verdict: [suspicious], in_cluster: true}
    action: throttle
    params: {factor: 0.02, scope: cluster}
  - name: throttle
    when: {verdict: [suspicious], signals: {volume: {gte: 0.5}}}
    action: throttle
    params: {factor: 0.02}
  - {name: mark, when: {verdict: [suspicious], signals: {cot: {gte: 0.5}}}, action: watermark, continue: true}
  - {name: watch, when: {verdict: [suspicious]}, action: monitor}
"""
UNLIMITED = {"rpm": 100, "tpm": None, "concurrent": None, "tpd": None}


@pytest.fixture(scope="module")
def policy_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("policy") / "policy.yaml"
    p.write_text(POLICY)
    return p


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, policy_file: Path) -> Iterator[RunningGateway]:
    settings = make_settings(
        tmp_path_factory.mktemp("policy-gw"),
        policy__file=str(policy_file),
        policy__verification_url=URL,
        policy__review_poll_s=0.2,
        limits__account=UNLIMITED,
        limits__key=UNLIMITED,
        watermark__secret="test-watermark-secret-0123456789",
        watermark__mode="off",  # the default marks every account; these tests see the policy switch one on
    )
    g = start_gateway(settings, upstream=ReasoningUpstream())
    yield g
    g.stop()


def account(gw: RunningGateway, name: str, *, org: str = "default", verification: str = "none", **risk: Any) -> str:
    """A key for a new account; with `risk` (verdict, risk, cluster, signals) set on the risk board."""
    key = gw.create_key(name, org=org, verification=verification)
    if risk:
        gw.state.risk.update(
            AccountRisk(
                name,
                risk.get("risk", 0.9),
                risk["verdict"],
                risk.get("cluster"),
                risk.get("signals", {}),
                source="report",  # as loaded through POST /admin/risk: online rescoring must not undo it
            )
        )
    return key


def oa(gw: RunningGateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.base}/v1", api_key=key, max_retries=0)


def an(gw: RunningGateway, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.base, api_key=key, max_retries=0)


def chat_text(gw: RunningGateway, key: str) -> str:
    r = oa(gw, key).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "q"}], max_tokens=20)
    return r.choices[0].message.content or ""


def status(gw: RunningGateway, key: str) -> int:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "q"}], "max_tokens": 20}
    return httpx.post(
        f"{gw.base}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}
    ).status_code


def audit_rows(gw: RunningGateway, account_id: str) -> list[dict[str, Any]]:
    gw.flush_audit()

    async def rows() -> list[dict[str, Any]]:
        return [r async for r in gw.state.store.iter_audit() if r["account_id"] == account_id]

    return gw.run(rows())


def decision(row: dict[str, Any]) -> dict[str, Any]:
    return orjson.loads(row["decision"])


def test_honest_accounts_get_everything_untouched(gw: RunningGateway) -> None:
    key = account(gw, "honest")
    r = oa(gw, key).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "q"}], logprobs=True, n=2, max_tokens=20
    )
    assert r.choices[0].message.content == ReasoningUpstream.TEXT and len(r.choices) == 2
    assert r.choices[0].message.model_extra["reasoning_content"] == ReasoningUpstream.REASONING
    assert r.choices[0].logprobs is not None
    assert [row["decision"] for row in audit_rows(gw, "honest")] == ["allow"]


def test_degrade_strips_reasoning_and_logprobs_in_openai_chat(gw: RunningGateway) -> None:
    key = account(gw, "deg-chat", verification="phone", verdict="extraction", signals={"cot": 0.97})
    up: ReasoningUpstream = gw.state.upstream
    client = oa(gw, key)
    r = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "q"}],
        max_tokens=300,
        n=3,
        logprobs=True,
        top_logprobs=3,
        logit_bias={"1": 5},
    )
    sent = up.bodies[-1]
    assert not {"logprobs", "top_logprobs", "logit_bias"} & set(sent) and sent["max_tokens"] == 7 and sent["n"] == 1
    assert len(r.choices) == 1 and r.choices[0].message.content == ReasoningUpstream.ANSWER
    assert "reasoning_content" not in (r.choices[0].message.model_extra or {}) and r.choices[0].logprobs is None
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "q"}], max_tokens=30, stream=True
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ReasoningUpstream.ANSWER
    assert not any("reasoning_content" in (c.choices[0].delta.model_extra or {}) for c in chunks if c.choices)
    rows = audit_rows(gw, "deg-chat")
    assert [row["response_text"] for row in rows] == [ReasoningUpstream.ANSWER] * 2
    d = decision(rows[0])
    assert d["action"] == "degrade" and d["rule"] == "strip" and d["signals"] == {"cot": 0.97} and not d["shadow"]


def test_degrade_in_openai_completions(gw: RunningGateway) -> None:
    client = oa(gw, account(gw, "deg-cmpl", verification="id", verdict="extraction"))
    r = client.completions.create(model=MODEL, prompt="q", max_tokens=30)
    assert r.choices[0].text == ReasoningUpstream.ANSWER
    parts = [
        c.choices[0].text
        for c in client.completions.create(model=MODEL, prompt="q", max_tokens=30, stream=True)
        if c.choices
    ]
    assert "".join(parts) == ReasoningUpstream.ANSWER


def test_degrade_in_anthropic_messages(gw: RunningGateway) -> None:
    client = an(gw, account(gw, "deg-anth", verification="business", verdict="extraction"))
    m = client.messages.create(model=MODEL, max_tokens=30, messages=[{"role": "user", "content": "q"}])
    assert [b.type for b in m.content] == ["text"] and m.content[0].text == ReasoningUpstream.ANSWER
    with client.messages.stream(model=MODEL, max_tokens=30, messages=[{"role": "user", "content": "q"}]) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == ReasoningUpstream.ANSWER and final.content[0].text == text


def test_challenge_is_a_403_that_says_how_to_verify(gw: RunningGateway) -> None:
    key = account(gw, "unverified", verdict="extraction")
    with pytest.raises(openai.PermissionDeniedError) as exc:
        chat_text(gw, key)
    err = exc.value.body
    assert exc.value.status_code == 403 and err["code"] == "verification_required"
    assert URL in err["message"] and "verify" in err["message"]
    with pytest.raises(anthropic.PermissionDeniedError) as aexc:
        an(gw, key).messages.create(model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "q"}])
    assert aexc.value.body["error"]["code"] == "verification_required"
    d = decision(audit_rows(gw, "unverified")[0])
    assert d["action"] == "challenge" and d["rule"] == "verify" and d["refuse"] == "verification_required"
    assert gw.state.upstream.bodies and all("unverified" not in str(b) for b in gw.state.upstream.bodies)


def test_cluster_block_stops_every_member_at_once(gw: RunningGateway) -> None:
    members = {
        "hy1": account(gw, "hy1", verdict="extraction", cluster="hydra-1", signals={"templates": 0.97}),
        "hy2": account(gw, "hy2", verdict="suspicious", risk=0.5, cluster="hydra-1"),
        "hy3": account(gw, "hy3", verdict="suspicious", risk=0.55, cluster="hydra-1"),
    }
    spared = account(gw, "hy-benign", verdict="benign", risk=0.1, cluster="hydra-1")  # left to review
    outsider = account(gw, "not-hydra", verdict="suspicious", risk=0.5, cluster="other")
    assert status(gw, members["hy2"]) == 200  # nothing stands against the cluster yet
    with pytest.raises(openai.PermissionDeniedError) as exc:
        chat_text(gw, members["hy1"])
    assert exc.value.body["code"] == "cluster_blocked"
    for name in ("hy2", "hy3"):
        with pytest.raises(anthropic.PermissionDeniedError) as aexc:
            an(gw, members[name]).messages.create(
                model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "q"}]
            )
        assert aexc.value.body["error"]["code"] == "cluster_blocked"
    assert status(gw, outsider) == 200 and status(gw, spared) == 200
    assert decision(audit_rows(gw, "hy3")[-1])["rule"] == "hydra"


def test_org_and_key_blocks(gw: RunningGateway) -> None:
    bad = account(gw, "org-abuser", org="shady-org", verdict="suspicious", signals={"org_abuse": 0.95})
    colleague = account(gw, "org-colleague", org="shady-org")
    assert status(gw, colleague) == 200
    r = httpx.post(f"{gw.base}/v1/messages", json={"model": MODEL, "max_tokens": 5, "messages": [
        {"role": "user", "content": "q"}]}, headers={"x-api-key": bad})  # fmt: skip
    assert r.status_code == 403 and r.json()["error"]["code"] == "org_blocked"
    with pytest.raises(openai.PermissionDeniedError) as exc:
        chat_text(gw, colleague)
    assert exc.value.body["code"] == "org_blocked"
    key = account(gw, "key-abuser", verdict="suspicious", signals={"key_abuse": 0.99})
    with pytest.raises(openai.PermissionDeniedError) as exc:
        chat_text(gw, key)
    assert exc.value.body["code"] == "key_blocked"


def test_throttle_scales_the_accounts_limits(gw: RunningGateway) -> None:
    key = account(gw, "throttled", verdict="suspicious", risk=0.6, signals={"volume": 0.8})
    neighbour = account(gw, "unthrottled")
    assert [status(gw, key) for _ in range(2)] == [200, 200]  # rpm 100 x 0.02 = 2
    with pytest.raises(openai.RateLimitError) as exc:
        chat_text(gw, key)
    assert exc.value.body["code"] == "rate_limit_requests" and "2 requests per minute" in exc.value.body["message"]
    assert [status(gw, neighbour) for _ in range(3)] == [200, 200, 200]
    d = decision(audit_rows(gw, "throttled")[-1])
    assert d["action"] == "throttle" and d["rule"] == "throttle" and d["refuse"] == "rate_limit_requests"


def test_cluster_throttle_shares_one_budget(gw: RunningGateway) -> None:
    a = account(gw, "swarm-a", verdict="suspicious", risk=0.6, cluster="swarm")
    b = account(gw, "swarm-b", verdict="suspicious", risk=0.6, cluster="swarm")
    assert [status(gw, a) for _ in range(2)] == [200, 200]
    with pytest.raises(anthropic.RateLimitError) as exc:  # b's first request: the cluster's budget is spent
        an(gw, b).messages.create(model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "q"}])
    assert exc.value.response.headers["x-ratelimit-scope"] == "cluster"


def test_watermark_is_switched_on_for_the_account(gw: RunningGateway) -> None:
    key = account(gw, "cot-harvester", verdict="suspicious", risk=0.6, signals={"cot": 0.9})
    assert gw.state.watermark.mode_for("cot-harvester") == "off"
    assert chat_text(gw, key) == ReasoningUpstream.TEXT  # the watermark does not alter the response shape
    assert gw.state.watermark.mode_for("cot-harvester") == "on"
    d = decision(audit_rows(gw, "cot-harvester")[0])
    assert d["action"] == "watermark" and d["rules"] == ["mark", "watch"]


def test_monitor_records_and_changes_nothing(gw: RunningGateway) -> None:
    key = account(gw, "watched", verdict="suspicious", risk=0.55)
    assert chat_text(gw, key) == ReasoningUpstream.TEXT
    d = decision(audit_rows(gw, "watched")[0])
    assert (d["action"], d["rule"], d["verdict"]) == ("monitor", "watch", "suspicious")


def test_allowlisted_org_is_never_acted_on(gw: RunningGateway) -> None:
    key = account(gw, "trusted-eval", org="trusted-org", verdict="extraction")
    assert chat_text(gw, key) == ReasoningUpstream.TEXT
    assert decision(audit_rows(gw, "trusted-eval")[0])["rule"] == "allowlist"


REPORT = {
    "accounts": [
        {"account_id": "rq-1", "risk": 0.97, "verdict": "extraction", "cluster_id": "rq-c",
         "reasons": [{"signal": "templates", "score": 0.8, "detail": "one template, 900 prompts"}]},
        {"account_id": "rq-2", "risk": 0.7, "verdict": "suspicious", "cluster_id": "rq-c", "reasons": []},
        {"account_id": "rq-3", "risk": 0.05, "verdict": "benign", "cluster_id": None, "reasons": []},
    ],
    "clusters": [],
    "summary": {},
}  # fmt: skip


def test_review_queue_confirm_then_clear_restores_service_at_once(gw: RunningGateway) -> None:
    keys = {a: gw.create_key(a, verification="phone") for a in ("rq-1", "rq-2", "rq-3")}
    r = gw.admin("POST", "/risk", json=REPORT)
    assert r.status_code == 200 and r.json()["loaded"] == 3 and r.json()["flagged"] == 2
    items = {i["ref"]: i for i in gw.admin("GET", "/review", params={"status": "open"}).json()["items"]}
    assert {"account:rq-1", "account:rq-2", "cluster:rq-c"} <= set(items) and "account:rq-3" not in items
    shown = gw.admin("GET", "/review/cluster:rq-c").json()
    assert shown["item"]["evidence"]["members"] == ["rq-1", "rq-2"]
    assert shown["item"]["evidence"]["reasons"][0]["signal"] == "templates"
    assert chat_text(gw, keys["rq-1"]) == ReasoningUpstream.ANSWER  # verified extraction: degraded

    r = gw.admin("POST", "/review/cluster:rq-c/decide", json={"decision": "confirm", "reviewer": "t", "note": "n"})
    assert r.status_code == 200 and r.json()["accounts"] == ["rq-1", "rq-2"]
    assert [status(gw, keys[a]) for a in ("rq-1", "rq-2", "rq-3")] == [403, 403, 200]

    r = gw.admin("POST", "/review/cluster:rq-c/decide", json={"decision": "clear", "note": "false positive"})
    assert r.status_code == 200
    assert chat_text(gw, keys["rq-1"]) == ReasoningUpstream.TEXT  # every action lifted, at once
    assert chat_text(gw, keys["rq-2"]) == ReasoningUpstream.TEXT
    shown = gw.admin("GET", "/review/account:rq-1").json()
    assert [d["decision"] for d in gw.admin("GET", "/review/cluster:rq-c").json()["decisions"]] == ["confirm", "clear"]
    assert shown["item"]["status"] == "cleared" and shown["live"]["review"]["state"] == "cleared"
    assert shown["recent_requests"][0]["account_id"] == "rq-1"
    assert gw.admin("GET", "/review/account:nobody").status_code == 404


def test_cli_decisions_reach_the_running_gateway(gw: RunningGateway, tmp_path: Path) -> None:
    key = account(gw, "cli-target", verification="phone", verdict="extraction")
    assert gw.admin("POST", "/review/scan").status_code == 200
    cfg = tmp_path / "cli.yaml"
    cfg.write_text(f"store:\n  url: {gw.settings.store.url}\n")
    runner = CliRunner()
    listed = runner.invoke(cli_app, ["-c", str(cfg), "review", "list", "--status", "open", "--json"])
    assert listed.exit_code == 0, listed.output
    assert "account:cli-target" in {i["ref"] for i in orjson.loads(listed.output)}
    shown = runner.invoke(cli_app, ["-c", str(cfg), "review", "show", "account:cli-target"])
    assert shown.exit_code == 0 and "cli-target" in shown.output

    r = runner.invoke(cli_app, ["-c", str(cfg), "review", "decide", "account:cli-target", "confirm", "--json"])
    assert r.exit_code == 0 and orjson.loads(r.output)["status"] == "confirmed"
    assert _eventually(lambda: status(gw, key) == 403)
    r = runner.invoke(cli_app, ["-c", str(cfg), "review", "decide", "cli-target", "clear"])
    assert r.exit_code == 0 and "cleared" in r.output
    assert _eventually(lambda: status(gw, key) == 200)  # within policy.review_poll_s

    bad = subprocess.run(
        [sys.executable, "-m", "distillshield", "-c", str(cfg), "review", "decide", "account:ghost", "clear"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.startswith("error: review item") and len(bad.stderr.splitlines()) == 1


def _eventually(check: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def test_invalid_policy_reload_is_rejected_and_the_previous_policy_kept(gw: RunningGateway, tmp_path: Path) -> None:
    key = account(gw, "reload-target", verdict="extraction")
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - {name: oops, action: throttle, params: {factor: 5}}\n")
    r = gw.admin("POST", "/policy/reload", json={"path": str(bad)})
    assert r.status_code == 400
    detail = r.json()["detail"]
    assert "rule 0 ('oops')" in detail and "params.factor" in detail and "stays active" in detail
    before = gw.admin("GET", "/policy").json()
    assert before["source"].endswith("policy.yaml") and len(before["rules"]) == 11
    assert status(gw, key) == 403  # the previous policy still challenges
    good = tmp_path / "lenient.yaml"
    good.write_text("rules:\n  - {name: watch-all, when: {verdict: [extraction]}, action: monitor}\n")
    fresh = account(gw, "reload-fresh", verdict="extraction")
    try:
        assert gw.admin("POST", "/policy/reload", json={"path": str(good)}).json()["rules"] == 1
        assert status(gw, fresh) == 200  # the new policy monitors
        assert status(gw, key) == 403  # a challenge already standing stays until verified or cleared
    finally:
        restore = gw.admin("POST", "/policy/reload", json={"path": before["source"]})
        assert restore.status_code == 200
    assert status(gw, fresh) == 403


def test_shadow_mode_records_decisions_and_enforces_nothing(gateway_factory: Any, policy_file: Path) -> None:
    g = gateway_factory(
        {"upstream": ReasoningUpstream()}, policy__file=str(policy_file), policy__mode="shadow",
        limits__account=UNLIMITED, limits__key=UNLIMITED,
    )  # fmt: skip
    challenged = account(g, "would-verify", verdict="extraction")
    degraded = account(g, "would-degrade", verification="phone", verdict="extraction")
    throttled = account(g, "would-throttle", verdict="suspicious", signals={"volume": 0.9})
    assert chat_text(g, challenged) == ReasoningUpstream.TEXT
    assert chat_text(g, degraded) == ReasoningUpstream.TEXT
    assert [status(g, throttled) for _ in range(4)] == [200] * 4
    for name, action in (("would-verify", "challenge"), ("would-degrade", "degrade"), ("would-throttle", "throttle")):
        d = decision(audit_rows(g, name)[0])
        assert d["action"] == action and d["shadow"] is True and "refuse" not in d
    assert g.admin("GET", "/policy").json()["decisions"]["shadow:challenge"] == 1


def test_sighup_reloads_the_policy_and_keeps_it_when_the_file_is_invalid(tmp_path: Path) -> None:
    import os
    import signal

    from distillshield.cli.serve import write_config
    from tests.conftest import free_port
    from tests.fakes import MockOpenAIServer

    up = MockOpenAIServer(free_port()).start()
    port = free_port()
    cfg = tmp_path / "distillshield.yaml"
    policy = tmp_path / "policy.yaml"
    policy.write_text("rules:\n  - {name: one, when: {verdict: [extraction]}, action: monitor}\n")
    token = write_config(cfg, store_url=f"sqlite+aiosqlite:///{tmp_path / 'h.db'}", port=port,
                         upstream_kind="http", upstream_url=up.base_url)  # fmt: skip
    env = {**os.environ, "DISTILLSHIELD_POLICY__FILE": str(policy)}
    proc = subprocess.Popen([sys.executable, "-m", "distillshield", "-c", str(cfg), "serve", "--log-level", "warning"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    base, admin = f"http://127.0.0.1:{port}", {"authorization": f"Bearer {token}"}

    def rules() -> list[str]:
        return [r["name"] for r in httpx.get(f"{base}/admin/policy", headers=admin).json()["rules"]]

    try:
        assert _eventually(lambda: _up(base), timeout=60)
        assert rules() == ["one"]
        policy.write_text("rules:\n  - {name: two, action: monitor, when: {verdict: [suspicious]}}\n")
        proc.send_signal(signal.SIGHUP)
        assert _eventually(lambda: rules() == ["two"])
        policy.write_text("rules:\n  - {name: broken, action: throttle}\n")  # throttle needs params.factor
        proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert proc.poll() is None and rules() == ["two"]  # still serving, previous policy kept
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=60)
        up.stop()
    assert b"rule 0 ('broken')" in out and b"previous policy stays active" in out
    # the reload that took is an administrative act in the audit log; the rejected one is not
    import json
    import sqlite3

    with sqlite3.connect(tmp_path / "h.db") as db:
        acts = db.execute("SELECT request FROM audit_log WHERE endpoint = 'admin/policy_reload'").fetchall()
    [(body,)] = acts
    act = json.loads(body)
    assert (act["actor"], act["via"], act["subject"], act["detail"]["rules"]) == ("sighup", "signal", str(policy), 1)


def _up(base: str) -> bool:
    try:
        return httpx.get(f"{base}/readyz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False
