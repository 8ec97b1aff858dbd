"""Live mode: simulated traffic sent to a real running gateway, and the served responses recorded."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from typer.testing import CliRunner

from distillshield.cli import app
from distillshield.simulate import engine, scenario
from distillshield.simulate.live import LiveError, LiveOptions, check_loopback, replay
from distillshield.traffic import TrafficRecord
from tests.conftest import ADMIN_TOKEN, RunningGateway, free_port
from tests.fakes import FakeUpstream

runner = CliRunner()
# Chat (streamed and not, OpenAI and Anthropic shapes, multi-turn), tool-use agents, a hydra cluster
# and logprobs probes on /v1/completions: every endpoint and body shape the personas produce.
LIVE: dict[str, Any] = {
    "name": "live",
    "duration": "1d",
    "personas": [
        {"persona": "casual_chat", "accounts": 12, "knobs": {"requests_per_day": 30, "think_s": 5}},
        {"persona": "agent", "accounts": 1, "knobs": {"requests_per_day": 40}},
        {"persona": "hydra", "accounts": 4, "knobs": {"requests_per_day": 40}},
        {"persona": "logprobs_harvester", "accounts": 1, "knobs": {"requests_per_day": 60}},
    ],
}
SEED = 5


def run_live(
    gw: RunningGateway, limit: int, data: dict[str, Any] = LIVE, **opts: Any
) -> tuple[list[dict[str, Any]], Any]:
    sc = scenario.build(data, "live test", SEED)
    buf = io.BytesIO()
    options = LiveOptions(target=gw.base, admin_token=ADMIN_TOKEN, limit=limit, **opts)
    stats = asyncio.run(replay(engine.iter_records(sc, SEED), options, buf))
    return [orjson.loads(line) for line in buf.getvalue().splitlines()], stats


@pytest.fixture
def trusting_gateway(gateway_factory: Any) -> RunningGateway:
    """A gateway on the fast fake upstream that records X-Forwarded-For as the client IP. It serves the
    smoke scenario's logprobs harvester (logit_bias with logprobs), which the default logit stage refuses
    (tests/test_logit_defence.py): these tests are about the replay, which should see every request served."""
    return gateway_factory(
        {"upstream": FakeUpstream()}, server__trust_forwarded_for=True, logits__logit_bias_with_logprobs="allow"
    )


def test_non_loopback_targets_are_refused() -> None:
    assert check_loopback("http://127.0.0.1:8787/v1") == "http://127.0.0.1:8787"
    assert check_loopback("http://localhost:9") == "http://localhost:9"
    assert check_loopback("http://[::1]:8787") == "http://[::1]:8787"
    for url in (
        "http://10.1.2.3:8787",
        "https://api.openai.com",
        "http://example.org",
        "http://0.0.0.0:8787",
        "ftp://127.0.0.1",
        "127.0.0.1:8787",
    ):
        with pytest.raises(LiveError):
            check_loopback(url)


def test_cli_refuses_a_remote_target_in_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "distillshield",
            "simulate",
            "--scenario",
            "smoke",
            "--out",
            str(tmp_path / "o"),
            "--target",
            "http://203.0.113.7:8787",
            "--admin-token",
            "x",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: refusing to send simulated traffic to '203.0.113.7'")
    assert "Traceback" not in proc.stderr and not (tmp_path / "o").exists()


def test_live_replay_creates_accounts_and_records_what_was_served(trusting_gateway: RunningGateway) -> None:
    gw = trusting_gateway
    recs, stats = run_live(gw, limit=150, concurrency=12)
    assert stats.sent == len(recs) == 150 and stats.errors == 0 and stats.served == 150
    assert stats.models == {"frontier-1": "fake-model", "frontier-1-mini": "fake-model"} or set(
        stats.models.values()
    ) == {"fake-model"}
    endpoints = {r["endpoint"] for r in recs}
    assert endpoints == {"/v1/chat/completions", "/v1/messages", "/v1/completions"}
    assert any(r["request"].get("stream") for r in recs) and any(not r["request"].get("stream") for r in recs)
    for r in recs:
        rec = TrafficRecord.model_validate(r)
        assert rec.status == 200 and rec.latency_ms is not None and rec.response is not None
        assert rec.response.text.startswith("w0") and rec.response.usage is not None
        assert rec.request["model"] == "fake-model" and r["sim"]["sim_model"].startswith("frontier-1")
        assert rec.label and rec.label_meta
    # Every simulated account exists on the gateway with the key the records name.
    for acct in {r["account_id"]: r for r in recs}.values():
        info = gw.admin("GET", f"/accounts/{acct['account_id']}").json()
        assert info["org_id"] == acct["org_id"] and info["tier"] == acct["label_meta"]["tier"]
        assert acct["key_id"] in {k["id"] for k in info["keys"]}
        # created at its simulated time, moved onto the real clock like the run (before its first request)
        assert info["created_at"] == pytest.approx(acct["account_created_at"]) and info["created_at"] < acct["ts"]
    # ...so the spacing of the simulated creation times (a hydra's waves) is the gateway's too
    firsts = list({r["account_id"]: r for r in recs}.values())
    sim = [r["label_meta"]["account_created_at"] for r in firsts]
    real = [r["account_created_at"] for r in firsts]
    assert [b - a for a, b in zip(real, real[1:], strict=False)] == pytest.approx(
        [b - a for a, b in zip(sim, sim[1:], strict=False)], abs=0.01
    )


def test_live_conversations_carry_the_answers_the_gateway_served(trusting_gateway: RunningGateway) -> None:
    recs, _ = run_live(trusting_gateway, limit=150, concurrency=12)
    by_conv: dict[str, list[dict[str, Any]]] = {}
    for r in recs:
        if r["label"] == "benign:casual_chat":
            by_conv.setdefault(r["sim"]["conversation_id"], []).append(r)
    multi = [c for c in by_conv.values() if len(c) >= 2]
    assert multi
    for conv in multi:
        conv.sort(key=lambda r: r["sim"]["turn"])
        for prev, cur in zip(conv, conv[1:], strict=False):
            msgs = cur["request"]["messages"]
            assistant = [m["content"] for m in msgs if m["role"] == "assistant"]
            assert assistant[-1] == prev["response"]["text"]
            assert cur["ts"] >= prev["ts"] + prev["latency_ms"] / 1000 - 0.01  # sent after the answer came


def test_live_requests_reach_the_audit_log_with_the_simulated_client(trusting_gateway: RunningGateway) -> None:
    gw = trusting_gateway
    recs, _ = run_live(gw, limit=60, concurrency=8)
    audit = gw.request_rows()  # the accounts' and keys' creation are administrative acts, not requests
    assert len(audit) == 60
    seen = {(r["account_id"], r["ip"], r["user_agent"]) for r in audit}
    assert seen == {(r["account_id"], r["ip"], r["user_agent"]) for r in recs}


def test_live_replay_paces_by_simulated_time(trusting_gateway: RunningGateway) -> None:
    # At 20,000 simulated seconds per real second, the first 40 requests (spread over hours of
    # simulated time) take a measurable, bounded real time; their real order follows simulated time.
    recs, stats = run_live(trusting_gateway, limit=40, concurrency=8, speed=20_000)
    sim = [r["sim"]["sim_ts"] for r in recs]
    expected = (sim[-1] - sim[0]) / 20_000
    assert sim == sorted(sim)
    assert stats.elapsed_s >= expected * 0.9


def test_live_replay_on_the_embedded_model(local_gateway: RunningGateway) -> None:
    # The embedded model makes ~150 tokens/s on an idle machine: two short benchmark questions
    # (Vicuna) with 4-token answers keep this quick even when the CPU is shared.
    short = {**LIVE, "personas": [{"persona": "eval_run", "accounts": 1, "knobs": {"benchmarks": ["vicuna"]}}]}
    recs, stats = run_live(local_gateway, limit=2, data=short, concurrency=2, max_tokens=4)
    assert stats.sent == stats.served == 2
    for r in recs:
        TrafficRecord.model_validate(r)
        assert r["status"] == 200 and r["request"]["model"] == "smollm2-135m-instruct"
        assert r["request"]["max_tokens"] <= 4 and 0 < r["response"]["usage"]["completion_tokens"] <= 4
        assert r["response"]["text"] and r["sim"]["sim_model"].startswith("frontier-1")


def test_cli_live_mode_writes_the_served_traffic(trusting_gateway: RunningGateway, tmp_path: Path) -> None:
    path = tmp_path / "live.yaml"
    path.write_text(yaml.safe_dump(LIVE), encoding="utf-8")
    out = tmp_path / "served.jsonl"
    r = runner.invoke(
        app,
        [
            "simulate",
            "--scenario",
            str(path),
            "--seed",
            str(SEED),
            "--out",
            str(out),
            "--target",
            trusting_gateway.base,
            "--admin-token",
            ADMIN_TOKEN,
            "--limit",
            "25",
            "--concurrency",
            "4",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    summary = orjson.loads(r.stdout[r.stdout.index("{") :])
    assert summary["live"]["sent"] == 25 and summary["live"]["served"] == 25
    lines = out.read_bytes().splitlines()
    assert len(lines) == 25 and all(orjson.loads(x)["status"] == 200 for x in lines)


def test_live_mode_explains_a_wrong_admin_token(trusting_gateway: RunningGateway) -> None:
    sc = scenario.build(LIVE, "live test", SEED)
    opts = LiveOptions(target=trusting_gateway.base, admin_token="wrong", limit=5)
    with pytest.raises(LiveError, match="refused the admin token"):
        asyncio.run(replay(engine.iter_records(sc, SEED), opts, io.BytesIO()))


def test_live_mode_explains_when_no_gateway_listens() -> None:
    sc = scenario.build(LIVE, "live test", SEED)
    opts = LiveOptions(target=f"http://127.0.0.1:{free_port()}", admin_token="x", limit=5)
    with pytest.raises(LiveError, match="no gateway answers"):
        asyncio.run(replay(engine.iter_records(sc, SEED), opts, io.BytesIO()))
