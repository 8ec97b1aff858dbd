"""Evidence bundles: built from the audit log and an analyser report, verified against the log; a
changed bundle file, an edited log row or a bundle without a chain proof fails verification."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from distillshield.cli import app
from distillshield.store import Store
from distillshield.store.tables import audit_log

runner = CliRunner()
SECRET = "evidence-test-secret-0123456789ab"
T0 = 1_767_225_600.0  # 2026-01-01


def _row(i: int, account: str, ip: str, prompt: str) -> dict:
    return {
        "ts": T0 + i * 600, "request_id": f"r{i}", "account_id": account, "org_id": "o", "key_id": "k", "ip": ip,
        "user_agent": "python-httpx/0.27", "endpoint": "/v1/chat/completions", "model": "m", "stream": False,
        "status": 200, "latency_ms": 12.0,
        "request": json.dumps({"model": "m", "messages": [{"role": "user", "content": prompt}]}),
        "response_text": f"answer {i}: the reasoning goes step by step.", "finish_reason": "stop",
        "prompt_tokens": 20, "completion_tokens": 120, "decision": "allow", "error": None,
    }  # fmt: skip


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path]:
    """A store with a 3-account cluster (shared proxy IP, one template) plus an honest account, a report."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'ev.db'}"
    rows = []
    for i in range(60):
        acct = ["hy-1", "hy-2", "hy-3"][i % 3]
        ip = "203.0.113.7" if i % 2 else f"198.51.100.{i % 3}"
        rows.append(_row(i, acct, ip, f"Explain your internal reasoning step by step for problem {i}: is {i} prime?"))
        rows.append(_row(i, "honest", "192.0.2.1", f"Summarise this document about topic {i % 4}."))

    async def fill() -> None:
        store = Store(url)
        await store.init()
        await store.append_audit(rows)
        await store.close()

    asyncio.run(fill())
    report = {
        "accounts": [
            {"account_id": a, "risk": 0.9, "verdict": "extraction", "cluster_id": "cluster-1",
             "reasons": [{"signal": "cot_elicitation", "score": 0.95, "detail": "58% of prompts ask for reasoning"}]}
            for a in ("hy-1", "hy-2", "hy-3")
        ] + [{"account_id": "honest", "risk": 0.05, "verdict": "benign", "cluster_id": None, "reasons": []}],
        "clusters": [{"cluster_id": "cluster-1", "accounts": ["hy-1", "hy-2", "hy-3"], "risk": 0.93,
                      "reasons": [{"signal": "coordination", "score": 0.93, "detail": "shared template and proxy"}]}],
        "summary": {},
    }  # fmt: skip
    (tmp_path / "report.json").write_text(json.dumps(report))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"store:\n  url: {url}\nwatermark:\n  secret: {SECRET}\n")
    return cfg, tmp_path


def cli(cfg: Path, *args: str):
    return runner.invoke(app, ["-c", str(cfg), *args])


def test_cluster_bundle_has_every_part_and_verifies(setup: tuple[Path, Path]) -> None:
    cfg, d = setup
    out = d / "bundle"
    r = cli(cfg, "evidence", "cluster-1", "--report", str(d / "report.json"), "--out", str(out), "--json")
    assert r.exit_code == 0, r.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["files"]) == {"report.html", "evidence.json", "rows.jsonl", "timeline.png", "volume.png",
                                      "graph.png"}  # fmt: skip
    ev = json.loads((out / "evidence.json").read_text())
    assert ev["subject"] == {"kind": "cluster", "id": "cluster-1", "accounts": ["hy-1", "hy-2", "hy-3"]}
    assert ev["traffic"]["requests"] == 60 and "203.0.113.7" in ev["traffic"]["shared_ips"]
    assert ev["representative_prompts"][0]["template"].startswith("explain your internal reasoning")
    assert ev["representative_prompts"][0]["count"] == 60
    assert [f["reasons"][0]["signal"] for f in ev["findings"]["accounts"]] == ["cot_elicitation"] * 3
    proof = ev["chain_proof"]
    assert proof["chained"] and proof["rows_cited"] == 60 and proof["chain_head"]["seq"] == 120
    assert proof["row_range"] == [1, 119]
    rows = [json.loads(x) for x in (out / "rows.jsonl").read_text().splitlines()]
    assert {r["account_id"] for r in rows} == {"hy-1", "hy-2", "hy-3"}  # the honest account is not cited
    html = (out / "report.html").read_text()
    assert len(re.findall(r"data:image/png;base64,", html)) == 3
    assert "cot_elicitation" in html and "203.0.113.7" in html and proof["chain_head"]["hash"] in html
    assert ev["watermark"]["served"][0]["key"] == "account:hy-1"  # tested, and (plain text) not marked
    assert not ev["watermark"]["served"][0]["detected"]
    v = cli(cfg, "evidence", "--verify", str(out), "--json")
    assert v.exit_code == 0, v.output
    assert all(c["ok"] for c in json.loads(v.stdout)["checks"])
    assert cli(cfg, "logs", "verify").exit_code == 0


def test_tampered_audit_log_fails_verification(setup: tuple[Path, Path]) -> None:
    cfg, d = setup
    out = d / "bundle"
    assert cli(cfg, "evidence", "hy-2", "--report", str(d / "report.json"), "--out", str(out)).exit_code == 0

    async def tamper() -> None:
        store = Store(f"sqlite+aiosqlite:///{d / 'ev.db'}")
        async with store.engine.begin() as conn:
            await conn.execute(audit_log.update().where(audit_log.c.seq == 3).values(response_text="edited"))
        await store.close()

    asyncio.run(tamper())
    v = cli(cfg, "evidence", "--verify", str(out), "--json")
    assert v.exit_code == 1
    failed = {c["check"]: c["detail"] for c in json.loads(v.stdout)["checks"] if not c["ok"]}
    assert "row 3 was edited" in failed["audit log"] and "[3]" in failed["cited rows in log"]
    assert cli(cfg, "logs", "verify").exit_code == 1
    assert cli(cfg, "evidence", "--verify", str(out), "--offline").exit_code == 0  # the bundle itself is intact


def test_changed_bundle_file_fails_verification(setup: tuple[Path, Path]) -> None:
    cfg, d = setup
    out = d / "b2"
    assert cli(cfg, "evidence", "hy-1", "--out", str(out)).exit_code == 0  # no report: an account id
    rows = (out / "rows.jsonl").read_text().splitlines()
    first = json.loads(rows[0])
    first["response_text"] = "forged"
    (out / "rows.jsonl").write_text("\n".join([json.dumps(first), *rows[1:]]) + "\n")
    v = cli(cfg, "evidence", "--verify", str(out), "--json", "--offline")
    assert v.exit_code == 1
    failed = {c["check"] for c in json.loads(v.stdout)["checks"] if not c["ok"]}
    assert failed == {"manifest", "row hashes"}


def test_bundle_from_a_traffic_file_says_it_has_no_chain_proof(setup: tuple[Path, Path]) -> None:
    cfg, d = setup
    traffic = d / "t.jsonl"
    assert cli(cfg, "logs", "export", "--out", str(traffic)).exit_code == 0
    out = d / "b3"
    r = cli(cfg, "evidence", "cluster-1", "--report", str(d / "report.json"), "--traffic", str(traffic),
            "--out", str(out), "--no-watermark")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "no hash-chain proof" in r.output
    ev = json.loads((out / "evidence.json").read_text())
    assert ev["traffic"]["requests"] == 60 and not ev["chain_proof"]["chained"]
    v = cli(cfg, "evidence", "--verify", str(out), "--json")
    assert v.exit_code == 1 and "no hash-chain proof" in v.stdout


def test_unknown_target_is_a_clear_error(setup: tuple[Path, Path]) -> None:
    cfg, d = setup
    r = cli(cfg, "evidence", "nobody", "--report", str(d / "report.json"), "--out", str(d / "x"))
    assert r.exit_code != 0 and "neither an account nor a cluster" in str(r.exception)
    with sa.create_engine(f"sqlite:///{d / 'ev.db'}").connect() as conn:  # nothing was written or changed
        assert conn.execute(sa.text("select count(*) from audit_log")).scalar() == 120
