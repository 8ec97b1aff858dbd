"""The generator: every account's request stream, merged by time, written as labelled traffic JSONL.

Deterministic: the scenario seed fixes every account's own seed, an account's stream depends only on
its seed, and streams are merged by (ts, account ordinal), so one seed always gives a byte-identical
file. Streaming: only one pending request per account is held, so a 500,000-request week is written
in constant memory. No per-record validation here (it would cost more than generating); the tests
validate every record of the named scenarios against the traffic format.
"""

from __future__ import annotations

import heapq
import multiprocessing
import os
import queue
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson

from distillshield.simulate import corpora
from distillshield.simulate.personas.base import Account, IdFactory
from distillshield.simulate.scenario import Scenario

PROGRESS_EVERY = 2048  # records between progress callbacks
_BATCH = 512  # records per message from a worker process: amortises pickling
_QUEUE_BATCHES = 16  # batches a worker may run ahead of the merge
_DUMP_OPTS = orjson.OPT_APPEND_NEWLINE


@dataclass
class Summary:
    """What a run produced: counts by label, the span, and speed."""

    scenario: str
    split: str
    seed: int
    out: str
    records: int = 0
    accounts: int = 0
    active_accounts: int = 0
    by_label: dict[str, int] = field(default_factory=dict)
    accounts_by_label: dict[str, int] = field(default_factory=dict)
    start: float = 0.0
    end: float = 0.0
    first_ts: float | None = None
    last_ts: float | None = None
    bytes: int = 0
    elapsed_s: float = 0.0
    workers: int = 1
    live: dict[str, Any] | None = None

    @property
    def records_per_s(self) -> float:
        return self.records / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "live" or v is not None}
        d["records_per_s"] = round(self.records_per_s, 1)
        d["elapsed_s"] = round(self.elapsed_s, 3)
        return d


def plan_accounts(scenario: Scenario, seed: int) -> list[tuple[Account, Any]]:
    """Every account of the scenario with the persona that drives it, in a fixed order."""
    ids = IdFactory(seed)
    out: list[tuple[Account, Any]] = []
    for entry in scenario.entries:
        entry.persona.ctx.seed = seed
        rng = np.random.default_rng([seed, entry.index, 0x5EED])
        made = entry.persona.make_accounts(entry.accounts, rng, ids)
        # Per-account volume is heavy-tailed, but the entry's total should be what the scenario asked
        # for, not a draw around it: rescale so activities average exactly 1 within the entry.
        total = sum(a.activity for a in made)
        for acct in made:
            if total > 0:
                acct.activity *= len(made) / total
            out.append((acct, entry))
    return out


def _keyed(
    scenario: Scenario, accounts: list[tuple[Account, Any]], ordinals: Iterable[int]
) -> Iterator[tuple[float, int, dict[str, Any]]]:
    """(merge key ts, account ordinal, record) for the given accounts, ordered by (ts, ordinal)."""
    end = scenario.end
    start = scenario.start
    streams: dict[int, Iterator[Any]] = {}
    heads: list[tuple[float, int, Any]] = []
    metas: dict[int, dict[str, Any]] = {}
    for ordinal in ordinals:
        acct, entry = accounts[ordinal]
        gen = entry.persona.requests(acct)
        streams[ordinal] = gen
        # One split per run: a dev scenario holds only dev personas on a dev seed; a held-out scenario
        # runs on a held-out seed, so all of its traffic is unseen (scenario.check_seed enforces it).
        metas[ordinal] = acct.label_meta(scenario.split)  # type: ignore[arg-type]
        first = next(gen, None)
        if first is not None and first[0] < end:
            heads.append((max(first[0], start), ordinal, first))
    heapq.heapify(heads)
    while heads:
        ts, ordinal, item = heads[0]
        acct = accounts[ordinal][0]
        _, endpoint, body, ip, ua, sim = item
        yield (
            ts,
            ordinal,
            {
                "ts": round(ts, 3),
                "account_id": acct.id,
                "endpoint": endpoint,
                "request": body,
                "org_id": acct.org_id,
                "key_id": acct.key_id,
                "ip": ip,
                "user_agent": ua,
                "account_created_at": round(acct.created_at, 3),
                "label": f"{acct.kind}:{acct.persona}",
                "label_meta": metas[ordinal],
                "sim": sim,
            },
        )
        nxt = next(streams[ordinal], None)
        if nxt is None or nxt[0] >= end:
            heapq.heappop(heads)
            if nxt is not None:
                streams[ordinal].close()
        else:
            # A persona's stream is time-ordered by construction; max() keeps the file sorted even if
            # one rounds a timestamp down.
            heapq.heapreplace(heads, (nxt[0] if nxt[0] > ts else ts, ordinal, nxt))


def iter_records(
    scenario: Scenario, seed: int, accounts: list[tuple[Account, Any]] | None = None
) -> Iterator[dict[str, Any]]:
    """The scenario's records as dicts, in time order (ties: account order)."""
    accounts = accounts if accounts is not None else plan_accounts(scenario, seed)
    for _, _, rec in _keyed(scenario, accounts, range(len(accounts))):
        yield rec


def _serial_lines(scenario: Scenario, accounts: list[tuple[Account, Any]]) -> Iterator[tuple[float, int, bytes]]:
    dumps = orjson.dumps
    for ts, ordinal, rec in _keyed(scenario, accounts, range(len(accounts))):
        yield ts, ordinal, dumps(rec, option=_DUMP_OPTS)


def _produce(conn: Any, scenario: Scenario, accounts: list[tuple[Account, Any]], part: int, parts: int) -> None:
    """Worker process: generate and serialise every `parts`-th account's records, in batches."""
    dumps = orjson.dumps
    try:
        keys: list[tuple[float, int]] = []
        lines: list[bytes] = []
        for ts, ordinal, rec in _keyed(scenario, accounts, range(part, len(accounts), parts)):
            keys.append((ts, ordinal))
            lines.append(dumps(rec, option=_DUMP_OPTS))
            if len(lines) >= _BATCH:
                conn.put((keys, lines))
                keys, lines = [], []
        conn.put((keys, lines))
        conn.put(None)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises it
        conn.put({"error": f"{exc.__class__.__name__}: {exc}"})
    finally:
        conn.close()
        conn.join_thread()


def _consume(conn: Any, proc: Any) -> Iterator[tuple[float, int, bytes]]:
    while True:
        try:
            msg = conn.get(timeout=1.0)
        except queue.Empty:
            if not proc.is_alive():  # killed (out of memory, a signal) without a word: do not wait forever
                raise RuntimeError(f"a generator worker died (exit code {proc.exitcode})") from None
            continue
        if msg is None:
            return
        if isinstance(msg, dict):
            raise RuntimeError(f"a generator worker failed: {msg['error']}")
        keys, lines = msg
        for (ts, ordinal), line in zip(keys, lines, strict=True):
            yield ts, ordinal, line


def _parallel_lines(
    scenario: Scenario, accounts: list[tuple[Account, Any]], workers: int, procs: list[Any]
) -> Iterator[tuple[float, int, bytes]]:
    """Records generated by `workers` processes (accounts dealt round-robin), merged by the same
    (ts, ordinal) key as the serial path: the bytes are identical, only faster on several cores.

    Workers are spawned, not forked: the parent may run threads (a progress bar, a test's gateway),
    and a fork copies their locks in whatever state they were. A worker gets the planned accounts
    (~1 MB pickled) and loads the corpora itself (the question banks come from the disk cache)."""
    ctx = multiprocessing.get_context("spawn")
    conns = []
    for part in range(workers):
        # A bounded queue per worker: its feeder thread lets the worker run batches ahead of the merge
        # (a bare pipe would stall it on every batch), the bound caps memory.
        q = ctx.Queue(maxsize=_QUEUE_BATCHES)
        proc = ctx.Process(target=_produce, args=(q, scenario, accounts, part, workers), daemon=True)
        proc.start()
        procs.append(proc)
        conns.append((q, proc))
    # (ts, ordinal) never ties across workers (an ordinal lives in one worker), so the bytes are
    # never compared.
    return heapq.merge(*(_consume(q, proc) for q, proc in conns))


def require_corpora() -> None:
    """Fail before writing anything when a prompt-corpus package is missing (one message for all)."""
    missing = corpora.check_available()
    if missing:
        raise corpora.CorpusUnavailable("; ".join(missing))


def write(
    scenario: Scenario,
    seed: int,
    out: str | Path | IO[bytes],
    on_progress: Callable[[float, int], None] | None = None,
    workers: int = 1,
) -> Summary:
    """Generate the scenario and write it as JSON Lines; `on_progress(simulated_ts, records)` is called
    every few thousand records. `workers` > 1 generates in that many spawned processes (the same
    bytes, faster on several cores; like any spawn, call it from an importable main module or under
    `if __name__ == "__main__":`). Returns the run's summary."""
    require_corpora()
    t0 = time.perf_counter()
    accounts = plan_accounts(scenario, seed)
    summary = Summary(
        scenario.name, scenario.split, seed, str(out), start=scenario.start, end=scenario.end, accounts=len(accounts)
    )
    labels = [a.label for a, _ in accounts]
    by_label: Counter[str] = Counter()
    active: set[int] = set()
    workers = max(1, workers)
    procs: list[Any] = []
    fh: IO[bytes]
    close = False
    # A regular file is written beside its path and moved there once complete: (the partial file, the path).
    partial: tuple[Path, Path] | None = None
    if isinstance(out, (str, Path)):
        target = Path(out)
        if not target.exists() or target.is_file():
            partial = (target.with_name(f".{target.name}.{os.getpid()}.partial"), target)
        fh = open(partial[0] if partial else target, "wb", buffering=1 << 20)  # noqa: SIM115 - closed in finally
        close = True
    else:
        fh = out
    done = False
    n = 0
    size = 0
    first_ts = last_ts = None
    try:
        if workers > 1:
            fh.flush()
            lines = _parallel_lines(scenario, accounts, workers, procs)
        else:
            lines = _serial_lines(scenario, accounts)
        for ts, ordinal, line in lines:
            fh.write(line)
            size += len(line)
            n += 1
            by_label[labels[ordinal]] += 1
            active.add(ordinal)
            if first_ts is None:
                first_ts = round(ts, 3)
            last_ts = ts
            if on_progress is not None and n % PROGRESS_EVERY == 0:
                on_progress(ts, n)
        done = True
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
            proc.join()
        if close:
            fh.close()
        if partial is not None:
            # A run that fails leaves no half-written file, and what was at the path before stays as it was.
            if done:
                os.replace(*partial)
            else:
                partial[0].unlink(missing_ok=True)
    if on_progress is not None:
        on_progress(scenario.end, n)
    acct_labels: Counter[str] = Counter(a.label for a, _ in accounts)
    summary.records, summary.bytes = n, size
    summary.by_label = dict(sorted(by_label.items()))
    summary.accounts_by_label = dict(sorted(acct_labels.items()))
    summary.active_accounts = len(active)
    summary.first_ts, summary.last_ts = first_ts, (round(last_ts, 3) if last_ts is not None else None)
    summary.workers = workers
    summary.elapsed_s = time.perf_counter() - t0
    return summary
