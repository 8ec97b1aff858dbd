"""Entropy-weighted tournament detection (watermark/weights.py): the weighted count's exact null, its
calibration under keys that did not mark the text, and its power where much of a text is determined."""

from __future__ import annotations

import math

import numpy as np
import pytest

from distillshield.watermark.attribution import attribute, score_keys
from distillshield.watermark.base import scored_pairs
from distillshield.watermark.keys import KeyRing
from distillshield.watermark.kgw import GreenListWatermark
from distillshield.watermark.stats import binomial_log10_sf
from distillshield.watermark.tournament import TournamentWatermark
from distillshield.watermark.weights import EXACT_FLOOR, WEIGHT_LEVELS, WeightedNull, quantise, weighted_pairs

SECRET = "weights-test-secret-0123456789abcdef"
V = 3000


def test_the_null_is_the_binomial_when_every_pair_has_full_weight() -> None:
    n, m = 200, 8
    null = WeightedNull(np.full(n, WEIGHT_LEVELS), m, 0.5)
    for ones in (820, 850, 900, 930):
        assert null.log10_sf(WEIGHT_LEVELS * ones) == pytest.approx(binomial_log10_sf(ones, n * m, 0.5), abs=1e-6)
    assert null.z(WEIGHT_LEVELS * 800) == pytest.approx(0.0)


def test_the_exact_tail_matches_simulation_and_the_bound_only_overstates_it() -> None:
    rng = np.random.default_rng(1)
    levels = rng.integers(0, WEIGHT_LEVELS + 1, 150)
    null = WeightedNull(levels, 8, 0.5)
    sims = (rng.binomial(8, 0.5, (100_000, levels.size)) * levels).sum(axis=1)
    for q in (0.9, 0.99, 0.999):
        s = int(np.quantile(sims, q))
        observed = float((sims >= s).mean())
        exact = 10 ** null.log10_sf(s)
        assert abs(exact - observed) < 4 * math.sqrt(observed / sims.size) + 1e-4, (q, exact, observed)
        assert null._chernoff(s) >= null.log10_sf(s) - 1e-9  # an upper bound on the p-value
    # Monotone in s, across the point where the exact tail hands over to the bound.
    tail = [null.log10_sf(s) for s in range(int(null.mean), null.support + 1, 7)]
    assert all(b <= a + 1e-12 for a, b in zip(tail, tail[1:], strict=False))
    assert min(tail) < math.log10(EXACT_FLOOR)
    assert null.log10_sf(null.support + 1) == -math.inf and null.log10_sf(0) == 0.0


def test_pairs_keep_their_first_weight_and_weights_must_match_the_ids() -> None:
    ids = np.array([5, 6, 7, 8, 9, 5, 6, 7, 8, 9])
    w = np.linspace(0.0, 1.0, ids.size)
    ctx, tok, levels, seen = weighted_pairs([ids], [w], 4)
    assert seen == 10 and len(tok) == 5  # (5 6 7 8 -> 9) comes back at the end and counts once
    first = dict(zip(map(tuple, np.column_stack([ctx, tok]).tolist()), levels.tolist(), strict=True))
    assert first[(5, 6, 7, 8, 9)] == quantise(w[4:5])[0]
    with pytest.raises(ValueError, match="one for one"):
        weighted_pairs([ids], [w[:-1]], 4)


def test_full_weights_give_the_unweighted_test_and_other_schemes_refuse_weights() -> None:
    ring = KeyRing(SECRET)
    keys = [ring.account(f"a{i}") for i in range(40)]
    ids = np.random.default_rng(0).integers(0, V, 300)
    wm = TournamentWatermark(4, 8)
    plain = wm.score_many(keys, *scored_pairs(ids, 4))
    weighted, scored = score_keys(wm, ids, keys, weights=[np.ones(ids.size)])
    assert scored == plain[0].scored
    for a, b in zip(plain, weighted, strict=True):
        assert (a.score, a.key_label) == (b.score, b.key_label)
        assert a.z == pytest.approx(b.z) and a.log10_p == pytest.approx(b.log10_p, abs=1e-6)
    with pytest.raises(ValueError, match="no entropy-weighted test"):
        attribute(GreenListWatermark(0.25, 2.0, 1), ids, keys, weights=[np.ones(ids.size)])


def test_weighted_p_values_are_calibrated_under_keys_that_did_not_mark_the_text() -> None:
    rng = np.random.default_rng(2)
    ring = KeyRing(SECRET)
    keys = [ring.account(f"n{i}") for i in range(2000)]
    ids = rng.integers(0, V, 160)
    w = rng.random(ids.size) ** 2  # uneven weights, as real texts have
    dets, _ = score_keys(TournamentWatermark(4, 8), ids, keys, weights=[w])
    p = np.array([d.p_value for d in dets])
    for level in (0.01, 0.05, 0.2):
        share = float((p <= level).mean())
        sd = math.sqrt(level * (1 - level) / len(keys))
        assert share <= level + 4 * sd, (level, share)  # valid: never more rejections than the level allows
        assert share >= level - 4 * sd - 0.01, (level, share)  # and not far below it (the tail is exact here)


def synthetic_text(wm: TournamentWatermark, key, n: int, seed: int) -> tuple[list[int], np.ndarray]:
    """A synthetic model where two positions in three are determined (one token holds 99.9%) and the third is
    open (8 equally likely tokens), sampled through the tournament; with the weights the model gives."""
    rng = np.random.default_rng(seed)
    ids = [int(x) for x in rng.integers(0, V, wm.context_width)]
    weights = [0.0] * len(ids)
    hook = wm.processor(key, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=seed)
    hook(np.zeros(0, np.int64), np.zeros(V, np.float32))  # no prompt: every token of `ids` is the text's
    for t in range(n):
        scores = np.full(V, -50.0, np.float32)
        cand = np.random.default_rng(hash(tuple(ids[-wm.context_width :])) % (2**32)).choice(V, 8, replace=False)
        if t % 3:
            scores[cand[0]] = 0.0
            scores[cand[1:]] = -7.0
        else:
            scores[cand] = 0.0
        p = np.exp(scores[cand] - scores[cand].max())
        p /= p.sum()
        weights.append(1.0 - float((p * p).sum()))
        ids.append(int(np.argmax(hook(np.asarray(ids), scores))))  # the hook leaves the chosen token only
    return ids, np.asarray(weights)


def test_weights_find_the_watermark_where_most_tokens_carry_none() -> None:
    wm, ring = TournamentWatermark(4, 4), KeyRing(SECRET)
    key = ring.account("alice")
    gains = []
    for seed in range(8):
        ids, w = synthetic_text(wm, key, 150, seed)
        plain = wm.detect(key, ids)
        weighted = score_keys(wm, ids, [key], weights=[w])[0][0]
        gains.append(weighted.z / plain.z)
        assert weighted.detected and not score_keys(wm, ids, [ring.account("bob")], weights=[w])[0][0].detected
    # Only the open third carries the watermark: weighting it alone lifts z by about sqrt(3) on average.
    assert min(gains) > 1.0 and np.mean(gains) > 1.4, gains
