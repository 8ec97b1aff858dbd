"""The keyed green-list watermark (Kirchenbauer et al. 2023, "KGW"): processor and detector.

Generation: at each step the previous `h` tokens and the key seed a green list holding a share
`gamma` of the vocabulary; `delta` is added to the green tokens' logits before sampling, so
watermarked text over-uses green tokens. Detection: count green tokens among the text's distinct
(context, token) pairs and test against Binomial(n, gamma):

    z = (green - gamma n) / sqrt(n gamma (1 - gamma)),  p = P(Binomial(n, gamma) >= green) (exact).

Text written without the key is green with probability gamma per pair whatever its content, so
the false-positive rate at z >= 4 is about 3e-5 per text per key. The bias is applied to the raw
logits, before temperature (as in lm-watermarking's HF processor): at temperature T the effective
bias is delta / T.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from distillshield.watermark.base import Detection, PairScorer, count_detections
from distillshield.watermark.keys import (
    WatermarkKey,
    context_seed,
    fmix32,
    gamma_threshold,
    prf32,
    prf32_many,
    token_table,
)


class GreenListWatermark(PairScorer):
    """KGW with parameters gamma (green share), delta (logit bias) and context width h."""

    name = "kgw"

    def __init__(self, gamma: float = 0.25, delta: float = 2.0, context_width: int = 1) -> None:
        if not 0.0 < gamma < 1.0:
            raise ValueError(f"gamma must be in (0, 1), got {gamma}")
        if context_width < 1:
            raise ValueError(f"context width must be >= 1, got {context_width}")
        self.gamma = gamma
        self.delta = delta
        self.context_width = context_width
        self.threshold = gamma_threshold(gamma)

    def __repr__(self) -> str:
        return f"GreenListWatermark(gamma={self.gamma}, delta={self.delta}, h={self.context_width})"

    # -- generation -----------------------------------------------------------------------------------

    def processor(self, key: WatermarkKey, delta: float | None = None, **_: object) -> GreenListProcessor:
        """A logits hook for one request: adds delta to this step's green tokens."""
        return GreenListProcessor(self, key, self.delta if delta is None else delta)

    def green_mask(self, key: WatermarkKey, context: Sequence[int], vocab_size: int) -> np.ndarray:
        """The green list of one context as a boolean mask over the vocabulary (reference path)."""
        values = fmix32(token_table(key, vocab_size) ^ np.uint32(context_seed(key, context)))
        return values < np.uint32(self.threshold)

    # -- detection ------------------------------------------------------------------------------------

    def is_green(self, key: WatermarkKey, contexts: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        return prf32(key, contexts, tokens) < np.uint32(self.threshold)

    def score_pairs(
        self, key: WatermarkKey, contexts: np.ndarray, tokens: np.ndarray, seen: int, threshold: float = 4.0
    ) -> Detection:
        n = int(tokens.size)
        green = np.count_nonzero(self.is_green(key, contexts, tokens)) if n else 0
        return count_detections(self.name, [key], np.array([green]), n, self.gamma, n, seen, threshold)[0]

    def score_many(
        self, keys: list[WatermarkKey], contexts: np.ndarray, tokens: np.ndarray, seen: int, threshold: float = 4.0
    ) -> list[Detection]:
        """score_pairs under every key in one vectorised pass (same results, for attribution)."""
        n = int(tokens.size)
        if n == 0:
            return [self.score_pairs(k, contexts, tokens, seen, threshold) for k in keys]
        greens = np.count_nonzero(prf32_many(keys, contexts, tokens) < np.uint32(self.threshold), axis=1)
        return count_detections(self.name, keys, greens, n, self.gamma, n, seen, threshold)


class GreenListProcessor:
    """The per-request hook: (input_ids, scores) -> scores with delta added to the green list.

    Runs once per generated token on the model's worker thread. Buffers are allocated on the first
    call (the vocabulary size comes from the scores) and reused: the step costs a handful of
    vectorised passes over the vocabulary and no allocation.
    """

    def __init__(self, scheme: GreenListWatermark, key: WatermarkKey, delta: float) -> None:
        self.scheme = scheme
        self.key = key
        self.delta = float(delta)
        self.h = scheme.context_width
        self._thr = np.uint32(scheme.threshold)
        self._table: np.ndarray | None = None
        self.steps = 0

    def _setup(self, scores: np.ndarray) -> None:
        v = scores.shape[-1]
        self._table = token_table(self.key, v)
        self._buf = np.empty(v, np.uint32)
        self._tmp = np.empty(v, np.uint32)
        self._mask = np.empty(v, np.bool_)
        self._bias = np.empty(v, scores.dtype)
        self._delta = scores.dtype.type(self.delta)

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        if len(input_ids) < self.h or math.isclose(self.delta, 0.0):
            return scores
        if self._table is None or self._table.shape[0] != scores.shape[-1] or self._bias.dtype != scores.dtype:
            self._setup(scores)
        seed = np.uint32(context_seed(self.key, input_ids[-self.h :]))
        np.bitwise_xor(self._table, seed, out=self._buf)
        fmix32(self._buf, out=self._buf, tmp=self._tmp)
        np.less(self._buf, self._thr, out=self._mask)
        np.multiply(self._mask, self._delta, out=self._bias)
        np.add(scores, self._bias, out=scores)
        self.steps += 1
        return scores
