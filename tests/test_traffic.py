"""The public traffic format and `logs export` / `logs import`."""

from __future__ import annotations

import io

import orjson
import pytest
from typer.testing import CliRunner

from distillshield.cli import app
from distillshield.cli.serve import write_config
from distillshield.traffic import TrafficRecord, parse_line, read_jsonl, write_jsonl
from tests.conftest import RunningGateway

MINIMAL = {"ts": 1.5, "account_id": "a", "endpoint": "/v1/chat/completions", "request": {"model": "m"}}


def test_minimal_record_round_trips() -> None:
    rec = TrafficRecord.model_validate(MINIMAL)
    assert orjson.loads(rec.to_json()) == MINIMAL


def test_full_record_round_trips_and_keeps_unknown_fields() -> None:
    full = {
        **MINIMAL,
        "org_id": "o",
        "key_id": "k",
        "ip": "10.0.0.1",
        "user_agent": "ua",
        "response": {
            "text": "hi",
            "finish_reason": "stop",
            "usage": {"prompt_tokens": 3, "completion_tokens": 1},
        },
        "status": 200,
        "latency_ms": 12.5,
        "label": "attack:hydra",
        "label_meta": {"cluster_id": "c1"},
        "x_future_field": 1,
    }
    buf = io.BytesIO()
    write_jsonl([TrafficRecord.model_validate(full)], buf)
    records, errors = read_jsonl(io.BytesIO(buf.getvalue()))
    assert not errors and orjson.loads(records[0].to_json()) == full


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        (b"{oops", "not valid JSON"),
        (b"[1]", "expected a JSON object"),
        (orjson.dumps({**MINIMAL, "ts": "yesterday"}), "ts:"),
        (orjson.dumps({k: v for k, v in MINIMAL.items() if k != "account_id"}), "account_id: Field required"),
        (orjson.dumps({**MINIMAL, "endpoint": "/v2/x"}), "endpoint:"),
        (orjson.dumps({**MINIMAL, "request": "text"}), "request:"),
        (orjson.dumps({**MINIMAL, "ts": -1}), "ts:"),
    ],
)
def test_bad_lines_are_named(line: bytes, needle: str) -> None:
    err = parse_line(line, 7)
    assert not isinstance(err, TrafficRecord)
    assert err.line == 7 and needle in err.message


def test_reader_skips_bad_lines_and_keeps_good_ones() -> None:
    data = orjson.dumps(MINIMAL) + b"\n\nnot json\n" + orjson.dumps({**MINIMAL, "account_id": "b"}) + b"\n"
    records, errors = read_jsonl(io.BytesIO(data))
    assert [r.account_id for r in records] == ["a", "b"]
    assert [e.line for e in errors] == [3]


def test_export_then_import_round_trips_through_the_cli(fake_gateway: RunningGateway, tmp_path) -> None:
    import httpx

    key = fake_gateway.create_key("exporter", org="exp-org")
    for i in range(5):
        httpx.post(
            f"{fake_gateway.base}/v1/chat/completions",
            headers={"authorization": f"Bearer {key}"},
            json={"model": "fake-model", "messages": [{"role": "user", "content": f"q{i}"}]},
            timeout=30,
        )
    httpx.post(
        f"{fake_gateway.base}/v1/chat/completions",
        content=b"{bad",
        headers={"authorization": f"Bearer {key}"},
    )
    fake_gateway.flush_audit()
    cfg = tmp_path / "gw.yaml"
    write_config(cfg, store_url=fake_gateway.settings.store.url)
    out = tmp_path / "traffic.jsonl"
    runner = CliRunner()
    r = runner.invoke(app, ["-c", str(cfg), "logs", "export", "--out", str(out)])
    assert r.exit_code == 0, r.output
    records, errors = read_jsonl(out)
    assert not errors and len(records) == 5  # the malformed request cannot be expressed: skipped, counted
    assert "skipped 1" in r.output
    assert records[0].account_id == "exporter" and records[0].org_id == "exp-org"
    assert records[0].request["messages"][0]["content"] == "q0" and records[0].response.text

    cfg2 = tmp_path / "other.yaml"
    write_config(cfg2, store_url=f"sqlite+aiosqlite:///{tmp_path / 'other.db'}")
    with open(out, "ab") as fh:
        fh.write(b"garbage line\n")
    r = runner.invoke(app, ["-c", str(cfg2), "logs", "import", str(out)])
    assert r.exit_code == 0, r.output
    assert "imported 5 requests" in r.output and "line 6" in r.output
    out2 = tmp_path / "again.jsonl"
    assert runner.invoke(app, ["-c", str(cfg2), "logs", "export", "--out", str(out2)]).exit_code == 0
    again, _ = read_jsonl(out2)
    assert [orjson.loads(a.to_json()) for a in again] == [orjson.loads(b.to_json()) for b in records]
    assert runner.invoke(app, ["-c", str(cfg2), "logs", "verify"]).exit_code == 0

    # Importing the same file again adds nothing (it used to double the rows).
    r = runner.invoke(app, ["-c", str(cfg2), "logs", "import", str(out)])
    assert r.exit_code == 0 and "imported 0 requests" in r.output and "5 already in the log skipped" in r.output
    out3 = tmp_path / "thrice.jsonl"
    assert runner.invoke(app, ["-c", str(cfg2), "logs", "export", "--out", str(out3)]).exit_code == 0
    assert len(read_jsonl(out3)[0]) == 5
