"""Attribution: which account's key marks a text? Test it under every candidate key, correct for
testing many keys (Holm-Bonferroni, or Bonferroni), and name the accounts whose adjusted p-value
stays below alpha, most likely first.

Keys of different accounts are independent, so under the null of "no key marks this" each test
is a fair one-sided test; with 1,000 keys the best unkeyed z is about 3.1 by chance alone (3.7 with
10,000), which is why the raw p-value of the top candidate is not evidence and the adjusted one is.

Secondary names (every account after the first) need a stricter level, `secondary_alpha` (default
1e-6): a text almost always has one source, and when its own key is far ahead the other keys are still
independent null tests, so Holm lets the best of them through at about alpha per text (about 1 in
1,000 texts names a second, wrong account at alpha 1e-3). At 1e-6 that is one per million texts; the
price is fewer second names where two accounts' texts are pooled into one test (docs/watermark.md,
"Detection rule and statistics" and "Attribution at scale").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from distillshield.watermark.base import Detection, TokenIds, scored_pairs
from distillshield.watermark.keys import WatermarkKey
from distillshield.watermark.schemes import Scheme, require_weights
from distillshield.watermark.stats import bonferroni_log10, holm_log10, p_from_log10
from distillshield.watermark.weights import weighted_pairs

CORRECTIONS = ("holm", "bonferroni")
ALPHA = 1e-3  # family-wise error of naming the first account
SECONDARY_ALPHA = 1e-6  # ... and of naming each further one (the module docstring says why)
_BLOCK_VALUES = 1 << 20  # keyed values per vectorised block: bounds memory (8 MB per uint64 temporary)


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
    secondary_alpha: float = SECONDARY_ALPHA

    @property
    def keys_tested(self) -> int:
        return len(self.ranked)

    @property
    def attributed(self) -> list[Candidate]:
        """The accounts named: the first candidate if its adjusted p-value is below alpha (family-wise error
        <= alpha), each later one only below the stricter min(alpha, secondary_alpha)."""
        levels = (self.alpha, min(self.alpha, self.secondary_alpha))
        return [c for i, c in enumerate(self.ranked) if p_from_log10(c.log10_p_adjusted) < levels[i > 0]]

    @property
    def best(self) -> Candidate | None:
        return self.ranked[0] if self.ranked else None

    def as_dict(self, top: int = 5) -> dict[str, Any]:
        return {
            "keys_tested": self.keys_tested,
            "correction": self.correction,
            "alpha": self.alpha,
            "secondary_alpha": self.secondary_alpha,
            "tokens": self.tokens,
            "scored": self.scored,
            "attributed": [c.label for c in self.attributed],
            "top": [c.as_dict() for c in self.ranked[:top]],
        }


def attribute(
    scheme: Scheme,
    ids: TokenIds,
    keys: Sequence[WatermarkKey],
    *,
    correction: str = "holm",
    alpha: float = ALPHA,
    secondary_alpha: float = SECONDARY_ALPHA,
    threshold: float = 4.0,
    dedup: bool = True,
    weights: Sequence[np.ndarray] | None = None,
) -> Attribution:
    """Test token ids (one text or several pooled) under each key; rank and correct.

    Every key is scored in vectorised blocks (`score_many`, equal to `score_pairs` key by key): one
    400-token text under 10,000 keys takes a fraction of a second (docs/watermark.md, "Attribution").
    `weights` (one array per sequence, watermark/weights.py) turn on the entropy-weighted test, for
    schemes that have one (`schemes.supports_weights`).
    """
    if correction not in CORRECTIONS:
        raise ValueError(f"correction must be one of {', '.join(CORRECTIONS)}, got {correction!r}")
    if not keys:
        raise ValueError("attribution needs at least one candidate key")
    for name, level in (("alpha", alpha), ("secondary_alpha", secondary_alpha)):
        if not 0.0 < level < 1.0:
            raise ValueError(f"{name} must be in (0, 1), got {level}")
    detections, scored = score_keys(scheme, ids, keys, threshold, dedup, weights)
    raw = [d.log10_p for d in detections]
    adjusted = holm_log10(raw) if correction == "holm" else bonferroni_log10(raw)
    order = np.lexsort((-np.array([d.z for d in detections]), np.array(raw)))
    ranked = [Candidate(detections[i], adjusted[i]) for i in order]
    return Attribution(ranked, correction, alpha, detections[0].tokens, scored, secondary_alpha)


def score_keys(
    scheme: Scheme,
    ids: TokenIds,
    keys: Sequence[WatermarkKey],
    threshold: float = 4.0,
    dedup: bool = True,
    weights: Sequence[np.ndarray] | None = None,
) -> tuple[list[Detection], int]:
    """Each key's Detection, in the keys' order and uncorrected, and the number of pairs scored: the
    keys in vectorised blocks, entropy-weighted when `weights` are given (one array per sequence)."""
    score: Callable[[list[WatermarkKey]], list[Detection]]
    if weights is None:
        ctx, tok, seen = scored_pairs(ids, scheme.context_width, dedup)
        score = partial(scheme.score_many, contexts=ctx, tokens=tok, seen=seen, threshold=threshold)
    else:
        weighted = require_weights(scheme)  # refused before any work
        ctx, tok, levels, seen = weighted_pairs(ids, weights, scheme.context_width, dedup)
        score = partial(
            weighted.score_weighted,
            contexts=ctx,
            tokens=tok,
            levels=levels,
            seen=seen,
            threshold=threshold,
        )
    block = max(1, _BLOCK_VALUES // max(int(tok.size), 1))
    detections: list[Detection] = []
    for i in range(0, len(keys), block):
        detections += score(list(keys[i : i + block]))
    return detections, int(tok.size)
