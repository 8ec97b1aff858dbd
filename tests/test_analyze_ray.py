"""Traffic as Parquet (`logs export --format parquet`, `analyze FILE.parquet`) and `analyze --engine ray`:
the same records, and the same report as the local engine, on a small simulated scenario."""

from __future__ import annotations

import copy
import io
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest

from distillshield.detect.analyze import analyze_file
from distillshield.detect.ray_engine import analyze_file_ray
from distillshield.traffic import PARQUET_COLUMNS, ParquetWriter, iter_lines, read_jsonl, split, write_parquet

# Ray Data warns about its own deprecated settings each time a dataset runs; nothing here sets them.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "distillshield", *args], capture_output=True, text=True, timeout=300)


def core(report: dict[str, Any]) -> dict[str, Any]:
    """The report without what may differ between runs of the same analysis: timings, engine, file name."""
    rep = copy.deepcopy(report)
    for key in ("timings_s", "engine", "source"):
        rep["summary"].pop(key)
    return rep


def objects(path: Path | str) -> list[tuple[int, Any]]:
    return [(i, raw if not isinstance(raw, bytes) else orjson.loads(raw)) for i, raw in iter_lines(path)]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`distillshield simulate --scenario smoke --seed 1`: every dev persona, about 8,000 requests."""
    from distillshield.simulate import engine, scenario

    sc, seed = scenario.load("smoke", 1)
    path = tmp_path_factory.mktemp("smoke") / "smoke.jsonl"
    engine.write(sc, seed, path)
    return path


@pytest.fixture(scope="module")
def smoke_parquet(smoke: Path) -> Path:
    path = smoke.with_suffix(".parquet")
    records, errors = read_jsonl(smoke)
    assert not errors
    write_parquet(records, path)
    return path


@pytest.fixture(scope="module")
def local_report(smoke: Path) -> dict[str, Any]:
    return analyze_file(smoke, workers=1).report


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    """One local Ray (2 CPUs) for the module: analyze_file_ray uses the running Ray instead of starting one."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def test_chunks_cover_every_line_once_with_its_number(tmp_path: Path, smoke: Path) -> None:
    path = tmp_path / "t.jsonl"
    lines = [b'{"a": %d}' % i if i % 7 else b"  " for i in range(1, 300)]
    path.write_bytes(b"\n".join(lines))  # blank lines inside, no newline at the end
    whole = list(iter_lines(path))
    assert [i for i, _ in whole] == [i for i in range(1, 300) if i % 7]
    assert whole[-1] == (299, b'{"a": 299}')
    for parts in (1, 2, 5, 40):
        chunks = split(path, parts, min_bytes=64)
        assert [x for c in chunks for x in iter_lines(c)] == whole
        assert sum(c.lines for c in chunks) == 299
    records, _ = read_jsonl(smoke)
    parquet = tmp_path / "t.parquet"
    with ParquetWriter(parquet, row_group=500) as w:
        for rec in records[:2300]:
            w.write(rec)
    chunks = split(parquet, 3)
    assert [(c.start, c.end, c.first_line, c.lines) for c in chunks] == [
        (0, 2, 1, 1000),
        (2, 4, 1001, 1000),
        (4, 5, 2001, 300),
    ]
    rows = [x for c in chunks for x in iter_lines(c)]
    assert rows == list(iter_lines(parquet))
    assert [(i, orjson.loads(raw)) for i, raw in rows] == objects(smoke)[:2300]


def test_parquet_holds_the_same_records_as_the_jsonl(smoke: Path, smoke_parquet: Path) -> None:
    schema = pq.read_schema(smoke_parquet)
    assert [(f.name, str(f.type)) for f in schema] == [
        (name, {"float64": "double", "int32": "int32"}.get(kind, "string")) for name, kind in PARQUET_COLUMNS
    ]
    assert schema.metadata[b"distillshield.traffic_format"] == b"1"
    assert objects(smoke_parquet) == objects(smoke)  # labels and the `sim` extra field included


def test_parquet_from_another_writer_is_read_by_column_name(tmp_path: Path) -> None:
    """Nested columns as Arrow structs instead of JSON text, and an unknown column (a top-level field)."""
    import pyarrow as pa

    path = tmp_path / "other.parquet"
    table = pa.table(
        {
            "account_id": ["a", "b"],
            "ts": [2.0, 1.5],
            "endpoint": ["/v1/chat/completions", "/v1/completions"],
            "request": [{"model": "m", "prompt": None}, {"model": "m", "prompt": "Hi"}],
            "x_future": [1, None],
        }
    )
    pq.write_table(table, path)
    rows = objects(path)
    assert rows[0] == (1, {"account_id": "a", "ts": 2.0, "endpoint": "/v1/chat/completions",
                           "request": {"model": "m", "prompt": None}, "x_future": 1})  # fmt: skip
    assert rows[1][0] == 2 and "x_future" not in rows[1][1]
    records, errors = read_jsonl(io.BytesIO(b"".join(orjson.dumps(obj) + b"\n" for _, obj in rows)))
    assert not errors and records[1].request == {"model": "m", "prompt": "Hi"}


def test_logs_export_parquet_gives_the_same_records_and_report_as_jsonl(smoke: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "d.yaml"
    assert cli("init", "--path", str(cfg), "--store-url", f"sqlite+aiosqlite:///{tmp_path / 'a.db'}").returncode == 0
    assert cli("-c", str(cfg), "logs", "import", str(smoke)).returncode == 0
    jsonl, parquet = tmp_path / "e.jsonl", tmp_path / "e.parquet"
    for out, extra in ((jsonl, []), (parquet, ["--format", "parquet"])):
        r = cli("-c", str(cfg), "logs", "export", "--out", str(out), *extra)
        assert r.returncode == 0, r.stderr
    assert pq.ParquetFile(parquet).metadata.num_rows > 7000
    assert objects(parquet) == objects(jsonl)
    from_parquet, from_jsonl = analyze_file(parquet, workers=2).report, analyze_file(jsonl).report
    assert core(from_parquet) == core(from_jsonl)
    assert from_parquet["summary"]["verdicts"]["extraction"] > 0 and from_parquet["clusters"]


def test_ray_engine_gives_the_local_report_on_jsonl(ray_local: None, smoke: Path, local_report: dict) -> None:
    report = analyze_file_ray(smoke, workers=2).report
    assert report["summary"]["engine"]["name"] == "ray" and local_report["summary"]["engine"]["name"] == "local"
    assert core(report) == core(local_report)


def test_ray_engine_gives_the_local_report_on_parquet(ray_local: None, smoke_parquet: Path, local_report: dict) -> None:
    assert core(analyze_file_ray(smoke_parquet, workers=2).report) == core(local_report)


def test_malformed_lines_are_reported_alike_by_both_engines(ray_local: None, smoke: Path, tmp_path: Path) -> None:
    lines = smoke.read_bytes().splitlines()[:400]
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"\n".join(lines[:10] + [b"{not json", b'{"ts": 1, "account_id": "x"}', b""] + lines[10:]) + b"\n")
    local, on_ray = analyze_file(bad), analyze_file_ray(bad, workers=2)
    assert [str(e) for e in on_ray.errors.kept] == [str(e) for e in local.errors.kept]
    assert [e.line for e in on_ray.errors.kept] == [11, 12]
    assert "line 12: endpoint" in on_ray.report["summary"]["malformed_examples"][1]
    assert core(on_ray.report) == core(local.report) and on_ray.report["summary"]["requests"] == 400


def test_bad_parquet_rows_are_reported_by_row_number(ray_local: None, smoke: Path, tmp_path: Path) -> None:
    import pyarrow as pa

    records, _ = read_jsonl(smoke)
    path = tmp_path / "bad.parquet"
    write_parquet(records[:300], path)
    table = pq.read_table(path)
    request = table.column("request").to_pylist()
    endpoint = table.column("endpoint").to_pylist()
    request[4], endpoint[9] = "{not json", "/v1/images/generations"  # an endpoint the format does not have
    table = table.set_column(3, "request", pa.array(request, pa.string()))
    table = table.set_column(2, "endpoint", pa.array(endpoint, pa.string()))
    pq.write_table(table, path)
    local, on_ray = analyze_file(path), analyze_file_ray(path, workers=2)
    assert [e.line for e in local.errors.kept] == [5, 10] and local.errors.kept[0].message.startswith("request:")
    assert [str(e) for e in on_ray.errors.kept] == [str(e) for e in local.errors.kept]
    assert core(on_ray.report) == core(local.report) and local.report["summary"]["requests"] == 298


def test_cli_ray_engine_help_and_one_line_errors(smoke: Path, tmp_path: Path) -> None:
    r = cli("analyze", "--engine", "ray", "--help")
    assert r.returncode == 0 and "Example:" in r.stdout and "--ray-address" in r.stdout
    assert "Example:" in cli("logs", "export", "--help").stdout
    for args, needle in (
        (["analyze", str(tmp_path / "missing.parquet"), "--engine", "ray"], "does not exist"),
        (["analyze", str(smoke), "--engine", "spark"], "--engine spark"),
        (["analyze", str(smoke), "--ray-address", "127.0.0.1:6379"], "needs --engine ray"),
        (["analyze", str(smoke), "--engine", "ray", "--ray-address", "127.0.0.1:1"], "cannot reach the Ray cluster"),
        (["logs", "export", "--format", "csv", "--out", str(tmp_path / "x.csv")], "--format csv"),
        (["logs", "export", "--format", "parquet", "--out", "-"], "writes a file"),
    ):
        r = cli(*args)
        assert r.returncode == 2 and needle in r.stderr, (args, r.stderr)
        assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr


def test_cli_analyzes_parquet_on_ray(smoke_parquet: Path, local_report: dict, tmp_path: Path) -> None:
    """The whole command in a fresh process: it starts a local Ray on --workers CPUs, and stops it."""
    out = tmp_path / "r.json"
    r = cli("analyze", str(smoke_parquet), "--engine", "ray", "--workers", "2", "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["engine"] == {"name": "ray", "workers": 2, "ray": "local (2 CPUs)"}
    assert core(json.loads(out.read_text())) == core(local_report)


def test_every_traffic_reader_takes_parquet(smoke: Path, smoke_parquet: Path) -> None:
    """evaluate, logs import and evidence read through `iter_jsonl`: a Parquet export gives them the same
    records as the JSONL file, and evaluate the same metrics."""
    from distillshield.evaluate.truth import read_truth

    assert read_jsonl(smoke_parquet) == read_jsonl(smoke)

    def summary(path: Path) -> dict[str, tuple[Any, ...]]:
        truth = read_truth(path)
        return {a: (t.kind, t.persona, t.split, t.cluster_id, t.requests, t.served, t.served_tokens, t.first_ts,
                    t.last_ts, t.link_ts) for a, t in truth.accounts.items()}  # fmt: skip

    assert summary(smoke_parquet) == summary(smoke)
