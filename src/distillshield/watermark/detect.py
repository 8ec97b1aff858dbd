"""Text-level detection: tokenise, then test under a key (`Detector.detect`) or every key
(`Detector.attribute`). The CLI (`distillshield watermark detect`) and the evidence bundle use it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from distillshield.watermark.attribution import ALPHA, SECONDARY_ALPHA, Attribution, attribute
from distillshield.watermark.base import Detection
from distillshield.watermark.keys import WatermarkKey
from distillshield.watermark.schemes import Scheme
from distillshield.watermark.tokenizer import Tokenizer


@dataclass
class Detector:
    scheme: Scheme
    tokenizer: Tokenizer
    threshold: float = 4.0

    def detect(self, text: str | Sequence[str], key: WatermarkKey) -> Detection:
        """One text, or several pooled into one test (their distinct pairs counted once)."""
        ids = self._ids(text)
        return self.scheme.detect(key, ids, self.threshold)

    def attribute(
        self,
        text: str | Sequence[str],
        keys: Sequence[WatermarkKey],
        correction: str = "holm",
        alpha: float = ALPHA,
        secondary_alpha: float = SECONDARY_ALPHA,
    ) -> Attribution:
        return attribute(
            self.scheme,
            self._ids(text),
            keys,
            correction=correction,
            alpha=alpha,
            secondary_alpha=secondary_alpha,
            threshold=self.threshold,
        )

    def _ids(self, text: str | Sequence[str]) -> list[list[int]]:
        texts = [text] if isinstance(text, str) else list(text)
        return [self.tokenizer.encode(t) for t in texts]
