"""The logit_extraction persona: the published attack (Carlini et al. 2024) as simulated traffic.

Offline its records are the attack's queries and detection's logit-sweep signal flags the account; the
recovery finds the rank of a low-rank logit matrix and not under noise; live, through a gateway on this
machine in front of the rank-4 toy model of tests/test_logit_defence.py, the persona recovers the hidden
size when the gateway allows the combination and is refused at its first query by default."""

from __future__ import annotations

import asyncio
import io
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import yaml
from typer.testing import CliRunner

from distillshield.cli import app
from distillshield.simulate import engine, scenario
from distillshield.simulate.live import LiveOptions, replay
from distillshield.simulate.personas.attack.logit_extraction import AttackPlan, LogitReadout, recover
from tests.conftest import ADMIN_TOKEN, RunningGateway
from tests.test_logit_defence import HIDDEN, VOCAB, RankModel

runner = CliRunner()
PERSONA = "attack:logit_extraction"
SEED = 3
# 10 prompts x 190 tokens in blocks of 19: 100 queries over 10 token sets, more than the signal needs.
OFFLINE: dict[str, Any] = {
    "name": "logit-offline",
    "duration": "1d",
    "personas": [
        {"persona": "logit_extraction", "accounts": 1, "knobs": {"prompts": 10, "tokens": 190}},
        {"persona": "casual_chat", "accounts": 20},
        {"persona": "coding_assistant", "accounts": 3},
    ],
}
# Against the toy model (vocabulary 64, hidden size 4): 12 prompts x 57 tokens, 3 blocks, 36 queries.
TOY: dict[str, Any] = {
    "name": "logit-toy",
    "duration": "1d",
    "personas": [
        {
            "persona": "logit_extraction",
            "accounts": 1,
            "knobs": {"prompts": 12, "tokens": 57, "vocab": VOCAB, "lowest_token": 0},
        },
    ],
}


def records(data: dict[str, Any]) -> list[dict[str, Any]]:
    return list(engine.iter_records(scenario.build(data, "test", SEED), SEED))


def test_offline_records_are_the_attack_queries_in_plan_order() -> None:
    recs = [r for r in records(OFFLINE) if r["label"] == PERSONA]
    assert len(recs) == 100  # the plan, then the account stops
    sets = Counter(frozenset(r["request"]["logit_bias"]) for r in recs)
    assert len(sets) == 10 and set(sets.values()) == {10}  # each token block once per prompt
    (reference,) = frozenset.intersection(*sets)  # one token biased in every query
    prompts = [r["request"]["messages"][-1]["content"] for r in recs]
    assert len(set(prompts)) == 10 and all(prompts[i] == prompts[i - i % 10] for i in range(100))
    for r in recs:
        body = r["request"]
        assert r["endpoint"] == "/v1/chat/completions" and len(body["messages"]) == 1
        assert (body["max_tokens"], body["temperature"], body["logprobs"], body["top_logprobs"]) == (1, 0, True, 20)
        assert len(body["logit_bias"]) == 20 and set(body["logit_bias"].values()) == {100}
        assert reference in body["logit_bias"]
    assert [r["ts"] for r in recs] == sorted(r["ts"] for r in recs)


def test_analyze_flags_the_logit_extraction_account_by_its_logit_sweep(tmp_path: Path) -> None:
    traffic, report = tmp_path / "traffic.jsonl", tmp_path / "report.json"
    traffic.write_bytes(b"".join(orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in records(OFFLINE)))
    r = runner.invoke(app, ["analyze", str(traffic), "--out", str(report)])
    assert r.exit_code == 0, r.output
    labels = {x["account_id"]: x["label"] for x in records(OFFLINE)}
    accounts = orjson.loads(report.read_bytes())["accounts"]
    (thief,) = [a for a in accounts if labels[a["account_id"]] == PERSONA]
    assert thief["verdict"] == "extraction", thief["reasons"]
    logits = next(x for x in thief["reasons"] if x["signal"] == "logits")
    assert logits["score"] >= 0.5 and "100 requests combined logit_bias over 10" in logits["detail"]
    honest = [a for a in accounts if labels[a["account_id"]] != PERSONA]
    assert {a["account_id"] for a in honest} == {a for a, label in labels.items() if label != PERSONA}
    assert not any(x["signal"] == "logits" and x["score"] >= 0.5 for a in honest for x in a["reasons"])


def low_rank(rank: int, shape: tuple[int, int] = (80, 100), seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(shape[0], rank)) @ rng.normal(size=(rank, shape[1]))


def test_recovery_finds_the_rank_of_a_low_rank_logit_matrix() -> None:
    got = recover(low_rank(24))
    assert got.estimate == 24 and got.shape == (80, 100)
    assert got.ratio > 1e6 and got.drop_decades > 6


def test_recovery_finds_no_rank_under_noise() -> None:
    m = low_rank(24)
    noisy = m + np.random.default_rng(1).normal(scale=3 * m.std(), size=m.shape)
    got = recover(noisy)
    assert got.estimate != 24 and got.ratio < 2 and got.drop_decades < 0.5
    assert got.ratio_at(24) is not None and got.ratio_at(24) < 1.3  # no step where the rank is


def test_the_readout_tells_the_reference_apart_and_leaves_out_incomplete_prompts() -> None:
    """Answers come back named by token text; the reference is the one every block returns."""
    w = np.random.default_rng(2).normal(size=(40, 3))
    plan = AttackPlan.make(20, 30, top_logprobs=11, vocab=40, lowest_token=0)
    readout = LogitReadout()
    for i, q in enumerate(plan.queries()):
        z = w @ np.random.default_rng(zlib.crc32(q["messages"][0]["content"].encode())).normal(size=3)
        lp = z - np.log(np.exp(z).sum())
        top = [{"token": f"<{t}>", "logprob": float(lp[int(t)]), "bytes": None} for t in q["logit_bias"]]
        if i == 0:
            readout.observe(q, 429, {"error": {"code": "rate_limit_requests"}}, "slow down")  # prompt 0 misses a block
            continue
        readout.observe(q, 200, {"choices": [{"logprobs": {"content": [{"top_logprobs": top}]}}]}, None)
    m = readout.matrix()
    assert m.shape == (19, 30)
    report = readout.report()
    assert report["estimated_hidden_size"] == 3 and report["queries"] == 60 and report["answered"] == 59
    assert (report["first_error"], report["first_error_at"]) == ("429 rate_limit_requests: slow down", 1)


def live(gw: RunningGateway) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    buf = io.BytesIO()
    opts = LiveOptions(target=gw.base, admin_token=ADMIN_TOKEN, concurrency=4)
    stats = asyncio.run(replay(engine.iter_records(scenario.build(TOY, "toy", SEED), SEED), opts, buf))
    (attack,) = stats.attacks.values()
    return [orjson.loads(x) for x in buf.getvalue().splitlines()], attack


def test_live_the_persona_recovers_the_toy_models_hidden_size_when_the_gateway_allows_it(
    gateway_factory: Any, tmp_path: Path
) -> None:
    # the logit stage alone, policy off: on a slow machine online detection could flag the sweep mid-way
    gw = gateway_factory({"upstream": RankModel()}, logits__logit_bias_with_logprobs="allow",
                         logits__max_top_logprobs=20, policy__enabled=False)  # fmt: skip
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(TOY), encoding="utf-8")
    r = runner.invoke(app, ["simulate", "--scenario", str(path), "--seed", str(SEED), "--out",
                            str(tmp_path / "served.jsonl"), "--target", gw.base, "--admin-token", ADMIN_TOKEN,
                            "--json"])  # fmt: skip
    assert r.exit_code == 0, r.output
    summary = orjson.loads(r.stdout[r.stdout.index("{") :])
    (attack,) = summary["live"]["attacks"].values()
    assert attack["persona"] == "logit_extraction" and attack["failure"] is None, attack
    assert (attack["queries"], attack["answered"], attack["errors"]) == (36, 36, 0)
    assert attack["estimated_hidden_size"] == HIDDEN and attack["singular_value_ratio"] > 1e6
    assert attack["matrix"] == [12, 57] and f"estimated hidden size {HIDDEN}" in attack["summary"]


def test_live_the_persona_is_refused_at_its_first_query_by_default(gateway_factory: Any) -> None:
    up = RankModel()
    recs, attack = live(gateway_factory({"upstream": up}))
    assert up.bodies == []  # the model never saw a query
    assert {r["status"] for r in recs} == {400} and len(recs) == attack["queries"] == attack["errors"] == 36
    assert attack["first_error_at"] == 1 and attack["first_error"].startswith("400 logit_bias_with_logprobs: ")
    assert attack["answered"] == 0 and attack["estimated_hidden_size"] is None
    assert attack["failure"].startswith("nothing recovered: 400 logit_bias_with_logprobs")


def test_live_the_top_logprobs_cap_alone_stops_the_attack(gateway_factory: Any) -> None:
    """With the combination allowed but top_logprobs lowered to 5, a block of 19 no longer fits."""
    gw = gateway_factory({"upstream": RankModel()}, logits__logit_bias_with_logprobs="allow", policy__enabled=False)
    _, attack = live(gw)
    assert attack["answered"] == 0 and attack["estimated_hidden_size"] is None
    assert attack["first_error"] == "200: only 5 logprobs returned for 20 biased tokens"


@pytest.mark.parametrize(("knobs", "says"), [({"tokens": 10}, "must be at least top_logprobs"),
                                              ({"vocab": 500, "lowest_token": 0}, "must exceed tokens")])  # fmt: skip
def test_a_plan_that_cannot_work_is_a_scenario_error_naming_the_knobs(knobs: dict[str, Any], says: str) -> None:
    data = {"name": "bad", "personas": [{"persona": "logit_extraction", "accounts": 1, "knobs": knobs}]}
    with pytest.raises(scenario.ScenarioError, match=says):
        scenario.build(data, "test", SEED)
