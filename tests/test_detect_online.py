"""Online detection inside a running gateway: the observer only queues, the background task folds rows into
per-account state, and risk, verdict and reasons show in the admin API and `accounts show`."""

from __future__ import annotations

import time
from typing import Any

import httpx

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
