"""The watermark's maths: keys, shared seeding, detection statistics, attribution, the schemes on a
synthetic language model (fast, no embedded model), the gateway registry and the vLLM processor."""

from __future__ import annotations

import math

import numpy as np
import pytest

from distillshield.config import ConfigError, Settings, load_settings
from distillshield.watermark import attribution
from distillshield.watermark.attribution import Attribution, Candidate, attribute
from distillshield.watermark.base import Detection, scored_pairs
from distillshield.watermark.gateway import Watermarker
from distillshield.watermark.gumbel import GumbelWatermark
from distillshield.watermark.keys import KeyRing, context_seed, context_seeds, derive_key, prf32
from distillshield.watermark.kgw import GreenListProcessor, GreenListWatermark
from distillshield.watermark.radioactivity import radioactivity_test
from distillshield.watermark.schemes import build_scheme
from distillshield.watermark.stats import binomial_log10_sf, gamma_log10_sf, holm_log10, z_score
from distillshield.watermark.texts import TextsError, read_texts
from distillshield.watermark.tournament import TournamentWatermark, tournament, tournament_many

SECRET = "unit-test-secret-0123456789abcdef"
V = 3000  # a small vocabulary keeps the synthetic model fast


def keys() -> KeyRing:
    return KeyRing(SECRET)


def generate(hook, n: int = 200, seed: int = 0, temperature: float = 1.0) -> list[int]:
    """A synthetic LM: per-context random logits (fixed by the previous token), sampled at T."""
    rng = np.random.default_rng(seed)
    ids = [int(rng.integers(V))]
    for _ in range(n):
        ctx_rng = np.random.default_rng(ids[-1] * 7919 + 13)
        scores = (ctx_rng.standard_normal(V) * 3.0).astype(np.float32)
        if hook is not None:
            scores = hook(np.asarray(ids), scores)
        z = scores.astype(np.float64) / temperature
        p = np.exp(z - z.max())
        ids.append(int(rng.choice(V, p=p / p.sum())))
    return ids


def answering(hook):
    """A hook whose first call has seen an empty prompt (vLLM's output-only form), so that each later call
    is a step of the answer: for tests of one marked step."""
    hook(np.zeros(0, np.int64), np.zeros(V, np.float32))
    return hook


# -- keys and seeding ------------------------------------------------------------------------------------


def test_keys_are_deterministic_per_account_and_never_printed() -> None:
    a1, a2, b = derive_key(SECRET, "account:a"), derive_key(SECRET, "account:a"), derive_key(SECRET, "account:b")
    assert (a1.k0, a1.k1) == (a2.k0, a2.k1) != (b.k0, b.k1)
    assert derive_key("another-secret-0123456789", "account:a").k0 != a1.k0
    assert str(a1.k0) not in repr(a1) and SECRET not in repr(keys())
    assert len(a1.fingerprint) == 16


def test_processor_and_detector_share_one_seeding_function() -> None:
    key = keys().account("alice")
    ctx = np.array([[5, 9], [1, 2], [40000, 7]])
    assert list(context_seeds(key, ctx)) == [context_seed(key, c) for c in ctx]
    wm = GreenListWatermark(gamma=0.25, delta=2.0, context_width=2)
    out = wm.processor(key)(np.array([3, 1, 2]), np.zeros(V, np.float32))
    green = np.flatnonzero(out > 1.0)
    assert abs(len(green) / V - 0.25) < 0.03
    assert wm.is_green(key, np.tile([1, 2], (V, 1)), np.arange(V)).nonzero()[0].tolist() == green.tolist()


# -- statistics ------------------------------------------------------------------------------------------


def test_binomial_tail_is_exact() -> None:
    n, g, gamma = 30, 14, 0.25
    brute = sum(math.comb(n, k) * gamma**k * (1 - gamma) ** (n - k) for k in range(g, n + 1))
    assert binomial_log10_sf(g, n, gamma) == pytest.approx(math.log10(brute), abs=1e-9)
    assert binomial_log10_sf(0, n, gamma) == 0.0
    assert z_score(int(0.25 * 400), 400, 0.25) == 0.0


def test_gamma_tail_matches_the_poisson_identity() -> None:
    n, s = 5, 9.0
    expected = sum(math.exp(-s) * s**k / math.factorial(k) for k in range(n))
    assert gamma_log10_sf(s, n) == pytest.approx(math.log10(expected), abs=1e-9)


def test_holm_adjusts_step_down_and_stays_monotone() -> None:
    adj = holm_log10([math.log10(p) for p in (0.01, 0.04, 0.03, 0.5)])
    assert [round(10**a, 6) for a in adj] == [0.04, 0.09, 0.09, 0.5]


# -- KGW on a synthetic model ----------------------------------------------------------------------------


def test_watermarked_text_is_detected_and_plain_text_is_not() -> None:
    wm, key = GreenListWatermark(0.25, 2.0, 1), keys().account("alice")
    marked = wm.detect(key, generate(wm.processor(key), seed=1))
    plain = wm.detect(key, generate(None, seed=1))
    assert marked.detected and marked.z > 6 and marked.p_value < 1e-9
    assert not plain.detected and plain.z < 3


def test_wrong_key_gives_no_detection() -> None:
    wm, ring = GreenListWatermark(0.25, 2.0, 1), keys()
    ids = generate(wm.processor(ring.account("alice")), seed=2)
    assert wm.detect(ring.account("alice"), ids).detected
    assert not wm.detect(ring.account("bob"), ids).detected
    assert not wm.detect(KeyRing("a-different-server-secret-xyz").account("alice"), ids).detected


def test_repeated_ngrams_are_scored_once() -> None:
    wm, key = GreenListWatermark(0.25, 2.0, 1), keys().account("alice")
    mask = wm.green_mask(key, [7], V)
    b = int(np.flatnonzero(mask)[0])  # b is green after 7: a loop "7 b 7 b ..." is green half the time
    loop = [7, b] * 150
    undeduped = wm.detect(key, loop, dedup=False)
    deduped = wm.detect(key, loop)
    assert undeduped.z > 8  # counting the same draw 150 times: a false positive
    assert deduped.scored == 2 and not deduped.detected


def test_null_p_values_are_calibrated() -> None:
    wm, rng = GreenListWatermark(0.25, 2.0, 1), np.random.default_rng(3)
    ring = keys()
    p = [wm.detect(ring.account(f"a{i}"), rng.integers(0, V, 150)).p_value for i in range(600)]
    assert 0.025 < np.mean(np.array(p) < 0.05) < 0.08
    assert max(wm.detect(ring.account("z"), rng.integers(0, V, 150)).z for _ in range(300)) < 4.5


# -- Gumbel ----------------------------------------------------------------------------------------------


def test_gumbel_is_detected_with_its_own_null() -> None:
    wm, key = GumbelWatermark(context_width=2), keys().account("alice")
    marked = wm.detect(key, generate(wm.processor(key, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0), seed=4))
    plain = wm.detect(key, generate(None, seed=4))
    other = wm.detect(keys().account("bob"), generate(wm.processor(key, temperature=1.0), seed=5))
    assert marked.detected and not plain.detected and not other.detected
    rng = np.random.default_rng(6)
    p = [wm.detect(keys().account(f"n{i}"), rng.integers(0, V, 120)).p_value for i in range(400)]
    assert 0.02 < np.mean(np.array(p) < 0.05) < 0.09


def test_gumbel_sampling_is_distortion_free_over_keys() -> None:
    """For random keys the keyed choice follows the model's distribution (Gumbel-max trick)."""
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05], np.float32))
    scores = np.full(V, -50.0, np.float32)
    scores[:4] = logits
    wm, ring = GumbelWatermark(1), keys()
    counts = np.zeros(4)
    for i in range(4000):
        out = answering(wm.processor(ring.account(f"k{i}"), temperature=1.0, top_k=0, top_p=1.0, min_p=0.0))(
            np.array([1]), scores.copy()
        )
        counts[int(np.argmax(out))] += 1
    assert np.allclose(counts / counts.sum(), [0.5, 0.3, 0.15, 0.05], atol=0.03)


def test_tournament_is_detected_under_its_key_only_with_a_calibrated_null() -> None:
    wm, key = TournamentWatermark(context_width=2), keys().account("alice")
    marked = wm.detect(key, generate(wm.processor(key, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0), seed=4))
    plain = wm.detect(key, generate(None, seed=4))
    other = wm.detect(keys().account("bob"), generate(wm.processor(key, temperature=1.0), seed=5))
    assert marked.detected and not plain.detected and not other.detected, (marked, plain, other)
    rng = np.random.default_rng(6)
    p = [wm.detect(keys().account(f"n{i}"), rng.integers(0, V, 120)).p_value for i in range(400)]
    assert 0.02 < np.mean(np.array(p) < 0.05) < 0.09


def test_tournament_rounds_keep_the_distribution_over_keys() -> None:
    """One round of the tournament turns q into q * (1 + g - q.g); over random bits that is q again (the
    per-step distortion-freeness), checked exactly on the rounds and on the processor's draws."""
    p = np.array([0.5, 0.3, 0.15, 0.05])
    rng = np.random.default_rng(1)
    mean = np.mean([tournament(p, rng.integers(0, 2**16, 4).tolist(), 16) for _ in range(20_000)], axis=0)
    assert np.allclose(mean, p, atol=0.01), mean
    q = tournament(p, [1, 0, 0, 1], 1)
    assert np.allclose(q, p * (1 + np.array([1, 0, 0, 1]) - (0.5 + 0.05)))  # two draws, the larger g wins
    q = tournament(p, [0b10, 0b01, 0b11, 0b00], 2)  # round 1 (bit 0) favours tokens 1, 2; round 2 tokens 0, 2
    q1 = p * (1 + np.array([0, 1, 1, 0]) - (0.3 + 0.15))
    assert np.allclose(q, q1 * (1 + np.array([1, 0, 1, 0]) - (q1[0] + q1[2])))
    scores = np.full(V, -50.0, np.float32)
    scores[:4] = np.log(p)
    wm, ring = TournamentWatermark(1), keys()
    counts = np.zeros(4)
    for i in range(4000):
        hook = answering(wm.processor(ring.account(f"k{i}"), temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=i))
        counts[int(np.argmax(hook(np.array([1]), scores.copy())))] += 1
    assert np.allclose(counts / counts.sum(), p, atol=0.03)


def test_the_batched_tournament_equals_the_one_row_loop_bit_for_bit() -> None:
    """The vLLM processor runs every row's tournament in one numpy pass over a padded batch
    (`tournament_many`); the embedded hook loops over one row's Python floats (`tournament`). Both must give
    the same floats exactly, whatever the batch holds, or a vLLM row could draw another token than the
    embedded model would from the same logits."""
    rng = np.random.default_rng(5)
    sizes = [1, 2, 3, 7, 8, 9, 16, 40, 100]
    width = max(sizes)
    p = np.zeros((len(sizes), width))
    values = np.zeros((len(sizes), width), dtype=np.uint32)
    for r, n in enumerate(sizes):
        x = rng.dirichlet(np.full(n, 0.3))  # uneven, as a model's top candidates are
        p[r, :n] = x / np.cumsum(x)[-1]
        values[r, :n] = rng.integers(0, 2**32, n, dtype=np.uint32)
    rounds = np.array([8, 8, 1, 8, 30, 8, 8, 12, 8])  # a row's own number of rounds
    batched = tournament_many(p, values, rounds)
    for r, n in enumerate(sizes):
        alone = tournament(p[r, :n].tolist(), values[r, :n].tolist(), int(rounds[r]))
        assert batched[r, :n].tolist() == alone, r  # exact float equality, not closeness
        assert not batched[r, n:].any()  # padding stays empty


def test_tournament_samples_differ_where_gumbel_repeats_itself() -> None:
    """Under one key and one context Gumbel-max always picks the same token; the tournament draws from a
    distribution, so repeated samples of the same prompt differ, as unwatermarked sampling does."""
    scores = np.full(V, -50.0, np.float32)
    scores[:6] = np.log(np.full(6, 1 / 6))
    key = keys().account("alice")

    def picks(wm: object, n: int = 200) -> set[int]:
        out = set()
        for i in range(n):
            hook = answering(wm.processor(key, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=i))  # type: ignore[attr-defined]
            out.add(int(np.argmax(hook(np.array([3]), scores.copy()))))
        return out

    assert len(picks(GumbelWatermark(1))) == 1
    assert len(picks(TournamentWatermark(1, layers=4))) >= 4  # 4 rounds leave ~4 likely tokens of 6
    assert isinstance(build_scheme("tournament"), TournamentWatermark)
    with pytest.raises(ValueError, match="tournament"):
        build_scheme("synthid")


@pytest.mark.parametrize("wm", [GumbelWatermark(3), TournamentWatermark(3, layers=8)], ids=repr)
def test_the_answer_s_first_tokens_are_left_to_the_sampler(wm) -> None:
    """A step whose context reaches into the prompt (the first h answer tokens: for a chat, the template's
    constant header) is one a detector reading the answer never scores, so the hook leaves it to the sampler;
    the answer is marked from token h on, exactly the pairs the detector scores."""
    scores = np.zeros(V, np.float32)  # flat: a marked step keeps one candidate, an unmarked one keeps all
    key = keys().account("alice")
    hook = wm.processor(key, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=1)
    prompt = [11, 12, 13, 14, 15]
    marked = []
    for t in range(6):
        out = hook(np.array(prompt + list(range(100, 100 + t))), scores.copy())
        marked.append(int((out > -1e8).sum()) == 1)
    assert marked == [False, False, False, True, True, True]
    answer = list(range(100, 106))
    assert scored_pairs(answer, wm.context_width)[1].tolist() == [103, 104, 105]  # step t answered 100 + t


# -- attribution and radioactivity ------------------------------------------------------------------------


def test_attribution_names_the_right_account_among_many() -> None:
    wm, ring = GreenListWatermark(0.25, 2.0, 1), keys()
    cands = [ring.account(f"acct-{i:03d}") for i in range(200)]
    ids = generate(wm.processor(ring.account("acct-117")), n=300, seed=7)
    a = attribute(wm, ids, cands)
    assert a.best is not None and a.best.label == "account:acct-117"
    assert [c.label for c in a.attributed] == ["account:acct-117"]
    none = attribute(wm, generate(None, n=300, seed=7), cands)
    assert none.attributed == [] and none.keys_tested == 200


@pytest.mark.parametrize(
    "wm", [GreenListWatermark(0.25, 2.0, 2), GumbelWatermark(2), TournamentWatermark(2)], ids=lambda w: w.name
)
def test_attribution_fast_path_equals_testing_each_key_alone(wm, monkeypatch: pytest.MonkeyPatch) -> None:
    """attribute() scores keys in vectorised blocks with one tail per distinct count (10,000 keys in a fraction
    of a second); it must give every key exactly what score_pairs gives it alone, across block edges."""
    ring = keys()
    cands = [ring.account(f"acct-{i:03d}") for i in range(23)]
    ids = generate(wm.processor(cands[5], temperature=1.0), n=150, seed=11)
    ctx, tok, seen = scored_pairs(ids, wm.context_width)
    slow = {k.label: wm.score_pairs(k, ctx, tok, seen).as_dict() for k in cands}
    monkeypatch.setattr(attribution, "_BLOCK_VALUES", 7 * tok.size)  # blocks of 7 keys: 4 blocks, the last short
    fast = attribute(wm, ids, cands)
    assert {c.label: {k: v for k, v in c.as_dict().items() if "adjusted" not in k} for c in fast.ranked} == slow
    assert fast.best is not None and fast.best.label == "account:acct-005"
    assert [d.as_dict() for d in wm.score_many(cands[:2], ctx[:0], tok[:0], 0)] == [
        wm.score_pairs(k, ctx[:0], tok[:0], 0).as_dict() for k in cands[:2]
    ]  # no scored pair: z 0, p 1 on both paths


def _attribution(log10_p_adjusted: list[float], **levels: float) -> Attribution:
    ranked = [Candidate(Detection("kgw", f"account:a{i}", 200, 190, 0.0, 0.0, p), p)
              for i, p in enumerate(log10_p_adjusted)]  # fmt: skip
    return Attribution(ranked, "holm", tokens=200, scored=190, **levels)  # type: ignore[arg-type]


def test_accounts_after_the_first_are_named_only_at_the_stricter_secondary_alpha() -> None:
    """The first account is named at alpha (1e-3); each further one only below secondary_alpha (1e-6): a text
    whose own key is far ahead still leaves its other keys as null tests, the best at ~alpha per text."""
    a = _attribution([-12.0, -8.0, math.log10(9.5e-4), -1.0], alpha=1e-3)
    assert a.secondary_alpha == attribution.SECONDARY_ALPHA == 1e-6
    assert [c.label for c in a.attributed] == ["account:a0", "account:a1"]  # not a2 at p 9.5e-4 (issue 15)
    assert [c.label for c in _attribution([math.log10(9.5e-4), -1.0], alpha=1e-3).attributed] == ["account:a0"]
    loose = _attribution([-12.0, -8.0, math.log10(9.5e-4), -1.0], alpha=1e-3, secondary_alpha=1e-3)
    assert [c.label for c in loose.attributed] == ["account:a0", "account:a1", "account:a2"]
    assert _attribution([-12.0], alpha=1e-3).as_dict()["secondary_alpha"] == 1e-6
    with pytest.raises(ValueError, match="secondary_alpha"):
        attribute(GreenListWatermark(), [1, 2, 3], [keys().account("a")], secondary_alpha=0.0)


def test_a_text_pooled_from_two_accounts_names_both() -> None:
    """The stricter level for secondary names keeps real ones: two accounts' marked outputs pooled."""
    wm, ring = GreenListWatermark(0.25, 2.0, 1), keys()
    cands = [ring.account(f"acct-{i:03d}") for i in range(200)]
    pooled = [generate(wm.processor(cands[17]), n=200, seed=3), generate(wm.processor(cands[117]), n=200, seed=4)]
    a = attribute(wm, pooled, cands)
    assert sorted(c.label for c in a.attributed) == ["account:acct-017", "account:acct-117"]


def test_radioactivity_test_pools_samples_and_deduplicates() -> None:
    wm, key = GreenListWatermark(0.25, 2.0, 1), keys().account("leaker")
    marked = [generate(wm.processor(key, delta=0.6), n=120, seed=s) for s in range(12)]
    plain = [generate(None, n=120, seed=s) for s in range(12)]
    assert radioactivity_test(wm, key, marked).radioactive
    r = radioactivity_test(wm, key, plain)
    assert not r.radioactive and r.samples == 12
    ctx, tok, seen = scored_pairs(plain + plain, 1)
    assert tok.size == scored_pairs(plain, 1)[1].size and seen == 2 * sum(map(len, plain))


# -- the gateway's registry (the policy's handle) ----------------------------------------------------------


def _cfg(**kw: object) -> Settings:
    return load_settings(None, watermark__secret=SECRET, **{f"watermark__{k}": v for k, v in kw.items()})


def test_registry_switches_and_strengthens_per_account() -> None:
    from distillshield.gateway.upstream.base import GenRequest

    wmr = Watermarker(_cfg(scheme="kgw", mode="off").watermark)
    gen = GenRequest("chat", {"messages": []}, "m", False, 16, "p")
    assert wmr.hook("a", gen) is None  # default mode off
    wmr.registry.set("a", "on")
    on = wmr.hook("a", gen)
    wmr.registry.set("a", "strong")
    strong = wmr.hook("a", gen)
    assert isinstance(on, GreenListProcessor) and on.delta == 2.0 and strong.delta == 4.0
    wmr.registry.set("b", "on", key_scope="cluster", cluster_id="c7")
    assert wmr.key_for("b").label == "cluster:c7" and wmr.key_for("a").label == "account:a"
    wmr.registry.clear("a")
    assert wmr.registry.mode_for("a") == "off" and wmr.registry.applied == 2
    with pytest.raises(ValueError, match="mode"):
        wmr.registry.set("a", "max")


def test_every_account_is_marked_by_default_with_the_tournament(caplog: pytest.LogCaptureFixture) -> None:
    """The default: mode on, the tournament at context width 8 and 8 rounds, for an account the policy never
    touched. Without a secret nothing can be keyed: the gateway starts unmarked and says so once."""
    from distillshield.gateway.upstream.base import GenRequest
    from distillshield.watermark.gateway import watermark_extension
    from distillshield.watermark.tournament import TournamentProcessor

    wmr = Watermarker(_cfg().watermark)
    hook = wmr.hook("never-seen", GenRequest("chat", {"temperature": 0.7}, "m", False, 16, "p"))
    assert isinstance(hook, TournamentProcessor) and (hook.h, hook.layers) == (8, 8)
    assert wmr.registry.mode_for("never-seen") == "on"
    # a null context width is the scheme's own (kgw keeps 1); a configured one holds for every scheme
    assert (_cfg(scheme="kgw").watermark.width(), _cfg(context_width=4).watermark.width()) == (1, 4)
    assert _cfg().watermark.width("gumbel") == 1
    bare = load_settings(None)  # no secret: the default does not stop the gateway from starting
    assert bare.watermark.mode == "on" and not bare.watermark.keyed
    with caplog.at_level("WARNING", logger="distillshield.watermark"):
        assert watermark_extension(bare) is None
    assert "NOT watermarked" in caplog.text
    with caplog.at_level("WARNING", logger="distillshield.watermark"):
        caplog.clear()
        assert watermark_extension(load_settings(None, watermark__mode="off")) is None
    assert caplog.text == ""  # switched off on purpose: nothing to warn about


@pytest.mark.parametrize("wm", [TournamentWatermark(1), GumbelWatermark(1)], ids=repr)
def test_the_embedded_model_applies_logit_bias_before_the_keyed_sampler(wm) -> None:
    """The embedded model's processors, in the order llama.cpp runs them: the request's logit_bias first, so a
    token the client pushed up is among what the keyed sampler draws from (the sampler then suppresses the
    rest; applied after it, the bias could not lift a suppressed token)."""
    from distillshield.config import LocalUpstreamSettings
    from distillshield.gateway.upstream.base import GenRequest
    from distillshield.gateway.upstream.local import LocalUpstream

    hook = answering(wm.processor(keys().account("alice"), temperature=1.0, seed=0))
    body = {"messages": [{"role": "user", "content": "x"}], "logit_bias": {"5": 100}}
    kw, _reader = LocalUpstream(LocalUpstreamSettings())._kwargs(
        GenRequest("chat", body, "m", False, 8, "x", logits_hook=hook)
    )
    scores = np.full(V, -5.0, np.float32)
    scores[:4] = 5.0  # without the bias token 5 is far outside the sampler's candidates
    out = kw["logits_processor"](np.array([1]), scores)
    assert int(np.argmax(out)) == 5 and int((out > -1e8).sum()) == 1


def test_gumbel_hook_follows_the_request_temperature() -> None:
    from distillshield.gateway.upstream.base import GenRequest

    wmr = Watermarker(_cfg(scheme="gumbel", mode="on", context_width=4).watermark)
    hook = wmr.hook("a", GenRequest("chat", {"temperature": 0.7}, "m", False, 16, "p"))
    assert hook.temperature == 0.7 and hook.h == 4
    assert wmr.hook("a", GenRequest("chat", {"temperature": 0}, "m", False, 16, "p")) is None
    assert wmr.hook("a", GenRequest("completions", {}, "m", False, 16, "p")).temperature == 0.8


def test_the_tournament_hook_takes_the_request_seed() -> None:
    """A seeded request draws the same tokens again (as unwatermarked sampling does); a negative or
    non-integer seed (llama.cpp's -1 means random) draws fresh instead of failing the request."""
    from distillshield.gateway.upstream.base import GenRequest

    wmr = Watermarker(_cfg(scheme="tournament", mode="on", context_width=1).watermark)
    scores = np.full(V, -50.0, np.float32)
    scores[:6] = 0.0

    def picks(seed: object) -> list[int]:
        body = {"temperature": 1.0} if seed is None else {"temperature": 1.0, "seed": seed}
        hook = answering(wmr.hook("a", GenRequest("chat", body, "m", False, 16, "p")))
        return [int(np.argmax(hook(np.array([t]), scores.copy()))) for t in range(40)]

    assert picks(7) == picks(7)
    assert picks(7) != picks(8)
    for odd in (-1, "7", True, 1.5):
        assert len(set(picks(odd))) > 1, odd


def test_config_requires_a_secret_to_switch_watermarks_on(tmp_path) -> None:
    with pytest.raises(ConfigError, match="watermark"):
        load_settings(None, watermark__mode="on")
    with pytest.raises(ConfigError, match="watermark.secret"):
        load_settings(None, watermark__secret="short")
    cfg = tmp_path / "w.yaml"
    cfg.write_text(f"watermark:\n  mode: off\n  secret: {SECRET}\n")  # YAML reads a bare off as false
    s = load_settings(cfg)
    assert s.watermark.mode == "off" and SECRET not in repr(s) and SECRET not in str(s.watermark)


# -- inputs ----------------------------------------------------------------------------------------------


def test_texts_are_read_from_jsonl_shapes_or_plain_text(tmp_path) -> None:
    j = tmp_path / "t.jsonl"
    j.write_text(
        '{"id": "a", "text": "one"}\n{"response": {"text": "two"}}\n'
        '{"choices": [{"message": {"content": "three"}}]}\n\n'
    )
    assert [(t.id, t.text) for t in read_texts(j)] == [("a", "one"), ("line 2", "two"), ("line 3", "three")]
    assert [t.prompt for t in read_texts(j)] == [None, None, None]
    # The prompt a text answers, where the record says: entropy weights condition on it.
    j.write_text(
        '{"prompt": "p1", "completion": "one"}\n{"instruction": "p2", "input": "ctx", "output": "two"}\n'
        '{"request": {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "p3"}]},'
        ' "response": {"text": "three"}}\n'
    )
    assert [(t.text, t.prompt) for t in read_texts(j)] == [("one", "p1"), ("two", "p2\n\nctx"), ("three", "p3")]
    p = tmp_path / "t.txt"
    p.write_text("just some prose\nover two lines")
    assert [t.text for t in read_texts(p)] == ["just some prose\nover two lines"]
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"nope": 1}\n')
    with pytest.raises(TextsError, match="bad.jsonl:2"):
        read_texts(tmp_path / "bad.jsonl")


def test_one_malformed_jsonl_line_is_named_not_the_whole_file_read_as_one_text(tmp_path) -> None:
    (tmp_path / "out.jsonl").write_text('{"text": "one"}\n{"text": "two"\n{"text": "three"}\n')
    with pytest.raises(TextsError, match=r"out.jsonl:2: not valid JSON"):
        read_texts(tmp_path / "out.jsonl")
    (tmp_path / "out.txt").write_text('{"text": "one"}\n[1, 2]\n')
    with pytest.raises(TextsError, match=r"out.txt:2: a JSONL line must be a JSON object"):
        read_texts(tmp_path / "out.txt")


def test_prf_values_are_uniform() -> None:
    key = keys().account("u")
    rng = np.random.default_rng(0)
    v = prf32(key, rng.integers(0, 49152, (20000, 1)), rng.integers(0, 49152, 20000)) / 2**32
    assert abs(v.mean() - 0.5) < 0.01 and abs((v < 0.25).mean() - 0.25) < 0.01


def test_short_texts_need_the_exact_p_value_that_z_promises() -> None:
    from distillshield.watermark.base import Detection
    from distillshield.watermark.stats import binomial_log10_sf

    six = Detection("kgw", "k", 7, 6, 6.0, z_score(6, 6, 0.25), binomial_log10_sf(6, 6, 0.25))
    assert six.z > 4 and six.p_value == pytest.approx(0.25**6) and not six.detected  # skewed null: z overstates
    eight = Detection("kgw", "k", 9, 8, 8.0, z_score(8, 8, 0.25), binomial_log10_sf(8, 8, 0.25))
    assert eight.detected


def _ext_state(upstream: str) -> object:
    from types import SimpleNamespace

    from distillshield.contracts import AccountRisk
    from distillshield.gateway.risk import LocalRiskBoard

    risk = LocalRiskBoard()
    risk.update(AccountRisk("h1", 0.9, "extraction", cluster_id="c9"))
    return SimpleNamespace(gateway=SimpleNamespace(logits_hook_factory=None), upstream=SimpleNamespace(name=upstream),
                           risk=risk)  # fmt: skip


def _ctx(account: str) -> object:
    from types import SimpleNamespace

    return SimpleNamespace(account=SimpleNamespace(id=account))


def test_extension_forwards_the_key_label_to_a_vllm_upstream_and_strips_client_choices() -> None:
    import asyncio

    from distillshield.gateway.upstream.base import GenRequest
    from distillshield.watermark.gateway import watermark_extension

    ext = watermark_extension(_cfg(upstream_xargs=True, scheme="kgw", mode="off"))
    state = _ext_state("http")
    asyncio.run(ext.start(state))
    state.watermark.set("a", "strong")
    gen = GenRequest("chat", {"vllm_xargs": {"distillshield_wm_mode": "off", "other": 1}}, "m", False, 8, "p")
    assert state.gateway.logits_hook_factory(_ctx("a"), gen) is None  # no logits here: vLLM applies it
    assert gen.body["vllm_xargs"] == {
        "other": 1,
        "distillshield_wm_key": "account:a",
        "distillshield_wm_mode": "strong",
    }
    plain = GenRequest("chat", {"vllm_xargs": {"distillshield_wm_key": "account:x"}}, "m", False, 8, "p")
    state.gateway.logits_hook_factory(_ctx("b"), plain)  # mode off: nothing forwarded, the client's choice removed
    assert plain.body["vllm_xargs"] == {}
    assert watermark_extension(load_settings(None)) is None  # no secret: no extension
    # the vLLM processor serves every scheme (tests/test_watermark_vllm.py), so the default one forwards too
    tour = watermark_extension(_cfg(upstream_xargs=True, scheme="tournament", mode="off"))
    state = _ext_state("http")
    asyncio.run(tour.start(state))
    state.watermark.set("a", "on")
    gen = GenRequest("chat", {}, "m", False, 8, "p")
    assert state.gateway.logits_hook_factory(_ctx("a"), gen) is None
    assert gen.body["vllm_xargs"] == {"distillshield_wm_key": "account:a", "distillshield_wm_mode": "on"}


def test_cluster_scope_keys_by_the_risk_boards_cluster() -> None:
    import asyncio

    from distillshield.gateway.upstream.base import GenRequest
    from distillshield.watermark.gateway import watermark_extension

    ext = watermark_extension(_cfg())
    state = _ext_state("local")
    asyncio.run(ext.start(state))
    state.watermark.set("h1", "on", key_scope="cluster")
    hook = state.gateway.logits_hook_factory(_ctx("h1"), GenRequest("chat", {}, "m", False, 8, "p"))
    assert hook.key.label == "cluster:c9"
    asyncio.run(ext.stop())
    assert state.gateway.logits_hook_factory is None


# -- the secret in a file: created by the gateway's first start, read by detection ----------------------------


def test_the_secret_file_is_created_once_private_and_read_back(tmp_path) -> None:
    import stat
    from concurrent.futures import ThreadPoolExecutor

    from distillshield.watermark.keys import secret_from_file

    path = tmp_path / "sub" / "wm.key"
    with pytest.raises(ValueError, match=r"watermark.secret_file: .*wm.key does not exist"):
        secret_from_file(path)  # detection never creates one
    with ThreadPoolExecutor(8) as pool:  # replicas starting at once on a shared volume: one secret for all
        got = set(pool.map(lambda _: secret_from_file(path, create=True), range(16)))
    assert len(got) == 1
    secret = got.pop()
    assert len(secret) == 64 and int(secret, 16) >= 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert secret_from_file(path) == secret_from_file(path, create=True) == secret  # never rewritten
    path.write_text("too short\n")
    with pytest.raises(ValueError, match="holds 9 characters; a secret needs at least 16"):
        secret_from_file(path)


def test_a_gateway_with_a_secret_file_watermarks_and_detection_reads_the_same_file(tmp_path) -> None:
    import asyncio

    from distillshield.gateway.upstream.base import GenRequest
    from distillshield.watermark.gateway import watermark_extension
    from distillshield.watermark.schemes import keyring_from_settings

    path = tmp_path / "wm.key"
    with pytest.raises(ConfigError, match="secret_file"):
        load_settings(None, watermark__mode="on")  # no secret at all: names the settings to set
    s = load_settings(None, watermark__secret_file=str(path), watermark__mode="on")
    with pytest.raises(ValueError, match="does not exist"):
        keyring_from_settings(s.watermark)  # before the gateway's first start
    ext = watermark_extension(s)
    assert ext is not None and path.exists()
    state = _ext_state("local")
    asyncio.run(ext.start(state))
    hook = state.gateway.logits_hook_factory(_ctx("alice"), GenRequest("chat", {}, "m", False, 8, "p"))
    assert hook is not None and hook.key == KeyRing(path.read_text().strip()).account("alice")
    assert keyring_from_settings(s.watermark).account("alice") == hook.key  # detection derives the same key
    # an inline secret wins over the file
    inline = load_settings(None, watermark__secret=SECRET, watermark__secret_file=str(path))
    assert keyring_from_settings(inline.watermark).account("alice") == KeyRing(SECRET).account("alice")


def test_a_secret_file_that_cannot_be_made_stops_the_gateway_with_its_name(tmp_path) -> None:
    from distillshield.watermark.gateway import watermark_extension

    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    s = load_settings(None, watermark__secret_file=str(blocker / "wm.key"))
    with pytest.raises(ConfigError, match=r"watermark.secret_file: cannot create .*wm.key"):
        watermark_extension(s)
