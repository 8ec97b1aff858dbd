"""`distillshield evaluate` end to end: the baseline through the CLI, outputs, and one-line user errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from distillshield.cli import app
from tests.test_evaluate import account, cluster_case, verdict, write_report, write_traffic

runner = CliRunner()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "distillshield", "evaluate", *args], capture_output=True,
                          text=True, timeout=120)  # fmt: skip


def scenario(tmp_path: Path) -> Path:
    """Dev and heldout accounts: quiet honest users, one heavy honest batch user, heavier attackers."""
    recs: list[dict[str, Any]] = []
    for split in ("dev", "heldout"):
        for i in range(20):
            recs += account(f"{split}-chat{i}", "benign", "chat", [i + k * 60.0 for k in range(3 + i % 5)], split=split)
        recs += account(f"{split}-batch", "benign", "batch", [k * 5.0 for k in range(40)], split=split)
        for i in range(3):
            recs += account(f"{split}-hydra{i}", "attack", "hydra", [i + k * 7.0 for k in range(25 + i)],
                            split=split, cluster=f"{split}-H")  # fmt: skip
        recs += account(f"{split}-cot", "attack", "cot", [k * 30.0 for k in range(6)], split=split)
    return write_traffic(tmp_path / "scenario.jsonl", recs, extra_lines=[b"not json at all"])


def test_baseline_end_to_end_writes_metrics_json_and_an_html_report_with_embedded_charts(tmp_path: Path) -> None:
    traffic = scenario(tmp_path)
    out, page = tmp_path / "metrics.json", tmp_path / "report.html"
    r = runner.invoke(app, ["evaluate", str(traffic), "--baseline", "--out", str(out), "--html", str(page)])
    assert r.exit_code == 0, r.output
    assert "scenario.jsonl:line" in r.output and "not valid JSON" in r.output  # bad line named, then skipped
    assert "heldout" in r.output and "ROC-AUC" in r.output
    m = json.loads(out.read_text())
    assert list(m["splits"]) == ["dev", "heldout", "all"] and m["detector"]["tuned_on"] == "dev"
    assert m["data"]["bad_lines"] == 1 and m["data"]["records"] > 0
    ho = m["splits"]["heldout"]
    # The batch user (40 requests) is the heaviest dev benign account, so only the hydra members (25-27) and
    # nothing below 41 requests... the threshold sits just above it: no hydra member reaches it.
    assert m["detector"]["suspicious_at"] == 41 and ho["attack_tpr"]["k"] == 0
    assert ho["roc_auc"]["value"] is not None and ho["delay"]["available"] is True
    text = page.read_text()
    images = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert {alt for alt, _ in images} >= {"ROC curves by split", "Leakage by attack persona"}
    assert all(len(b64) > 1000 for _, b64 in images)
    assert "Hold-out rule" in text and "[heldout]" in text and "Benign FPR per honest persona" in text


def test_delay_histogram_is_embedded_when_accounts_are_flagged(tmp_path: Path) -> None:
    traffic, report = cluster_case(tmp_path)
    page = tmp_path / "c.html"
    r = runner.invoke(app, ["evaluate", str(traffic), "--report", str(report), "--html", str(page)])
    assert r.exit_code == 0, r.output
    assert 'alt="Detection delay histograms by split" src="data:image/png;base64,' in page.read_text()


def test_json_output_is_the_metrics_document(tmp_path: Path) -> None:
    traffic, report = cluster_case(tmp_path)
    r = runner.invoke(app, ["evaluate", str(traffic), "--report", str(report), "--json", "--flag-on", "extraction"])
    assert r.exit_code == 0, r.output
    m = json.loads(r.stdout)
    assert m["schema"] == "distillshield.evaluate/1" and m["flag_on"] == "extraction"
    assert m["splits"]["dev"]["attack_tpr"]["k"] == 1  # only c1 has an extraction verdict


def test_html_escapes_names_from_the_data(tmp_path: Path) -> None:
    recs = account("<b>x</b>", "attack", "<script>alert(1)</script>", [1, 2]) + account("y", "benign", "chat", [1])
    traffic = write_traffic(tmp_path / "x.jsonl", recs)
    report = write_report(tmp_path / "x.json", [verdict("<b>x</b>", 0.9, "extraction", ts=1.0)])
    page = tmp_path / "x.html"
    assert runner.invoke(app, ["evaluate", str(traffic), "-r", str(report), "--html", str(page)]).exit_code == 0
    text = page.read_text()
    assert "<script>alert" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text


def test_help_has_an_example() -> None:
    r = runner.invoke(app, ["evaluate", "--help"])
    assert r.exit_code == 0 and "Example:" in r.output and "--baseline" in r.output


def test_user_errors_are_one_line_with_exit_2(tmp_path: Path) -> None:
    traffic, report = cluster_case(tmp_path)
    ghost = write_report(tmp_path / "ghost.json", [verdict("nobody", 0.5)])
    bad = tmp_path / "bad.json"
    bad.write_text('{"accounts": [{"account_id": "c1", "risk": "high", "verdict": "benign"}]}')
    unlabelled = write_traffic(tmp_path / "nolabel.jsonl", account("z", None, "", [1]))
    for args, needle in [
        ([str(tmp_path / "missing.jsonl"), "--baseline"], "does not exist"),
        ([str(traffic)], "nothing to score"),
        ([str(traffic), "--baseline", "--report", str(report)], "not both"),
        ([str(traffic), "--report", str(tmp_path / "nope.json")], "does not exist"),
        ([str(traffic), "--report", str(ghost)], "not in the traffic"),
        ([str(traffic), "--report", str(bad)], "accounts[0] (account_id 'c1').risk"),
        ([str(unlabelled), "--baseline"], "no labelled accounts"),
        ([str(traffic), "--baseline", "--out", str(tmp_path / "no" / "dir.json")], "does not exist"),
    ]:
        r = cli(*args)
        assert r.returncode == 2 and r.stderr.strip().startswith("error: ") and needle in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
