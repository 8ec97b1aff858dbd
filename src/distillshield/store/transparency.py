"""The audit log held against its signed checkpoints: verification that locates tampering, and the tree
from which evidence bundles take inclusion proofs.

The tree is recomputed from the database rows (leaf i = the i-th row in seq order) in one pass, its
head compared with every checkpoint's root at that checkpoint's size. The first checkpoint that
disagrees bounds the first changed row to the rows since the previous (agreeing) checkpoint; within
that interval the row is named exactly when the hash chain or the numbering breaks there (an edit, a
deleted or reordered row). A rewrite that recomputed the chain leaves only the tree to show it, so it is
located to the checkpoint interval (`checkpoints.every_rows` rows at most).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from distillshield.store import chain, merkle
from distillshield.store.checkpoint import Checkpoint, CheckpointError, Verifier, parse_text
from distillshield.store.database import Store
from distillshield.store.merkle import Frontier, MerkleLevels


def _when(ts: int) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def open_checkpoints(notes: Sequence[str], verifier: Verifier, source: str = "the checkpoint file") -> list[Checkpoint]:
    """Every note's checkpoint, each signature checked; CheckpointError names the first bad one."""
    out = []
    for i, note in enumerate(notes, 1):
        try:
            out.append(verifier.open(note))
        except CheckpointError as exc:
            try:
                claimed = f" (claims size {parse_text(note.partition(chr(10) * 2)[0] + chr(10)).size})"
            except CheckpointError:
                claimed = ""
            raise CheckpointError(f"checkpoint {i} of {source}{claimed}: {exc}") from None
    return out


@dataclass
class TreeReport:
    """Outcome of checking the log against its checkpoints: ok, or where the log departs from them."""

    ok: bool
    rows: int
    checkpoints: int
    latest: Checkpoint | None = None
    first_bad_seq: int | None = None  # the row named, when it can be named
    first_bad_request_id: str | None = None  # its request id (or that of the range's first row)
    bad_range: tuple[int, int] | None = None  # rows (seq) that hold the first change
    problem: str | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "rows": self.rows,
            "checkpoints": self.checkpoints,
            "latest_checkpoint": self.latest.as_dict() if self.latest else None,
            "first_bad_seq": self.first_bad_seq,
            "first_bad_request_id": self.first_bad_request_id,
            "bad_range": list(self.bad_range) if self.bad_range else None,
            "problem": self.problem,
            "notes": self.notes,
        }


@dataclass
class _Anomaly:
    index: int  # leaf index of the row where the chain or numbering first breaks
    seq: int
    request_id: str | None
    problem: str


async def verify_log(store: Store, checkpoints: Iterable[Checkpoint]) -> TreeReport:
    """Recompute the tree from the store and check it against every (already signature-checked) checkpoint."""
    by_size: dict[int, Checkpoint] = {}
    for cp in checkpoints:
        other = by_size.get(cp.size)
        if other is not None and other.root != cp.root:
            return TreeReport(
                False, 0, 0, problem=f"two signed checkpoints of size {cp.size} disagree on the root (a forked log)"
            )
        by_size.setdefault(cp.size, cp)
    todo = sorted(by_size.values(), key=lambda c: c.size)
    report = TreeReport(True, 0, 0)
    tree = Frontier()
    verifier = chain.ChainVerifier()
    anomaly: _Anomaly | None = None
    boundary_ids: dict[int, str] = {}  # leaf index -> request id, for the first row after each checkpoint
    boundaries = {0} | {c.size for c in todo}
    good = 0  # size of the last checkpoint that agreed
    k = 0
    while k < len(todo) and todo[k].size == 0:  # the empty tree
        if todo[k].root != merkle.EMPTY_ROOT:
            return _diverged(report, todo[k], 0, anomaly, boundary_ids)
        report.checkpoints += 1
        report.latest = todo[k]
        k += 1
    async for row in store.iter_audit():
        index = tree.size
        if anomaly is None and not verifier.feed(row):
            assert verifier.bad_seq is not None and verifier.problem is not None
            anomaly = _Anomaly(index, verifier.bad_seq, row.get("request_id"), verifier.problem)
        if index in boundaries:
            boundary_ids[index] = row.get("request_id")
        tree.append(merkle.leaf_hash(chain.canonical(row)))
        report.rows = tree.size
        if k < len(todo) and todo[k].size == tree.size:
            if tree.root() != todo[k].root:
                return _diverged(report, todo[k], good, anomaly, boundary_ids)
            good = tree.size
            report.checkpoints += 1
            report.latest = todo[k]
            k += 1
    if k < len(todo):
        cp = todo[-1]
        report.ok = False
        report.first_bad_seq = tree.size + 1
        report.bad_range = (tree.size + 1, cp.size)
        report.problem = (
            f"the log has {tree.size} rows but the checkpoint signed {_when(cp.timestamp)} covers {cp.size}: "
            f"rows {tree.size + 1}-{cp.size} were deleted (truncated)"
        )
        if anomaly is not None and anomaly.index >= good:
            report.first_bad_seq, report.first_bad_request_id = anomaly.seq, anomaly.request_id
        return report
    if report.latest is not None and report.latest.size < tree.size:
        report.notes.append(
            f"rows {report.latest.size + 1}-{tree.size} are not covered by a checkpoint yet "
            "(distillshield logs checkpoint)"
        )
    if not todo:
        report.notes.append("the checkpoint file holds no checkpoint")
    return report


def _diverged(
    report: TreeReport, cp: Checkpoint, good: int, anomaly: _Anomaly | None, boundary_ids: dict[int, str]
) -> TreeReport:
    report.ok = False
    report.bad_range = (good + 1, cp.size)
    signed = f"the checkpoint of size {cp.size} signed {_when(cp.timestamp)}"
    if anomaly is not None and good <= anomaly.index < cp.size:
        report.first_bad_seq, report.first_bad_request_id = anomaly.seq, anomaly.request_id
        report.problem = (
            f"the log differs from {signed}; first at row {anomaly.seq} "
            f"(request {anomaly.request_id}): {anomaly.problem}"
        )
    else:
        # The chain was recomputed: only the tree shows the change, to within this checkpoint interval.
        report.first_bad_request_id = boundary_ids.get(good)
        since = f"the checkpoint of size {good}" if good else "the start of the log"
        report.problem = (
            f"the log differs from {signed}: history was rewritten (the chain recomputed) in rows "
            f"{good + 1}-{cp.size}, after {since}, which still agrees (row {good + 1} is request "
            f"{report.first_bad_request_id})"
        )
    return report


async def tree_for_proofs(store: Store, size: int, seqs: Iterable[int]) -> tuple[MerkleLevels, dict[int, int]]:
    """The tree of the first `size` rows, and the leaf index of each of `seqs` found among them."""
    want = set(seqs)
    levels = MerkleLevels()
    index_of: dict[int, int] = {}
    async for row in store.iter_audit():
        if levels.size == size:
            break
        if row["seq"] in want:
            index_of[row["seq"]] = levels.size
        levels.append(merkle.leaf_hash(chain.canonical(row)))
    return levels, index_of
