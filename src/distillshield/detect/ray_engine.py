"""Batch analysis on Ray Data: the local engine's split, on as many cores as a Ray cluster has.

The work is cut exactly where `analyze.extract_parallel` cuts it. Extraction is stateful per account (the
Extractor counts each account's requests to decide what to sample), so an account's requests must stay in
one extractor, in file order; scoring needs the whole population (its indexes and clusters are global), so
it stays in one process. Hence:

1. Ray Data reads the file in chunks in parallel (byte ranges of a JSONL file, row groups of a Parquet
   file; `traffic.split`) and tags every line with its number and its account's partition,
   crc32(account_id) % parts;
2. it groups the lines by partition (`groupby(...).map_groups`) and runs one Extractor per partition over
   its lines sorted by line number, so each account is extracted in file order, in one place;
3. the driver merges the observations in (ts, line) order and runs the same `replay` and `build_report` as
   the local engine, so the report is the same as `analyze --engine local` on the same file.

Steps 1 and 2 scale out with the cluster; step 3 does not (see docs/performance.md). Ray is imported only
here, when the engine is used: `import distillshield` does not need it.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from distillshield.detect.analyze import (
    Analysis,
    Progress,
    analyze_records,
    extract_lines,
    merge_parts,
    partition,
)
from distillshield.detect.corpus import LineErrors, Obs
from distillshield.detect.embeddings import Encoder
from distillshield.detect.scoring import DetectionModel
from distillshield.traffic import Chunk, LineError, iter_lines, split

PARTS_PER_WORKER = 4  # account partitions per worker: small groups balance better across the cores
CHUNK_BYTES = 32 << 20  # read chunks: about this size (a file smaller than workers x 4 MiB is read in fewer)


class RayEngineError(Exception):
    """Ray could not be started or reached, or the pipeline failed on the cluster: one line for the user."""


def _read_chunks(batch: Any, parts: int) -> Any:
    """Ray Data map: chunk descriptors -> one row per line (line number, partition, the line or its error)."""
    import pyarrow as pa

    lines: list[int] = []
    owners: list[int] = []
    raws: list[bytes | None] = []
    problems: list[str | None] = []
    for desc in batch.to_pylist():
        for i, raw in iter_lines(Chunk(**desc)):
            lines.append(i)
            if isinstance(raw, LineError):
                owners.append(0)
                raws.append(None)
                problems.append(raw.message)
            else:
                owners.append(partition(raw, parts))
                raws.append(raw)
                problems.append(None)
    return pa.table(
        {
            "line": pa.array(lines, pa.int64()),
            "part": pa.array(owners, pa.int32()),
            "raw": pa.array(raws, pa.large_binary()),
            "problem": pa.array(problems, pa.string()),
        }
    )


def _extract_group(group: Any, classifier: dict[str, Any], content: bool) -> Any:
    """Ray Data map_groups: one partition's lines -> its observations, in pickled batches (and its errors)."""
    import pyarrow as pa

    group = group.sort_by("line")
    part = group.column("part")[0].as_py() if group.num_rows else 0
    errors = LineErrors()
    cols = zip(
        group.column("line").to_pylist(),
        group.column("raw").to_pylist(),
        group.column("problem").to_pylist(),
        strict=True,
    )
    lines = ((i, raw if problem is None else LineError(i, problem)) for i, raw, problem in cols)
    batches = list(extract_lines(lines, classifier, content, errors))
    payloads = [pickle.dumps(b, protocol=pickle.HIGHEST_PROTOCOL) for b in batches]
    payloads.append(pickle.dumps((errors.count, errors.kept), protocol=pickle.HIGHEST_PROTOCOL))
    return pa.table(
        {
            "part": pa.array([part] * len(payloads), pa.int32()),
            "kind": pa.array(["obs"] * len(batches) + ["errors"], pa.string()),
            "n": pa.array([len(b) for b in batches] + [errors.count], pa.int64()),
            "payload": pa.array(payloads, pa.large_binary()),
        }
    )


@contextmanager
def ray_runtime(workers: int, address: str | None = None) -> Iterator[str]:
    """Ray for one analysis: the running one if this process already has one, else the cluster at `address`
    (or $RAY_ADDRESS), else a local Ray on `workers` CPUs. What it starts it stops. Yields where it runs."""
    import ray
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the CLI draws its own (Rich) progress
    ctx.print_on_execution_start = False
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if ray.is_initialized():
        yield "running"
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        _check_reachable(address)
    opts: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.ERROR, "log_to_driver": False}
    try:
        if address:
            ray.init(address=address, **opts)
        else:
            ray.init(num_cpus=workers, **opts)
    except Exception as exc:  # ray raises ConnectionError, RuntimeError, ValueError... by version
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        raise RayEngineError(f"cannot start {where}: {_first_line(exc)}") from None
    try:
        yield address or f"local ({workers} CPUs)"
    finally:
        ray.shutdown()


def _check_reachable(address: str) -> None:
    """Fail fast on a cluster address nothing listens at (ray.init would retry for minutes)."""
    m = re.fullmatch(r"(?:ray://)?\[?([^\]/]+?)\]?:(\d+)", address.strip())
    if m is None:  # "auto", "local": Ray resolves those itself
        return
    try:
        socket.create_connection((m.group(1), int(m.group(2))), timeout=5).close()
    except OSError as exc:
        raise RayEngineError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[-1] if "Traceback" in text else text.splitlines()[0]


def extract_ray(
    path: str | Path,
    model: DetectionModel,
    workers: int,
    errors: LineErrors,
    content: bool = True,
    progress: Progress | None = None,
) -> list[Obs]:
    """Extraction on Ray Data (Ray must be running), split by account; the result is in (ts, line) order,
    as `extract_parallel`'s."""
    import ray.data

    path = Path(path).resolve()  # read by workers that may not share this process's folder
    chunks = split(path, max(workers, -(-path.stat().st_size // CHUNK_BYTES)))
    total = sum(c.lines for c in chunks)
    parts = workers * PARTS_PER_WORKER
    phase = f"reading traffic (Ray, {workers} workers)"
    if progress is not None:
        progress(phase, 0, total)
    obs: list[Obs] = []
    kept: list[LineError] = []
    if not chunks:
        return obs
    ds = ray.data.from_items([asdict(c) for c in chunks], override_num_blocks=len(chunks))
    ds = ds.map_batches(_read_chunks, batch_size=1, batch_format="pyarrow", fn_kwargs={"parts": parts})
    groups = ds.groupby("part", num_partitions=parts).map_groups(
        _extract_group, batch_format="pyarrow", fn_kwargs={"classifier": model.classifier, "content": content}
    )
    done = 0
    try:
        for batch in groups.iter_batches(batch_size=None, batch_format="pyarrow"):
            for kind, n, payload in zip(
                batch.column("kind").to_pylist(),
                batch.column("n").to_pylist(),
                batch.column("payload").to_pylist(),
                strict=True,
            ):
                if kind == "obs":
                    obs.extend(pickle.loads(payload))
                else:
                    count, part_kept = pickle.loads(payload)
                    errors.count += count
                    kept.extend(part_kept)
                done += n
                if progress is not None:
                    progress(phase, min(done, total), total)
    except Exception as exc:  # a task failed on the cluster: say what, in one line
        raise RayEngineError(f"the Ray pipeline failed: {_first_line(exc)}") from None
    merge_parts(obs, kept, errors)
    if progress is not None:
        progress(phase, total, total)
    return obs


def analyze_file_ray(
    path: str | Path,
    *,
    model: DetectionModel | None = None,
    encoder: Encoder | None = None,
    progress: Progress | None = None,
    workers: int = 2,
    content: bool = True,
    address: str | None = None,
    cohorts: bool = True,
) -> Analysis:
    """`analyze_file` with reading and extraction on Ray Data (`workers` CPUs of a local Ray, or the cluster
    at `address` / $RAY_ADDRESS); the report is the local engine's, `summary.engine` and timings aside."""
    model = model or DetectionModel.load()
    errors = LineErrors()
    with ray_runtime(workers, address) as where:
        t0 = time.perf_counter()
        obs = extract_ray(path, model, workers, errors, content, progress)
        extract_s = time.perf_counter() - t0
    an = analyze_records((), model=model, encoder=encoder, errors=errors, progress=progress, source=str(path),
                         observations=obs, content=content, cohorts=cohorts)  # fmt: skip
    an.timings["extract_s"] = extract_s
    summary = an.report["summary"]
    summary["timings_s"]["extract_s"] = round(extract_s, 3)
    summary["engine"] = {"name": "ray", "workers": workers, "ray": where}
    return an
