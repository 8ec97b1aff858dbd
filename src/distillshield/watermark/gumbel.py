"""The distortion-free Gumbel-max watermark (Aaronson 2022; the family of SynthID-Text's sampler).

Generation: with u_t = prf32(key, context, t) / 2**32 a keyed uniform draw per candidate token,
pick argmax_t (log p_t + G_t) with G_t = -log(-log u_t): by the Gumbel-max trick this *is* a
sample from p, so for a random key the output distribution is unchanged (no quality cost in
expectation). The randomness comes from the key and context instead of the sampler, so the chosen
tokens have unusually high u. Detection sums s = -log(1 - u) over the distinct (context, token)
pairs; without the key each term is Exp(1), so the sum is Gamma(n, 1) and

    z = (S - n) / sqrt(n),  p = P(Gamma(n, 1) >= S) (exact).

Costs, honestly: for one key and context the choice is deterministic, so the same prompt gives
the same answer (less diversity than sampling); a context already seen in this response is sampled
normally instead (keeps distortion-freeness over the sequence and avoids loops, as in Aaronson's
and SynthID's repeated-context masking), which weakens detection on repetitive text. Detection
power depends on the entropy of each step: at low temperature there is little randomness to bend.

p is the distribution the embedded model's sampler would use: llama.cpp's top-k, top-p and min-p
truncation on the raw logits, then the temperature, so turning the watermark on changes nothing
else about sampling.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from distillshield.watermark.base import (
    DEFAULT_MIN_P,
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_K,
    DEFAULT_TOP_P,
    Detection,
    PairScorer,
)
from distillshield.watermark.keys import WatermarkKey, context_seed, fmix32, prf32, prf32_many, token_table
from distillshield.watermark.stats import gamma_log10_sf_many

SUPPRESS = -1.0e9  # finite (no NaN in the samplers downstream), far below any real logit
PREFILTER = 15.0  # logits this far below the max have p < 3e-7: never in top-p/min-p candidates


def uniforms(values: np.ndarray) -> np.ndarray:
    """prf32 values -> uniforms in (0, 1), never exactly 0 or 1."""
    return (values.astype(np.float64) + 0.5) / 2.0**32


def truncated(scores: np.ndarray, top_k: int, top_p: float, min_p: float) -> np.ndarray:
    """Token ids llama.cpp's sampler chain (top-k -> top-p -> min-p on the raw logits) would keep, most
    likely first: the candidates a keyed sampler chooses among, so that it changes nothing else."""
    top = float(scores.max())
    cand = np.flatnonzero(scores >= top - PREFILTER)
    logits = scores[cand].astype(np.float64)
    if 0 < top_k < cand.size:  # partial selection first: flat logits can pass the prefilter en masse
        part = np.argpartition(-logits, top_k - 1)[:top_k]
        cand, logits = cand[part], logits[part]
    order = np.argsort(-logits, kind="stable")
    cand, logits = cand[order], logits[order]
    if top_p < 1.0:
        p = np.exp(logits - logits[0])
        cum = np.cumsum(p / p.sum())
        keep = int(np.searchsorted(cum, top_p)) + 1  # up to and including the crossing token
        cand, logits = cand[:keep], logits[:keep]
    if min_p > 0.0:
        cand = cand[logits >= logits[0] + math.log(min_p)]
    return cand


class GumbelWatermark(PairScorer):
    """Gumbel-max sampling keyed by (key, previous h tokens)."""

    name = "gumbel"

    def __init__(self, context_width: int = 4) -> None:
        if context_width < 1:
            raise ValueError(f"context width must be >= 1, got {context_width}")
        self.context_width = context_width

    def __repr__(self) -> str:
        return f"GumbelWatermark(h={self.context_width})"

    def processor(
        self,
        key: WatermarkKey,
        temperature: float = DEFAULT_TEMPERATURE,
        top_k: int = DEFAULT_TOP_K,
        top_p: float = DEFAULT_TOP_P,
        min_p: float = DEFAULT_MIN_P,
        **_: object,
    ) -> GumbelProcessor:
        return GumbelProcessor(self, key, temperature, top_k, top_p, min_p)

    def score_pairs(
        self, key: WatermarkKey, contexts: np.ndarray, tokens: np.ndarray, seen: int, threshold: float = 4.0
    ) -> Detection:
        return self._detections([key], prf32(key, contexts, tokens)[None, :], int(tokens.size), seen, threshold)[0]

    def score_many(
        self, keys: list[WatermarkKey], contexts: np.ndarray, tokens: np.ndarray, seen: int, threshold: float = 4.0
    ) -> list[Detection]:
        """score_pairs under every key in one vectorised pass (same results, for attribution)."""
        return self._detections(keys, prf32_many(keys, contexts, tokens), int(tokens.size), seen, threshold)

    def _detections(
        self, keys: list[WatermarkKey], values: np.ndarray, n: int, seen: int, threshold: float
    ) -> list[Detection]:
        """Detections from a (keys, n) array of keyed values: S = sum -log(1 - u) per key against Gamma(n, 1)."""
        totals = np.sum(-np.log1p(-uniforms(values)), axis=1) if n else np.zeros(len(keys))
        tails = gamma_log10_sf_many(totals, n)
        return [
            Detection(self.name, k.label, seen, n, float(s), (float(s) - n) / math.sqrt(n) if n else 0.0, float(lp),
                      threshold)
            for k, s, lp in zip(keys, totals, tails, strict=True)
        ]  # fmt: skip


class GumbelProcessor:
    """Per-request hook: replaces the sampler's random draw by the keyed Gumbel-max choice (`choose`; the
    tournament's processor chooses differently over the same candidates, contexts and keyed values).

    Called as llama.cpp calls a logits processor, `(ids so far, scores)` once per step: the first call's ids are
    the prompt, so one hook serves one request (an empty first call: no prompt, every token is the answer's)."""

    def __init__(
        self,
        scheme: PairScorer,
        key: WatermarkKey,
        temperature: float,
        top_k: int,
        top_p: float,
        min_p: float,
    ) -> None:
        self.key = key
        self.h = scheme.context_width
        self.temperature = float(temperature)
        self.top_k = int(top_k)
        self.top_p = float(top_p)
        self.min_p = float(min_p)
        self._seen: set[tuple[int, ...]] = set()
        self._start: int | None = None  # the prompt's length: the first call sees the prompt alone
        self.steps = 0
        self.skipped = 0

    def candidates(self, scores: np.ndarray) -> np.ndarray:
        """Token ids llama.cpp's chain (top-k -> top-p -> min-p on raw logits) would keep."""
        return truncated(scores, self.top_k, self.top_p, self.min_p)

    def choose(self, logits: np.ndarray, values: np.ndarray) -> int:
        """The index of the keyed choice among the candidates (their tempered logits and keyed values):
        Gumbel-max, argmax of logit + G with G = -log(-log u)."""
        return int(np.argmax(logits - np.log(-np.log(uniforms(values)))))

    @classmethod
    def choose_many(
        cls, samplers: Sequence[GumbelProcessor], logits: np.ndarray, values: np.ndarray, sizes: np.ndarray
    ) -> np.ndarray:
        """`choose` for a batch of rows: their tempered logits (B, n; a row with fewer candidates is padded
        with -inf) and keyed values (B, n). Elementwise, so a row chooses the same in any batch."""
        return np.argmax(logits - np.log(-np.log(uniforms(values))), axis=1)

    def answer_context(self, answer: Sequence[int]) -> tuple[int, ...] | None:
        """The context this step of the answer is keyed by, recorded as seen; None when the step is left to
        the sampler: the answer's first h tokens, a greedy request, or a context already seen (then counted in
        `skipped`). One rule for the embedded hook and the vLLM processor (watermark/vllm.py)."""
        if len(answer) < self.h or self.temperature <= 0.0:
            # The first h answer tokens' contexts reach into the prompt (for a chat, the template's constant
            # "assistant" header), which a detector reading the answer alone never sees, so it cannot score
            # them: marking them would buy no evidence and make one account's answers start alike.
            return None
        ctx = tuple(int(t) for t in answer[-self.h :])
        if ctx in self._seen:  # repeated context: let the sampler draw normally
            self.skipped += 1
            return None
        self._seen.add(ctx)
        return ctx

    def keyed_values(self, ctx: tuple[int, ...], cand: np.ndarray, vocab: int) -> np.ndarray:
        """The keyed value of each candidate token id for context `ctx`, in a vocabulary of `vocab` tokens."""
        return fmix32(token_table(self.key, vocab)[cand] ^ np.uint32(context_seed(self.key, ctx)))

    @classmethod
    def choose_rows(
        cls,
        samplers: Sequence[GumbelProcessor],
        contexts: Sequence[tuple[int, ...]],
        top_ids: np.ndarray,
        top_values: np.ndarray,
        vocab: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        """For a batch of rows, each with its own sampler and context and the top of its logits (token ids and
        their float32 logits, (B, W), likeliest first): each row's keyed token and that token's logit. A row
        chooses as the embedded hook would from the same logits (its `candidates`, then `choose_token`'s
        choice), but the choice is made for every row at once (`choose_many`, numpy over the padded batch).
        The vLLM processor (watermark/vllm.py) calls this with its batch."""
        local = [s.candidates(v) for s, v in zip(samplers, top_values, strict=True)]
        sizes = np.asarray([len(c) for c in local], dtype=np.int64)
        logits = np.full((len(samplers), int(sizes.max())), -np.inf)
        values = np.zeros(logits.shape, dtype=np.uint32)
        for r, (s, ctx, c) in enumerate(zip(samplers, contexts, local, strict=True)):
            logits[r, : sizes[r]] = top_values[r][c].astype(np.float64) / s.temperature
            values[r, : sizes[r]] = s.keyed_values(ctx, top_ids[r][c], vocab)
            s.steps += 1
        chosen = cls.choose_many(samplers, logits, values, sizes)
        rows = np.arange(len(samplers))
        at = np.asarray([c[k] for c, k in zip(local, chosen, strict=True)], dtype=np.int64)  # back to the top's columns
        return top_ids[rows, at], top_values[rows, at]

    def choose_token(self, ctx: tuple[int, ...], cand: np.ndarray, cand_scores: np.ndarray, vocab: int) -> int:
        """The keyed choice among candidate token ids `cand` (their raw logits `cand_scores`, in
        `candidates`' order) for context `ctx`, in a vocabulary of `vocab` tokens."""
        values = self.keyed_values(ctx, cand, vocab)
        self.steps += 1
        return int(cand[self.choose(np.asarray(cand_scores, np.float64) / self.temperature, values)])

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        if self._start is None:
            self._start = len(input_ids)
        ctx = self.answer_context(input_ids[self._start :])
        if ctx is None:
            return scores
        cand = self.candidates(scores)
        winner = self.choose_token(ctx, cand, scores[cand], scores.shape[-1])
        keep = scores[winner]
        scores[:] = SUPPRESS
        scores[winner] = keep
        return scores
