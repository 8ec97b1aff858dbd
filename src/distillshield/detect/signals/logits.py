"""Logit extraction: requests that read the model's output layer rather than its answers.

"Stealing Part of a Production Language Model" (Carlini et al., ICML 2024) recovered the embedding
projection of production models with `logit_bias` combined with logprobs: each request biases a block of
tokens (and a reference token) into the returned top-k and asks for one output token, so that the
logprobs give those tokens' logit differences; thousands of requests over changing token sets and
prompts fill a (prompts x vocabulary) matrix whose rank is the hidden size. Nothing an application does
looks like it: an app biases a fixed handful of tokens (ban a word, force a label), and evaluation
harnesses read logprobs without biasing anything.

The evidence is a count a reviewer can check: "N requests combined logit_bias over M different token sets
with logprobs and at most 4 output tokens". The gateway refuses that combination by default
(gateway/logits.py); refused requests are audited and count here all the same: the attempt is the tell.
No trained weights: this is known-technique evidence, and enough of it puts the account in the
extraction band on its own (detect/engine.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from distillshield.detect.base import SignalScore
from distillshield.detect.signals.behaviour import SWEEP_MAX_TOKENS, BehaviourState

if TYPE_CHECKING:
    from distillshield.detect.engine import Context

MIN_SWEEPS = 20  # requests of the pattern before it is evidence
MIN_SETS = 8  # ...over at least this many different token sets (an app biases the same few tokens)
STRONG_SWEEPS = 200  # the strength saturates here (the attack needs thousands)


class LogitSweep:
    """Counts an account's logit-reading requests (the state lives in its BehaviourState)."""

    name = "logits"

    def fit(self, reference: Any) -> LogitSweep:
        return self

    def score(self, st: BehaviourState, ctx: Context | None = None) -> SignalScore:
        n, sets = st.logit_sweeps, round(st.bias_sets.estimate())
        if n == 0:
            return SignalScore(self.name, 0.0, "no logit_bias with logprobs")
        detail = (
            f"{n} requests combined logit_bias over {sets} different token sets with logprobs and at most "
            f"{SWEEP_MAX_TOKENS} output tokens"
        )
        if n < MIN_SWEEPS or sets < MIN_SETS:
            return SignalScore(self.name, 0.2, detail + "; too few to be a sweep")
        strength = min(1.0, (n - MIN_SWEEPS) / (STRONG_SWEEPS - MIN_SWEEPS))
        return SignalScore(
            self.name,
            0.5 + 0.5 * strength,
            detail + ": the query pattern that reads a model's output layer (Carlini et al., 2024)",
        )
