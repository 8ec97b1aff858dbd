"""Ground truth from labelled traffic: one streaming pass, per-account aggregates.

The simulator labels every record: `label` is "benign:<persona>" or "attack:<persona>" and `label_meta`
carries persona, campaign_id, cluster_id, split ("dev" | "heldout" | "fresh" | "fresh2" | "fresh3" |
"fresh4") and end_user. All records of an account carry the same label. This module turns a traffic file into one
`AccountTruth` per account without keeping records: a 500,000-request scenario costs a few MB, not the
file's size.

The one per-request thing kept is a compact timeline (timestamp, served?, completion tokens: 13 bytes
a request) for attack-labelled accounts only. Leakage needs it: an account's stop point can depend on
another account (its analyser cluster can stop it on another member's flag), so the stop is
only known after the whole report and traffic are joined, and the served responses before it must
then be countable. Each account also keeps the time of its LINK_MIN_REQUESTS-th request: the earliest
moment the analyser could have linked it to a cluster (docs/evaluation.md, "Leakage, exactly").
"""

from __future__ import annotations

import heapq
import math
from array import array
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from distillshield.traffic import LineError, TrafficRecord, iter_jsonl

LABEL_KINDS = ("benign", "attack")
SPLITS = ("dev", "heldout", "fresh", "fresh2", "fresh3", "fresh4")
PROGRESS_EVERY = 4096  # records between progress callbacks: often enough for a bar, cheap enough not to matter
# The analyser cannot link an account to a cluster before the account has sent this many requests: the
# shipped analyser's own minimum (detect/cluster.py MIN_REQUESTS: "accounts with fewer requests do not link
# yet"); tests/test_evaluate.py checks that it never drops below it, so a cluster stop is never credited
# earlier than the analyser could have known the account was a member.
LINK_MIN_REQUESTS = 5


class Timeline:
    """One account's requests in file order: timestamp, whether a response was served, completion tokens."""

    __slots__ = ("ts", "served", "tokens")

    def __init__(self) -> None:
        self.ts = array("d")
        self.served = array("b")
        self.tokens = array("i")

    def add(self, ts: float, served: bool, tokens: int) -> None:
        self.ts.append(ts)
        self.served.append(1 if served else 0)
        self.tokens.append(tokens)

    def upto(self, stop_ts: float) -> tuple[int, int, int]:
        """(requests, served responses, served completion tokens) with ts <= stop_ts (inclusive: the gateway
        serves the request that triggers a flag, because detection runs off the request path)."""
        ts = np.frombuffer(self.ts, dtype=np.float64)
        mask = ts <= stop_ts
        served = np.frombuffer(self.served, dtype=np.int8).astype(bool) & mask
        tokens = np.frombuffer(self.tokens, dtype=np.int32)
        return int(mask.sum()), int(served.sum()), int(tokens[served].sum())


@dataclass(slots=True)
class AccountTruth:
    """What the traffic says about one account: its label and request/served aggregates."""

    account_id: str
    kind: str | None  # "benign" | "attack"; None = unlabelled (excluded from metrics, counted)
    persona: str | None
    split: str | None  # "dev" | "heldout" | "fresh" | "fresh2" | "fresh3" | "fresh4"; None: no split ("all" only)
    cluster_id: str | None  # ground-truth coordinated cluster, shared by all its member accounts
    campaign_id: str | None
    label: str | None = None  # raw label and meta of the first record, to detect conflicting records
    label_meta: dict[str, Any] | None = None
    requests: int = 0
    served: int = 0  # responses served (see `is_served`)
    served_tokens: int = 0
    first_ts: float = math.inf
    last_ts: float = -math.inf
    probe_index: int | None = None  # a report's first_flag_index, resolved to a time during the pass
    probe_ts: float | None = None
    timeline: Timeline | None = None  # attack accounts only
    # The LINK_MIN_REQUESTS smallest timestamps so far, negated (a max-heap of at most 5 floats).
    _first_ts_heap: list[float] = field(default_factory=list)

    @property
    def link_ts(self) -> float | None:
        """Time of the account's LINK_MIN_REQUESTS-th request (in time order): the earliest moment it could
        have been linked to a cluster. None: it sent fewer requests, so it was never linkable."""
        if len(self._first_ts_heap) < LINK_MIN_REQUESTS:
            return None
        return -self._first_ts_heap[0]

    def note_ts(self, ts: float) -> None:
        """Keep the LINK_MIN_REQUESTS smallest timestamps (order-independent: the file need not be sorted)."""
        heap = self._first_ts_heap
        if len(heap) < LINK_MIN_REQUESTS:
            heapq.heappush(heap, -ts)
        elif ts < -heap[0]:
            heapq.heapreplace(heap, -ts)

    @property
    def labelled(self) -> bool:
        return self.kind is not None


@dataclass
class TrafficTruth:
    """The whole traffic file's ground truth and what was wrong with it."""

    path: str
    accounts: dict[str, AccountTruth]
    records: int = 0
    bad_lines: list[LineError] = field(default_factory=list)  # the first MAX_KEPT_ERRORS, for display
    bad_line_count: int = 0
    conflicting_accounts: list[str] = field(default_factory=list)  # records disagreeing on label/label_meta
    bad_label_accounts: list[str] = field(default_factory=list)  # label present but not kind:persona
    has_responses: bool = False  # any record carries a response -> leakage counts served responses

    @property
    def labelled(self) -> list[AccountTruth]:
        return [a for a in self.accounts.values() if a.labelled]

    @property
    def unlabelled_count(self) -> int:
        return sum(1 for a in self.accounts.values() if not a.labelled)


class _CappedErrors(list[LineError]):
    """A list that counts every bad line but keeps only the first few, so a garbage file cannot fill memory."""

    def __init__(self, keep: int) -> None:
        super().__init__()
        self.keep = keep
        self.count = 0

    def append(self, item: LineError) -> None:
        self.count += 1
        if len(self) < self.keep:
            super().append(item)


def is_served(rec: TrafficRecord) -> bool:
    """A response was delivered: the record has one and its status is 2xx (or not recorded)."""
    return rec.response is not None and (rec.status is None or 200 <= rec.status < 300)


def parse_label(
    label: str | None, meta: Mapping[str, Any] | None
) -> tuple[str | None, str | None, str | None, str | None, str | None, bool]:
    """(kind, persona, split, cluster_id, campaign_id, well_formed) from a record's label fields.

    A missing label is unlabelled and well formed; a label that is not "benign:x" / "attack:x" is
    unlabelled and not well formed (reported). label_meta.persona wins over the label's suffix.
    """
    if label is None:
        return None, None, None, None, None, True
    kind, sep, persona = label.partition(":")
    if not sep or kind not in LABEL_KINDS or not persona:
        return None, None, None, None, None, False
    meta = meta or {}

    def text(key: str) -> str | None:
        v = meta.get(key)
        return None if v is None or v == "" else str(v)

    split = text("split")
    return kind, text("persona") or persona, split if split in SPLITS else None, text("cluster_id"), \
        text("campaign_id"), True  # fmt: skip


def read_truth(
    path: str | Path,
    *,
    flag_index: Mapping[str, int] | None = None,
    on_progress: Callable[[int], None] | None = None,
    keep_errors: int = 100,
) -> TrafficTruth:
    """Read a traffic file once and return per-account ground truth.

    `flag_index` maps account ids to a request index (0-based, the account's own requests in file order)
    whose timestamp should be recorded, so a report that gives only first_flag_index can be placed in
    time. `on_progress(lines_done)` is called every few thousand lines. Malformed lines are counted and
    skipped (the first `keep_errors` are kept with their numbers).
    """
    errors = _CappedErrors(keep_errors)
    accounts: dict[str, AccountTruth] = {}
    truth = TrafficTruth(path=str(path), accounts=accounts)
    conflicting: set[str] = set()
    n = 0
    has_responses = False
    for rec in iter_jsonl(path, errors):
        n += 1
        acc = accounts.get(rec.account_id)
        if acc is None:
            kind, persona, split, cluster_id, campaign_id, ok = parse_label(rec.label, rec.label_meta)
            acc = AccountTruth(rec.account_id, kind, persona, split, cluster_id, campaign_id,
                               label=rec.label, label_meta=rec.label_meta)  # fmt: skip
            if not ok:
                truth.bad_label_accounts.append(rec.account_id)
            if kind == "attack":
                acc.timeline = Timeline()
            if flag_index is not None:
                acc.probe_index = flag_index.get(rec.account_id)
            accounts[rec.account_id] = acc
        elif rec.label != acc.label or rec.label_meta != acc.label_meta:
            conflicting.add(rec.account_id)  # first record wins; reported so the simulator can be fixed
        if acc.probe_index is not None and acc.requests == acc.probe_index:
            acc.probe_ts = rec.ts
        acc.requests += 1
        acc.note_ts(rec.ts)
        if rec.ts < acc.first_ts:
            acc.first_ts = rec.ts
        if rec.ts > acc.last_ts:
            acc.last_ts = rec.ts
        served = is_served(rec)
        tokens = 0
        if rec.response is not None:
            has_responses = True
            if served and rec.response.usage is not None:
                tokens = rec.response.usage.completion_tokens
        if served:
            acc.served += 1
            acc.served_tokens += tokens
        if acc.timeline is not None:
            acc.timeline.add(rec.ts, served, tokens)
        if on_progress is not None and n % PROGRESS_EVERY == 0:
            on_progress(n + errors.count)
    if on_progress is not None:
        on_progress(n + errors.count)
    truth.records = n
    truth.bad_lines = list(errors)
    truth.bad_line_count = errors.count
    truth.conflicting_accounts = sorted(conflicting)
    truth.has_responses = has_responses
    return truth
