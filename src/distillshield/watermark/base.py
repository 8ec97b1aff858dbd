"""What every watermark scheme shares: scored (context, token) pairs and the detection result.

Scoring is over de-duplicated (context, token) pairs: a text that repeats a phrase would otherwise
count the same pseudo-random draw many times, and the z-score's variance assumption (independent
Bernoulli draws) would be false, inflating z on unwatermarked text (Kirchenbauer et al. 2023,
Sander et al. 2024).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from distillshield.watermark.keys import WatermarkKey
from distillshield.watermark.stats import binomial_log10_sf, normal_log10_sf, p_from_log10, z_score

# (input token ids so far, next-token scores) -> scores: the embedded model's logits hook.
LogitsHook = Any

# The truncation the embedded model's server (llama.cpp) samples with when a request names none. The keyed
# samplers (Gumbel-max, the tournament) replace its sampler and keep the same truncation, so a marked answer is
# drawn from the distribution a plain one would be; the detector's weights read the same truncated distribution.
DEFAULT_TEMPERATURE = 0.8
DEFAULT_TOP_K = 40
DEFAULT_TOP_P = 0.95
DEFAULT_MIN_P = 0.05


TokenIds = Sequence[int] | np.ndarray | Iterable[Sequence[int] | np.ndarray]  # one sequence, or several


def as_sequences(sequences: TokenIds) -> list[np.ndarray]:
    """One token sequence (a flat list, empty included, or a 1-d array as given) or several, as arrays."""
    if isinstance(sequences, np.ndarray) and sequences.ndim == 1:
        return [sequences]
    if isinstance(sequences, Sequence) and (len(sequences) == 0 or isinstance(sequences[0], (int, np.integer))):
        return [np.asarray(sequences, dtype=np.int64)]
    return [np.asarray(s, dtype=np.int64) for s in sequences]  # type: ignore[union-attr]


def scored_pairs(sequences: TokenIds, context_width: int, dedup: bool = True) -> tuple[np.ndarray, np.ndarray, int]:
    """(contexts (n, h), tokens (n,), tokens seen) for one token sequence or several.

    The first `h` tokens of each sequence have no context inside it and are not scored. With
    `dedup`, each distinct (context, token) pair counts once across all sequences.
    """
    seqs = as_sequences(sequences)
    h = context_width
    windows = [np.lib.stride_tricks.sliding_window_view(s, h + 1) for s in seqs if s.size > h]
    seen = int(sum(s.size for s in seqs))
    if not windows:
        return np.empty((0, h), np.int64), np.empty(0, np.int64), seen
    w = np.concatenate(windows, axis=0)
    if dedup:
        w = np.unique(w, axis=0)
    return w[:, :h], w[:, h], seen


@dataclass(frozen=True)
class Detection:
    """The outcome of testing one text (or a set of texts) against one key."""

    scheme: str
    key_label: str
    tokens: int  # tokens in the input
    scored: int  # distinct (context, token) pairs tested
    score: float  # green count (kgw) or sum of -log(1-u) (gumbel)
    z: float
    log10_p: float
    threshold: float = 4.0

    @property
    def p_value(self) -> float:
        return p_from_log10(self.log10_p)

    @property
    def detected(self) -> bool:
        """z >= threshold, and the exact p-value at most the normal tail of the threshold (3.2e-5 at
        z = 4): short texts have skewed Binomial/Gamma nulls where z alone overstates the evidence."""
        return self.scored > 0 and self.z >= self.threshold and self.log10_p <= normal_log10_sf(self.threshold)

    def as_dict(self) -> dict[str, Any]:
        return {
            "scheme": self.scheme,
            "key": self.key_label,
            "tokens": self.tokens,
            "scored": self.scored,
            "score": round(self.score, 4),
            "z": round(self.z, 4),
            "p_value": self.p_value,
            "log10_p": round(self.log10_p, 4),
            "detected": self.detected,
        }


def count_detections(
    scheme: str,
    keys: Sequence[WatermarkKey],
    counts: np.ndarray,
    trials: int,
    rate: float,
    scored: int,
    seen: int,
    threshold: float = 4.0,
) -> list[Detection]:
    """One Detection per key for a count test (KGW's green pairs, the tournament's 1-bits) against
    Binomial(trials, rate). z and the exact tail are computed once per distinct count: one text's counts
    under 10,000 keys take a few dozen values, so attribution costs a few dozen tails, not 10,000."""
    stats = {c: (z_score(c, trials, rate), binomial_log10_sf(c, trials, rate)) for c in set(counts.tolist())}
    return [
        Detection(scheme, k.label, seen, scored, float(c), *stats[c], threshold)
        for k, c in zip(keys, counts.tolist(), strict=True)
    ]


class PairScorer:
    """Base of the schemes: `detect` turns token ids into de-duplicated pairs and scores them with the
    scheme's own `score_pairs`."""

    context_width: int

    def score_pairs(
        self, key: WatermarkKey, contexts: np.ndarray, tokens: np.ndarray, seen: int, threshold: float = 4.0
    ) -> Detection:
        raise NotImplementedError

    def detect(
        self,
        key: WatermarkKey,
        ids: Sequence[int] | Iterable[Sequence[int]],
        threshold: float = 4.0,
        dedup: bool = True,
    ) -> Detection:
        """Test token ids (one sequence, or several pooled) against `key`."""
        ctx, tok, seen = scored_pairs(ids, self.context_width, dedup)  # type: ignore[arg-type]
        return self.score_pairs(key, ctx, tok, seen, threshold)


class WatermarkScheme(Protocol):
    """A scheme: a generation-time processor and a detector that share `keys.prf32`."""

    name: str
    context_width: int

    def processor(self, key: WatermarkKey, **kwargs: Any) -> LogitsHook: ...

    def score_pairs(
        self, key: WatermarkKey, contexts: np.ndarray, tokens: np.ndarray, seen: int, threshold: float = 4.0
    ) -> Detection: ...

    def score_many(
        self, keys: list[WatermarkKey], contexts: np.ndarray, tokens: np.ndarray, seen: int, threshold: float = 4.0
    ) -> list[Detection]: ...

    def detect(
        self, key: WatermarkKey, ids: Sequence[int] | Iterable[Sequence[int]], threshold: float = 4.0
    ) -> Detection: ...
