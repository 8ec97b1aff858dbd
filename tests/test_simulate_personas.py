"""Each persona's documented signature is present in the traffic it generates (docs/simulator.md)."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from difflib import SequenceMatcher
from typing import Any

import numpy as np
import pytest

from distillshield.simulate import corpora, engine, fresh2_text, fresh3_text, fresh4_text, fresh_text, netid, scenario
from distillshield.simulate.personas import harvest
from distillshield.simulate.personas.attack import paraphrase_fanout, rapid_cot, selfinstruct_farm
from distillshield.simulate.personas.attack.trivia_sweep import knowledge_bank
from tests.test_simulate import (  # noqa: F401
    ALL_PERSONAS,
    FRESH2_PERSONAS,
    FRESH2_TEST_SEED,
    FRESH3_PERSONAS,
    FRESH3_TEST_SEED,
    FRESH4_PERSONAS,
    FRESH4_TEST_SEED,
    FRESH_PERSONAS,
    FRESH_TEST_SEED,
    all_personas_bytes,
    all_personas_records,
    fresh2_bytes,
    fresh2_records,
    fresh3_bytes,
    fresh3_records,
    fresh4_bytes,
    fresh4_records,
    fresh_bytes,
    fresh_records,
)

DAY = 86400.0
START = 1772409600.0  # ALL_PERSONAS starts 2026-03-02T00:00:00Z
RELEASE = START + 12 * 3600
LIMITS = ALL_PERSONAS["limits"]
CJK = re.compile(r"[\u3040-\u30ff\u4e00-\u9fff]")
COT_MARKERS = (
    "step by step",
    "chain of thought",
    "<thinking>",
    "逐步",
    "思考过程",
    "一歩ずつ",
    "段階的",
    "пошагово",
    "paso a paso",
    "Schritt für Schritt",
    "단계별",
    "étape par étape",
)
CLOUD = {f"{a}.{b}." for a, b in netid.CLOUD_BLOCKS}


Records = list[dict[str, Any]]


@pytest.fixture(scope="module")
def by_persona(all_personas_records: Records) -> dict[str, Records]:  # noqa: F811
    out: dict[str, Records] = defaultdict(list)
    for rec in all_personas_records:
        out[rec["label_meta"]["persona"]].append(rec)
    return out


def accounts(records: Records) -> dict[str, Records]:
    out: dict[str, Records] = defaultdict(list)
    for r in records:
        out[r["account_id"]].append(r)
    return out


def last_user_text(rec: dict[str, Any]) -> str:
    req = rec["request"]
    if "prompt" in req:
        return req["prompt"]
    for m in reversed(req["messages"]):
        if m["role"] == "user":
            return m["content"]
    return ""


def first_user_text(rec: dict[str, Any]) -> str:
    return next(m["content"] for m in rec["request"]["messages"] if m["role"] == "user")


def max_per_window(ts: list[float], window: float) -> int:
    arr = np.sort(np.asarray(ts))
    return int((np.searchsorted(arr, arr + window, side="left") - np.arange(arr.size)).max())


def quietest_share(ts: list[float], hours: int = 6) -> float:
    """Share of an account's requests in its quietest `hours`-long daily window (time-zone free)."""
    h = np.bincount(((np.asarray(ts) % DAY) // 3600).astype(int), minlength=24)
    circ = np.concatenate([h, h[: hours - 1]])
    return float(min(circ[i : i + hours].sum() for i in range(24)) / h.sum())


def hours_active(ts: list[float]) -> int:
    return len({int((t % DAY) // 3600) for t in ts})


# -- honest personas ---------------------------------------------------------------------------------------


def test_casual_chat_conversations_carry_previous_turns_on_a_human_day(by_persona: dict[str, Records]) -> None:
    recs = by_persona["casual_chat"]
    later = [r for r in recs if r["sim"]["turn"] >= 2]
    assert len(later) > 0.2 * len(recs)
    for r in later:
        msgs = r["request"]["messages"]
        roles = [m["role"] for m in msgs if m["role"] != "system"]
        assert roles[-1] == "user" and roles.count("assistant") == r["sim"]["turn"] - 1
        assert roles[:2] == ["user", "assistant"]
    busy = [a for a in accounts(recs).values() if len(a) >= 12]
    assert busy and np.median([quietest_share([r["ts"] for r in a]) for a in busy]) < 0.08


def test_self_learners_ask_for_the_reasoning_in_their_own_words_then_probe_it(
    by_persona: dict[str, Records],
) -> None:
    from distillshield.simulate.personas.honest.self_learner import LEARNER_ASKS, LEARNER_FOLLOW_UPS

    recs = by_persona["self_learner"]
    firsts = [last_user_text(r) for r in recs if r["sim"]["turn"] == 1]
    later = [r for r in recs if r["sim"]["turn"] >= 2]
    assert len(firsts) >= 20 and len(later) > 0.2 * len(recs)
    for r in later:  # a conversation that goes on carries the answer it read
        roles = [m["role"] for m in r["request"]["messages"] if m["role"] != "system"]
        assert roles.count("assistant") == r["sim"]["turn"] - 1 and roles[-1] == "user"
    asks = [a.strip().split("{")[0][:18].lower() for a in LEARNER_ASKS if a.strip()]
    asking = [t for t in firsts if any(a[:12] in t.lower() for a in asks)]
    # Most first messages ask for the reasoning, not all; the words around the question vary.
    assert 0.3 < len(asking) / len(firsts) < 0.95
    assert len({t[:30] for t in firsts}) > 0.5 * len(firsts)
    follow = {f.split("{")[0][:20] for f in LEARNER_FOLLOW_UPS}
    probing = [r for r in later if last_user_text(r)[:20] in follow]
    assert len(probing) > 0.5 * len(later)  # the rest: MT-Bench's own second turns
    for a in accounts(recs).values():
        assert len({r["ip"] for r in a}) <= 2 and len({r["user_agent"] for r in a}) == 1


def test_coding_assistant_sends_bursts_of_large_code_contexts(by_persona: dict[str, Records]) -> None:
    recs = by_persona["coding_assistant"]
    fresh = [
        r for r in recs if "messages" in r["request"] and r["request"]["messages"][-1]["content"].count("```") >= 2
    ]
    assert np.median([len(last_user_text(r)) for r in fresh]) > 2000
    gaps = []
    for burst in accounts([dict(r, account_id=r["sim"]["conversation_id"]) for r in recs]).values():
        gaps += np.diff([r["ts"] for r in burst]).tolist()
    assert np.median(gaps) < 120
    # IDE autocompletions (fill-in-the-middle) from every developer on the OpenAI API.
    for acct in accounts(recs).values():
        if any(r["endpoint"] == "/v1/chat/completions" for r in acct):
            fim = [r for r in acct if r["endpoint"] == "/v1/completions"]
            assert fim and all("suffix" in r["request"] and r["request"]["max_tokens"] <= 64 for r in fim)


def test_batch_pipeline_reuses_one_template_with_machine_regular_timing(by_persona: dict[str, Records]) -> None:
    for acct in accounts(by_persona["batch_pipeline"]).values():
        assert len({r["sim"]["template_id"] for r in acct}) == 1
        assert len({last_user_text(r) for r in acct}) == len(acct)  # the documents differ
        gaps = np.diff([r["ts"] for r in acct])
        assert gaps.std() / gaps.mean() < 0.1
        assert hours_active([r["ts"] for r in acct]) == 24
        assert {r["request"].get("temperature") for r in acct} == {0.0}
        assert len({r["ip"] for r in acct}) == 1 and len({r["user_agent"] for r in acct}) == 1


def test_eval_run_sends_a_whole_benchmark_in_one_burst(by_persona: dict[str, Records]) -> None:
    runs: dict[str, Records] = defaultdict(list)
    for r in by_persona["eval_run"]:
        runs[r["sim"]["conversation_id"].rsplit(":", 1)[0]].append(r)
    assert runs
    for run in runs.values():
        ts = [r["ts"] for r in run]
        assert len(run) >= 80 and max(ts) - min(ts) < 2 * 3600
        assert len({r["sim"]["template_id"] for r in run}) == 1
    cot = sum(
        "step by step" in last_user_text(r) or "step by step" in first_user_text(r) for r in by_persona["eval_run"]
    )
    assert cot > 0.5 * len(by_persona["eval_run"])
    # Benchmarking a new model within a day of its release is normal for researchers.
    new = [r["ts"] for r in by_persona["eval_run"] if r["request"]["model"] == "frontier-2"]
    assert new and min(new) - RELEASE < DAY


def test_agent_runs_long_tool_loops_with_growing_transcripts(by_persona: dict[str, Records]) -> None:
    loops = accounts([dict(r, account_id=r["sim"]["conversation_id"]) for r in by_persona["agent"]])
    assert max(len(v) for v in loops.values()) >= 5
    for loop in loops.values():
        assert all(r["request"].get("tools") for r in loop)
        sizes = [len(r["request"]["messages"]) for r in loop]
        assert sizes == list(range(sizes[0], sizes[0] + 2 * len(loop), 2))
        for r in loop[1:]:
            assert r["request"]["messages"][-1]["role"] == "tool"


def test_rag_support_serves_many_end_users_with_one_system_prompt(by_persona: dict[str, Records]) -> None:
    for acct in accounts(by_persona["rag_support"]).values():
        assert len({r["sim"]["end_user"] for r in acct}) >= 50
        systems = [r["request"].get("system") or r["request"]["messages"][0]["content"] for r in acct]
        assert all(s.startswith("You are the customer support assistant for") for s in systems)
        assert acct[0]["label_meta"]["end_users"] >= 50


def test_multilingual_users_write_in_japanese_on_a_utc9_day(by_persona: dict[str, Records]) -> None:
    recs = by_persona["multilingual"]
    assert sum(bool(CJK.search(last_user_text(r))) for r in recs) > 0.6 * len(recs)
    local_hours = Counter(int(((r["ts"] + 9 * 3600) % DAY) // 3600) for r in recs)
    night = sum(local_hours[h] for h in (2, 3, 4, 5))
    assert night < 0.06 * len(recs)


def test_corporate_nat_accounts_share_egress_ips(by_persona: dict[str, Records]) -> None:
    recs = by_persona["corporate_nat"]
    accts = accounts(recs)
    assert len(accts) >= 10
    assert len({r["org_id"] for r in recs}) == 1
    assert len({r["ip"] for r in recs}) <= 2
    assert all(r["label_meta"]["end_user"] for r in recs)
    assert len({r["label_meta"]["end_user"] for r in recs}) == len(accts)


def test_education_classes_ask_the_same_problem_together(by_persona: dict[str, Records]) -> None:
    classes: dict[str, Records] = defaultdict(list)
    for r in by_persona["education"]:
        cid = r["sim"]["conversation_id"]
        if ":class" in cid and r["sim"]["turn"] == 1:
            classes[cid.rsplit(":", 1)[0]].append(r)
    big = [c for c in classes.values() if len({r["sim"]["end_user"] for r in c}) >= 15]
    assert big
    for c in big:
        ts = [r["ts"] for r in c]
        assert max(ts) - min(ts) < 3600
        texts = [first_user_text(r) for r in c]
        shared = [
            SequenceMatcher(None, texts[0], t).find_longest_match(0, len(texts[0]), 0, len(t)).size for t in texts
        ]
        assert np.median(shared) >= 30  # the assigned problem, inside each student's own wording


def test_reseller_relays_hundreds_of_end_users_around_the_clock(by_persona: dict[str, Records]) -> None:
    recs = by_persona["reseller"]
    users = {r["sim"]["end_user"] for r in recs}
    assert len(users) >= 100
    assert hours_active([r["ts"] for r in recs]) == 24
    assert all(r["request"].get("user") == r["sim"]["end_user"] for r in recs if "messages" in r["request"])
    assert len({r["user_agent"] for r in recs}) == 1
    assert all(r["ip"][: r["ip"].rindex(".", 0, r["ip"].rindex(".")) + 1] in CLOUD for r in recs)


# -- attack personas ---------------------------------------------------------------------------------------


def test_bulk_harvester_runs_near_its_rpm_limit_around_the_clock(by_persona: dict[str, Records]) -> None:
    (acct,) = accounts(by_persona["bulk_harvester"]).values()
    ts = [r["ts"] for r in acct]
    assert max_per_window(ts, 60) <= LIMITS["rpm"] * 0.9
    assert len(acct) > 0.9 * 1800 * 2
    assert hours_active(ts) == 24 and quietest_share(ts) > 0.2
    assert len({r["sim"]["template_id"] for r in acct}) == 1
    assert len({r["sim"]["capability"] for r in acct}) >= 5


def test_cot_harvester_coerces_reasoning_in_many_languages(by_persona: dict[str, Records]) -> None:
    recs = by_persona["cot_harvester"]
    assert sum(any(m in last_user_text(r) for m in COT_MARKERS) for r in recs) >= 0.95 * len(recs)
    non_en = sum(r["sim"]["lang"] != "en" for r in recs) / len(recs)
    assert 0.35 < non_en < 0.65
    assert len({r["sim"]["lang"] for r in recs}) >= 6
    assert len({r["label_meta"]["campaign_id"] for r in recs}) == 1


def test_capability_sweep_covers_capabilities_in_blocks(by_persona: dict[str, Records]) -> None:
    recs = by_persona["capability_sweep"]
    caps = [r["sim"]["capability"] for r in recs]
    counts = Counter(caps)
    assert len(counts) >= 6 and max(counts.values()) < 3 * min(counts.values())
    switches = sum(a != b for a, b in zip(caps, caps[1:], strict=False))
    assert switches <= len(caps) / 40 + 1
    agentic = [r for r in recs if r["sim"]["capability"] == "agentic"]
    assert agentic and all(r["request"].get("tools") and len(r["request"]["messages"]) == 1 for r in agentic)


def test_rubric_grader_asks_for_grades(by_persona: dict[str, Records]) -> None:
    recs = by_persona["rubric_grader"]
    markers = ("Score the response", "Compare the two responses", "Grade the student answer", "Apply the rubric")
    assert sum(any(m in last_user_text(r) for m in markers) for r in recs) >= 0.95 * len(recs)


def test_hydra_cluster_spreads_under_per_account_limits(by_persona: dict[str, Records]) -> None:
    recs = by_persona["hydra"]
    clusters: dict[str, Records] = defaultdict(list)
    for r in recs:
        clusters[r["label_meta"]["cluster_id"]].append(r)
    assert len(clusters) == 2
    for members in clusters.values():
        accts = accounts(members)
        assert len(accts) >= 10
        for acct in accts.values():
            ts = [r["ts"] for r in acct]
            assert max_per_window(ts, 60) <= LIMITS["rpm"] * 0.25
            assert max(Counter(int(t // DAY) for t in ts).values()) <= LIMITS["rpd"] * 0.4
        # ...while the cluster as a whole sends more than one account may.
        per_day = Counter(int(r["ts"] // DAY) for r in members)
        assert max(per_day.values()) > LIMITS["rpd"]
        # Shared templates: every template is used by several accounts.
        users = defaultdict(set)
        for r in members:
            users[r["sim"]["template_id"]].add(r["account_id"])
        assert min(len(u) for u in users.values()) >= 3
        # Partly shared proxy IPs.
        ip_users = defaultdict(set)
        for r in members:
            ip_users[r["ip"]].add(r["account_id"])
        sharing = {a for u in ip_users.values() if len(u) > 1 for a in u}
        assert 0.3 * len(accts) <= len(sharing) < len(accts)
        # Accounts created in a few bursts, shortly before the campaign.
        created = sorted({r["label_meta"]["account_created_at"] for r in members})
        bursts = 1 + sum(b - a > 1800 for a, b in zip(created, created[1:], strict=False))
        assert bursts <= 4 and START - created[0] < 13 * DAY
        # Staggered: members start at different times.
        firsts = [min(r["ts"] for r in a) for a in accts.values()]
        assert max(firsts) - min(firsts) > 3600


def test_logprobs_harvester_probes_distributions_with_logit_bias_sweeps(by_persona: dict[str, Records]) -> None:
    recs = by_persona["logprobs_harvester"]
    asks = [r for r in recs if r["request"].get("logprobs") or r["request"].get("top_logprobs")]
    assert len(asks) == len(recs)
    assert all(r["request"]["max_tokens"] <= 16 for r in recs)
    chat = [r for r in recs if r["endpoint"] == "/v1/chat/completions"]
    assert chat and all(r["request"]["top_logprobs"] == 20 for r in chat)
    firsts = [min(int(k) for k in r["request"]["logit_bias"]) for r in recs if "logit_bias" in r["request"]]
    steps = np.diff(firsts) % 100_000
    assert len(firsts) > 0.4 * len(recs) and np.median(steps) == 4  # walks the vocabulary in order


def test_model_pivot_steps_to_the_new_model_within_a_day(by_persona: dict[str, Records]) -> None:
    recs = by_persona["model_pivot"]
    assert not any(r["request"]["model"] == "frontier-2" for r in recs if r["ts"] < RELEASE)
    after = [r for r in recs if r["ts"] >= RELEASE + DAY]
    share = sum(r["request"]["model"] == "frontier-2" for r in after) / len(after)
    assert 0.35 < share < 0.65
    # Honest users adopt gradually: a day after the release few of their requests use it.
    casual_after = [r for r in by_persona["casual_chat"] if RELEASE <= r["ts"] < RELEASE + DAY]
    assert sum(r["request"]["model"] == "frontier-2" for r in casual_after) < 0.15 * len(casual_after)


def test_reseller_mix_hides_harvesting_among_real_customers(by_persona: dict[str, Records]) -> None:
    recs = by_persona["reseller_mix"]
    harvest = [r for r in recs if r["sim"]["harvest"]]
    assert 0.2 < len(harvest) / len(recs) < 0.42
    assert len({r["sim"]["end_user"] for r in recs}) >= 60
    assert len({r["sim"]["end_user"] for r in harvest}) <= 3
    assert all(r["label"] == "attack:reseller_mix" for r in recs)


def test_adaptive_attacker_paraphrases_pads_and_hides_in_cover(by_persona: dict[str, Records]) -> None:
    recs = by_persona["adaptive"]
    harvest = [last_user_text(r) for r in recs if r["sim"]["harvest"]]
    assert len(set(harvest)) >= 0.95 * len(harvest)
    convs = accounts([dict(r, account_id=r["sim"]["conversation_id"]) for r in recs])
    cover = [c for c in convs.values() if not any(r["sim"]["harvest"] for r in c)]
    attack = [c for c in convs.values() if any(r["sim"]["harvest"] for r in c)]
    assert 0.15 < len(cover) / len(convs) < 0.55
    padded = [c for c in attack if c[0]["sim"]["source"] == "chatter"]
    assert len(padded) >= 0.3 * len(attack)
    assert all(r["ip"][: r["ip"].rindex(".", 0, r["ip"].rindex(".")) + 1] not in CLOUD for r in recs)
    busy = [a for a in accounts(recs).values() if len(a) >= 20]
    assert busy and np.median([quietest_share([r["ts"] for r in a]) for a in busy]) < 0.1
    assert len({r["label_meta"]["cluster_id"] for r in recs}) == 1


# -- the fresh split (docs/simulator.md, "Fresh held-out split") ----------------------------------------------


@pytest.fixture(scope="module")
def fresh_by_persona(fresh_records: Records) -> dict[str, Records]:  # noqa: F811
    out: dict[str, Records] = defaultdict(list)
    for rec in fresh_records:
        out[rec["label_meta"]["persona"]].append(rec)
    return out


@pytest.fixture(scope="module")
def fresh_tz() -> dict[str, float]:
    """Each fresh account's time zone (not in the records: re-planned from the same scenario and seed)."""
    sc = scenario.build(FRESH_PERSONAS, "t", FRESH_TEST_SEED)
    return {a.id: a.tz for a, _ in engine.plan_accounts(sc, FRESH_TEST_SEED)}


def night_share(records: Records, tz: dict[str, float]) -> float:
    """Share of requests sent between 01:00 and 06:00 in the sender's own time zone."""
    hours = [int(((r["ts"] + tz[r["account_id"]] * 3600) % DAY) // 3600) for r in records]
    return sum(1 <= h < 6 for h in hours) / len(hours)


def net24(ip: str) -> str:
    return ip.rsplit(".", 1)[0]


def is_cloud(ip: str) -> bool:
    return ip[: ip.rindex(".", 0, ip.rindex(".")) + 1] in CLOUD


def without(problems: list[str], msg: str) -> str | None:
    """`msg` with the (pasted) problem taken out, or None when no known problem is in it."""
    low = msg.lower()
    for p in problems:
        i = low.find(p.lower())
        if i >= 0:
            return (msg[:i] + msg[i + len(p) :]).strip()
    return None


def test_thin_hydra_spreads_one_campaign_thinly_over_own_addresses(
    fresh_by_persona: dict[str, Records], fresh_tz: dict[str, float]
) -> None:
    recs = fresh_by_persona["thin_hydra"]
    accts = accounts(recs)
    assert len(accts) == 120
    assert all(3 <= len(a) <= 10 for a in accts.values())
    # One residential address per account, every account in its own /24 (no proxy pool).
    assert all(len({r["ip"] for r in a}) == 1 for a in accts.values())
    assert len({net24(a[0]["ip"]) for a in accts.values()}) == len(accts)
    assert not any(is_cloud(r["ip"]) for r in recs)
    # Ordinary browser / SDK user agents, never a script's.
    assert not any(ua in netid.USER_AGENTS["script"] for ua in {r["user_agent"] for r in recs})
    assert len({r["user_agent"] for r in recs}) >= 6
    # Daytime in each account's own time zone.
    assert night_share(recs, fresh_tz) < 0.05
    # One campaign, one cluster.
    assert len({r["label_meta"]["cluster_id"] for r in recs}) == 1
    assert len({r["label_meta"]["campaign_id"] for r in recs}) == 1
    # A capability sweep wrapped in >= 30 wordings of one reasoning instruction, before or after.
    wrappers = fresh_text.REASONING_WRAPPERS
    used = set()
    for r in recs:
        w = wrappers[int(r["sim"]["template_id"].rsplit("/", 1)[1])]
        before, after = w.split("{q}")
        text = last_user_text(r)
        assert text.startswith(before) and text.endswith(after)
        used.add(w)
    assert len(used) >= 30
    assert {fresh_text.wrapper_before(w) for w in used} == {True, False}
    assert len({r["sim"]["capability"] for r in recs}) >= 5
    # Created in a few cohorts, each shortly before its members first send.
    created = sorted({a[0]["label_meta"]["account_created_at"] for a in accts.values()})
    bursts = 1 + sum(b - a > 1800 for a, b in zip(created, created[1:], strict=False))
    assert bursts <= 5
    for a in accts.values():
        lead = min(r["ts"] for r in a) - a[0]["label_meta"]["account_created_at"]
        assert 0 < lead < 2 * DAY


def test_human_sweep_sweeps_capabilities_with_a_persons_timing_and_words(
    fresh_by_persona: dict[str, Records], fresh_tz: dict[str, float]
) -> None:
    recs = fresh_by_persona["human_sweep"]
    for acct in accounts(recs).values():
        assert 100 <= len(acct) <= 400
        harvest_caps = Counter(r["sim"]["capability"] for r in acct if r["sim"]["harvest"])
        assert len(harvest_caps) >= 5 and max(harvest_caps.values()) < 2 * min(harvest_caps.values())
        assert len({r["ip"] for r in acct}) <= 2 and not any(is_cloud(r["ip"]) for r in acct)
    assert night_share(recs, fresh_tz) < 0.08
    asks = [last_user_text(r) for r in recs if r["sim"]["harvest"]]
    assert len(set(asks)) >= 0.95 * len(asks)
    convs = accounts([dict(r, account_id=r["sim"]["conversation_id"]) for r in recs])
    padded = [c for c in convs.values() if c[0]["sim"]["source"] == "chatter"]
    assert 0.1 * len(convs) <= len(padded) <= 0.6 * len(convs)
    gaps = [b["ts"] - a["ts"] for c in convs.values() for a, b in zip(c, c[1:], strict=False)]
    assert np.median(gaps) > 20
    assert len({r["label_meta"]["cluster_id"] for r in recs}) == 1


def test_cot_paraphraser_rewords_its_reasoning_request_every_time(fresh_by_persona: dict[str, Records]) -> None:
    recs = fresh_by_persona["cot_paraphraser"]
    phrasing = re.compile(
        "(" + "|".join(fresh_text.COT_VERBS) + ") (" + "|".join(re.escape(o) for o in fresh_text.COT_OBJECTS) + ")",
        re.IGNORECASE,
    )
    found = [phrasing.search(last_user_text(r)) for r in recs]
    assert all(found)
    combos = {(m.group(1).lower(), m.group(2)) for m in found if m}
    assert len(combos) >= 0.6 * len(fresh_text.COT_VERBS) * len(fresh_text.COT_OBJECTS)
    assert hours_active([r["ts"] for r in recs]) == 24
    assert max_per_window([r["ts"] for r in recs], 60) <= LIMITS["rpm"]


def test_light_users_send_a_handful_of_requests_in_their_own_words(
    fresh_by_persona: dict[str, Records], fresh_tz: dict[str, float]
) -> None:
    recs = fresh_by_persona["light_user"]
    accts = accounts(recs)
    assert len(accts) == 150 and all(1 <= len(a) <= 10 for a in accts.values())
    assert np.mean([len(a) for a in accts.values()]) >= 2.5
    assert {r["sim"]["source"] for r in recs} <= {"ifbench-wildchat", "vicuna", "mt-bench"}
    assert not any(is_cloud(r["ip"]) for r in recs)
    assert night_share(recs, fresh_tz) < 0.06
    assert all(r["label_meta"]["cluster_id"] is None for r in recs)


def test_students_ask_for_steps_in_their_own_words(
    fresh_by_persona: dict[str, Records], fresh_tz: dict[str, float]
) -> None:
    recs = fresh_by_persona["student"]
    accts = accounts(recs)
    assert len(accts) >= 25  # of 30: a light student may send nothing in two days
    firsts = [first_user_text(r) for r in recs if r["sim"]["turn"] == 1]
    assert sum("step" in f.lower() for f in firsts) >= 0.2 * len(firsts)  # they ask "step by step", honestly
    # Their own words: take the pasted problem out; what is left rarely repeats (a campaign's wrappers do).
    seed = FRESH_TEST_SEED
    problems = [q.question for q in corpora.dataset_items("gsm_symbolic", seed, 200)]
    problems += [q.question for q in corpora.question_bank("math", seed, 24)]
    problems += [c.turns[0] for c in corpora.mt_bench() + corpora.vicuna()]
    problems.sort(key=len, reverse=True)
    own = [w for w in (without(problems, f) for f in firsts) if w is not None]
    assert len(own) >= 0.8 * len(firsts)
    counts = Counter(own)
    assert len(counts) >= 0.5 * len(own)
    assert max(counts.values()) <= 0.15 * len(own)
    # Some students sit behind a school NAT: a few addresses in one /24 shared by classmates.
    users_by_net: dict[str, set[str]] = defaultdict(set)
    for r in recs:
        users_by_net[net24(r["ip"])].add(r["account_id"])
    shared = {a for u in users_by_net.values() if len(u) >= 3 for a in u}
    assert 3 <= len(shared) < len(accts)
    assert night_share(recs, fresh_tz) < 0.08
    assert all(r["label"] == "benign:student" for r in recs)


def test_doc_pipeline_runs_one_new_template_like_a_machine(fresh_by_persona: dict[str, Records]) -> None:
    known = [t.split("{")[0] for ts in fresh_text.DOC_PIPELINE_TEMPLATES.values() for t in ts]
    for acct in accounts(fresh_by_persona["doc_pipeline"]).values():
        assert len({r["sim"]["template_id"] for r in acct}) == 1
        assert any(last_user_text(acct[0]).startswith(k) for k in known)
        gaps = np.diff([r["ts"] for r in acct])
        assert gaps.std() / gaps.mean() < 0.1
        assert hours_active([r["ts"] for r in acct]) == 24
        assert {r["request"].get("temperature") for r in acct} == {0.0}


def test_bench_burst_sends_a_step_by_step_benchmark_at_once(fresh_by_persona: dict[str, Records]) -> None:
    recs = fresh_by_persona["bench_burst"]
    runs: dict[str, Records] = defaultdict(list)
    for r in recs:
        runs[r["sim"]["conversation_id"].rsplit(":", 1)[0]].append(r)
    assert runs
    for run in runs.values():
        ts = [r["ts"] for r in run]
        assert len(run) >= 80 and max(ts) - min(ts) < 2 * 3600
    assert all("step by step" in first_user_text(r) for r in recs)
    assert {r["sim"]["template_id"] for r in recs} <= {f"cot/{i}" for i in range(len(fresh_text.BENCH_COT_TEMPLATES))}


def test_helpdesk_rag_serves_many_staff_with_one_system_prompt(fresh_by_persona: dict[str, Records]) -> None:
    for acct in accounts(fresh_by_persona["helpdesk_rag"]).values():
        assert len({r["sim"]["end_user"] for r in acct}) >= 50
        systems = [r["request"].get("system") or r["request"]["messages"][0]["content"] for r in acct]
        assert all(s.startswith("You are the virtual service desk for") for s in systems)


def test_platform_reseller_names_end_users_on_both_apis(fresh_by_persona: dict[str, Records]) -> None:
    recs = fresh_by_persona["platform_reseller"]
    assert len({r["sim"]["end_user"] for r in recs}) >= 100
    assert {r["endpoint"] for r in recs} >= {"/v1/chat/completions", "/v1/messages"}
    for r in recs:
        if r["endpoint"] == "/v1/messages":
            assert r["request"]["metadata"] == {"user_id": r["sim"]["end_user"]}
        elif r["endpoint"] == "/v1/chat/completions":
            assert r["request"]["user"] == r["sim"]["end_user"]
    for acct in accounts(recs).values():
        assert hours_active([r["ts"] for r in acct]) == 24
        assert len({r["user_agent"] for r in acct}) == 1 and all(is_cloud(r["ip"]) for r in acct)


def test_thin_hydra_and_human_sweep_draw_from_the_attackers_banks(fresh_by_persona: dict[str, Records]) -> None:
    for persona in ("thin_hydra", "human_sweep"):
        caps = {r["sim"]["capability"] for r in fresh_by_persona[persona] if r["sim"]["harvest"]}
        assert caps <= set(harvest.CAPABILITIES)


# -- the fresh2 split (docs/simulator.md, "Fresh2 held-out split") --------------------------------------------

F2_START = 1780272000.0  # FRESH2_PERSONAS starts 2026-06-01T00:00:00Z (a Monday)
F2_LIMITS = FRESH2_PERSONAS["limits"]
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


@pytest.fixture(scope="module")
def fresh2_by_persona(fresh2_records: Records) -> dict[str, Records]:  # noqa: F811
    out: dict[str, Records] = defaultdict(list)
    for rec in fresh2_records:
        out[rec["label_meta"]["persona"]].append(rec)
    return out


@pytest.fixture(scope="module")
def fresh2_tz() -> dict[str, float]:
    """Each fresh2 account's time zone (re-planned from the same scenario and seed)."""
    sc = scenario.build(FRESH2_PERSONAS, "t", FRESH2_TEST_SEED)
    return {a.id: a.tz for a, _ in engine.plan_accounts(sc, FRESH2_TEST_SEED)}


def named_user(rec: dict[str, Any]) -> str | None:
    """The end user a request names: OpenAI's `user` or Anthropic's `metadata.user_id`."""
    req = rec["request"]
    if rec["endpoint"] == "/v1/messages":
        return (req.get("metadata") or {}).get("user_id")
    return req.get("user")


def system_text(rec: dict[str, Any]) -> str | None:
    req = rec["request"]
    if "system" in req:
        return req["system"]
    msgs = req.get("messages") or []
    return msgs[0]["content"] if msgs and msgs[0]["role"] == "system" else None


def test_trivia_sweep_asks_a_public_bank_verbatim_split_over_accounts(
    fresh2_by_persona: dict[str, Records], fresh2_tz: dict[str, float]
) -> None:
    recs = fresh2_by_persona["trivia_sweep"]
    bank = {q for q, _a, _s in knowledge_bank()}
    assert len(bank) >= 300
    asks = [r for r in recs if r["sim"]["harvest"]]
    # Plain questions: one user message, the bank's text verbatim, no wrapper, no system prompt.
    for r in asks:
        msgs = r["request"]["messages"]
        assert len(msgs) == 1 and msgs[0]["content"] in bank and system_text(r) is None
        assert r["sim"]["source"].startswith("chatterbot/en/")
    # The accounts split the bank: no account repeats a question; a question goes to <= `samples` (2) accounts.
    askers: dict[str, list[str]] = defaultdict(list)
    for r in asks:
        askers[last_user_text(r)].append(r["account_id"])
    assert all(len(a) == len(set(a)) <= 2 for a in askers.values())
    assert len(askers) >= 0.5 * len(asks)
    # Cover: ordinary multi-turn chat between the questions.
    assert 0.15 <= 1 - len(asks) / len(recs) <= 0.6
    assert any(r["sim"]["turn"] >= 2 and not r["sim"]["harvest"] for r in recs)
    assert not any(is_cloud(r["ip"]) for r in recs)
    assert night_share(recs, fresh2_tz) < 0.08
    assert len({fresh2_tz[r["account_id"]] for r in recs}) == 1  # one operator, one place


def test_label_distiller_runs_one_labelling_instruction_over_a_public_corpus(
    fresh2_by_persona: dict[str, Records],
) -> None:
    recs = fresh2_by_persona["label_distiller"]
    head, tail = fresh2_text.LABEL_DISTILL_INSTRUCTION.split("{prev}")
    seen: dict[str, str] = {}
    for r in recs:
        text = last_user_text(r)
        assert text.startswith(head) and "\nTarget utterance: " in text and '"rationale"' in text
        assert r["sim"]["template_id"] == "label_distill/0" and r["sim"]["source"].startswith("chatterbot/")
        assert r["request"]["temperature"] == 0.0
        if r["endpoint"] == "/v1/chat/completions":
            assert r["request"]["response_format"] == {"type": "json_object"}
        assert seen.setdefault(text, r["account_id"]) == r["account_id"]  # the accounts split the corpus
    assert len({r["sim"]["lang"] for r in recs}) >= 3
    for acct in accounts(recs).values():
        ts = [r["ts"] for r in acct]
        assert hours_active(ts) == 24
        assert max_per_window(ts, 60) <= F2_LIMITS["rpm"]
        assert len({r["ip"] for r in acct}) == 1 and is_cloud(acct[0]["ip"])


def test_slow_hydra_spreads_paraphrased_reasoning_asks_over_aged_accounts(
    fresh2_by_persona: dict[str, Records], fresh2_tz: dict[str, float]
) -> None:
    recs = fresh2_by_persona["slow_hydra"]
    accts = accounts(recs)
    assert len(accts) == 60
    for acct in accts.values():
        days = Counter(int((r["ts"] - F2_START) // DAY) for r in acct)
        assert set(days) == {0, 1} and max(days.values()) <= 10  # every day, a few a day, under the cap
        assert len({r["ip"] for r in acct}) == 1 and not is_cloud(acct[0]["ip"])
        age = F2_START - acct[0]["label_meta"]["account_created_at"]
        assert 14 * DAY <= age <= 57 * DAY  # created weeks before the campaign
    assert len({net24(a[0]["ip"]) for a in accts.values()}) >= 0.9 * len(accts)
    assert night_share(recs, fresh2_tz) < 0.08
    firsts = [last_user_text(r) for r in recs if r["sim"]["harvest"] and r["sim"]["turn"] == 1]
    assert len(set(firsts)) >= 0.95 * len(firsts)
    assert all(any(a.lower() in f.lower() for a in fresh2_text.SLOW_ASKS) for f in firsts)
    assert sum(not r["sim"]["harvest"] for r in recs) >= 0.05 * len(recs)  # some ordinary chat as cover


def test_hidden_end_user_harvests_as_a_few_named_end_users(fresh2_by_persona: dict[str, Records]) -> None:
    recs = fresh2_by_persona["hidden_end_user"]
    assert {r["endpoint"] for r in recs} >= {"/v1/chat/completions", "/v1/messages"}
    for acct in accounts(recs).values():
        for r in acct:
            if r["endpoint"] != "/v1/completions":
                assert named_user(r) == r["sim"]["end_user"]
        harvest_users = Counter(r["sim"]["end_user"] for r in acct if r["sim"]["harvest"])
        honest_users = Counter(r["sim"]["end_user"] for r in acct if not r["sim"]["harvest"])
        assert len(harvest_users) == 3 and not set(harvest_users) & set(honest_users)
        assert 0.05 <= sum(harvest_users.values()) / len(acct) <= 0.25
        # Their ids look like everyone else's; their volume does not.
        assert {(u[:4], len(u)) for u in harvest_users} == {(u[:4], len(u)) for u in honest_users}
        assert min(harvest_users.values()) > 5 * float(np.median(list(honest_users.values())))
        assert len({r["user_agent"] for r in acct}) == 1 and all(is_cloud(r["ip"]) for r in acct)
    turns2 = [last_user_text(r) for r in recs if r["sim"]["harvest"] and r["sim"]["turn"] == 2]
    assert turns2 and set(turns2) <= set(fresh2_text.HIDDEN_REASONING_TURNS)


def test_polyglot_sweep_hops_languages_and_capabilities_at_a_persons_pace(
    fresh2_by_persona: dict[str, Records], fresh2_tz: dict[str, float]
) -> None:
    recs = fresh2_by_persona["polyglot_sweep"]
    for acct in accounts(recs).values():
        langs = Counter(r["sim"]["lang"] for r in acct)
        caps = Counter(r["sim"]["capability"] for r in acct)
        assert len(langs) >= 10 and len(caps) >= 5 and max(caps.values()) < 2 * min(caps.values())
        assert len({r["ip"] for r in acct}) <= 2 and not any(is_cloud(r["ip"]) for r in acct)
    convs = accounts([dict(r, account_id=r["sim"]["conversation_id"]) for r in recs])
    pairs = [(a["sim"]["lang"], b["sim"]["lang"]) for c in convs.values() for a, b in zip(c, c[1:], strict=False)]
    assert pairs and sum(a != b for a, b in pairs) >= 0.6 * len(pairs)  # one conversation, many languages
    assert sum(bool(CJK.search(last_user_text(r))) for r in recs) >= 0.1 * len(recs)
    assert night_share(recs, fresh2_tz) < 0.08


def test_translation_app_sends_one_prompt_over_many_languages(fresh2_by_persona: dict[str, Records]) -> None:
    recs = fresh2_by_persona["translation_app"]
    for acct in accounts(recs).values():
        assert len({r["sim"]["template_id"] for r in acct}) == 1
        t_idx = int(acct[0]["sim"]["template_id"].rsplit("/", 1)[1])
        head = fresh2_text.TRANSLATION_SYSTEMS[t_idx].split("{target}")[0]
        assert all((system_text(r) or "").startswith(head) for r in acct)
        assert len({r["sim"]["lang"] for r in acct}) >= 10  # target languages
        sources = {r["sim"]["source"].split("/")[1] for r in acct if r["sim"]["source"].startswith("chatterbot/")}
        assert len(sources) >= 10  # the texts are in many languages too
        assert hours_active([r["ts"] for r in acct]) >= 20
        assert all(named_user(r) is None for r in acct) and all(is_cloud(r["ip"]) for r in acct)
        assert all(r["request"]["temperature"] <= 0.3 for r in acct)


def test_school_district_names_each_student_and_holds_classes(fresh2_by_persona: dict[str, Records]) -> None:
    recs = fresh2_by_persona["school_district"]
    assert {r["endpoint"] for r in recs} == {"/v1/chat/completions", "/v1/messages"}  # `user` and metadata.user_id
    assert all(named_user(r) == r["sim"]["end_user"] and r["sim"]["end_user"].startswith("stu_") for r in recs)
    for acct in accounts(recs).values():
        assert len({r["sim"]["end_user"] for r in acct}) >= 100
    assert all((system_text(r) or "").startswith("You are Study Buddy, the tutoring assistant of") for r in recs)
    assert all(is_cloud(r["ip"]) for r in recs)
    # Classes: many students of one account ask about the same problem within one period.
    classes: dict[str, Records] = defaultdict(list)
    for r in recs:
        if ":class" in r["sim"]["conversation_id"] and r["sim"]["turn"] == 1:
            classes[r["sim"]["conversation_id"].rsplit(":", 1)[0]].append(r)
    assert len(classes) >= 3
    for members in classes.values():
        ts = [r["ts"] for r in members]
        assert max(ts) - min(ts) < 50 * 60 and len({r["sim"]["end_user"] for r in members}) == len(members)
    assert np.median([len(m) for m in classes.values()]) >= 10
    # Own words: the first messages of one class differ although the problem is the same.
    for members in classes.values():
        texts = [first_user_text(r) for r in members]
        assert len(set(texts)) >= 0.8 * len(texts)


def test_labeling_pipeline_labels_customer_messages_with_one_instruction(
    fresh2_by_persona: dict[str, Records],
) -> None:
    for acct in accounts(fresh2_by_persona["labeling_pipeline"]).values():
        assert len({r["sim"]["template_id"] for r in acct}) == 1
        task = acct[0]["sim"]["template_id"].split("/", 1)[1]
        head, tail = fresh2_text.LABELING_TEMPLATES[task].format(text="\0").split("\0")
        assert all(last_user_text(r).startswith(head) and last_user_text(r).endswith(tail) for r in acct)
        assert all(r["request"]["temperature"] == 0.0 and r["request"]["max_tokens"] <= 40 for r in acct)
        # Messages are labelled as customers write them: a day curve, not a machine's schedule.
        gaps = np.diff([r["ts"] for r in acct])
        assert gaps.std() / gaps.mean() > 0.5
        assert len({last_user_text(r) for r in acct}) < len(acct)  # an inbox repeats itself
        assert len({r["ip"] for r in acct}) == 1 and is_cloud(acct[0]["ip"])


def test_research_power_user_is_one_busy_person_on_broad_topics(
    fresh2_by_persona: dict[str, Records], fresh2_tz: dict[str, float]
) -> None:
    recs = fresh2_by_persona["research_power_user"]
    for acct in accounts(recs).values():
        assert 100 <= len(acct) <= 700  # 100-300 a day for two days (per-person spread)
        kinds = {r["sim"]["source"].split("/")[0] for r in acct}
        assert len(kinds) >= 5
        convs = Counter(r["sim"]["conversation_id"] for r in acct)
        assert np.mean(list(convs.values())) >= 2.5
        assert len({r["ip"] for r in acct}) <= 2 and not any(is_cloud(r["ip"]) for r in acct)
    assert night_share(recs, fresh2_tz) < 0.08


def test_anthropic_platform_names_end_users_in_metadata(fresh2_by_persona: dict[str, Records]) -> None:
    recs = fresh2_by_persona["anthropic_platform"]
    assert {r["endpoint"] for r in recs} == {"/v1/messages"}
    assert all(named_user(r) == r["sim"]["end_user"] and UUID.match(r["sim"]["end_user"]) for r in recs)
    assert len({r["sim"]["end_user"] for r in recs}) >= 50
    for acct in accounts(recs).values():
        assert len({r["request"]["system"] for r in acct}) == 1
        assert hours_active([r["ts"] for r in acct]) == 24
        assert len({r["user_agent"] for r in acct}) == 1 and acct[0]["user_agent"].startswith("Anthropic/")
        assert all(is_cloud(r["ip"]) for r in acct)


# -- the fresh3 split (docs/simulator.md, "Fresh3 held-out split") --------------------------------------------

F3_START = 1781481600.0  # FRESH3_PERSONAS starts 2026-06-15T00:00:00Z (a Monday)
F3_LIMITS = FRESH3_PERSONAS["limits"]


@pytest.fixture(scope="module")
def fresh3_by_persona(fresh3_records: Records) -> dict[str, Records]:  # noqa: F811
    out: dict[str, Records] = defaultdict(list)
    for rec in fresh3_records:
        out[rec["label_meta"]["persona"]].append(rec)
    return out


@pytest.fixture(scope="module")
def fresh3_tz() -> dict[str, float]:
    """Each fresh3 account's time zone (re-planned from the same scenario and seed)."""
    sc = scenario.build(FRESH3_PERSONAS, "t", FRESH3_TEST_SEED)
    return {a.id: a.tz for a, _ in engine.plan_accounts(sc, FRESH3_TEST_SEED)}


def local_hours(records: Records, tz: dict[str, float]) -> list[int]:
    return [int(((r["ts"] + tz[r["account_id"]] * 3600) % DAY) // 3600) for r in records]


def test_vertical_bank_asks_each_taxonomy_question_once_under_one_schema(
    fresh3_by_persona: dict[str, Records], fresh3_tz: dict[str, float]
) -> None:
    recs = fresh3_by_persona["vertical_bank"]
    for vertical in ("legal", "medical"):
        bank = {q for q, _cell in fresh3_text.vertical_bank(vertical)}
        asks = [r for r in recs if r["sim"]["template_id"] == f"vertical/{vertical}"]
        assert asks and all(r["sim"]["harvest"] for r in asks)
        for r in asks:  # one clean question, the answer schema in the system prompt
            assert last_user_text(r) in bank and system_text(r) == fresh3_text.VERTICAL_SYSTEM[vertical]
            assert sum(m["role"] == "user" for m in r["request"]["messages"]) == 1
        texts = [last_user_text(r) for r in asks]
        assert len(set(texts)) == len(texts)  # the accounts split the taxonomy: no question twice
        assert len({r["sim"]["cell"].split("/")[1] for r in asks}) >= 10  # many areas / conditions
    assert len(fresh3_text.vertical_bank("legal")) >= 4000 and len(fresh3_text.vertical_bank("medical")) >= 3000
    legal = accounts([r for r in recs if r["sim"]["template_id"] == "vertical/legal"])
    medical = accounts([r for r in recs if r["sim"]["template_id"] == "vertical/medical"])
    assert len(legal) == 12 and np.median([len(a) for a in legal.values()]) >= 30  # mid-volume
    assert len(medical) >= 50 and all(len(a) <= 10 for a in medical.values())  # thin: account_cap
    for acct in [*legal.values(), *medical.values()]:
        assert len({r["ip"] for r in acct}) == 1
    # Office hours of each account's own time zone; the campaign spans several time zones.
    hours = local_hours(recs, fresh3_tz)
    assert sum(8 <= h < 19 for h in hours) >= 0.75 * len(hours)
    assert len({fresh3_tz[a] for a in legal}) >= 3


def test_trajectory_farm_runs_templated_tool_episodes_around_the_clock(fresh3_by_persona: dict[str, Records]) -> None:
    recs = fresh3_by_persona["trajectory_farm"]
    domains = Counter(r["sim"]["template_id"].split("/")[1] for r in recs)
    assert set(domains) == set(fresh3_text.EPISODE_TOOLS) and max(domains.values()) < 2 * min(domains.values())
    for r in recs:
        req = r["request"]
        assert r["endpoint"] == "/v1/chat/completions" and req["tools"] and req["tool_choice"] == "auto"
        msgs = req["messages"]
        assert msgs[0]["role"] == "system" and msgs[1]["role"] == "user"
        assert len(msgs) == 2 + 2 * (r["sim"]["turn"] - 1)  # one tool call + one made-up result per step
        assert [m["role"] for m in msgs[2:]] == ["assistant", "tool"] * (r["sim"]["turn"] - 1)
    assert max(r["sim"]["turn"] for r in recs) >= 4
    for acct in accounts(recs).values():
        ts = [r["ts"] for r in acct]
        assert hours_active(ts) == 24 and max_per_window(ts, 60) <= F3_LIMITS["rpm"]
        assert len({r["ip"] for r in acct}) == 1 and is_cloud(acct[0]["ip"])
    # Slot values are fresh each episode: first user turns rarely repeat.
    firsts = {r["request"]["messages"][1]["content"] for r in recs if r["sim"]["turn"] == 1}
    assert len(firsts) >= 0.9 * sum(r["sim"]["turn"] == 1 for r in recs)


def test_paraphrase_fanout_spreads_each_items_paraphrases_over_accounts(
    fresh3_by_persona: dict[str, Records], fresh3_tz: dict[str, float]
) -> None:
    recs = fresh3_by_persona["paraphrase_fanout"]
    asks = [r for r in recs if r["sim"]["harvest"]]
    by_item: dict[int, Records] = defaultdict(list)
    for r in asks:
        by_item[r["sim"]["seed_item"]].append(r)
    multi = [rs for rs in by_item.values() if len(rs) >= 2]
    assert len(multi) >= 30
    for rs in by_item.values():  # each paraphrase of an item from another account, in other words
        assert len({r["account_id"] for r in rs}) == len(rs)
        assert len({last_user_text(r) for r in rs}) == len(rs)
    bank = paraphrase_fanout.fanout_bank(FRESH3_TEST_SEED, 3, 5, 600)
    assert all(3 <= len(v) <= 5 and len({t for _, t, _, _ in v}) == len(v) for v in bank)
    assert {r["sim"]["capability"] for r in asks} == {"general", "math"}
    assert 0.02 <= 1 - len(asks) / len(recs) <= 0.3  # a little chat as cover
    assert not any(is_cloud(r["ip"]) for r in recs)
    assert night_share(recs, fresh3_tz) < 0.08


def test_mixed_in_app_runs_a_bank_side_job_on_a_real_apps_key(fresh3_by_persona: dict[str, Records]) -> None:
    recs = fresh3_by_persona["mixed_in_app"]
    for acct in accounts(recs).values():
        side = [r for r in acct if r["sim"]["harvest"]]
        app = [r for r in acct if not r["sim"]["harvest"]]
        assert 0.15 <= len(side) / len(acct) <= 0.35
        systems = {system_text(r) for r in app}
        assert len(systems) == 1 and next(iter(systems)).startswith("You are the assistant built into")
        assert all(system_text(r) is None for r in side)  # the side job drops the app's prompt
        assert len({r["sim"]["template_id"] for r in side}) == 1
        assert any(r["sim"]["turn"] >= 2 for r in app)
        assert len({r["user_agent"] for r in acct}) == 1 and all(is_cloud(r["ip"]) for r in acct)
        assert {r["ip"] for r in side} <= {r["ip"] for r in app}  # the same servers
        assert hours_active([r["ts"] for r in side]) == 24
        # The app's users follow their day; the side job does not.
        assert quietest_share([r["ts"] for r in app]) < 0.5 * quietest_share([r["ts"] for r in side])
        caps = Counter(r["sim"]["capability"] for r in side)
        assert len(caps) >= 4


def test_selfinstruct_farm_asks_for_batches_of_tasks_with_worked_answers(
    fresh3_by_persona: dict[str, Records],
) -> None:
    recs = fresh3_by_persona["selfinstruct_farm"]
    seeds = selfinstruct_farm.seed_tasks()
    cells: set[str] = set()
    for acct in accounts(recs).values():
        assert len({r["sim"]["template_id"] for r in acct}) == 1
        t_idx = int(acct[0]["sim"]["template_id"].split("/")[1])
        head = fresh3_text.SI_INSTRUCTIONS[t_idx][:40]
        for r in acct:
            text = last_user_text(r)
            assert text.startswith(head) or head.split("{")[0] in text
            assert r["request"]["max_tokens"] == 4096 and r["request"]["temperature"] == 1.0
            examples = re.findall(r"^\d\. (.+)$", text, flags=re.M)
            assert len(examples) >= 3
        cells |= {r["sim"]["cell"] for r in acct}
        ts = [r["ts"] for r in acct]
        assert hours_active(ts) == 24 and max_per_window(ts, 60) <= F3_LIMITS["rpm"]
        assert len({r["ip"] for r in acct}) == 1 and is_cloud(acct[0]["ip"])
    assert len(cells) >= 60
    assert any(s[:60] in last_user_text(recs[0]) for s in (" ".join(x.split()) for x in seeds))


def test_law_firm_is_many_lawyers_behind_one_office_on_live_matters(
    fresh3_by_persona: dict[str, Records], fresh3_tz: dict[str, float]
) -> None:
    recs = fresh3_by_persona["law_firm"]
    acct = recs
    assert len({r["account_id"] for r in acct}) == 1
    assert len({r["sim"]["end_user"] for r in acct}) >= 15 and acct[0]["label_meta"]["end_users"] == 25
    assert len({r["ip"] for r in acct}) <= 2 and not is_cloud(acct[0]["ip"])
    assert len({r["user_agent"] for r in acct}) == 1 and acct[0]["user_agent"] in netid.USER_AGENTS["chat-app"]
    assert len({system_text(r) for r in acct}) == 1
    firsts = [first_user_text(r) for r in acct if r["sim"]["turn"] == 1]
    assert len(set(firsts)) >= 0.9 * len(firsts)  # own words, matter by matter
    issues = [i for v in fresh3_text.LEGAL_ISSUES.values() for i in v]
    assert sum(any(i[:30] in f for i in issues) for f in firsts) >= 0.5 * len(firsts)  # typos aside
    assert sum(r["sim"]["turn"] >= 2 for r in acct) >= 0.2 * len(acct)
    hours = local_hours(acct, fresh3_tz)
    assert sum(8 <= h < 19 for h in hours) >= 0.75 * len(hours)


def test_support_bot_names_customers_and_calls_order_tools(fresh3_by_persona: dict[str, Records]) -> None:
    recs = fresh3_by_persona["support_bot"]
    tools = {t["function"]["name"] for t in fresh3_text.EPISODE_TOOLS["retail"]}
    for r in recs:
        req = r["request"]
        assert req["user"] == r["sim"]["end_user"] and req["user"].startswith("cus_")
        assert {t["function"]["name"] for t in req["tools"]} == tools
        calls = [m for m in req["messages"] if m["role"] == "assistant" and m.get("tool_calls")]
        assert all(m["content"] is None for m in calls)  # the bot does not narrate its reasoning
    assert len({r["sim"]["end_user"] for r in recs}) >= 100
    # Tool steps follow each other within seconds; customers take longer to reply.
    gaps = []
    for conv in accounts([dict(r, account_id=r["sim"]["conversation_id"]) for r in recs]).values():
        for a, b in zip(conv, conv[1:], strict=False):
            if b["request"]["messages"][-1]["role"] == "tool":
                gaps.append(b["ts"] - a["ts"])
    assert gaps and np.median(gaps) < 10
    firsts = [r["request"]["messages"][1]["content"] for r in recs if r["sim"]["turn"] == 1]
    assert len(set(firsts)) >= 0.9 * len(firsts)
    assert quietest_share([r["ts"] for r in recs]) < 0.08
    assert all(is_cloud(r["ip"]) for r in recs)


def test_nightly_eval_reruns_the_same_items_in_three_formats_each_night(
    fresh3_by_persona: dict[str, Records], fresh3_tz: dict[str, float]
) -> None:
    recs = fresh3_by_persona["nightly_eval"]
    nights: dict[int, set[str]] = defaultdict(set)
    for r in recs:
        nights[int(r["sim"]["conversation_id"].split(":night")[1].split(":")[0])].add(last_user_text(r))
        assert r["request"]["temperature"] == 0.0
    assert len(nights) == 2 and nights[0] == nights[1]  # the same texts night after night
    formats = Counter(r["sim"]["template_id"] for r in recs)
    assert len(formats) == 3 and len(set(formats.values())) == 1
    items = Counter(r["sim"]["conversation_id"].rsplit(":", 1)[0] for r in recs)
    assert set(items.values()) == {3}  # each item in each prompt format
    hours = Counter(local_hours(recs, fresh3_tz))
    assert sum(hours[h] for h in (2, 3)) >= 0.95 * len(recs)  # cron at 02:00 local
    assert len({r["ip"] for r in recs}) == 1 and is_cloud(recs[0]["ip"])


def test_copy_agency_sends_catalogue_batches_and_staff_chat_from_one_key(
    fresh3_by_persona: dict[str, Records], fresh3_tz: dict[str, float]
) -> None:
    recs = fresh3_by_persona["copy_agency"]
    batch = [r for r in recs if r["sim"].get("template_id", "").startswith("copy/")]
    chat = [r for r in recs if r not in batch]
    assert batch and chat
    for r in batch:
        client = fresh3_text.AGENCY_CLIENTS[int(r["sim"]["template_id"].split("/")[1])]
        assert f"{client} " in last_user_text(r)  # the client's brand in the brief
    assert len({last_user_text(r) for r in batch}) >= 0.9 * len(batch)  # varied products
    assert len({r["sim"]["template_id"] for r in batch}) >= 2
    assert any(r["sim"]["turn"] >= 2 for r in chat) and len({r["sim"]["end_user"] for r in chat}) >= 3
    assert len({r["user_agent"] for r in recs}) == 2 and len({r["ip"] for r in recs}) == 1
    hours = local_hours(recs, fresh3_tz)
    assert sum(7 <= h < 20 for h in hours) >= 0.8 * len(hours)


def test_quiz_app_names_teachers_and_students_on_one_subject(fresh3_by_persona: dict[str, Records]) -> None:
    recs = fresh3_by_persona["quiz_app"]
    assert all(r["request"]["user"] == r["sim"]["end_user"] and r["sim"]["end_user"].startswith("cp_") for r in recs)
    assert all(system_text(r) == fresh3_text.QUIZ_APP_SYSTEM for r in recs)
    quiz = [r for r in recs if r["sim"]["source"] == "quiz-requests" and r["sim"]["turn"] == 1]
    asks = [r for r in recs if r["sim"]["source"] == "chem-asks" and r["sim"]["turn"] == 1]
    assert quiz and len(asks) > 2 * len(quiz)
    heads = tuple(t.split("{")[0] for t in fresh3_text.QUIZ_REQUESTS)
    assert all(last_user_text(r).startswith(heads) for r in quiz)
    assert all(any(t in last_user_text(r) for t in fresh3_text.CHEM_TOPICS) for r in quiz)
    assert len({r["sim"]["end_user"] for r in recs}) >= 100
    assert len({first_user_text(r) for r in asks}) >= 0.7 * len(asks)
    assert all(is_cloud(r["ip"]) for r in recs)


# -- the fresh4 split: pacing (docs/simulator.md, "Fresh4 held-out split") -------------------------------------

F4_LIMITS = FRESH4_PERSONAS["limits"]


@pytest.fixture(scope="module")
def fresh4_by_persona(fresh4_records: Records) -> dict[str, Records]:  # noqa: F811
    out: dict[str, Records] = defaultdict(list)
    for rec in fresh4_records:
        out[rec["label_meta"]["persona"]].append(rec)
    return out


@pytest.fixture(scope="module")
def fresh4_tz() -> dict[str, float]:
    """Each fresh4 account's time zone (re-planned from the same scenario and seed)."""
    sc = scenario.build(FRESH4_PERSONAS, "t", FRESH4_TEST_SEED)
    return {a.id: a.tz for a, _ in engine.plan_accounts(sc, FRESH4_TEST_SEED)}


def runs_of(ts: list[float], pause: float) -> list[list[float]]:
    """Sorted times cut wherever two neighbours are more than `pause` seconds apart (bursts, windows)."""
    out: list[list[float]] = []
    for t in sorted(ts):
        if out and t - out[-1][-1] <= pause:
            out[-1].append(t)
        else:
            out.append([t])
    return out


def in_template(text: str, template: str) -> bool:
    head, _, tail = template.partition("{q}")
    return text.startswith(head) and text.endswith(tail)


def test_rapid_cot_wraps_questions_in_reasoning_asks_in_bursts_of_hundreds(
    fresh4_by_persona: dict[str, Records],
) -> None:
    recs = fresh4_by_persona["rapid_cot"]
    assert len(accounts(recs)) == 1
    for r in recs:
        idx = int(r["sim"]["template_id"].split("/")[1])
        assert r["sim"]["harvest"] and in_template(last_user_text(r), fresh4_text.REASONING_ASKS[idx])
    assert len({r["sim"]["template_id"] for r in recs}) == len(fresh4_text.REASONING_ASKS)
    assert len({r["sim"]["capability"] for r in recs}) == 4
    ts = [r["ts"] for r in recs]
    gaps = np.diff(ts)
    assert np.median(gaps) < 1.5 and np.percentile(gaps, 10) < 0.5  # as fast as the client allows
    assert max_per_window(ts, 60) <= 0.95 * F4_LIMITS["rpm"] + 1  # ...never over the provider's limit
    bursts = [b for b in runs_of(ts, 120) if len(b) >= 20]
    assert len(bursts) >= 8 and np.median([len(b) for b in bursts]) >= 80
    assert len({int((b[0] % DAY) // (6 * 3600)) for b in bursts}) >= 3  # around the clock: no daily rhythm
    assert len({r["ip"] for r in recs}) == 1 and is_cloud(recs[0]["ip"])
    assert recs[0]["user_agent"] in {ua for v in rapid_cot.ASYNC_UA.values() for ua in v}


def test_batch_window_sends_the_sweep_grid_once_in_dense_windows(
    fresh4_by_persona: dict[str, Records], fresh4_tz: dict[str, float]
) -> None:
    recs = fresh4_by_persona["batch_window"]
    grid = {cell: q for q, cell in fresh4_text.sweep_grid()}
    for r in recs:
        assert grid[r["sim"]["cell"]] == last_user_text(r) and system_text(r) == fresh4_text.SWEEP_SYSTEM
    assert len({r["sim"]["cell"] for r in recs}) == len(recs)  # each cell once in the campaign
    assert len({r["sim"]["template_id"] for r in recs}) == len(fresh4_text.SWEEP_SKILLS)
    assert len({fresh4_tz[a] for a in accounts(recs)}) == 1  # one operator's scheduler
    for acct in accounts(recs).values():
        ts = [r["ts"] for r in acct]
        windows = runs_of(ts, 600)
        assert len(windows) == 4  # two windows a day (01:00 and 13:00 local), two days
        assert all(w[-1] - w[0] < 900 and len(w) >= 100 for w in windows)
        assert max_per_window(ts, 60) <= 0.95 * F4_LIMITS["rpm"] + 1
        assert set(local_hours(acct, fresh4_tz)) <= {1, 2, 13, 14}
        assert len({r["ip"] for r in acct}) == 1 and is_cloud(acct[0]["ip"])


def test_burst_hydra_spends_each_account_in_one_short_burst_from_its_own_address(
    fresh4_by_persona: dict[str, Records],
) -> None:
    recs = fresh4_by_persona["burst_hydra"]
    accts = accounts(recs)
    assert len(accts) == 30
    starts = []
    for acct in accts.values():
        ts = [r["ts"] for r in acct]
        assert 20 <= len(acct) <= 60 and len(runs_of(ts, 30)) == 1 and ts[-1] - ts[0] < 300
        assert acct[0]["label_meta"]["account_created_at"] > ts[0] - 3 * DAY  # made for this burst
        starts.append(ts[0])
        for r in acct:
            ti = int(r["sim"]["template_id"].split("/")[1])
            head = fresh4_text.HYDRA_TASKS[ti].split("{")[0]
            assert last_user_text(r).startswith(head) and r["sim"]["harvest"]
    assert len({acct[0]["ip"] for acct in accts.values()}) == 30  # an address each
    assert all(len({r["ip"] for r in acct}) == 1 for acct in accts.values())
    assert len({r["user_agent"] for r in recs}) == 1  # one client for the campaign
    starts.sort()
    assert starts[-1] - starts[0] > DAY and min(np.diff(starts)) > 0  # staggered over the scenario


def test_crop_desk_asks_an_agronomy_bank_in_detail_at_human_pace(
    fresh4_by_persona: dict[str, Records], fresh4_tz: dict[str, float]
) -> None:
    recs = fresh4_by_persona["crop_desk"]
    bank = {cell: q for q, cell in fresh4_text.crop_bank()}
    texts = [last_user_text(r) for r in recs]
    assert len(set(texts)) == len(texts)  # each question once in the campaign
    for r in recs:
        assert bank[r["sim"]["cell"]] == last_user_text(r) and "in detail" in last_user_text(r).lower()
        assert system_text(r) is None and len(r["request"]["messages"]) == 1
    for acct in accounts(recs).values():
        ts = [r["ts"] for r in acct]
        assert min(np.diff(ts), default=60) >= 30.0  # reading time between questions
        assert acct[0]["user_agent"] in netid.USER_AGENTS["chat-app"] and not is_cloud(acct[0]["ip"])
    assert night_share(recs, fresh4_tz) < 0.1


def test_ci_evals_fires_the_same_suite_per_push_from_a_fresh_runner(
    fresh4_by_persona: dict[str, Records], fresh4_tz: dict[str, float]
) -> None:
    recs = fresh4_by_persona["ci_evals"]
    runs: dict[str, Records] = defaultdict(list)
    for r in recs:
        assert r["request"]["temperature"] == 0.0 and system_text(r) == fresh4_text.CI_SYSTEM
        runs[r["sim"]["conversation_id"].rsplit(":", 1)[0]].append(r)
    suite = fresh4_text.ci_suite()
    full = [rs for rs in runs.values() if len(rs) == len(suite)]
    assert len(full) >= 4
    for rs in full:
        assert sorted(last_user_text(r) for r in rs) == sorted(suite)  # the same prompts every run
        ts = [r["ts"] for r in rs]
        assert max(ts) - min(ts) < 120 and len({r["ip"] for r in rs}) == 1 and is_cloud(rs[0]["ip"])
    assert len({rs[0]["ip"] for rs in runs.values()}) == len(runs)  # a new runner each push
    hours = local_hours(recs, fresh4_tz)
    assert sum(7 <= h < 21 for h in hours) >= 0.8 * len(hours)


def test_etl_extract_drains_one_template_every_few_minutes_around_the_clock(
    fresh4_by_persona: dict[str, Records],
) -> None:
    recs = fresh4_by_persona["etl_extract"]
    head = fresh4_text.ETL_TEMPLATE.split("{doc}")[0]
    for r in recs:
        req = r["request"]
        assert last_user_text(r).startswith(head) and req["temperature"] == 0.0
        assert req["response_format"] == {"type": "json_object"}
    assert len({last_user_text(r) for r in recs}) >= 0.95 * len(recs)
    ts = [r["ts"] for r in recs]
    drains = runs_of(ts, 60)
    assert len(drains) >= 150 and np.median([d[-1] - d[0] for d in drains]) < 10
    assert hours_active(ts) == 24 and quietest_share(ts) > 0.1
    assert len({r["ip"] for r in recs}) == 1 and is_cloud(recs[0]["ip"])


def test_agent_loop_steps_come_seconds_apart_on_a_growing_transcript(fresh4_by_persona: dict[str, Records]) -> None:
    recs = fresh4_by_persona["agent_loop"]
    step_gaps, follow_ups = [], 0
    for conv in accounts([dict(r, account_id=r["sim"]["conversation_id"]) for r in recs]).values():
        lengths = [len(r["request"]["messages"]) for r in conv]
        assert lengths == sorted(lengths) and [r["sim"]["turn"] for r in conv] == list(range(1, len(conv) + 1))
        for a, b in zip(conv, conv[1:], strict=False):
            if b["request"]["messages"][-1]["role"] == "tool":
                step_gaps.append(b["ts"] - a["ts"])
        follow_ups += sum(m["content"] in fresh4_text.LOOP_FOLLOW_UPS for m in conv[-1]["request"]["messages"])
    assert step_gaps and np.median(step_gaps) < 3.0
    assert follow_ups >= 3
    for r in recs:
        req = r["request"]
        assert req["tools"] == fresh4_text.LOOP_TOOLS and req["messages"][0]["content"] == fresh4_text.LOOP_SYSTEM
        assert r["user_agent"] in fresh4_text.LOOP_UA and req["stream"] is True
    assert max(len(str(r["request"]["messages"])) for r in recs) > 8000  # long contexts


def test_l10n_batch_translates_each_string_into_every_language_in_fast_runs(
    fresh4_by_persona: dict[str, Records], fresh4_tz: dict[str, float]
) -> None:
    recs = fresh4_by_persona["l10n_batch"]
    head = fresh4_text.L10N_TEMPLATE.split("{lang}")[0]
    langs = set(fresh4_text.L10N_LANGS[:6])
    runs: dict[str, Records] = defaultdict(list)
    for r in recs:
        assert last_user_text(r).startswith(head) and r["sim"]["target_lang"] in langs
        runs[r["sim"]["conversation_id"].rsplit(":", 1)[0]].append(r)
    assert len(runs) >= 2
    for rs in runs.values():
        per_string = Counter(last_user_text(r).rsplit("String: ", 1)[1] for r in rs)
        assert set(per_string.values()) == {len(langs)}  # every string once per target language
        assert max(r["ts"] for r in rs) - min(r["ts"] for r in rs) < 600  # hundreds in minutes
    hours = local_hours(recs, fresh4_tz)
    assert sum(7 <= h < 21 for h in hours) >= 0.8 * len(hours)
