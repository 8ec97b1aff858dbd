"""The detector contract every signal follows, and the values detection hands out.

Detection is streaming by construction, so that one implementation serves batch analysis (replaying a
traffic file in time order) and the gateway (observing each finished request): a signal keeps a small
per-account *state* (counters and sketches, never raw history), `update`s it with one observation,
and `score`s it into named features plus one 0..1 signal score with a human-readable detail.

The scikit-learn shape is kept: `fit(reference)` learns what benign looks like from reference data
(the packaged corpora or a calibration run), `score` maps an account to its evidence, and `explain`
turns a score into a Reason a trust-and-safety analyst can check.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from distillshield.contracts import Verdict

if TYPE_CHECKING:
    from distillshield.detect.corpus import Obs
    from distillshield.detect.engine import Context


@dataclass(frozen=True, slots=True)
class Reason:
    """One piece of evidence: which signal, how strong (0..1, higher = more like extraction), what it saw."""

    signal: str
    score: float
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"signal": self.signal, "score": round(float(self.score), 4), "detail": self.detail}


@dataclass(slots=True)
class SignalScore:
    """What a signal says about one account: features for the combiner, a 0..1 score, a detail line."""

    signal: str
    score: float
    detail: str
    features: dict[str, float] = field(default_factory=dict)

    def reason(self) -> Reason:
        return Reason(self.signal, self.score, self.detail)

    def with_detail(self, detail: str) -> SignalScore:
        return SignalScore(self.signal, self.score, detail, self.features)


@dataclass(slots=True)
class AccountScore:
    """The combined verdict on one account."""

    account_id: str
    risk: float
    verdict: Verdict
    cluster_id: str | None
    reasons: list[Reason]
    requests: int = 0
    first_flag_ts: float | None = None
    first_flag_index: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "account_id": self.account_id,
            "risk": round(float(self.risk), 6),
            "verdict": self.verdict,
            "cluster_id": self.cluster_id,
            "reasons": [r.as_dict() for r in self.reasons],
            "requests": self.requests,
            "first_flag_ts": self.first_flag_ts,
            "first_flag_index": self.first_flag_index,
        }


class Signal(Protocol):
    """A per-account detector: streaming state in, features and a reason out."""

    name: str

    def fit(self, reference: Any) -> Signal:
        """Learn benign reference statistics (a no-op for signals that need none); returns self."""
        ...

    def new_state(self) -> Any:
        """A fresh per-account state (small, bounded: counters and sketches)."""
        ...

    def update(self, state: Any, obs: Obs) -> None:
        """Fold one request into the account's state; O(1)."""
        ...

    def score(self, state: Any, ctx: Context) -> SignalScore:
        """Features and a 0..1 score for the account as it stands; `ctx` holds population-wide state."""
        ...
