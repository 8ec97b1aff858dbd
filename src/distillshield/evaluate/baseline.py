"""A trivial volume baseline: risk grows with an account's request count, scored online.

It exists so the harness has something to score before the real analyser lands, and as the floor any
real detector must beat. It follows the detector contract: `fit` on reference traffic, then score.

- fit: the thresholds are chosen on the dev split's benign accounts only (hold-out rule: the held-out
  split never tunes anything). `suspicious_at` is the smallest request count that at most 1% of dev
  benign accounts reach; `extraction_at` the same for 0.1%.
- score: requests are replayed in file order; an account's count rises by one per request, so the
  request at which it crosses a threshold is its first flag (first_flag_ts / first_flag_index), exactly
  what an online detector running beside the gateway would have raised.
- output: the analyser report format, so the baseline goes through the same validation and join as
  any external report.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distillshield.contracts import FLAGGED_VERDICTS
from distillshield.evaluate.truth import PROGRESS_EVERY, TrafficTruth
from distillshield.traffic import iter_jsonl

# Used when the traffic has no dev benign accounts to calibrate on (e.g. unlabelled production logs).
DEFAULT_SUSPICIOUS_AT = 1000
DEFAULT_EXTRACTION_AT = 10000


def count_threshold(volumes: Sequence[int], target_fpr: float) -> int:
    """The smallest request count k such that at most floor(target_fpr * n) of `volumes` are >= k."""
    allowed = int(target_fpr * len(volumes))
    ranked = sorted(volumes, reverse=True)
    return ranked[allowed] + 1 if allowed < len(ranked) else 1


@dataclass(frozen=True)
class VolumeBaseline:
    """Fitted thresholds: an account is suspicious from its `suspicious_at`-th request, extraction from
    its `extraction_at`-th. risk = n / (n + suspicious_at): 0.5 at the suspicious threshold, monotone in n."""

    suspicious_at: int = DEFAULT_SUSPICIOUS_AT
    extraction_at: int = DEFAULT_EXTRACTION_AT
    tuned_on: str | None = None  # "dev" once fitted on dev benign accounts; None = defaults
    calibration_accounts: int = 0
    target_fpr_suspicious: float = 0.01
    target_fpr_extraction: float = 0.001

    @classmethod
    def fit(cls, dev_benign_volumes: Sequence[int], target_fpr_suspicious: float = 0.01,
            target_fpr_extraction: float = 0.001) -> VolumeBaseline:  # fmt: skip
        """Choose thresholds from dev benign accounts' request counts (defaults when there are none)."""
        if not dev_benign_volumes:
            return cls(target_fpr_suspicious=target_fpr_suspicious, target_fpr_extraction=target_fpr_extraction)
        sus = count_threshold(dev_benign_volumes, target_fpr_suspicious)
        ext = max(sus, count_threshold(dev_benign_volumes, target_fpr_extraction))
        return cls(sus, ext, "dev", len(dev_benign_volumes), target_fpr_suspicious, target_fpr_extraction)

    @classmethod
    def fit_truth(cls, truth: TrafficTruth) -> VolumeBaseline:
        """Fit on the dev split's benign accounts of a traffic file; nothing else is looked at."""
        return cls.fit([a.requests for a in truth.accounts.values() if a.kind == "benign" and a.split == "dev"])

    def risk(self, n: int) -> float:
        return n / (n + self.suspicious_at)

    def verdict(self, n: int) -> str:
        if n >= self.extraction_at:
            return "extraction"
        return "suspicious" if n >= self.suspicious_at else "benign"

    def describe(self) -> dict[str, Any]:
        return {"detector": "volume-baseline", "suspicious_at": self.suspicious_at,
                "extraction_at": self.extraction_at, "tuned_on": self.tuned_on,
                "calibration_accounts": self.calibration_accounts,
                "target_fpr_suspicious": self.target_fpr_suspicious,
                "target_fpr_extraction": self.target_fpr_extraction,
                "calibration": "dev split benign accounts only" if self.tuned_on else
                "defaults (no dev benign accounts to calibrate on)"}  # fmt: skip


class OnlineVolumeScorer:
    """Replays requests one by one; remembers each account's count and when it first reached the flag level."""

    def __init__(self, model: VolumeBaseline, flag_on: str = "suspicious") -> None:
        self.model = model
        self.flag_on = flag_on
        self.flag_at = model.suspicious_at if flag_on == "suspicious" else model.extraction_at
        self.counts: dict[str, int] = {}
        self.first_flag: dict[str, tuple[float, int]] = {}  # account -> (ts, 0-based request index)

    def observe(self, account_id: str, ts: float) -> None:
        n = self.counts.get(account_id, 0) + 1
        self.counts[account_id] = n
        if n == self.flag_at:
            self.first_flag[account_id] = (ts, n - 1)

    def report(self) -> dict[str, Any]:
        """The analyser report format: one entry per account seen, no clusters (volume knows none)."""
        flagged = FLAGGED_VERDICTS[self.flag_on]
        accounts = []
        for aid, n in self.counts.items():
            verdict = self.model.verdict(n)
            ts, index = self.first_flag.get(aid, (None, None)) if verdict in flagged else (None, None)
            risk = self.model.risk(n)
            accounts.append({
                "account_id": aid, "risk": risk, "verdict": verdict, "cluster_id": None,
                "reasons": [{"signal": "volume", "score": risk,
                             "detail": f"{n} requests; suspicious from {self.model.suspicious_at}, "
                                       f"extraction from {self.model.extraction_at}"}],
                "first_flag_ts": ts, "first_flag_index": index,
            })  # fmt: skip
        summary = {**self.model.describe(), "first_flag_level": self.flag_on, "accounts": len(accounts),
                   "flagged": sum(1 for a in accounts if a["verdict"] in flagged)}  # fmt: skip
        return {"accounts": accounts, "clusters": [], "summary": summary}


def run_baseline(
    path: str | Path, model: VolumeBaseline, flag_on: str = "suspicious",
    on_progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Score a traffic file online with the fitted baseline; returns an analyser-format report.

    Bad lines are skipped silently here: the ground-truth pass over the same file reports them.
    """
    scorer = OnlineVolumeScorer(model, flag_on)
    n = 0
    for rec in iter_jsonl(path):
        scorer.observe(rec.account_id, rec.ts)
        n += 1
        if on_progress is not None and n % PROGRESS_EVERY == 0:
            on_progress(n)
    if on_progress is not None:
        on_progress(n)
    return scorer.report()
