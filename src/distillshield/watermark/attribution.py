"""Attribution: which account's key marks a text? Test it under every candidate key, correct for
testing many keys (Holm-Bonferroni, or Bonferroni), and name the accounts whose adjusted p-value
stays below alpha, most likely first.

Keys of different accounts are independent, so under the null of "no key marks this" each test
is a fair one-sided test; with 1,000 keys the best unkeyed z is about 3.1 by chance alone, which is
why the raw p-value of the top candidate is not evidence and the adjusted one is.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from distillshield.watermark.base import Detection, scored_pairs
from distillshield.watermark.keys import WatermarkKey
from distillshield.watermark.schemes import Scheme
from distillshield.watermark.stats import bonferroni_log10, holm_log10, p_from_log10

CORRECTIONS = ("holm", "bonferroni")


@dataclass(frozen=True)
class Candidate:
    detection: Detection
    log10_p_adjusted: float

    @property
    def label(self) -> str:
        return self.detection.key_label

    def as_dict(self) -> dict[str, Any]:
        d = self.detection.as_dict()
        d["p_adjusted"] = p_from_log10(self.log10_p_adjusted)
        d["log10_p_adjusted"] = round(self.log10_p_adjusted, 4)
        return d


@dataclass(frozen=True)
class Attribution:
    ranked: list[Candidate]  # every key, most likely source first
    correction: str
    alpha: float
    tokens: int
    scored: int

    @property
    def keys_tested(self) -> int:
        return len(self.ranked)

    @property
    def attributed(self) -> list[Candidate]:
        """Candidates whose adjusted p-value is below alpha (family-wise error <= alpha)."""
        return [c for c in self.ranked if p_from_log10(c.log10_p_adjusted) < self.alpha]

    @property
    def best(self) -> Candidate | None:
        return self.ranked[0] if self.ranked else None

    def as_dict(self, top: int = 5) -> dict[str, Any]:
        return {
            "keys_tested": self.keys_tested,
            "correction": self.correction,
            "alpha": self.alpha,
            "tokens": self.tokens,
            "scored": self.scored,
            "attributed": [c.label for c in self.attributed],
            "top": [c.as_dict() for c in self.ranked[:top]],
        }


def attribute(
    scheme: Scheme,
    ids: Sequence[int] | Iterable[Sequence[int]],
    keys: Sequence[WatermarkKey],
    *,
    correction: str = "holm",
    alpha: float = 0.001,
    threshold: float = 4.0,
    dedup: bool = True,
) -> Attribution:
    """Test token ids (one text or several pooled) under each key; rank and correct."""
    if correction not in CORRECTIONS:
        raise ValueError(f"correction must be one of {', '.join(CORRECTIONS)}, got {correction!r}")
    if not keys:
        raise ValueError("attribution needs at least one candidate key")
    ctx, tok, seen = scored_pairs(ids, scheme.context_width, dedup)  # type: ignore[arg-type]
    detections: list[Detection] = []
    for i in range(0, len(keys), 256):  # vectorised over keys, in blocks that bound memory
        detections += scheme.score_many(list(keys[i : i + 256]), ctx, tok, seen, threshold)
    raw = [d.log10_p for d in detections]
    adjusted = holm_log10(raw) if correction == "holm" else bonferroni_log10(raw)
    order = np.lexsort((-np.array([d.z for d in detections]), np.array(raw)))
    ranked = [Candidate(detections[i], adjusted[i]) for i in order]
    return Attribution(ranked, correction, alpha, seen, int(tok.size))
