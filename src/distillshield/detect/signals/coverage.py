"""Capability concentration and coverage: the topic distribution of an account's prompts.

Topics are the benign reference corpus's k-means areas in sentence-embedding space (fitted at run time
for whichever encoder is in use, see distribution.EmbeddingReference). A systematic sweep covers many
areas and works through them in blocks; an app stays in one or two; a casual user wanders at random.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from distillshield.detect.base import SignalScore
from distillshield.detect.signals.distribution import TOPICS, EmbedState

if TYPE_CHECKING:
    from distillshield.detect.engine import Context


class CapabilityCoverage:
    """Topic distribution of an account's prompts: broad systematic sweeps vs an app's narrow focus and a
    casual user's random wandering. Shares the per-account embedding state with DistributionTest."""

    name = "coverage"

    def fit(self, reference: Any) -> CapabilityCoverage:
        return self

    def score(self, st: EmbedState, ctx: Context) -> SignalScore:
        m = st.m
        if m < 4:
            return SignalScore(
                self.name,
                0.0,
                "too few prompts to judge coverage",
                {"topic_entropy": 0.0, "topic_top": 1.0, "topic_runs": 1.0},
            )
        p = np.asarray(st.topics, dtype=np.float64) / m
        nz = p[p > 0]
        entropy = float(-(nz * np.log(nz)).sum() / math.log(TOPICS))
        covered = int((p >= 0.03).sum())
        expected_switch = max(1.0 - float((p**2).sum()), 0.05)
        runs = (st.switches / max(m - 1, 1)) / expected_switch  # ~1 random order, <1 blocks of one topic
        score = entropy * max(0.0, 1.0 - runs) if covered >= 6 else 0.0
        if covered >= 6 and runs < 0.6:
            detail = f"systematic sweep: {covered} of {TOPICS} topic areas, worked through in blocks"
        elif covered >= 6:
            detail = f"broad coverage: {covered} of {TOPICS} topic areas in {m} sampled prompts"
        else:
            detail = f"focused on {covered} topic area(s) ({p.max():.0%} in the largest)"
        return SignalScore(
            self.name,
            score,
            detail,
            {"topic_entropy": entropy, "topic_top": float(p.max()), "topic_runs": min(runs, 2.0)},
        )
