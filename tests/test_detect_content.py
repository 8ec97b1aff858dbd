"""The population-relative content signal (detect/content.py, detect/signals/content.py): accounts whose
prompts are far from this deployment's own traffic are flagged with no labels and no trained model, where
timing, addresses and clients give nothing away; narrow apps stay clear; online and batch agree."""

from __future__ import annotations

import functools
import json
import math
import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from distillshield.detect.analyze import analyze_records
from distillshield.detect.content import ContentEncoder, ContentPopulation, default_content_encoder, words_of
from distillshield.detect.scoring import Combiner, DetectionModel
from distillshield.detect.signals.content import far_logp, spread
from distillshield.detect.signals.templates import VARIETY_MIN_REQUESTS, TemplateReuse, prompt_variety
from distillshield.detect.text import skeleton, stable_hash
from distillshield.simulate import corpora
from distillshield.traffic import TrafficRecord

T0 = 1_772_409_600.0
UAS = ("OpenAI/Python 1.99.1", "Anthropic/Python 0.40.0", "python-requests/2.32.3", "Mozilla/5.0 (Macintosh)")


@functools.lru_cache(maxsize=1)
def chat_prompts() -> tuple[str, ...]:
    """Real users' first turns (WildChat via IFBench, MT-Bench, Vicuna): the deployment's own traffic."""
    convs = corpora.wildchat_prompts() + corpora.mt_bench() + corpora.vicuna()
    return tuple(c.turns[0] for c in convs)


@functools.lru_cache(maxsize=1)
def sweep_bank(seed: int = 3) -> tuple[str, ...]:
    """A generated question bank swept across capabilities: what a distillation campaign sends."""
    out: list[str] = []
    for cap in corpora.CAPABILITIES:
        # gsm_symbolic is left out: the students of the thin-campaign test do their homework from it.
        bank = corpora.question_bank(cap, seed=seed, per_dataset=6)
        out.extend(q.question for q in bank if not q.source.endswith("gsm_symbolic"))
    return tuple(out)


def request(rng: random.Random, account: str, prompt: str, start: float, within: float) -> TrafficRecord:
    """One chat request at a random time in [start, start + within), from an address and client drawn from
    the distributions every account shares."""
    ip = f"{rng.randrange(1, 223)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
    body = {"model": "m1", "messages": [{"role": "user", "content": prompt}], "max_tokens": 512}
    return TrafficRecord(
        ts=start + rng.uniform(0, within), account_id=account, endpoint="/v1/chat/completions",
        request=body, ip=ip, user_agent=rng.choice(UAS), org_id=f"org-{account}",
    )  # fmt: skip


def content_only(
    n_benign: int = 18, per_account: int = 80, seed: int = 0, extra: dict[str, list[str]] | None = None
) -> tuple[list[TrafficRecord], dict[str, str]]:
    """Accounts that differ only in what they ask: every account draws its times, address and client from
    the same distributions. Returns the records (in time order) and each account's role."""
    rng = random.Random(seed)
    chat, bank = list(chat_prompts()), list(sweep_bank())
    plans: dict[str, list[str]] = {}
    for i in range(n_benign):
        plans[f"user-{i:02d}"] = [rng.choice(chat) for _ in range(per_account)]
    for i in range(2):
        plans[f"bank-{i}"] = rng.sample(bank, per_account)
    for i in range(2):
        plans[f"mixed-{i}"] = [rng.choice(bank) if rng.random() < 0.25 else rng.choice(chat)
                               for _ in range(per_account)]  # fmt: skip
    plans.update(extra or {})
    records = []
    for account, prompts in plans.items():
        for p in prompts:
            records.append(request(rng, account, p, T0, 86_400))
    records.sort(key=lambda r: r.ts)
    role = {a: a.split("-")[0] for a in plans}
    return records, role


@functools.lru_cache(maxsize=1)
def analysed() -> tuple[dict[str, Any], dict[str, str]]:
    records, role = content_only()
    return analyze_records(records).report, role


def verdicts(report: dict[str, Any]) -> dict[str, str]:
    return {a["account_id"]: a["verdict"] for a in report["accounts"]}


def content_reason(report: dict[str, Any], account: str) -> str:
    acc = next(a for a in report["accounts"] if a["account_id"] == account)
    return next((r["detail"] for r in acc["reasons"] if r["signal"] == "content"), "")


def test_a_question_bank_is_flagged_on_content_alone() -> None:
    report, role = analysed()
    v = verdicts(report)
    assert all(v[a] != "benign" for a in role if role[a] == "bank"), v
    reason = content_reason(report, "bank-0")
    assert "farther from this service's traffic" in reason and "topic areas" in reason


def test_a_bank_hidden_in_cover_traffic_is_flagged() -> None:
    report, role = analysed()
    v = verdicts(report)
    assert all(v[a] != "benign" for a in role if role[a] == "mixed"), v


def test_honest_accounts_of_the_same_deployment_stay_clear() -> None:
    report, role = analysed()
    flagged = [a for a, verdict in verdicts(report).items() if role[a] == "user" and verdict != "benign"]
    assert flagged == []


def test_content_evidence_alone_is_suspicious_not_extraction() -> None:
    """A stop needs known-TTP evidence as well: unusual content alone goes to review."""
    report, role = analysed()
    assert all(a["verdict"] == "suspicious" for a in report["accounts"] if role[a["account_id"]] == "bank")
    assert report["summary"]["content"].startswith("population-relative")


def test_a_narrow_app_is_unusual_but_not_flagged_for_its_content() -> None:
    """A pipeline running one template of its own over documents nobody else sends is far from the
    service's traffic, but focused: the content signal says so and does not flag it (what the trained
    model makes of its other features is its own matter)."""
    rng = random.Random(5)
    passages = corpora.book_passages()
    app = [f"Summarise this passage for our newsletter in three bullet points:\n\n{rng.choice(passages)}"
           for _ in range(80)]  # fmt: skip
    records, _ = content_only(n_benign=18, extra={"app-0": app})
    report = analyze_records(records).report
    app_reasons = next(a["reasons"] for a in report["accounts"] if a["account_id"] == "app-0")
    content = next(r for r in app_reasons if r["signal"] == "content")
    assert "focused like an app" in content["detail"] and content["score"] < 0.5


def test_a_suite_sent_again_and_again_is_focused_while_the_same_volume_of_new_prompts_is_a_sweep() -> None:
    """A regression suite of bank questions re-run on every commit is as far from the service's chat and as
    spread over topic areas as a sweep, but it sends the same prompts again and again: content calls it
    focused. An account sending as many requests, each a new bank question, is a sweep and flagged."""
    rng = random.Random(11)
    bank = list(sweep_bank())
    suite = rng.sample(bank, 24)
    runs = [p for _ in range(8) for p in rng.sample(suite, len(suite))]  # 192 requests, 24 distinct prompts
    fresh = rng.sample([p for p in bank if p not in suite], len(runs))
    records, _ = content_only(n_benign=18, extra={"suite-0": runs, "sweep-0": fresh})
    report = analyze_records(records, model=content_alone()).report
    v = verdicts(report)
    suite_reason = content_reason(report, "suite-0")
    assert v["suite-0"] == "benign" and "sends the same prompts again and again" in suite_reason, suite_reason
    assert "topic areas like a sweep" in content_reason(report, "sweep-0") and v["sweep-0"] != "benign"


def test_prompt_variety_counts_prompts_as_sent_once_an_account_has_sent_enough() -> None:
    """Distinct prompts per request, on the prompts as sent: a generated bank that varies only its numbers
    (one skeleton) is as varied as any; a few requests say nothing yet."""

    def fed(prompts: list[str]) -> float:
        sig = TemplateReuse()
        st = sig.new_state()
        for p in prompts:
            obs = SimpleNamespace(skel_hash=stable_hash(skeleton(p)), raw_hash=stable_hash(p), head=0, tail=0, text=p)
            sig.update(st, obs)  # type: ignore[arg-type]
        return prompt_variety(st)

    n = 4 * VARIETY_MIN_REQUESTS
    numbers = [f"What is {i} times {i + 7}? Show every step." for i in range(n)]
    assert fed(numbers) > 0.8
    assert fed([numbers[i % 16] for i in range(n)]) < 0.1
    assert fed([numbers[0]] * (VARIETY_MIN_REQUESTS - 1)) == 1.0


def test_content_can_be_switched_off() -> None:
    records, _ = content_only()
    report = analyze_records(records, content=False).report
    assert report["summary"]["content"] == "off"
    assert not any(r["signal"] == "content" for a in report["accounts"] for r in a["reasons"])


def test_encoder_is_deterministic_normalised_and_reads_unspaced_scripts() -> None:
    enc = default_content_encoder()
    texts = ["How do I boil an egg?", "how do i boil an EGG", "量子コンピュータについて教えてください",
             "量子コンピュータの仕組み"]  # fmt: skip
    a, b = enc.encode(texts), ContentEncoder().encode(texts)
    assert np.array_equal(a, b) and a.shape == (4, enc.dim) and a.dtype == np.float32
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert float(a[0] @ a[1]) > 0.9  # case does not matter
    assert float(a[2] @ a[3]) > 0.2  # Japanese shares words only as characters
    assert words_of("量子A") == " 量  子 a"
    assert np.array_equal(enc.encode([""]), np.zeros((1, enc.dim), dtype=np.float32))


def test_population_sample_does_not_depend_on_arrival_order() -> None:
    rng = np.random.default_rng(0)
    offers = [(f"acct-{i % 300}", rng.normal(size=8).astype(np.float32)) for i in range(3000)]
    pops = []
    for order in (offers, sorted(offers, key=lambda o: o[0])):
        pop = ContentPopulation(dim=8, accounts=50, per_account=4)
        for account, vec in order:
            pop.offer(account, vec)
        pops.append(pop)
    assert sorted(pops[0].rows) == sorted(pops[1].rows) and len(pops[0].rows) == 50
    for account in pops[0].rows:
        assert np.array_equal(np.asarray(pops[0].rows[account]), np.asarray(pops[1].rows[account]))


def test_population_is_stale_once_a_quarter_of_its_rows_changed_evictions_included() -> None:
    rng = np.random.default_rng(1)
    pop = ContentPopulation(dim=8, accounts=50, per_account=4)
    for i in range(240):  # 60 accounts offer 4 rows each; 50 are kept: 200 rows
        pop.offer(f"acct-{i % 60}", rng.normal(size=8).astype(np.float32))
    assert sum(len(r) for r in pop.rows.values()) == 200 and pop.stale()
    pop.refresh()
    assert not pop.stale()
    # Accounts whose hash is below every sampled account's each evict one of those (4 rows) and bring one row:
    # 10 newcomers change 50 rows of what stays 50 * 4 - 10 * 3 = 170, more than a quarter (42.5).
    lowest = min(stable_hash(a) for a in pop.rows)
    newcomers = iter(a for a in (f"new-{i}" for i in range(100_000)) if stable_hash(a) < lowest)
    for k in range(10):
        pop.offer(next(newcomers), rng.normal(size=8).astype(np.float32))
        if k == 7:  # 40 changes of 176 rows: under a quarter
            assert not pop.stale()
    assert sum(len(r) for r in pop.rows.values()) == 170 and pop.stale()


def test_far_count_probability_and_spread() -> None:
    assert far_logp(0, 40) == 0.0
    assert far_logp(2, 40) < 1.0 < far_logp(8, 40) < far_logp(20, 40) <= 30.0
    assert spread(np.asarray([3, 3, 3, 3])) == pytest.approx(1.0)
    assert spread(np.asarray([0, 1, 2, 3])) == pytest.approx(4.0)
    assert spread(np.asarray([-1, -1])) == 0.0


def _row(rec: TrafficRecord, i: int) -> dict[str, Any]:
    return {
        "ts": rec.ts, "request_id": f"r{i}", "endpoint": rec.endpoint, "ip": rec.ip, "user_agent": rec.user_agent,
        "stream": False, "account_id": rec.account_id, "org_id": rec.org_id, "key_id": "k", "model": "m1",
        "decision": "allow", "status": 200, "latency_ms": 1.0, "error": None, "request": json.dumps(rec.request),
        "response_text": "ok", "finish_reason": "stop", "prompt_tokens": 10, "completion_tokens": 2,
    }  # fmt: skip


def _eager_ensemble(path: Path) -> DetectionModel:
    """The shipped model with a second combiner beside it: a copy of its own with thresholds 8 log-odds lower
    (low enough to flag accounts of `content_only` that the shipped combiner clears)."""
    shipped = DetectionModel.load()
    eager = Combiner.from_dict(shipped.combiner(False).to_dict())
    eager.t_suspicious -= 8.0
    eager.t_extraction -= 8.0
    model = DetectionModel("eager", {"noembed": eager}, shipped.classifier).alongside(shipped)
    model.save(path)
    return model


@pytest.mark.parametrize("ensemble", [False, True], ids=["shipped", "ensemble"])
def test_online_verdicts_match_batch_on_the_same_traffic(ensemble: bool, tmp_path: Path) -> None:
    """The gateway's detector, fed the same requests in batches as they would arrive, ends with the verdicts
    and content evidence that batch analysis gives (with the shipped model, and with an ensemble of two)."""
    import asyncio

    from distillshield.detect.online import DetectionExtension

    records, role = content_only(seed=1)
    model = _eager_ensemble(tmp_path / "m.json") if ensemble else None
    batch = analyze_records(records, model=model).report
    if ensemble:
        shipped = analyze_records(records).report
        flags = [sum(v != "benign" for v in verdicts(r).values()) for r in (shipped, batch)]
        assert flags[1] > flags[0]  # the eager member flags accounts the shipped combiner clears
    ext = DetectionExtension(recluster_every=500, model_path=str(tmp_path / "m.json") if ensemble else None)
    ext._load()
    rows = [_row(r, i) for i, r in enumerate(records)]
    for i in range(0, len(rows), 300):
        ext.queue.extend(rows[i : i + 300])
        asyncio.run(ext.run_once())
    asyncio.run(ext.flush())
    online = ext.report()
    assert verdicts(online) == verdicts(batch)
    assert any(v != "benign" for v in verdicts(online).values())
    for account in role:
        assert content_reason(online, account) == content_reason(batch, account)


WRAPPERS = (
    "Walk me through your reasoning step by step, then answer: {q}",
    "{q}\nPlease show every step of your thinking before the final answer.",
    "Explain how you get there, one step at a time. {q}",
    "Think it through carefully and lay out each step. Question: {q}",
    "{q} Lay out your full chain of reasoning first, then give the answer.",
    "Before answering, reason it out step by step in detail: {q}",
    "I want to see all of the intermediate reasoning. {q}",
    "{q}\n\nShow your work: each reasoning step, then the result.",
    "Go through the logic step by step and only then answer. {q}",
    "Reason through this in explicit steps, numbering each one: {q}",
    "{q} Describe your thought process in full detail before concluding.",
    "Break the problem down and explain every step you take. {q}",
)
OPENERS = ("hey", "hi", "ok so", "um", "hello!", "quick one", "help", "so", "sorry to bother", "")
ASKS = (
    "can u help me with my homework",
    "i dont get this one",
    "how do i do this",
    "im stuck on this from class",
    "my teacher wants the steps",
    "can you explain how to solve",
    "what are the steps here",
    "pls help",
    "we had this in the test today",
    "could you show me how this works",
    "how would i even start this",
)
CLOSERS = ("thanks!!", "pls explain like im 12", "step by step pls", "", "ty", "i have a test tomorrow", "?")


def student_prompt(rng: random.Random, q: str) -> str:
    """A student in their own words: a few loose parts around the problem, in either order."""
    words = " ".join(x for x in (rng.choice(OPENERS), rng.choice(ASKS)) if x)
    if rng.random() < 0.5:
        return f"{words}: {q} {rng.choice(CLOSERS)}".strip()
    return f"{q}\n{words} {rng.choice(CLOSERS)}".strip()


def thin_campaign_traffic(seed: int = 0) -> tuple[list[TrafficRecord], dict[str, str]]:
    """A campaign over many thin accounts (3-8 requests each, reworded wrappers around a capability sweep),
    among light honest users and students who ask for step-by-step help on maths in their own words."""
    rng = random.Random(seed)
    chat, bank = list(chat_prompts()), list(sweep_bank())
    maths = [q.question for q in corpora.dataset_items("gsm_symbolic", seed=11, size=120)]
    plans: dict[str, list[str]] = {}
    for i in range(150):
        plans[f"user-{i:03d}"] = [rng.choice(chat) for _ in range(rng.randint(1, 10))]
    for i in range(30):
        plans[f"student-{i:02d}"] = [student_prompt(rng, rng.choice(maths)) for _ in range(rng.randint(3, 12))]
    for i in range(60):
        plans[f"camp-{i:02d}"] = [rng.choice(WRAPPERS).format(q=rng.choice(bank)) for _ in range(rng.randint(3, 8))]
    records = []
    for account, prompts in plans.items():
        start = T0 + rng.uniform(0, 3 * 86_400)
        for p in prompts:
            records.append(request(rng, account, p, start, 4 * 3600))
    records.sort(key=lambda r: r.ts)
    return records, {a: a.split("-")[0] for a in plans}


def test_a_campaign_of_thin_accounts_is_found_as_one_and_its_members_flagged() -> None:
    records, role = thin_campaign_traffic()
    report = analyze_records(records).report
    v = verdicts(report)
    camp = [a for a in role if role[a] == "camp"]
    flagged = [a for a in camp if v[a] != "benign"]
    assert len(flagged) >= 0.9 * len(camp), (len(flagged), len(camp))
    biggest = max(report["clusters"], key=lambda c: len(c["accounts"]))
    assert sum(role[a] == "camp" for a in biggest["accounts"]) >= 0.8 * len(camp)
    assert all(role[a] == "camp" for a in biggest["accounts"])
    assert "ask alike" in biggest["reasons"][0]["detail"]
    # No honest account is flagged by content or joined to a campaign by it (the students form a dense group
    # too, but their pooled prompts stay in a few topic areas: homework, not a sweep).
    by_content = [c for c in report["clusters"] if "ask alike" in c["reasons"][0]["detail"]]
    assert all(role[a] == "camp" for c in by_content for a in c["accounts"])
    for acc in report["accounts"]:
        if role[acc["account_id"]] != "camp":
            assert all(r["score"] < 0.5 for r in acc["reasons"] if r["signal"] == "content"), acc


def heavier_traffic() -> tuple[list[TrafficRecord], dict[str, str]]:
    """`thin_campaign_traffic` and heavier accounts (90 requests each): four of the campaign, asking other
    questions of the same sweep, bare (no wrapper or question the thin accounts send, so no shared template
    links them: only what they ask does), eight honest chat users and four students."""
    records, role = thin_campaign_traffic()
    rng = random.Random(5)
    chat, bank = list(chat_prompts()), list(sweep_bank(seed=4))
    maths = [q.question for q in corpora.dataset_items("gsm_symbolic", seed=11, size=120)]
    plans = {f"heavycamp-{i}": [rng.choice(bank) for _ in range(90)] for i in range(4)}
    plans |= {f"heavyuser-{i}": [rng.choice(chat) for _ in range(90)] for i in range(8)}
    plans |= {f"heavystudent-{i}": [student_prompt(rng, rng.choice(maths)) for _ in range(90)] for i in range(4)}
    for account, prompts in plans.items():
        start = T0 + rng.uniform(0, 3 * 86_400)
        records.extend(request(rng, account, p, start, 4 * 3600) for p in prompts)
        role[account] = account.split("-")[0]
    records.sort(key=lambda r: r.ts)
    return records, role


def test_heavier_accounts_that_ask_as_a_campaign_does_join_it() -> None:
    """A campaign's accounts need not all be thin: the ones that send more requests are judged on their own
    evidence, which a campaign's wrapped bank questions need not carry, so a heavier account that asks as the
    campaign's members do is one of them. Heavier honest users and students, who ask their own things, are not."""
    records, role = heavier_traffic()
    report = analyze_records(records).report
    campaign = max(report["clusters"], key=lambda c: len(c["accounts"]))
    members = set(campaign["accounts"])
    heavy = {a for a in role if role[a] == "heavycamp"}
    assert heavy <= members, sorted(members - {a for a in role if role[a] == "camp"})
    assert all(role[a] in ("camp", "heavycamp") for a in members)
    assert "4 heavier accounts (90-90 requests) ask as its" in campaign["reasons"][0]["detail"]
    v = verdicts(report)
    assert all(v[a] != "benign" for a in heavy)


def test_no_heavier_account_joins_a_campaign_whose_evidence_is_its_waves(monkeypatch: pytest.MonkeyPatch) -> None:
    """A campaign called because its accounts were created in waves holds the members made in them, and only
    those: a heavier account that asks alike but was not made with them is not added. The same traffic, with
    its campaign called by the waves instead of by its reasoning sweep, keeps the heavier accounts out."""
    from distillshield.detect import campaign as campaign_mod

    real_call, real_evidence = campaign_mod.campaign_call, campaign_mod.group_evidence

    def by_waves(ev: campaign_mod.GroupEvidence) -> campaign_mod.CampaignCall | None:
        called = real_call(ev)
        return None if called is None else campaign_mod.CampaignCall(called.score, called.why, by_waves=True)

    def every_member_born_in_the_waves(members: list[str], *args: Any, **kw: Any) -> campaign_mod.GroupEvidence:
        ev = real_evidence(members, *args, **kw)
        return campaign_mod.GroupEvidence(ev.content, ev.asked, ev.reasoning, ev.areas, ev.rest_asked,
                                          ev.rest_reasoning, ev.cohort, tuple(members))  # fmt: skip

    def heavy_in_the_campaign() -> tuple[set[str], str]:
        report = analyze_records(records).report
        campaign = max(report["clusters"], key=lambda c: len(c["accounts"]))
        assert sum(role[a] == "camp" for a in campaign["accounts"]) >= 0.8 * sum(r == "camp" for r in role.values())
        return {a for a in campaign["accounts"] if role[a] == "heavycamp"}, campaign["reasons"][0]["detail"]

    records, role = heavier_traffic()
    monkeypatch.setattr(campaign_mod, "campaign_call", by_waves)
    monkeypatch.setattr(campaign_mod, "group_evidence", every_member_born_in_the_waves)
    heavy, why = heavy_in_the_campaign()
    assert "heavier accounts" not in why
    # the same as with no joining at all (a heavier account may still share a template with the campaign's
    # thin accounts, which puts it in their template cluster: that link is not the campaign's)
    monkeypatch.setattr(campaign_mod.Joining, "heavier_like", lambda self, members: [])
    assert heavy_in_the_campaign()[0] == heavy
    monkeypatch.undo()
    assert heavy_in_the_campaign()[0] > heavy  # the control: called by its reasoning sweep, they join


def test_only_the_campaigns_own_members_inherit_its_risk() -> None:
    """A content campaign merged into a template cluster flags the accounts it found, not every account the
    template cluster happened to hold."""
    from distillshield.detect.cluster import Cluster
    from distillshield.detect.corpus import Extractor
    from distillshield.detect.engine import Engine, MinHasher
    from distillshield.detect.scoring import Combiner

    records, _ = content_only(n_benign=4, per_account=12)
    engine = Engine(Combiner([], -5.0, []))  # a model that sees nothing: every account far below suspicious
    for o in Extractor(None, MinHasher()).extract(records):
        engine.observe(o)
    found, bystander = "user-00", "user-01"
    engine.clusters = {"cl_x": Cluster("cl_x", [found, bystander], content_risk=0.7, campaign=frozenset({found}))}
    for a in (found, bystander):
        engine.accounts[a].cluster_id = "cl_x"
    assert engine.rescore(engine.accounts[found]).verdict == "suspicious"
    assert engine.rescore(engine.accounts[bystander]).verdict == "benign"


def test_prompts_without_words_are_not_content_evidence() -> None:
    """An empty or punctuation-only turn encodes to a zero vector that would sit far from everything."""
    from distillshield.detect.corpus import content_text

    assert content_text("") is None and content_text("  ...?!  ") is None
    assert content_text("量子") == "量子" and content_text("x" * 5000) == "x" * 600


def test_typicality_counts_each_account_once() -> None:
    """A prompt is typical when several users ask something like it: its neighbours are the best match of
    each other account (and each reference prompt), so one account sending many prompts like it (or the
    other accounts of a campaign) vouches once, not K times."""
    rng = np.random.default_rng(3)

    def unit(x: np.ndarray) -> np.ndarray:
        return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)

    x = unit(rng.normal(size=64))
    other = unit(rng.normal(size=(3, 64)) - np.outer(unit(rng.normal(size=(3, 64))) @ x, x))

    def like_x(cos: float, i: int) -> np.ndarray:  # a prompt whose cosine with x is `cos`
        o = other[i] - (other[i] @ x) * x
        return unit(cos * x + np.sqrt(1 - cos**2) * unit(o))

    pop = ContentPopulation(dim=64)
    pop.anchors = unit(rng.normal(size=(200, 64)))  # the packaged reference's stand-in
    rows = {f"user-{i:02d}": list(unit(rng.normal(size=(12, 64)))) for i in range(30)}
    rows["twin"] = [unit(x + 0.01 * rng.normal(size=64)) for _ in range(4)] + list(unit(rng.normal(size=(8, 64))))
    for i, (name, cos) in enumerate((("near-a", 0.7), ("near-b", 0.6))):
        rows[name] = [like_x(cos, i)] + list(unit(rng.normal(size=(11, 64))))
    for account, vecs in rows.items():
        for v in vecs:
            pop.offer(account, v)
    pop.refresh()
    assert pop.stats.tau > -0.5 and not {"twin", "near-a", "near-b"} & pop.excluded
    got = float(pop.judge_rows(x[None, :], "someone-else")[0][0])
    # By hand: each active account's best cosine with x, and every reference prompt's.
    best = [max(float(v @ x) for v in vecs) for a, vecs in rows.items() if a not in pop.excluded]
    best += [float(v @ x) for v in pop.anchors]
    want = float(np.mean(sorted(best)[-3:]))
    assert got == pytest.approx(want, abs=1e-4)
    assert got < 0.8  # the twin's four near-copies count once: (1.0 + 0.7 + 0.6) / 3, not 1.0


WRAPPER = (
    "Classify the following customer message into exactly one of these categories: billing, shipping, "
    "returns, account access, product question, complaint, other. Answer with the category only.\n\nMessage: "
)


def test_a_wrapper_every_prompt_carries_is_boilerplate_and_the_payload_decides() -> None:
    """An intent-routing app wraps every message in one instruction. Task-domain extraction sends a book's
    sentences through the same wrapper: the wrapper makes every prompt alike, so the service's boilerplate
    is projected out and the payloads are compared. Chat traffic has no such boilerplate."""
    rng = random.Random(12)
    chat = list(chat_prompts())
    sentences = [s.strip() for p in corpora.book_passages() for s in p.split(". ") if len(s.split()) >= 6]
    plans = {f"user-{i:02d}": [WRAPPER + rng.choice(chat)[:400] for _ in range(80)] for i in range(18)}
    plans.update({f"bank-{i}": [WRAPPER + s for s in rng.sample(sentences, 80)] for i in range(3)})
    records = sorted((request(rng, a, p, T0, 86_400) for a, ps in plans.items() for p in ps), key=lambda r: r.ts)
    analysis = analyze_records(records)
    assert analysis.engine.population.content.boilerplate
    v = verdicts(analysis.report)
    assert all(v[a] != "benign" for a in plans if a.startswith("bank-")), v
    assert [a for a in plans if a.startswith("user-") and v[a] != "benign"] == []
    chat_analysis = analyze_records(content_only()[0])
    assert not chat_analysis.engine.population.content.boilerplate


def code_requests(rng: random.Random, n: int) -> list[str]:
    """A developer's questions about real programs (CodeI/O), each in its own words (the task the program
    solves): a genre a chat service's users rarely send, with no shared template to link the developers."""
    out = []
    for _ in range(n):
        s = rng.choice(corpora.code_samples())
        out.append(f"{s.description[:200]}\n```python\n{s.code[:400]}\n```")
    return out


def genre_deployment(devs: int, seed: int = 11) -> tuple[list[TrafficRecord], list[str]]:
    """150 chat users who each send 7 real chat prompts no one else sends (every prompt of the pool at most
    once, as in a real service, where few users type the same words), and `devs` developers of 80 code
    requests each. Times, addresses and clients are drawn alike for everyone."""
    rng = random.Random(seed)
    pool = sorted(set(chat_prompts()))
    rng.shuffle(pool)
    plans = {f"user-{i:03d}": pool[7 * i : 7 * i + 7] for i in range(150)}
    names = [f"dev-{i:02d}" for i in range(devs)]
    plans.update({d: code_requests(rng, 80) for d in names})
    records = [request(rng, a, p, T0, 86_400) for a, prompts in plans.items() for p in prompts]
    records.sort(key=lambda r: r.ts)
    return records, names


def content_alone() -> DetectionModel:
    """The shipped model's prompt classifier with a combiner that flags no one: what content decides alone.

    For deployments whose accounts differ only in content: their times and addresses are drawn alike for
    everyone (an address per request, at any hour), a pattern the trained combiners judge on its own (the
    shipped ensemble's second combiner calls 80 such requests suspicious, whatever they ask)."""
    quiet = Combiner([], -20.0, [], t_suspicious=0.0, t_extraction=4.0)
    return DetectionModel("content-alone", {"noembed": quiet}, DetectionModel.load().classifier)


def test_a_minority_genre_of_independent_accounts_is_unusual_but_not_a_sweep() -> None:
    """Ten developers among 150 chat users: too few to weigh in the population sample, so their prompts
    are far from the service's (mostly chat) traffic; but each has at least K_PEERS other unlinked accounts
    asking alike, so content reads them as a genre of this service. Three accounts alone sending the same
    kind of prompts are not a genre, and are flagged."""
    records, devs = genre_deployment(10)
    report = analyze_records(records, model=content_alone()).report
    for a in devs:
        reason = content_reason(report, a)
        assert "minority genre of this service" in reason and "not a sweep" in reason, (a, reason)
    assert all(v == "benign" for a, v in verdicts(report).items() if a in devs)
    records, few = genre_deployment(3)
    report = analyze_records(records, model=content_alone()).report
    flagged = [a for a, v in verdicts(report).items() if a in few and v != "benign"]
    assert flagged == few, [content_reason(report, a) for a in few]


def test_a_campaign_found_once_is_kept_while_its_members_still_make_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """The density grouping only proposes candidates: when a later run over a grown population cuts a campaign
    differently (here: finds no group at all), the campaign found before is judged again on its members' pooled
    prompts and kept. Keeping is no amnesty for a wrong call: a class of honest students, a dense group too,
    taken for a campaign before, is judged again and dropped (homework stays in a few topic areas), and light
    users swept in with them would be dropped before that (their nearest accounts are not one another)."""
    from distillshield.detect import campaign as campaign_mod
    from distillshield.detect.cluster import Cluster
    from distillshield.detect.engine import Engine

    records, role = thin_campaign_traffic()
    engines: list[Engine] = []
    analyze_records(records, on_engine=engines.append)  # its engine, finalised: campaigns found as analyze finds them
    engine = engines[0]
    finder = engine.campaigns
    camp = {a for c in finder.campaigns.values() for a in c.campaign}
    assert len(camp) >= 40 and all(role[a] == "camp" for a in camp)

    students = sorted(a for a in role if role[a] == "student" and campaign_mod._eligible(engine.accounts[a]))
    users = sorted(a for a in role if role[a] == "user" and campaign_mod._eligible(engine.accounts[a]))[:12]
    assert len(students) >= campaign_mod.MIN_CAMPAIGN and len(users) >= campaign_mod.MIN_CAMPAIGN
    finder.campaigns["cp_class"] = Cluster("cp_class", students, campaign=frozenset(students))
    finder.campaigns["cp_users"] = Cluster("cp_users", users, campaign=frozenset(users))
    monkeypatch.setattr(campaign_mod, "_density_clusters", lambda dist, selection: np.full(len(dist), -1))
    again = finder.find(engine.accounts, engine.population, force=True)
    assert {a for c in again.values() for a in c.campaign} == camp  # kept; the honest groups are not
    assert all("ask alike" in c.evidence for c in again.values())


def test_a_campaign_cut_into_leaves_and_noise_is_found_whole_by_the_persistent_grouping(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """HDBSCAN's leaf selection may cut one campaign into a small leaf and noise (thin_hydra seed 20006: leaves of
    14 and 11 of 300 accounts); its excess-of-mass selection holds it as one group. Both are candidates, the
    persistent groups first, so the campaign is found whole. With the persistent selection finding nothing,
    only the leaf (and the fringe that joins it) is found: the test can tell the two apart."""
    from distillshield.detect import campaign as campaign_mod
    from distillshield.detect.engine import Engine

    records, role = thin_campaign_traffic()
    engines: list[Engine] = []
    analyze_records(records, on_engine=engines.append)
    engine = engines[0]
    thin = campaign_mod.thin_accounts(engine.accounts)
    camp = {a.account_id for a in thin if role[a.account_id] == "camp"}
    leaf = sorted(camp)[:16]
    assert len(camp) >= 40

    def grouping(persistent: bool) -> Any:
        def fake(dist: np.ndarray, selection: str) -> np.ndarray:
            assert len(dist) == len(thin)
            if selection == "leaf":
                return np.asarray([0 if a.account_id in leaf else -1 for a in thin])
            return np.asarray([0 if persistent and a.account_id in camp else -1 for a in thin])

        return fake

    finder = engine.campaigns
    for persistent in (True, False):
        monkeypatch.setattr(campaign_mod, "_density_clusters", grouping(persistent))
        finder.campaigns = {}
        found = {a for c in finder.find(engine.accounts, engine.population, force=True).values() for a in c.campaign}
        members = {a for a in found if a in camp}
        assert all(role[a] == "camp" for a in found)
        if persistent:
            assert members == camp
        else:
            assert set(leaf) <= members and len(members) < len(camp) / 2, len(members)


def copy_deployment(copy_from_bank: bool, seed: int = 21) -> tuple[list[TrafficRecord], dict[str, str]]:
    """Three bank accounts sweep a question bank; a fourth hides 9 bank queries among 71 of real users'
    prompts: copies of the bank accounts' own queries (`copy_from_bank`), or other questions of the same
    bank that no bank account sent. The bank accounts also send 8 popular prompts that many users send."""
    rng = random.Random(seed)
    chat, bank = list(chat_prompts()), list(sweep_bank())
    rng.shuffle(bank)
    popular, chat = chat[:8], chat[8:]
    plans: dict[str, list[str]] = {}
    for i in range(18):
        plans[f"user-{i:02d}"] = [rng.choice(chat) for _ in range(72)] + popular
    sent: list[str] = []
    for i in range(3):
        plans[f"bank-{i}"] = q = bank[72 * i : 72 * (i + 1)] + popular
        sent += q[:72]
    hidden = rng.sample(sent, 9) if copy_from_bank else bank[216:225]
    plans["mixed-0"] = [rng.choice(chat) for _ in range(71)] + hidden
    records = [request(rng, a, p, T0, 86_400) for a, prompts in plans.items() for p in prompts]
    records.sort(key=lambda r: r.ts)
    return records, {a: a.split("-")[0] for a in plans}


def test_a_bank_hidden_as_copies_of_far_accounts_prompts_is_flagged() -> None:
    """Nine of eighty prompts are too few to make an account far or like the bank in general (without the
    copies it stays clear: checked by taking them out of `judge`), but each is a copy of a prompt the far
    (bank) accounts sent and the service's ordinary users do not: that is the evidence, with a reason that
    names it. The same number of other questions from the same bank are not
    copies, and the popular prompts that the bank accounts also send are vouched for by the users who send
    them, so an ordinary user's copies of those are (nearly always) not counted."""
    engines: list[Any] = []
    records, role = copy_deployment(copy_from_bank=True)
    report = analyze_records(records, model=content_alone(), on_engine=engines.append).report
    reason = content_reason(report, "mixed-0")
    assert "near-copies of prompts sent by accounts far from this service's traffic" in reason, reason
    assert verdicts(report)["mixed-0"] == "suspicious"
    assert [a for a, v in verdicts(report).items() if role[a] == "user" and v != "benign"] == []
    accounts = engines[0].accounts
    # A popular prompt counts only when none of the other users who send it had it among their sampled
    # prompts (the sample keeps POP_PER_ACCOUNT each): rare, where it would be 6 or so in every window.
    assert max(int(accounts[a].content.copied.sum()) for a in role if role[a] == "user") <= 2
    assert accounts["mixed-0"].content.copied.sum() >= 6

    records, _ = copy_deployment(copy_from_bank=False)
    report = analyze_records(records, model=content_alone()).report
    assert "near-copies" not in content_reason(report, "mixed-0")
    assert verdicts(report)["mixed-0"] == "benign"


def test_the_base_rate_of_copies_is_robust_to_a_campaign_in_the_sample() -> None:
    """The ordinary rate leaves out the quarter of the sample's accounts that copy most: five accounts of a
    campaign that copy every prompt do not make copying look ordinary for the thirty-five others."""
    from distillshield.detect.content import _trimmed_rate

    owner = np.repeat(np.arange(40), 10)
    hits = np.zeros(400, dtype=bool)
    hits[350:] = True  # accounts 35-39 copy everything
    hits[0:200:10] = True  # accounts 0-19 copy one prompt each
    assert hits.mean() == pytest.approx(0.175)
    # Ten accounts left out: the campaign's five and five ordinary ones; 15 copies in the other 300 prompts.
    assert _trimmed_rate(hits, owner) == pytest.approx(15 / 300)


def test_a_genre_vouches_with_each_peer_s_whole_window() -> None:
    """A wide genre (developers asking about many topics) holds a prompt like a given one somewhere in each
    peer's window, rarely among its first few prompts: every peer stands with all of its less typical
    prompts. Peers of one cluster are one actor and do not vouch for each other, and a kind of prompt that
    fewer than K_PEERS other accounts send is no genre."""
    from types import SimpleNamespace

    from distillshield.detect.content import GENRE_SHARE, K_PEERS, WINDOW, genres

    rng = np.random.default_rng(5)
    dim = 256

    def unit(x: np.ndarray) -> np.ndarray:
        return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)

    topics = unit(rng.standard_normal((8, dim)))
    windows: dict[str, np.ndarray] = {}
    for i in range(K_PEERS + 3):
        w = unit(rng.standard_normal((WINDOW, dim)))
        w[WINDOW - 16 : WINDOW - 8] = unit(topics + 0.3 * rng.standard_normal((8, dim)) / np.sqrt(dim))
        windows[f"dev-{i:02d}"] = w
    windows["asker"] = unit(topics + 0.3 * rng.standard_normal((8, dim)) / np.sqrt(dim))
    pop = SimpleNamespace(stats=SimpleNamespace(tau=0.5))
    peers = set(windows) - {"asker"}

    found = genres(windows, peers, {}, pop)  # type: ignore[arg-type]
    assert found["asker"].share >= GENRE_SHARE and found["asker"].peers == len(peers)

    one_actor = {a: "cl_1" for a in windows}
    assert genres(windows, peers, one_actor, pop)["asker"].share == 0.0  # type: ignore[arg-type]
    few = sorted(peers)[: K_PEERS - 1]
    assert genres(windows, set(few), {}, pop)["asker"].share == 0.0  # type: ignore[arg-type]


def heavier_deployment(seed: int = 13, lighter: int = 0) -> tuple[list[TrafficRecord], dict[str, str]]:
    """Heavier accounts (90 requests each): ten of one operator, each wrapping questions of one sweep in reworded
    reasoning asks among real chat prompts as cover; ten developers asking about code (a dense group of honest
    accounts); and forty chat users who each ask their own things. With `lighter`, as many more of the operator's
    accounts and ten more chat users, of 40 requests each (thin: under campaign.THIN_MAX)."""
    rng = random.Random(seed)
    chat, bank = list(chat_prompts()), list(sweep_bank())

    def operator(n: int) -> list[str]:
        return [
            rng.choice(WRAPPERS).format(q=rng.choice(bank)) if rng.random() < 0.7 else rng.choice(chat)
            for _ in range(n)
        ]

    plans: dict[str, list[str]] = {f"op-{i}": operator(90) for i in range(10)}
    plans |= {f"dev-{i}": code_requests(rng, 90) for i in range(10)}
    plans |= {f"user-{i:02d}": [rng.choice(chat) for _ in range(90)] for i in range(40)}
    if lighter:
        plans |= {f"lightop-{i}": operator(40) for i in range(lighter)}
        plans |= {f"light-{i}": [rng.choice(chat) for _ in range(40)] for i in range(10)}
    records = []
    for account, prompts in plans.items():
        start = T0 + rng.uniform(0, 86_400)
        records.extend(request(rng, account, p, start, 2 * 86_400) for p in prompts)
    records.sort(key=lambda r: r.ts)
    return records, {a: a.split("-")[0] for a in plans}


def test_heavier_accounts_that_ask_alike_and_each_carry_evidence_are_one_campaign() -> None:
    """One operator keeps each of its heavier accounts under the flag; what each did (its risk alone) is weak but
    not nothing. A dense group whose typical core member carries HEAVY_ELEVATED or more is a campaign while a share
    of its core (HEAVY_UNDER_SHARE) is under the flag, however strong the typical member's evidence, and only its core
    members are in it. The same group at a typical risk just under that is none, nor is the developers' dense group,
    whose members carry next to nothing: what they ask alone never calls a group of heavier accounts. Nor is one
    flagged on its own but for one member: there is nothing to pool for it."""
    from distillshield.detect import campaign as campaign_mod

    records, role = heavier_deployment()
    engine = analyze_records(records, model=content_alone()).engine
    finder = engine.campaigns

    def found(level: float, weak: frozenset[str] = frozenset()) -> list[set[str]]:
        def own(acc: Any) -> float:
            if acc.account_id in weak:
                return campaign_mod.HEAVY_ELEVATED + 0.1  # members their own evidence leaves under the flag
            return level if role[acc.account_id] == "op" else 0.01

        finder.campaigns, finder.heavier = {}, set()
        out = finder.find(engine.accounts, engine.population, force=True, own_evidence=own)
        return [set(c.campaign) for k, c in out.items() if k in finder.heavier]

    ops = {a for a in role if role[a] == "op"}
    called = found(0.45)
    assert len(called) == 1 and len(called[0]) >= campaign_mod.MIN_CAMPAIGN and called[0] <= ops, called
    c = finder.campaigns[next(iter(finder.heavier))]
    assert "heavier accounts" in c.evidence and "median 0.45" in c.evidence, c.evidence
    assert 0.5 <= c.content_risk < 0.8  # suspicious: review, not a stop
    assert found(campaign_mod.HEAVY_ELEVATED + 0.01) == called
    assert found(campaign_mod.HEAVY_ELEVATED - 0.01) == []  # the same group, each member a little weaker
    core = sorted(called[0])
    under = frozenset(core[: math.ceil(campaign_mod.HEAVY_UNDER_SHARE * len(core))])
    assert len(under) > 1
    # A typical member over the flag calls it too, while a share of its members stays under: they are its operator's.
    assert found(0.6, weak=under) == called and found(1.0, weak=under) == called
    assert found(0.6) == [] and found(1.0) == []  # each one flagged on its own: nothing to pool
    assert found(0.6, weak=frozenset(core[:1])) == []  # but for one: no pooled evidence to flag it with


def test_a_heavier_campaign_reaches_the_lighter_accounts_that_ask_as_its_core_does() -> None:
    """One operator's accounts need not all be heavy: the grouping of heavier accounts leaves out those of THIN_MAX
    requests or fewer, and four of them are too few for a thin campaign. A heavier campaign takes in each lighter
    account that passes the test its core passed (as close to the group's mean) and carries evidence of its own of
    HEAVY_ELEVATED or more; a lighter operator account that carries less stays out, and so does every lighter chat
    user, however much evidence it carries."""
    from distillshield.detect import campaign as campaign_mod

    records, role = heavier_deployment(lighter=4)
    engine = analyze_records(records, model=content_alone()).engine
    finder = engine.campaigns
    light_ops = {a for a in role if role[a] == "lightop"}
    light_users = {a for a in role if role[a] == "light"}
    assert all(engine.accounts[a].n <= campaign_mod.THIN_MAX for a in light_ops | light_users)

    def found(light_level: float) -> list[set[str]]:
        def own(acc: Any) -> float:
            r = role[acc.account_id]
            return 0.45 if r == "op" else light_level if r in ("lightop", "light") else 0.01

        finder.campaigns, finder.heavier = {}, set()
        out = finder.find(engine.accounts, engine.population, force=True, own_evidence=own)
        return [set(c.campaign) for k, c in out.items() if k in finder.heavier]

    called = found(campaign_mod.HEAVY_ELEVATED)
    ops = {a for a in role if role[a] == "op"}
    assert len(called) == 1 and light_ops <= called[0] and called[0] <= ops | light_ops, called
    c = finder.campaigns[next(iter(finder.heavier))]
    assert "4 lighter accounts (40-40 requests) ask as they do" in c.evidence, c.evidence
    assert found(campaign_mod.HEAVY_ELEVATED - 0.01) == [called[0] - light_ops]  # ask alike, carry next to nothing


def test_a_heavier_campaign_flags_its_members_and_reads_each_ones_evidence_without_its_cluster(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """End to end: the engine hands its own judgement of each account alone (Engine.own_evidence) to the grouping,
    and the campaign's members are flagged from it. Own evidence is read with no cluster, so being a campaign's
    member does not feed back into the evidence the campaign is judged on."""
    from distillshield.detect import campaign as campaign_mod
    from distillshield.detect.engine import Engine

    records, role = heavier_deployment()
    seen: dict[str, float] = {}
    real = Engine.own_evidence

    def lifted(self: Engine, acc: Any) -> float:  # the operator's accounts as the trained model might see them
        seen[acc.account_id] = real(self, acc)
        return 0.3 if role[acc.account_id] == "op" else seen[acc.account_id]

    monkeypatch.setattr(Engine, "own_evidence", lifted)
    analysis = analyze_records(records, model=content_alone())
    v = verdicts(analysis.report)
    flagged = {a for a, x in v.items() if x != "benign"}
    assert flagged and flagged <= {a for a in role if role[a] == "op"}, sorted(flagged)
    assert len(flagged) >= campaign_mod.MIN_CAMPAIGN
    engine = analysis.engine
    monkeypatch.undo()
    for member in sorted(flagged):
        acc = engine.accounts[member]
        assert acc.cluster_id is not None and "heavier accounts" in engine.clusters[acc.cluster_id].evidence
        # what the grouping read at the end is what the account's evidence is now, in its campaign or out of it
        assert engine.own_evidence(acc) == seen[member]
        cluster_id, acc.cluster_id = acc.cluster_id, None
        assert engine.own_evidence(acc) == seen[member]
        acc.cluster_id = cluster_id


def test_core_members_leave_out_a_group_s_fringe() -> None:
    """The density grouping lets a noise account join a group its nearest accounts belong to; such an account may
    ask otherwise (a pipeline next to an operator's accounts). Only members closer to the others' mean than almost
    every non-member is to the group's, and at least half as close as the typical member, are its core: next to a
    group far from everything, a fringe account can be nearer than every non-member and still ask otherwise."""
    from distillshield.detect.campaign import KEEP_QUANTILE, group_core

    rng = np.random.default_rng(0)
    centre = rng.normal(size=64)
    group = [centre + rng.normal(scale=0.5, size=64) for _ in range(12)]
    fringe = [rng.normal(size=64) + 0.1 * centre, rng.normal(size=64) + 0.4 * centre]
    others = [rng.normal(size=64) for _ in range(40)]
    vecs = np.stack(group + fringe + others)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    ids = [f"g{i:02d}" for i in range(12)] + ["fringe", "near"] + [f"o{i:02d}" for i in range(40)]
    index = {a: i for i, a in enumerate(ids)}
    mean = vecs[:14].sum(axis=0)
    mean /= np.linalg.norm(mean)
    keep_bar = np.quantile(vecs[14:] @ mean, KEEP_QUANTILE)
    assert vecs[13] @ mean > keep_bar  # "near" passes the non-members' bar: only the second bar leaves it out
    core = group_core(ids[:14], vecs, index)
    assert core is not None and core.members == ids[:12]
    assert core.bar > keep_bar  # the test a lighter account must pass too (campaign.Lighter): the higher bar
    assert group_core(ids[:14], vecs[:20], {a: i for a, i in index.items() if i < 20}) is None  # too few others
