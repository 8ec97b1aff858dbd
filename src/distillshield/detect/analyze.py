"""Batch analysis: a traffic file (or the audit log) in, the analyser report out.

Three steps, each linear in volume: one streaming pass turns records into observations (classifying
prompts in batches), sampled prompts are embedded in large batches, and the engine replays the
observations in time order, rescoring each account at its checkpoints and re-clustering every
RECLUSTER_EVERY requests, exactly as the online engine would have. So each flagged account's
first_flag_ts / first_flag_index say when it would have been flagged live.

The report never depends on labels: records lose `label` and `label_meta` when they are read.
"""

from __future__ import annotations

import multiprocessing
import re
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from distillshield.contracts import REPORT_SCHEMA
from distillshield.detect.content import CONTENT_LABEL, content_encoder, single_threaded_blas
from distillshield.detect.corpus import Extractor, LineErrors, Obs, read_records, strip_ground_truth
from distillshield.detect.embeddings import Encoder
from distillshield.detect.engine import CHECKPOINTS, Engine, MinHasher
from distillshield.detect.scoring import RISK_SUSPICIOUS, DetectionModel
from distillshield.detect.signals.cot import PromptClassifier
from distillshield.detect.wire import shard_of
from distillshield.traffic import LineError, TrafficRecord, iter_lines, parse_line

RECLUSTER_EVERY = 5000
EMBED_BATCH = 512

# phase, done, total (total None when unknown)
Progress = Callable[[str, int, int | None], None]


@dataclass
class Analysis:
    report: dict[str, Any]
    errors: LineErrors
    engine: Engine
    timings: dict[str, float] = field(default_factory=dict)


def extract(records: Iterable[TrafficRecord], model: DetectionModel, content: bool = True) -> list[Obs]:
    classifier = PromptClassifier.from_dict(model.classifier)
    return list(Extractor(classifier, MinHasher(), content_encoder(content)).extract(records))


_ACCOUNT = re.compile(rb'"account_id"\s*:\s*"((?:[^"\\]|\\.)*)"')
_ACCOUNT_KEY = b'"account_id"'


def partition(raw: bytes, parts: int) -> int:
    """The partition of a line's account: crc32 of its top-level account_id (UTF-8) % parts; 0 for a line
    that has none (it is only reported as malformed, by whichever extractor gets it). Both parallel engines
    split by this, so an account's requests stay together, in order. A regex reads the id when the key
    occurs once and the id has no escapes (nearly every line, at a fraction of a parse's cost); otherwise
    the line is parsed, so an "account_id" inside a request body (tool arguments, metadata) written before
    the record's own never decides. The same rule as the online extraction shards' (wire.shard_of)."""
    if raw.count(_ACCOUNT_KEY) == 1:
        m = _ACCOUNT.search(raw)
        if m is not None and b"\\" not in m.group(1):
            return zlib.crc32(m.group(1)) % parts
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return 0
    aid = obj.get("account_id") if isinstance(obj, dict) else None
    return shard_of(aid, parts) if isinstance(aid, str) else 0


_FORK_MODEL: DetectionModel | None = None  # handed to forked workers without pickling
_FORK_CONTENT = True


def extract_lines(
    lines: Iterable[tuple[int, bytes | LineError]], classifier: dict[str, Any], content: bool, errors: LineErrors
) -> Iterator[list[Obs]]:
    """One Extractor over one partition's lines, in file order: the observations of each record as it is fed
    (and the last ones at the end); malformed lines go to `errors`. Both parallel engines run this per
    partition (the process pool here, Ray in ray_engine.py)."""
    ex = Extractor(PromptClassifier.from_dict(classifier), MinHasher(), content_encoder(content))
    for i, raw in lines:
        if isinstance(raw, LineError):
            errors.add(raw)
            continue
        rec = parse_line(raw, i)
        if isinstance(rec, LineError):
            errors.add(rec)
            continue
        out = ex.feed(strip_ground_truth(rec), i)
        if out:
            yield out
    yield ex.finish()


def merge_parts(obs: list[Obs], kept: list[LineError], errors: LineErrors) -> list[Obs]:
    """The partitions' observations in (ts, line) order, and their kept errors, first lines first, in `errors`
    (whose count the caller has summed)."""
    for e in sorted(kept, key=lambda e: e.line)[: errors.keep]:
        errors.kept.append(e)
    obs.sort(key=lambda o: (o.ts, o.line))
    return obs


def _extract_part(args: tuple[str, int, int]) -> tuple[list[Obs], int, list[LineError]]:
    """Worker: extract the records of the accounts that hash to `part` (every line is scanned, only the
    account id is looked at for the others), so each account's requests stay in one process, in order."""
    path, part, parts = args
    assert _FORK_MODEL is not None

    def mine() -> Iterator[tuple[int, bytes | LineError]]:
        for i, raw in iter_lines(path):
            if isinstance(raw, LineError):  # a Parquet row that is not a record at all: one part reports it
                if part == 0:
                    yield i, raw
                continue
            if partition(raw, parts) == part:
                yield i, raw

    errors = LineErrors()
    out = [o for batch in extract_lines(mine(), _FORK_MODEL.classifier, _FORK_CONTENT, errors) for o in batch]
    return out, errors.count, errors.kept


def extract_parallel(
    path: str | Path, model: DetectionModel, workers: int, errors: LineErrors, content: bool = True
) -> list[Obs]:
    """Extraction on `workers` processes (fork), split by account; the result is in (ts, line) order."""
    global _FORK_MODEL, _FORK_CONTENT
    _FORK_MODEL, _FORK_CONTENT = model, content
    if content:
        content_encoder(True)  # build the encoder once, before forking
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(workers) as pool:
        parts = pool.map(_extract_part, [(str(path), k, workers) for k in range(workers)])
    obs: list[Obs] = []
    kept: list[LineError] = []
    for part_obs, count, part_kept in parts:
        obs.extend(part_obs)
        errors.count += count
        kept.extend(part_kept)
    return merge_parts(obs, kept, errors)


def embed(obs: list[Obs], encoder: Encoder, progress: Progress | None = None) -> int:
    """Fill `emb` of every sampled observation; returns how many were embedded."""
    todo = [o for o in obs if o.embed and o.text is not None]
    for i in range(0, len(todo), EMBED_BATCH):
        chunk = todo[i : i + EMBED_BATCH]
        vecs = encoder.encode([o.text or "" for o in chunk])
        for o, v in zip(chunk, vecs, strict=True):
            o.emb = v
        if progress is not None:
            progress("embedding sampled prompts", min(i + EMBED_BATCH, len(todo)), len(todo))
    return len(todo)


def replay(obs: list[Obs], engine: Engine, progress: Progress | None = None) -> Engine:
    """Feed observations in time order; rescore at checkpoints, recluster periodically, then finalise."""
    with single_threaded_blas():
        _replay(obs, engine, progress)
    engine.finalise()  # large matrix products: BLAS on every thread
    if progress is not None:
        progress("scoring", len(obs), len(obs))
    return engine


def _replay(obs: list[Obs], engine: Engine, progress: Progress | None) -> None:
    if any(obs[i].ts > obs[i + 1].ts for i in range(len(obs) - 1)):
        obs.sort(key=lambda o: (o.ts, o.line))  # equal times keep file order
    total = len(obs)
    for i, o in enumerate(obs, start=1):
        acc = engine.observe(o)
        o.emb = o.cvec = None  # folded into the state; free the memory as we go
        if acc.n in CHECKPOINTS:
            engine.rescore(acc)
        if i % RECLUSTER_EVERY == 0:
            for cid in engine.recluster():
                for m in engine.clusters[cid].accounts:
                    a = engine.accounts[m]
                    if a.dirty:
                        engine.rescore(a)
            for a in engine.operate():
                engine.rescore(a)
            if progress is not None:
                progress("scoring", i, total)


def build_report(engine: Engine, errors: LineErrors, meta: dict[str, Any]) -> dict[str, Any]:
    """The analyser report. Only clusters whose risk reaches 'suspicious' are clusters (an account's
    cluster_id names one); template-linked groups below that are listed apart, as `linked_groups`."""
    flagged_clusters = {cid for cid, c in engine.clusters.items() if c.risk >= RISK_SUSPICIOUS}
    accounts = []
    verdicts = {"benign": 0, "suspicious": 0, "extraction": 0}
    for aid in sorted(engine.accounts):
        sc = engine.accounts[aid].score
        assert sc is not None
        d = sc.as_dict()
        if d["cluster_id"] not in flagged_clusters:
            d["linked_group"] = d["cluster_id"]
            d["cluster_id"] = None
        if sc.verdict == "benign":
            d["first_flag_ts"] = d["first_flag_index"] = None
        verdicts[sc.verdict] += 1
        accounts.append(d)
    clusters, groups = [], []
    for cid in sorted(engine.clusters, key=lambda c: (-engine.clusters[c].risk, c)):
        c = engine.clusters[cid]
        entry = {
            "cluster_id": cid,
            "accounts": c.accounts,
            "risk": round(c.risk, 6),
            "reasons": [{"signal": "coordination", "score": round(c.risk, 4), "detail": c.detail()}],
            "features": {k: round(v, 4) for k, v in c.features.items()},
        }
        (clusters if cid in flagged_clusters else groups).append(entry)
    summary = {
        "schema": REPORT_SCHEMA,
        "accounts": len(accounts),
        "requests": engine.observed,
        "verdicts": verdicts,
        "clusters": len(clusters),
        "linked_groups": len(groups),
        "operating_point": engine.operating.to_dict(),
        "ensemble_operating_points": [op.to_dict() for op in engine.operating_points[1:]],
        "malformed_lines": errors.count,
        "malformed_examples": [str(e) for e in errors.kept[:50]],
        **meta,
    }
    return {"accounts": accounts, "clusters": clusters, "linked_groups": groups, "summary": summary}


def analyze_records(
    records: Iterable[TrafficRecord],
    *,
    model: DetectionModel | None = None,
    encoder: Encoder | None = None,
    errors: LineErrors | None = None,
    progress: Progress | None = None,
    source: str = "records",
    on_engine: Callable[[Engine], None] | None = None,
    observations: list[Obs] | None = None,
    content: bool = True,
    cohorts: bool = True,
) -> Analysis:
    """Analyse traffic records (labels, if any, must already be stripped: see read_records). `cohorts`: judge
    content campaigns also by the waves their accounts were created in (detect/cohort.py).

    `on_engine` is called with the engine before the replay (training uses it to record features).
    """
    model = model or DetectionModel.load()
    errors = errors or LineErrors()
    t0 = time.perf_counter()
    obs = observations if observations is not None else extract(records, model, content)
    t1 = time.perf_counter()
    reference = None
    if encoder is not None:
        from distillshield.detect.reference import embedding_reference

        reference = embedding_reference(encoder)
        embed(obs, encoder, progress)
    t2 = time.perf_counter()
    engine = Engine(model.members(encoder is not None), reference, cohorts=cohorts)
    if on_engine is not None:
        on_engine(engine)
    replay(obs, engine, progress)
    t3 = time.perf_counter()
    timings = {"extract_s": t1 - t0, "embed_s": t2 - t1, "score_s": t3 - t2}
    meta = {
        "source": source,
        "model_version": model.version,
        "encoder": encoder.name if encoder else None,
        "combiner": "full" if encoder is not None else "noembed",
        "content": CONTENT_LABEL if content else "off",
        "cohorts": cohorts,
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
    }
    return Analysis(build_report(engine, errors, meta), errors, engine, timings)


def analyze_file(
    path: str | Path,
    *,
    model: DetectionModel | None = None,
    encoder: Encoder | None = None,
    progress: Progress | None = None,
    workers: int = 1,
    content: bool = True,
    on_engine: Callable[[Engine], None] | None = None,
    cohorts: bool = True,
) -> Analysis:
    """Analyse a traffic file (JSONL, or Parquet: docs/traffic-format.md); malformed lines are counted, kept
    with their numbers (a Parquet row's: its index + 1), and skipped.

    `workers` > 1 extracts on that many processes (split by account); the report is the same
    (`detect/ray_engine.py` does the same split on Ray).
    """
    an = _analyze_file(
        path,
        model=model,
        encoder=encoder,
        progress=progress,
        workers=workers,
        content=content,
        on_engine=on_engine,
        cohorts=cohorts,
    )
    an.report["summary"]["engine"] = {"name": "local", "workers": workers}
    return an


def _analyze_file(
    path: str | Path,
    *,
    model: DetectionModel | None,
    encoder: Encoder | None,
    progress: Progress | None,
    workers: int,
    content: bool,
    on_engine: Callable[[Engine], None] | None = None,
    cohorts: bool = True,
) -> Analysis:
    errors = LineErrors()
    model = model or DetectionModel.load()
    if workers > 1:
        if progress is not None:
            progress(f"reading traffic ({workers} processes)", 0, 1)
        t0 = time.perf_counter()
        obs = extract_parallel(path, model, workers, errors, content)
        extract_s = time.perf_counter() - t0
        if progress is not None:
            progress(f"reading traffic ({workers} processes)", 1, 1)
        an = analyze_records((), model=model, encoder=encoder, errors=errors, progress=progress, source=str(path),
                             observations=obs, content=content, on_engine=on_engine, cohorts=cohorts)  # fmt: skip
        an.timings["extract_s"] = extract_s
        an.report["summary"]["timings_s"]["extract_s"] = round(an.timings["extract_s"], 3)
        return an

    def on_line(n: int) -> None:
        if progress is not None:
            progress("reading traffic", n, None)

    records = read_records(path, errors, on_line)
    return analyze_records(
        records,
        model=model,
        encoder=encoder,
        errors=errors,
        progress=progress,
        source=str(path),
        content=content,
        on_engine=on_engine,
        cohorts=cohorts,
    )
