"""Text-level detection: tokenise, then test under a key (`Detector.detect`) or every key
(`Detector.attribute`). The CLI (`distillshield watermark detect`) and the evidence bundle use it.

With a `weigher` (watermark/weights.py) the tournament is tested entropy-weighted: each token counts as
much as the sampler could have moved it, as the model that generated the text sees it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from distillshield.watermark.attribution import ALPHA, SECONDARY_ALPHA, Attribution, attribute, score_keys
from distillshield.watermark.base import Detection
from distillshield.watermark.keys import WatermarkKey
from distillshield.watermark.schemes import Scheme, require_weights
from distillshield.watermark.tokenizer import Tokenizer
from distillshield.watermark.weights import TokenWeigher


@dataclass
class Detector:
    scheme: Scheme
    tokenizer: Tokenizer
    threshold: float = 4.0
    weigher: TokenWeigher | None = None

    def __post_init__(self) -> None:
        if self.weigher is not None:
            require_weights(self.scheme)

    def detect(self, text: str | Sequence[str], key: WatermarkKey) -> Detection:
        """One text, or several pooled into one test (their distinct pairs counted once)."""
        ids = self._ids(text)
        if self.weigher is None:
            return self.scheme.detect(key, ids, self.threshold)
        return score_keys(self.scheme, ids, [key], self.threshold, weights=self.weights(ids))[0][0]

    def attribute(
        self,
        text: str | Sequence[str],
        keys: Sequence[WatermarkKey],
        correction: str = "holm",
        alpha: float = ALPHA,
        secondary_alpha: float = SECONDARY_ALPHA,
    ) -> Attribution:
        ids = self._ids(text)
        return attribute(
            self.scheme,
            ids,
            keys,
            correction=correction,
            alpha=alpha,
            secondary_alpha=secondary_alpha,
            threshold=self.threshold,
            weights=self.weights(ids),
        )

    def weights(self, ids: list[list[int]]) -> list[np.ndarray] | None:
        """Each sequence's token weights, or None when testing unweighted."""
        return None if self.weigher is None else [self.weigher.weights(x) for x in ids]

    def _ids(self, text: str | Sequence[str]) -> list[list[int]]:
        texts = [text] if isinstance(text, str) else list(text)
        return [self.tokenizer.encode(t) for t in texts]
