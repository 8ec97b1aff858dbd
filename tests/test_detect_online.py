"""Online detection inside a running gateway: the observer only queues, the background task folds rows into
per-account state, and risk, verdict and reasons show in the admin API and `accounts show`."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from distillshield.detect.online import DetectionExtension
from tests.conftest import RunningGateway
from tests.fakes import FakeUpstream

HARVEST = (
    "{q}\n\nBefore answering, articulate the internal reasoning behind your response, step by step, in full "
    "detail. Do not skip any step. Then give the final answer."
)


def chat(gw: RunningGateway, key: str, content: str, **body: Any) -> httpx.Response:
    return httpx.post(
        f"{gw.base}/v1/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        timeout=30,
        json={"model": "fake-model", "messages": [{"role": "user", "content": content}], **body},
    )


def detection(gw: RunningGateway) -> DetectionExtension:
    ext = getattr(gw.state, "detection", None)
    assert isinstance(ext, DetectionExtension), "the detection extension is registered by default"
    return ext


def wait_loaded(ext: DetectionExtension, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while ext.engine is None:
        assert time.monotonic() < deadline, "the detection model did not load"
        time.sleep(0.05)


def test_requests_only_queue_and_background_rescoring_updates_state(gateway_factory: Any) -> None:
    # A long interval: the background task does not run during the requests, so what the requests did
    # to detection is exactly the queue append.
    gw = gateway_factory({"upstream": FakeUpstream()}, detection__interval_s=3600)
    ext = detection(gw)
    wait_loaded(ext)
    key = gw.create_key("harvester")
    for i in range(40):
        assert chat(gw, key, HARVEST.format(q=f"What is {i} times {i + 3}? Explain."), max_tokens=8).status_code == 200
    assert len(ext.queue) == 40 and ext.processed == 0 and ext.engine is not None
    assert "harvester" not in ext.engine.accounts
    assert gw.run(ext.run_once()) == 40
    acc = ext.engine.accounts["harvester"]
    assert acc.n == 40 and acc.templates.n == 40 and acc.score is not None
    shown = gw.admin("GET", "/accounts/harvester").json()["detection"]
    assert shown["account_id"] == "harvester" and 0.0 <= shown["risk"] <= 1.0 and shown["requests"] == 40
    assert shown["verdict"] in ("benign", "suspicious", "extraction") and shown["reasons"]
    board = gw.admin("GET", "/risk").json()
    assert [a["account_id"] for a in board["accounts"]] == ["harvester"] and board["detection"]["processed"] == 40
    assert gw.state.risk.get("harvester").verdict == shown["verdict"]


def test_background_task_runs_by_itself(gateway_factory: Any) -> None:
    gw = gateway_factory({"upstream": FakeUpstream()}, detection__interval_s=0.1)
    ext = detection(gw)
    wait_loaded(ext)
    key = gw.create_key("casual")
    for q in ("how do I boil an egg", "recommend a good fantasy novel", "what is the capital of peru"):
        assert chat(gw, key, q).status_code == 200
    deadline = time.monotonic() + 20
    while ext.processed < 3:
        assert time.monotonic() < deadline, "the background task did not fold the requests in"
        time.sleep(0.05)
    assert ext.account("casual")["requests"] == 3
    assert gw.admin("GET", "/accounts/nobody-here").status_code == 404


def test_detection_can_be_switched_off(gateway_factory: Any) -> None:
    gw = gateway_factory({"upstream": FakeUpstream()}, detection__enabled=False)
    assert getattr(gw.state, "detection", None) is None
    key = gw.create_key("alice")
    assert chat(gw, key, "hello").status_code == 200
    assert gw.admin("GET", "/accounts/alice").json()["detection"] is None


def test_observer_cost_is_one_append() -> None:
    ext = DetectionExtension(queue_max=1000)
    row = {"account_id": "a", "ts": 1.0}
    for _ in range(1500):
        ext.observe(row)
    assert len(ext.queue) == 1000 and ext.dropped == 500  # bounded: the oldest go, and are counted


def test_demo_detection_act_flags_the_campaign(gateway_factory: Any, capsys: Any) -> None:
    from distillshield.cli.analyze import run_live_demo
    from tests.conftest import ADMIN_TOKEN

    gw = gateway_factory({"upstream": FakeUpstream()}, detection__interval_s=3600, policy__enabled=False)
    ext = detection(gw)
    wait_loaded(ext)
    run_live_demo(gw.base, ADMIN_TOKEN, "fake-model", gw.state, gw.loop, 100)
    out = capsys.readouterr().out
    assert "Accounts (online detection)" in out and "served 100 of 100" in out
    verdicts = {a: acc.score.verdict for a, acc in ext.engine.accounts.items() if acc.score is not None}
    # Flagged (suspicious or worse): the shipped model keeps the visible verdict, extraction, for evidence no
    # honest account's worst moment reached on the calibration seeds, which 100 demo requests need not give.
    assert len(verdicts) >= 8 and ("extraction" in out or "suspicious" in out)
    assert any(v != "benign" for v in verdicts.values()) and any(v == "benign" for v in verdicts.values())


def test_the_demo_shows_the_policy_stopping_the_campaign_while_honest_users_carry_on(
    gateway_factory: Any, capsys: Any
) -> None:
    """`distillshield demo`'s two acts at its own pace (72x the simulated users'): after 100 requests the
    campaign is flagged, and the policy refuses most of its next requests while every honest one is served."""
    from distillshield.cli.analyze import run_live_demo
    from tests.conftest import ADMIN_TOKEN

    gw = gateway_factory({"upstream": FakeUpstream()}, detection__interval_s=1)
    wait_loaded(detection(gw))
    run_live_demo(gw.base, ADMIN_TOKEN, "fake-model", gw.state, gw.loop, 100, after=60, speed=72)
    out = capsys.readouterr().out
    assert "What the policy did to the next requests" in out

    from distillshield.cli.analyze import DEMO_SCENARIO
    from distillshield.simulate import engine, scenario

    labels = {r["account_id"]: r["label"] for r in engine.iter_records(scenario.build(DEMO_SCENARIO, "demo", 3), 3)}
    second_act = [(r["account_id"], r["status"]) for r in gw.request_rows()[-60:]]
    honest = [s for a, s in second_act if labels[a].startswith("benign")]
    campaign = [s for a, s in second_act if labels[a].startswith("attack")]
    assert honest and set(honest) == {200}, honest  # every honest user carries on
    assert len(campaign) >= 20 and campaign.count(403) >= len(campaign) / 2, campaign
    assert f"honest users: {len(honest)} of {len(honest)} requests served" in out


def _audit_row(**over: Any) -> dict[str, Any]:
    row = {
        "ts": 1_700_000_000.25, "request_id": "r1", "endpoint": "/v1/chat/completions", "ip": "10.1.2.3",
        "user_agent": "OpenAI/Python 1.0", "stream": False, "account_id": "acct", "org_id": "org", "key_id": "k1",
        "model": "fake-model", "decision": "allow", "status": 200, "latency_ms": 1.5, "error": None,
        "request": '{"model": "fake-model", "max_tokens": 64, "temperature": 0.2, '
        '"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Explain tides."}]}',
        "response_text": "The moon.", "finish_reason": "stop", "prompt_tokens": 12, "completion_tokens": 3,
    }  # fmt: skip
    row.update(over)
    return row


def test_trusted_rows_read_as_the_validated_records_do() -> None:
    """The extension reads its own gateway's rows without pydantic validation (detect/online.py); what the
    extractor sees must be what `row_to_record` (used for files and exports) gives, None cases included."""
    from distillshield.detect.corpus import Extractor
    from distillshield.detect.online import trusted_record
    from distillshield.store.export import row_to_record

    rows = [
        _audit_row(),
        _audit_row(response_text=None, finish_reason=None, prompt_tokens=None, completion_tokens=None),
        _audit_row(prompt_tokens=None, completion_tokens=None),  # a response without usage
        _audit_row(prompt_tokens=None, completion_tokens=7, response_text=None, finish_reason="length"),
        _audit_row(status=499, finish_reason="cancelled", ip=None, user_agent=None, org_id=None),
        _audit_row(endpoint="/v1/completions", request='{"model": "m", "prompt": "Say hi", "n": 2}'),
        _audit_row(endpoint="/v1/messages", request='{"model": "m", "max_tokens": 9, "system": "s", '
                   '"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}'),
        _audit_row(account_id=None),  # unauthenticated
        _audit_row(request=None),
        _audit_row(request='{"model": "fake-mo'),  # truncated body
        _audit_row(request="[1, 2]"),
    ]  # fmt: skip
    attrs = ("ts", "account_id", "endpoint", "request", "org_id", "key_id", "ip", "user_agent", "status", "latency_ms")
    trusted = [trusted_record(r) for r in rows]
    checked = [row_to_record(r) for r in rows]
    assert [t is None for t in trusted] == [c is None for c in checked] == [False] * 7 + [True] * 4
    for t, c in zip(trusted, checked, strict=True):
        if c is None:
            continue
        assert all(getattr(t, a) == getattr(c, a) for a in attrs)
        if c.response is None:
            assert t.response is None
            continue
        assert (t.response.text, t.response.finish_reason) == (c.response.text, c.response.finish_reason)
        if c.response.usage is None:
            assert t.response.usage is None
        else:
            tu, cu = t.response.usage, c.response.usage
            assert (tu.prompt_tokens, tu.completion_tokens) == (cu.prompt_tokens, cu.completion_tokens)
    fields = (
        "ts", "account", "endpoint", "model", "org", "ip24", "ua", "user_chars", "system_hash", "skel_hash", "head",
        "tail", "max_tokens", "temperature", "n", "status", "completion_tokens", "index", "text",
    )  # fmt: skip
    got = list(Extractor(None, None).extract([t for t in trusted if t is not None]))
    want = list(Extractor(None, None).extract([c for c in checked if c is not None]))
    assert [[getattr(o, f) for f in fields] for o in got] == [[getattr(o, f) for f in fields] for o in want]


def test_online_rescoring_does_not_undo_a_stronger_report_verdict() -> None:
    from distillshield.contracts import AccountRisk
    from distillshield.gateway.risk import LocalRiskBoard

    board = LocalRiskBoard()
    board.update(AccountRisk("acct-r", 0.95, "extraction", source="report"))
    board.update(AccountRisk("acct-o", 0.95, "extraction", source="online"))
    milder = [AccountRisk("acct-r", 0.1, "benign"), AccountRisk("acct-o", 0.1, "benign")]
    assert board.update_many(milder, keep_stronger_reports=True) == 1
    assert board.get("acct-r").verdict == "extraction"  # the report's evidence stands
    assert board.get("acct-o").verdict == "benign"  # online replaces its own verdicts
    board.update_many([AccountRisk("acct-r", 0.99, "extraction")], keep_stronger_reports=True)
    assert board.get("acct-r").source == "online"  # as strong: the fresher online score takes over
    board.update_many([AccountRisk("acct-r", 0.1, "benign", source="report")])
    assert board.get("acct-r").verdict == "benign"  # a newer report may lower it


def test_a_restart_is_no_amnesty(gateway_factory: Any) -> None:
    """A gateway started on an existing log replays it into detection before it judges anyone: an account
    flagged before the restart carries the same verdict after it, with no new request."""
    first = gateway_factory({"upstream": FakeUpstream()}, detection__interval_s=3600)
    ext = detection(first)
    wait_loaded(ext)
    key = first.create_key("harvester")
    for i in range(40):
        prompt = HARVEST.format(q=f"What is {i} times {i + 3}? Explain.")
        assert chat(first, key, prompt, max_tokens=8).status_code == 200
    first.flush_audit()
    first.run(ext.flush())
    before = first.state.risk.get("harvester")
    assert before is not None and before.reasons
    first.stop()

    second = gateway_factory(
        {"upstream": FakeUpstream()}, detection__interval_s=3600, store__url=first.settings.store.url
    )
    ext2 = detection(second)
    deadline = time.monotonic() + 60
    while ext2.replayed is None:
        assert time.monotonic() < deadline, "the log was not replayed"
        time.sleep(0.05)
    assert ext2.replayed >= 40 and ext2.processed == ext2.replayed and not ext2.queue
    after = second.state.risk.get("harvester")
    assert after is not None and after.verdict == before.verdict and after.risk == pytest.approx(before.risk)
    assert second.admin("GET", "/accounts/harvester").json()["detection"]["verdict"] == before.verdict


def test_replay_can_be_switched_off(gateway_factory: Any) -> None:
    first = gateway_factory({"upstream": FakeUpstream()}, detection__interval_s=3600)
    wait_loaded(detection(first))
    key = first.create_key("someone")
    assert chat(first, key, "hello").status_code == 200
    first.flush_audit()
    first.stop()
    second = gateway_factory(
        {"upstream": FakeUpstream()}, detection__interval_s=3600, store__url=first.settings.store.url,
        detection__replay_on_start_rows=0,
    )  # fmt: skip
    ext = detection(second)
    deadline = time.monotonic() + 60
    while ext.replayed is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert ext.replayed == 0 and ext.engine is not None and "someone" not in ext.engine.accounts
