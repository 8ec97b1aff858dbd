"""`distillshield analyze` end to end on a small simulated scenario, with the shipped model: the report
contract, malformed lines, label blindness, the evaluator loop, the CLI and --from-log."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from distillshield.detect.analyze import analyze_file, partition
from distillshield.evaluate import evaluate


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "distillshield", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The simulator's smoke scenario (every dev persona, ~7,600 requests) on a dev seed not used in training."""
    from distillshield.simulate import engine, scenario

    sc, seed = scenario.load("smoke", 5)
    path = tmp_path_factory.mktemp("smoke") / "smoke.jsonl"
    engine.write(sc, seed, path)
    return path


@pytest.fixture(scope="module")
def report(smoke: Path) -> dict[str, Any]:
    return analyze_file(smoke).report


def _records(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def test_every_account_appears_once_with_a_verdict_and_reasons(smoke: Path, report: dict[str, Any]) -> None:
    accounts = {r["account_id"] for r in _records(smoke)}
    ids = [a["account_id"] for a in report["accounts"]]
    assert sorted(ids) == sorted(accounts) and len(ids) == len(set(ids))
    for a in report["accounts"]:
        assert 0.0 <= a["risk"] <= 1.0 and a["verdict"] in ("benign", "suspicious", "extraction")
        assert a["reasons"] and all({"signal", "score", "detail"} <= set(r) for r in a["reasons"])
        assert (a["verdict"] == "benign") == (a["risk"] < 0.5)
        if a["verdict"] != "benign":
            assert a["first_flag_index"] is not None and a["first_flag_index"] < a["requests"]
    members = {m for c in report["clusters"] for m in c["accounts"]}
    assert members <= accounts
    for c in report["clusters"]:
        assert 0.5 <= c["risk"] <= 1.0 and c["reasons"][0]["signal"] == "coordination"


def test_report_scores_well_in_the_evaluator(smoke: Path, report: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    m = evaluate(smoke, report=path).metrics["splits"]["dev"]
    assert m["roc_auc"]["value"] > 0.95
    assert m["attack_tpr"]["rate"] >= 0.8 and m["benign_fpr"]["rate"] <= 0.05
    hydra = next(p for p in m["attack_personas"] if p["persona"] == "hydra")
    assert hydra["rate"] >= 0.8 and hydra["median_delay_requests"] <= 200


def test_labels_do_not_change_the_report(smoke: Path, report: dict[str, Any], tmp_path: Path) -> None:
    recs = _records(smoke)
    labels = [(r.get("label"), r.get("label_meta"), r.get("sim")) for r in recs]
    random.Random(0).shuffle(labels)
    shuffled, stripped = tmp_path / "shuffled.jsonl", tmp_path / "stripped.jsonl"
    with open(shuffled, "wb") as a, open(stripped, "wb") as b:
        for r, (label, meta, sim) in zip(recs, labels, strict=True):
            a.write(orjson.dumps({**r, "label": label, "label_meta": meta, "sim": sim}) + b"\n")
            b.write(orjson.dumps({k: v for k, v in r.items() if k not in ("label", "label_meta", "sim")}) + b"\n")

    def core(rep: dict[str, Any]) -> Any:
        return rep["accounts"], rep["clusters"], rep["summary"]["verdicts"]

    assert core(analyze_file(shuffled).report) == core(report)
    assert core(analyze_file(stripped, workers=2).report) == core(report)  # and two processes change nothing


def test_malformed_lines_are_reported_by_number_and_skipped(smoke: Path, tmp_path: Path) -> None:
    lines = smoke.read_bytes().splitlines()[:400]
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"\n".join(lines[:10] + [b"{not json", b'{"ts": 1, "account_id": "x"}'] + lines[10:]) + b"\n")
    an = analyze_file(bad)
    assert an.errors.count == 2
    assert [e.line for e in an.errors.kept] == [11, 12]
    assert (
        an.report["summary"]["malformed_lines"] == 2
        and "line 12: endpoint" in an.report["summary"]["malformed_examples"][1]
    )
    assert an.report["summary"]["requests"] == 400


def test_cli_analyze_writes_the_report_and_prints_json(smoke: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    r = cli("analyze", str(smoke), "--out", str(out), "--json", "--encoder", "none")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["accounts"] == len(json.loads(out.read_text())["accounts"]) > 50
    r = cli("analyze", str(tmp_path / "missing.jsonl"), "--out", str(out))
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "does not exist" in r.stderr
    from typer.testing import CliRunner

    from distillshield.cli import app
    from distillshield.cli.common import CliError

    runner = CliRunner()
    r = runner.invoke(app, ["analyze", str(smoke), "--encoder", "word2vec"])
    assert isinstance(r.exception, CliError) and "--encoder word2vec" in str(r.exception)
    assert "Example:" in runner.invoke(app, ["analyze", "--help"]).output
    assert "Example:" in runner.invoke(app, ["train", "--help"]).output
    (tmp_path / "bad.json").write_text("{not json")
    for base, problem in (("missing.json", "does not exist"), ("bad.json", "not valid JSON")):
        args = ["train", str(smoke), "--out", str(tmp_path / "m.json"), "--alongside", str(tmp_path / base)]
        r = runner.invoke(app, args)
        assert isinstance(r.exception, CliError) and "--alongside" in str(r.exception) and problem in str(r.exception)
    assert not (tmp_path / "m.json").exists()  # refused before training, nothing written


def test_cli_analyze_from_the_audit_log(smoke: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "d.yaml"
    assert cli("init", "--path", str(cfg), "--store-url", f"sqlite+aiosqlite:///{tmp_path / 'a.db'}").returncode == 0
    part = tmp_path / "part.jsonl"
    part.write_bytes(b"\n".join(smoke.read_bytes().splitlines()[:1500]) + b"\n")
    assert cli("-c", str(cfg), "logs", "import", str(part)).returncode == 0
    out = tmp_path / "r.json"
    r = cli("-c", str(cfg), "analyze", "--from-log", "--out", str(out), "--encoder", "none")
    assert r.returncode == 0, r.stderr
    rep = json.loads(out.read_text())
    assert rep["summary"]["requests"] == 1500
    assert {a["account_id"] for a in rep["accounts"]} == {
        orjson.loads(x)["account_id"] for x in part.read_bytes().splitlines()
    }


def test_a_line_is_partitioned_by_its_own_account_not_one_in_its_body() -> None:
    """The parallel engines split a file by account; an "account_id" inside the request body, written before
    the record's own, or an id with escapes, must not move a request to another account's partition."""
    import zlib

    def part_of(account: str, parts: int = 7) -> int:
        return zlib.crc32(account.encode()) % parts

    own = {"account_id": "acct-owner", "ts": 1.0, "endpoint": "/v1/chat/completions", "request": {}}
    nested = {"request": {"metadata": {"account_id": "acct-other"}}, **own}
    assert list(nested)[0] == "request"  # the body comes first in the line
    for rec in (own, nested, {**own, "account_id": "acct-\u00e9t\u00e9"}):
        raw = json.dumps(rec).encode()
        assert partition(raw, 7) == part_of(json.loads(raw)["account_id"]), raw
    assert partition(json.dumps({"account_id": "acct-é"}, ensure_ascii=False).encode(), 7) == part_of("acct-é")
    assert partition(b"not json", 7) == 0 and partition(b'{"ts": 1}', 7) == 0


def test_cli_tables_never_cut_an_id_on_a_narrow_terminal(smoke: Path, tmp_path: Path) -> None:
    """At 80 columns the flagged-accounts table wraps reasons, not ids: every id listed can be copied whole."""
    import os

    out = tmp_path / "r.json"
    env = {**os.environ, "COLUMNS": "80", "TERM": "dumb"}
    r = subprocess.run(
        [sys.executable, "-m", "distillshield", "analyze", str(smoke), "--out", str(out), "--encoder", "none",
         "--top", "8"], capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    report = json.loads(out.read_text())
    flagged = sorted((a for a in report["accounts"] if a["verdict"] != "benign"), key=lambda a: -a["risk"])[:8]
    assert flagged and max(len(line) for line in r.stdout.splitlines()) <= 80
    for a in flagged:
        assert a["account_id"] in r.stdout, a["account_id"]
        if a["cluster_id"]:
            assert a["cluster_id"] in r.stdout


def test_training_leaves_population_content_to_its_own_route(smoke: Path) -> None:
    """The combiner learns known-TTP evidence from the simulator; population-relative content flags on its
    own route (engine), so no content feature may enter the trees, or they learn the simulator's content."""
    from distillshield.detect.train import CONTENT_FEATURES, train

    model = train([smoke], encoder=None, rounds=0)
    features = model.combiner(False).features
    assert "cot_mean" in features and "log_dt" in features
    assert not set(CONTENT_FEATURES) & set(features)
    assert "content_far" in CONTENT_FEATURES
