"""Tournament sampling (SynthID-Text, Dathathri et al., Nature 2024): distortion-free per step and still
random, so repeated samples of one prompt differ.

Generation, per step: the candidates and their probabilities p are what the embedded model's sampler
would use (llama.cpp's top-k, top-p, min-p, then the temperature). Each of `layers` (m) keyed bits
g_l(x) = bit l of prf32(key, context, x) holds a knock-out round between two independent draws from
the current distribution: the draw with the larger g wins, a tie is decided by a fair coin. One round
turns q into

    q'(x) = q(x) * (1 + g_l(x) - sum_y q(y) g_l(y))

(two draws; x wins outright against any y with g_l(y) < g_l(x) and half the ties), so the m rounds are
applied to p exactly (no 2**m draws), and the token is then drawn from the result with the sampler's own
randomness: the same prompt gives different answers, unlike Gumbel-max. Over keys, each g_l(x) is a fair
coin and E[q'(x)] = q(x): the step's distribution is the model's.

Detection: the winners carry more 1-bits than chance. For n distinct (context, token) pairs the score is
the number of 1-bits among their n*m g values; without the key each is a fair coin, so the count is
Binomial(n*m, 1/2): z = (S - nm/2) / sqrt(nm/4) and an exact binomial p. This is SynthID's mean score
(its Bayesian detector needs a trained likelihood model). A context already seen in the response is
sampled normally (repeated-context masking, as SynthID and Aaronson do), and the first `context_width`
tokens of the answer have no context inside it: they are neither scored nor marked (their contexts reach
into the prompt, for a chat the template's constant header, so marking them would only make one account's
answers to a prompt begin alike).

Hand-written: SynthID's reference code is JAX/PyTorch and keyed by its own hash; the keys here must be
the per-account keys of watermark/keys.py that every other scheme and the attribution share.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import numpy as np

from distillshield.watermark.base import (
    DEFAULT_MIN_P,
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_K,
    DEFAULT_TOP_P,
    Detection,
    PairScorer,
    count_detections,
)
from distillshield.watermark.gumbel import GumbelProcessor
from distillshield.watermark.keys import WatermarkKey, prf32, prf32_many
from distillshield.watermark.weights import WEIGHT_LEVELS, WeightedNull

MAX_LAYERS = 32  # bits of one prf32 value
# Rounds: each adds detection evidence while the winner's distribution still has more than one likely
# token, and concentrates one key's distribution for a context further, so one account's repeated samples
# of a prompt grow alike where they pass through the same context. With the config's context width 8 (and
# the answer's opening left unmarked) 8 rounds keep those samples as diverse as unwatermarked sampling
# (docs/watermark.md, "Watermark on by default"); watermark.tournament_layers sets it.
LAYERS = 8
_POPCOUNT = np.array([bin(b).count("1") for b in range(256)], dtype=np.uint8)  # 1-bits of each byte value


def ones_per_pair(values: np.ndarray, layers: int) -> np.ndarray:
    """How many of the low `layers` bits of each prf32 value are 1: (keys, n) or (n,) values, same shape back."""
    mask = np.uint32((1 << layers) - 1) if layers < MAX_LAYERS else np.uint32(0xFFFFFFFF)
    masked = np.ascontiguousarray(values & mask)
    per_byte = _POPCOUNT[masked.view(np.uint8)]  # a byte table: 4x np.unpackbits
    return per_byte.reshape(*masked.shape, 4).sum(axis=-1, dtype=np.int64)


def ones(values: np.ndarray, layers: int) -> np.ndarray:
    """The detection score: the 1-bits of all pairs, one count per key for a (keys, n) array of prf32
    values, a 0-d count for one key's (n,) values."""
    return ones_per_pair(values, layers).sum(axis=-1)


def tournament_many(p: np.ndarray, values: np.ndarray, layers: np.ndarray | int) -> np.ndarray:
    """The distributions of the tournaments' winners for a batch of rows: each row's candidates'
    probabilities p (B, n; a row with fewer candidates ends in zeros) through the rounds whose bits are those
    of the candidates' keyed values (round l: bit l), `layers` rounds (one count, or one per row).

    Every sum is a running sum (np.cumsum adds in order, as `tournament`'s loop does), so a row comes out the
    same whatever the batch holds and however far it is padded, and as `tournament` gives it: the vLLM
    processor choosing for a batch and the embedded model's hook choosing for one row draw the same token
    from the same logits."""
    q = np.array(p, dtype=np.float64)
    rounds = np.broadcast_to(np.asarray(layers), (q.shape[0],))
    most = int(rounds.max(initial=0))
    shifts = np.arange(most, dtype=np.uint32)
    bits = ((np.asarray(values, dtype=np.uint32)[..., None] >> shifts) & np.uint32(1)).astype(np.float64)
    ones = 1.0 + bits  # (B, n, rounds): every round's bits at once (numpy's per-call cost is most of it here)
    same = bool((rounds == most).all())
    for layer in range(most):
        s = np.cumsum(q * bits[..., layer], axis=1)[:, -1:]
        nxt = np.maximum(q * (ones[..., layer] - s), 0.0)  # >= 0 exactly despite rounding
        q = nxt if same else np.where((layer < rounds)[:, None], nxt, q)  # fewer rounds: the row keeps its q
    return q / np.cumsum(q, axis=1)[:, -1:]


def tournament(p: Sequence[float], values: Sequence[int], layers: int) -> list[float]:
    """The distribution of the tournament's winner for one row: plain Python floats, because the embedded
    model's hook chooses for one row with a handful of candidates, where a loop over lists costs a fraction
    of numpy's per-call overhead (the hook runs once per generated token). The same arithmetic as
    `tournament_many`, in the same order (sums added left to right), so the two agree bit for bit."""
    q = [float(x) for x in p]
    v = [int(x) for x in values]
    for layer in range(layers):
        bits = [(x >> layer) & 1 for x in v]
        s = sum(qi for qi, b in zip(q, bits, strict=True) if b)
        q = [max(qi * (1.0 + b - s), 0.0) for qi, b in zip(q, bits, strict=True)]  # >= 0 exactly despite rounding
    total = sum(q)
    return [qi / total for qi in q]


class TournamentWatermark(PairScorer):
    """SynthID-style tournament sampling keyed by (key, previous h tokens), with the mean-score detector."""

    name = "tournament"

    def __init__(self, context_width: int = 4, layers: int = LAYERS) -> None:
        if context_width < 1:
            raise ValueError(f"context width must be >= 1, got {context_width}")
        if not 1 <= layers <= MAX_LAYERS:
            raise ValueError(f"layers must be in 1..{MAX_LAYERS}, got {layers}")
        self.context_width = context_width
        self.layers = layers

    def __repr__(self) -> str:
        return f"TournamentWatermark(h={self.context_width}, m={self.layers})"

    def processor(
        self,
        key: WatermarkKey,
        temperature: float = DEFAULT_TEMPERATURE,
        top_k: int = DEFAULT_TOP_K,
        top_p: float = DEFAULT_TOP_P,
        min_p: float = DEFAULT_MIN_P,
        seed: int | None = None,
        **_: object,
    ) -> TournamentProcessor:
        return TournamentProcessor(self, key, temperature, top_k, top_p, min_p, seed)

    def score_pairs(
        self, key: WatermarkKey, contexts: np.ndarray, tokens: np.ndarray, seen: int, threshold: float = 4.0
    ) -> Detection:
        n = int(tokens.size)
        count = ones(prf32(key, contexts, tokens), self.layers) if n else 0
        return count_detections(self.name, [key], np.array([count]), n * self.layers, 0.5, n, seen, threshold)[0]

    def score_many(
        self, keys: list[WatermarkKey], contexts: np.ndarray, tokens: np.ndarray, seen: int, threshold: float = 4.0
    ) -> list[Detection]:
        """score_pairs under every key in one vectorised pass (same results, for attribution)."""
        n = int(tokens.size)
        if n == 0:
            return [self.score_pairs(k, contexts, tokens, seen, threshold) for k in keys]
        counts = ones(prf32_many(keys, contexts, tokens), self.layers)
        return count_detections(self.name, keys, counts, n * self.layers, 0.5, n, seen, threshold)

    def score_weighted(
        self,
        keys: list[WatermarkKey],
        contexts: np.ndarray,
        tokens: np.ndarray,
        levels: np.ndarray,
        seen: int,
        threshold: float = 4.0,
    ) -> list[Detection]:
        """The entropy-weighted test (watermark/weights.py) under every key: S = sum over pairs of the pair's
        weight level times its 1-bits, against S's exact null. `levels` (integers 0..WEIGHT_LEVELS) come
        from `weights.weighted_pairs`; with every level at the top the test is `score_many`'s."""
        n = int(tokens.size)
        null = WeightedNull(levels, self.layers, 0.5)
        if n == 0:
            sums = np.zeros(len(keys), dtype=np.int64)
        else:
            sums = ones_per_pair(prf32_many(keys, contexts, tokens), self.layers) @ np.asarray(levels, np.int64)
        stats = {s: (null.z(s), null.log10_sf(s)) for s in set(sums.tolist())}
        return [
            Detection(self.name, k.label, seen, n, s / WEIGHT_LEVELS, *stats[s], threshold)
            for k, s in zip(keys, sums.tolist(), strict=True)
        ]


class TournamentProcessor(GumbelProcessor):
    """Per-request hook: draws the next token from the tournament's winner distribution over the sampler's
    candidates (the sampler's own draw is replaced, so the scores handed back leave it one candidate);
    repeated contexts and greedy requests are handled as for Gumbel-max."""

    def __init__(
        self,
        scheme: TournamentWatermark,
        key: WatermarkKey,
        temperature: float,
        top_k: int,
        top_p: float,
        min_p: float,
        seed: int | None = None,
    ) -> None:
        super().__init__(scheme, key, temperature, top_k, top_p, min_p)
        self.layers = scheme.layers
        self.rng = np.random.default_rng(seed)  # fresh entropy per request unless a seed is given (tests)

    def choose(self, logits: np.ndarray, values: np.ndarray) -> int:
        if len(values) < 2:
            return 0
        p = np.exp(logits - logits.max())
        q = tournament((p / np.cumsum(p)[-1]).tolist(), values.tolist(), self.layers)  # a running sum, as in a batch
        u, acc = self.rng.random(), 0.0
        for i, qi in enumerate(q):  # inverse CDF (numpy's choice(p=q) validates q at ten times the cost)
            acc += qi
            if u < acc:
                return i
        return len(q) - 1

    @classmethod
    def choose_many(
        cls, samplers: Sequence[GumbelProcessor], logits: np.ndarray, values: np.ndarray, sizes: np.ndarray
    ) -> np.ndarray:
        """Each row's draw from its tournament's winner distribution, with its own sampler's randomness (a row
        with one candidate takes it and draws nothing): `choose` for a batch, numpy over the rows."""
        chosen = np.zeros(len(samplers), dtype=np.int64)
        multi = np.flatnonzero(sizes >= 2)
        if multi.size == 0:
            return chosen
        own = cast("Sequence[TournamentProcessor]", samplers)
        rows = logits[multi]
        p = np.exp(rows - rows.max(axis=1, keepdims=True))  # a row's padding (-inf) has p = 0
        rounds = np.asarray([own[i].layers for i in multi])
        q = tournament_many(p / np.cumsum(p, axis=1)[:, -1:], values[multi], rounds)
        u = np.asarray([own[i].rng.random() for i in multi])
        # inverse CDF: the first candidate whose running total passes u (rounding can leave the total a hair
        # under 1: then the last candidate; padding repeats the total and is never taken)
        below = (np.cumsum(q, axis=1) <= u[:, None]).sum(axis=1)
        chosen[multi] = np.minimum(below, sizes[multi] - 1)
        return chosen
