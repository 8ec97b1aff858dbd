"""The evaluator's metrics on hand-made traffic and reports whose answers are worked out by hand.

The helpers build tiny traffic files in the public format, labelled as the simulator labels them, so
these tests do not depend on the simulator. tests/test_evaluate_cli.py reuses them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest

from distillshield.evaluate import ReportError, evaluate
from distillshield.evaluate.baseline import VolumeBaseline
from distillshield.evaluate.metrics import rate, tpr_at_fpr


def record(
    account: str,
    ts: float,
    kind: str | None = "benign",
    persona: str = "chat",
    *,
    split: str | None = "dev",
    cluster: str | None = None,
    campaign: str | None = None,
    status: int | None = 200,
    response: bool = True,
    tokens: int = 10,
) -> dict[str, Any]:
    """One traffic record in the public format, labelled the way the simulator labels it."""
    rec: dict[str, Any] = {
        "ts": ts,
        "account_id": account,
        "endpoint": "/v1/chat/completions",
        "request": {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
    }
    if status is not None:
        rec["status"] = status
    if response:
        rec["response"] = {"text": "ok", "finish_reason": "stop",
                           "usage": {"prompt_tokens": 3, "completion_tokens": tokens}}  # fmt: skip
    if kind is not None:
        rec["label"] = f"{kind}:{persona}"
        rec["label_meta"] = {"persona": persona, "campaign_id": campaign, "cluster_id": cluster, "split": split,
                             "end_user": None}  # fmt: skip
    return rec


def account(account_id: str, kind: str | None, persona: str, times: Iterable[float], **kw: Any) -> list[dict[str, Any]]:
    """All requests of one account, at the given timestamps (kw as for `record`)."""
    return [record(account_id, t, kind, persona, **kw) for t in times]


def write_traffic(path: Path, records: Sequence[dict[str, Any]], extra_lines: Sequence[bytes] = ()) -> Path:
    """Write records sorted by time (as a gateway log is), then any raw extra lines (e.g. malformed ones)."""
    with open(path, "wb") as fh:
        for rec in sorted(records, key=lambda r: r["ts"]):
            fh.write(orjson.dumps(rec) + b"\n")
        for line in extra_lines:
            fh.write(line + b"\n")
    return path


def verdict(
    account_id: str,
    risk: float,
    verdict: str = "benign",
    *,
    ts: float | None = None,
    index: int | None = None,
    cluster: str | None = None,
    online: bool = True,
) -> dict[str, Any]:
    """One account entry of an analyser report; `online=False` leaves out the first_flag fields (batch)."""
    entry: dict[str, Any] = {"account_id": account_id, "risk": risk, "verdict": verdict, "cluster_id": cluster,
                             "reasons": [{"signal": "test", "score": risk, "detail": "hand-made"}]}  # fmt: skip
    if online:
        entry["first_flag_ts"] = ts
        entry["first_flag_index"] = index
    return entry


def write_report(path: Path, accounts: Sequence[dict[str, Any]], clusters: Sequence[dict[str, Any]] = ()) -> Path:
    path.write_bytes(orjson.dumps({"accounts": list(accounts), "clusters": list(clusters), "summary": {}}))
    return path


# ---------------------------------------------------------------- fixtures with known answers


def ranking_case(tmp_path: Path) -> tuple[Path, Path]:
    """6 benign (4 chat, 2 batch) and 4 attack (bulk) accounts, 3 requests each, with these risks:

    benign  b1 .1  b2 .2  b3 .3  b4 .9 (suspicious) | b5 .4  b6 .5 (suspicious)
    attack  a1 .95 (extraction)  a2 .9 (suspicious)  a3 .6 (suspicious)  a4 .2

    AUC: of 24 attack/benign pairs, attack ranks higher in 6 + 5.5 + 5 + 1.5 = 18 (ties count 1/2): 0.75.
    """
    recs: list[dict[str, Any]] = []
    for i, (aid, persona) in enumerate([("b1", "chat"), ("b2", "chat"), ("b3", "chat"), ("b4", "chat"),
                                        ("b5", "batch"), ("b6", "batch")]):  # fmt: skip
        recs += account(aid, "benign", persona, [i, i + 100, i + 200])
    for i, aid in enumerate(["a1", "a2", "a3", "a4"]):
        recs += account(aid, "attack", "bulk", [i + 10, i + 110, i + 210])
    traffic = write_traffic(tmp_path / "t.jsonl", recs)
    report = write_report(tmp_path / "r.json", [
        verdict("b1", 0.1), verdict("b2", 0.2), verdict("b3", 0.3), verdict("b4", 0.9, "suspicious", ts=200),
        verdict("b5", 0.4), verdict("b6", 0.5, "suspicious", ts=205),
        verdict("a1", 0.95, "extraction", ts=10), verdict("a2", 0.9, "suspicious", ts=111),
        verdict("a3", 0.6, "suspicious", ts=212), verdict("a4", 0.2),
    ])  # fmt: skip
    return traffic, report


def test_roc_auc_counts_ties_as_half(tmp_path: Path) -> None:
    traffic, report = ranking_case(tmp_path)
    dev = evaluate(traffic, report=report).metrics["splits"]["dev"]
    assert dev["roc_auc"] == {"split": "dev", "value": pytest.approx(0.75), "note": None}


def test_tpr_at_fpr_never_splits_a_tie_and_says_when_fpr_resolution_is_too_coarse() -> None:
    y = [0, 0, 0, 0, 0, 0, 1, 1, 1, 1]
    s = [0.1, 0.2, 0.3, 0.9, 0.4, 0.5, 0.95, 0.9, 0.6, 0.2]
    # FPR <= 0.2 allows one false positive of 6: cut at .6 flags b4 (.9) and a1, a2, a3 -> TPR 3/4.
    r = tpr_at_fpr(y, s, 0.2)
    assert (r["tpr"], r["achieved_fpr"], r["threshold"]) == (0.75, pytest.approx(1 / 6), 0.6)
    # FPR <= 0.1%: no false positive allowed; a2 is tied with benign b4 at .9, so only a1 (.95) counts.
    r = tpr_at_fpr(y, s, 0.001)
    assert (r["tpr"], r["achieved_fpr"], r["threshold"]) == (0.25, 0.0, 0.95)
    assert "zero false positives" in r["note"]
    # A pure tie: flagging the attack account means flagging the benign one too.
    assert tpr_at_fpr([1, 0], [0.5, 0.5], 0.4)["tpr"] == 0.0
    assert tpr_at_fpr([1, 0], [0.5, 0.5], 1.0)["tpr"] == 1.0


def test_verdict_rates_overall_per_honest_persona_and_per_attack_persona(tmp_path: Path) -> None:
    traffic, report = ranking_case(tmp_path)
    dev = evaluate(traffic, report=report).metrics["splits"]["dev"]
    assert (dev["benign_fpr"]["k"], dev["benign_fpr"]["n"]) == (2, 6)
    honest = {r["persona"]: (r["k"], r["n"], r["split"]) for r in dev["honest_personas"]}
    assert honest == {"chat": (1, 4, "dev"), "batch": (1, 2, "dev")}
    (bulk,) = dev["attack_personas"]
    assert (bulk["persona"], bulk["k"], bulk["n"], bulk["rate"]) == ("bulk", 3, 4, 0.75)
    assert dev["tpr_at_fpr"][0]["tpr"] == 0.25 and dev["tpr_at_fpr"][1]["tpr"] == 0.25


def test_flag_on_extraction_counts_only_extraction_verdicts(tmp_path: Path) -> None:
    traffic, report = ranking_case(tmp_path)
    m = evaluate(traffic, report=report, flag_on="extraction").metrics
    dev = m["splits"]["dev"]
    assert m["flagged_verdicts"] == ["extraction"]
    assert (dev["attack_tpr"]["k"], dev["benign_fpr"]["k"]) == (1, 0)
    assert dev["roc_auc"]["value"] == pytest.approx(0.75)  # risk-based figures do not depend on the verdict


def test_wilson_interval_is_sane_at_the_edges() -> None:
    assert rate(0, 0) == {"k": 0, "n": 0, "rate": None, "ci95": None}
    zero = rate(0, 10)
    assert zero["rate"] == 0.0 and zero["ci95"][0] == 0.0 and 0.25 < zero["ci95"][1] < 0.35
    half = rate(5, 10)
    assert half["ci95"][0] == pytest.approx(1 - half["ci95"][1])


def delay_case(tmp_path: Path, *, index_only: bool = False) -> Path:
    """Attack account x: 10 requests at ts 100..109, the 2nd refused (429, no response); flagged at its 4th
    request (ts 103). Delay: 4 requests, 3 s. Leaked: requests 1, 3, 4 served -> 3 responses, 30 tokens;
    exposure 9 served responses. Benign account y keeps the benign side non-empty."""
    recs = [record("x", 100 + i, "attack", "cot", status=429 if i == 1 else 200, response=i != 1)
            for i in range(10)]  # fmt: skip
    recs += account("y", "benign", "chat", [100, 200])
    traffic = write_traffic(tmp_path / "d.jsonl", recs)
    flag = verdict("x", 0.9, "extraction", index=3) if index_only else verdict("x", 0.9, "extraction", ts=103.0)
    write_report(tmp_path / "d.json", [flag, verdict("y", 0.1)])
    return traffic


@pytest.mark.parametrize("index_only", [False, True])
def test_delay_and_leakage_of_one_account(tmp_path: Path, index_only: bool) -> None:
    traffic = delay_case(tmp_path, index_only=index_only)
    dev = evaluate(traffic, report=tmp_path / "d.json").metrics["splits"]["dev"]
    assert dev["delay"]["requests"]["median"] == 4 and dev["delay"]["seconds"]["median"] == 3.0
    leak = dev["leakage"]
    assert (leak["leaked"], leak["exposure"], leak["leaked_completion_tokens"]) == (3, 9, 30)
    assert leak["leaked_share"] == pytest.approx(3 / 9) and leak["basis"].startswith("served responses")


def test_leakage_counts_requests_when_the_traffic_has_no_responses(tmp_path: Path) -> None:
    recs = [record("x", 100 + i, "attack", "cot", response=False) for i in range(10)]
    recs += [record("y", 100, "benign", "chat", response=False)]
    traffic = write_traffic(tmp_path / "n.jsonl", recs)
    report = write_report(tmp_path / "n.json", [verdict("x", 0.9, "extraction", ts=103.0), verdict("y", 0.1)])
    m = evaluate(traffic, report=report).metrics
    leak = m["splits"]["dev"]["leakage"]
    assert (leak["leaked"], leak["exposure"]) == (4, 10) and leak["basis"].startswith("requests")
    assert m["data"]["leakage_basis"].startswith("requests")


def cluster_case(tmp_path: Path, *, index_only: bool = False) -> tuple[Path, Path]:
    """Ground-truth cluster H1 = c1, c2, c3 (the analyser also clusters them, as K1); H2 = d1, d2 (not
    clustered by the analyser). Every request is served.

    Membership as known at each moment: a member is linked at its 5th request (c1 at 40, c2 at 45, c3 at
    140) and K1 acts on H1 once 3 of H1's members are linked (at 140). c1's flag at 50 therefore stops K1
    at max(50, 140) = 140, not at 50: c3 had not even sent a request at 50.

    c1: ts 0, 10 .. 90, flagged at ts 50 (its 6th request)  -> delay 6 req / 50 s; leaked 6 (0..50)
    c2: ts 5, 15 .. 95, never flagged itself                -> K1 stops it at 140, after its last request: 10
    c3: ts 100 .. 190, flagged at ts 150 (6th request)      -> delay 6 req / 50 s; stopped via K1 at 140: 5
    d1: ts 0, 1, 2, flagged at its 1st request              -> delay 1 req / 0 s; leaked 1
    d2: ts 0, 1, 2, 3, never flagged                        -> leaked 4
    H1: 2/3 flagged, first detection 50 s after its first request, leaked 6 + 10 + 5 = 21 of 30.
    H2: 1/2 flagged, first detection after 0 s, leaked 5 of 7.
    (The evaluator before membership-in-time counted c2 as stopped at 50 and c3 at 50: 6 + 5 + 0 = 11.)
    """
    recs = account("c1", "attack", "hydra", range(0, 100, 10), cluster="H1", campaign="camp1")
    recs += account("c2", "attack", "hydra", range(5, 100, 10), cluster="H1", campaign="camp1")
    recs += account("c3", "attack", "hydra", range(100, 200, 10), cluster="H1", campaign="camp1")
    recs += account("d1", "attack", "sweep", [0, 1, 2], cluster="H2")
    recs += account("d2", "attack", "sweep", [0, 1, 2, 3], cluster="H2")
    recs += account("h", "benign", "batch", [0, 50, 100])
    recs += account("h2", "benign", "chat", [0, 50, 100])
    traffic = write_traffic(tmp_path / "c.jsonl", recs)

    def when(ts: float, index: int) -> dict[str, Any]:
        return {"index": index} if index_only else {"ts": ts}

    report = write_report(tmp_path / "c.json", [
        verdict("c1", 0.9, "extraction", cluster="K1", **when(50.0, 5)),
        verdict("c2", 0.4, "benign", cluster="K1"),
        verdict("c3", 0.8, "suspicious", cluster="K1", **when(150.0, 5)),
        verdict("d1", 0.7, "suspicious", **when(0.0, 0)),
        verdict("d2", 0.3),
        verdict("h", 0.2, cluster="K1"),  # an honest account the analyser wrongly clustered: collateral
        verdict("h2", 0.1),
    ], clusters=[{"cluster_id": "K1", "accounts": ["c1", "c2", "c3", "h"], "risk": 0.9, "reasons": []}])  # fmt: skip
    return traffic, report


@pytest.mark.parametrize("index_only", [False, True])
def test_cluster_tpr_delay_and_leakage_with_cluster_stop(tmp_path: Path, index_only: bool) -> None:
    traffic, report = cluster_case(tmp_path, index_only=index_only)
    dev = evaluate(traffic, report=report).metrics["splits"]["dev"]
    clusters = {c["cluster_id"]: c for c in dev["clusters"]}
    h1, h2 = clusters["H1"], clusters["H2"]
    assert (h1["k"], h1["n"], h1["detected"], h1["first_detection_delay_seconds"]) == (2, 3, True, 50.0)
    assert (h1["leaked"], h1["exposure"], h1["stopped_accounts"]) == (21, 30, 3)
    assert h1["stopped_via_cluster"] == 2  # c2 (never flagged) and c3 (K1 at 140 before its own flag at 150)
    assert h1["first_flagged"]["account_id"] == "c1" and h1["first_flagged"]["analyser_cluster"] == "K1"
    assert h1["personas"] == ["hydra"] and h1["campaigns"] == ["camp1"]
    assert (h2["k"], h2["n"], h2["first_detection_delay_seconds"], h2["leaked"], h2["exposure"]) == (1, 2, 0.0, 5, 7)
    assert dev["clusters_detected"]["k"] == 2
    # delays of the 3 flagged attack accounts: 6, 6, 1 requests and 50, 50, 0 seconds
    assert dev["delay"]["requests"]["median"] == 6 and dev["delay"]["requests"]["max"] == 6
    assert dev["delay"]["seconds"]["mean"] == pytest.approx(100 / 3)
    assert dev["leakage"]["leaked"] == 26 and dev["leakage"]["exposure"] == 37
    assert dev["benign_stopped_via_cluster"] == 1 and dev["benign_fpr"]["k"] == 0


def unrelated_case(tmp_path: Path, *, unrelated_ts: float | None = 2.0) -> tuple[Path, Path]:
    """The analyser's cluster K holds a 4-account hydra H plus accounts unrelated to it: a bulk harvester u
    flagged at ts 2 (or flagged with no time, `unrelated_ts=None`), an honest account b wrongly flagged at
    ts 1, and an honest account h never flagged. The hydra starts at ts 100, long after those flags.

    Links (5th request): m1 140, m2 145, m3 148, m4 340; H is a cluster in K from its 3rd link, 148.
    m1: ts 100 .. 190, flagged at ts 160 (its 7th request) -> stops H in K at max(160, 140, 148) = 160
    m2: ts 105 .. 195, never flagged  -> stopped via K at max(160, 145) = 160: leaked 6 (105 .. 155)
    m3: ts 108 .. 198, never flagged  -> stopped via K at 160: leaked 6 (108 .. 158)
    m4: ts 300 .. 370, never flagged  -> created after the flag; linkable at its 5th request: leaked 5 of 8
    m1 leaked 7 (100 .. 160). H: 7 + 6 + 6 + 5 = 24 of 38.
    u: ts 0 .. 9, stopped by its own flag at 2 only: leaked 3 (0, 1, 2); H's flags never stop it either.
    Old behaviour (end-of-run membership, any member's flag): K stopped at 1, so H leaked 0 of 38.
    """
    recs: list[dict[str, Any]] = []
    for aid, times in [("m1", range(100, 200, 10)), ("m2", range(105, 200, 10)), ("m3", range(108, 200, 10)),
                       ("m4", range(300, 380, 10))]:  # fmt: skip
        recs += account(aid, "attack", "hydra", times, cluster="H", campaign="camp_h")
    recs += account("u", "attack", "bulk", range(10))
    recs += account("b", "benign", "batch", range(0, 400, 20))
    recs += account("h", "benign", "chat", [0, 150, 300])
    traffic = write_traffic(tmp_path / "u.jsonl", recs)
    m1 = verdict("m1", 0.9, "extraction", ts=160.0, cluster="K")
    m1["reasons"] = [{"signal": "volume", "score": 0.3, "detail": "weak"},
                     {"signal": "cot", "score": 0.95, "detail": "asks for step-by-step reasoning"}]  # fmt: skip
    u = verdict("u", 0.99, "extraction", ts=unrelated_ts, cluster="K")
    u["reasons"] = [{"signal": "volume", "score": 0.99, "detail": "1,500 requests a day"}]
    report = write_report(tmp_path / "u.json", [
        m1, verdict("m2", 0.5, "benign", cluster="K"), verdict("m3", 0.5, "benign", cluster="K"),
        verdict("m4", 0.5, "benign", cluster="K"), u,
        verdict("b", 0.7, "suspicious", ts=1.0, cluster="K"), verdict("h", 0.1, cluster="K"),
    ])  # fmt: skip
    return traffic, report


def test_an_unrelated_early_flag_in_the_analysers_cluster_does_not_stop_the_hydra(tmp_path: Path) -> None:
    traffic, report = unrelated_case(tmp_path)
    dev = evaluate(traffic, report=report).metrics["splits"]["dev"]
    (hydra,) = dev["clusters"]
    # Leakage counts every hydra request before a hydra member's own flag could stop the cluster.
    assert (hydra["leaked"], hydra["exposure"]) == (24, 38)
    assert hydra["stopped_accounts"] == 4 and hydra["stopped_via_cluster"] == 3
    # The headline evidence is the hydra's own first flagged member and its strongest reason, not u's.
    first = hydra["first_flagged"]
    assert (first["account_id"], first["flag_ts"], first["analyser_cluster"]) == ("m1", 160.0, "K")
    assert first["reason"]["signal"] == "cot" and first["reason"]["score"] == 0.95
    assert hydra["first_detection_delay_seconds"] == 60.0
    personas = {r["persona"]: r for r in dev["attack_personas"]}
    assert (personas["hydra"]["leaked"], personas["bulk"]["leaked"]) == (24, 3)
    assert (dev["leakage"]["leaked"], dev["leakage"]["exposure"]) == (27, 48)
    # Collateral is still charged on the analyser's cluster as reported: h sits in K with flagged members.
    assert dev["benign_stopped_via_cluster"] == 1 and dev["benign_fpr"]["k"] == 1


def test_an_unrelated_member_without_a_flag_time_leaves_the_hydras_leakage_known(tmp_path: Path) -> None:
    traffic, report = unrelated_case(tmp_path, unrelated_ts=None)
    dev = evaluate(traffic, report=report).metrics["splits"]["dev"]
    (hydra,) = dev["clusters"]
    assert (hydra["leaked"], hydra["exposure"]) == (24, 38)
    # u's own stop is unknown, so the totals over all attack accounts are not available.
    assert dev["leakage"]["available"] is False and dev["leakage"]["leaked"] is None


def test_a_member_with_few_requests_is_never_stopped_through_its_cluster(tmp_path: Path) -> None:
    """Below the link minimum an account cannot be linked, so its cluster's flag cannot reach it; and a
    campaign with fewer linked members than a cluster needs is not stopped as a cluster at all."""
    recs = account("p1", "attack", "hydra", range(0, 100, 10), cluster="P")
    recs += account("p2", "attack", "hydra", range(1, 101, 10), cluster="P")
    recs += account("p3", "attack", "hydra", [50, 60, 70, 80], cluster="P")  # 4 requests: never linkable
    recs += account("y", "benign", "chat", [0, 50])
    traffic = write_traffic(tmp_path / "p.jsonl", recs)
    report = write_report(tmp_path / "p.json", [
        verdict("p1", 0.9, "extraction", ts=0.0, cluster="K"), verdict("p2", 0.2, cluster="K"),
        verdict("p3", 0.2, cluster="K"), verdict("y", 0.1),
    ])  # fmt: skip
    dev = evaluate(traffic, report=report).metrics["splits"]["dev"]
    (p,) = dev["clusters"]
    # p1 stopped by its own flag at its first request; p2 and p3 never stopped: 1 + 10 + 4.
    assert (p["leaked"], p["exposure"]) == (15, 24)
    assert (p["stopped_accounts"], p["stopped_via_cluster"]) == (1, 0)
    assert dev["leakage"]["never_stopped_accounts"] == 2


def test_link_minimums_are_never_below_the_analysers() -> None:
    """A cluster stop is never credited earlier than the shipped analyser could have linked the account."""
    from distillshield.detect import cluster
    from distillshield.evaluate.metrics import LINK_MIN_CLUSTER
    from distillshield.evaluate.truth import LINK_MIN_REQUESTS

    assert LINK_MIN_REQUESTS >= cluster.MIN_REQUESTS
    assert LINK_MIN_CLUSTER >= cluster.MIN_CLUSTER


def test_link_time_is_the_fifth_request_in_time_order_even_in_an_unsorted_file() -> None:
    from distillshield.evaluate.truth import AccountTruth

    acc = AccountTruth("a", "attack", "hydra", "dev", "H", None)
    for t in [90, 10, 80, 20, 70]:
        acc.note_ts(t)
    assert acc.link_ts == 90
    for t in [30, 5, 100]:
        acc.note_ts(t)
    assert acc.link_ts == 70  # the five earliest are now 5, 10, 20, 30, 70
    assert AccountTruth("b", "attack", "hydra", "dev", "H", None).link_ts is None


def test_batch_report_has_no_delay_and_leakage_only_where_nothing_was_stopped(tmp_path: Path) -> None:
    traffic, _ = cluster_case(tmp_path)
    batch = write_report(tmp_path / "batch.json", [
        verdict("c1", 0.9, "extraction", online=False), verdict("h", 0.1, online=False),
    ])  # fmt: skip
    m = evaluate(traffic, report=batch).metrics
    dev = m["splits"]["dev"]
    assert dev["delay"]["available"] is False and "not available" in dev["delay"]["note"]
    assert dev["delay"]["requests"] is None and m["data"]["delay_available"] is False
    assert dev["leakage"]["available"] is False and dev["leakage"]["leaked"] is None
    assert dev["leakage"]["exposure"] == 37
    # Nothing flagged: every attacker response leaked, and that is known without flag times.
    none_flagged = write_report(tmp_path / "none.json", [verdict("c1", 0.1, online=False)])
    leak = evaluate(traffic, report=none_flagged).metrics["splits"]["dev"]["leakage"]
    assert (leak["available"], leak["leaked"], leak["never_stopped_accounts"]) == (True, 37, 5)


def test_accounts_missing_from_the_report_are_risk_zero_and_counted(tmp_path: Path) -> None:
    traffic, _ = ranking_case(tmp_path)
    partial = write_report(tmp_path / "p.json", [verdict("a1", 0.9, "extraction", ts=10.0)])
    m = evaluate(traffic, report=partial).metrics
    assert m["data"]["missing_from_report"] == 9 and m["splits"]["dev"]["accounts"]["missing_from_report"] == 9
    assert m["splits"]["dev"]["roc_auc"]["value"] == pytest.approx((6 + 3 * 3) / 24)  # ties at 0 count 1/2
    assert any("not in the report" in w for w in m["warnings"])


@pytest.mark.parametrize("kind", ["benign", "attack"])
def test_one_class_split_reports_null_auc_with_a_reason(tmp_path: Path, kind: str) -> None:
    recs = account("p", kind, "chat", [1, 2]) + account("q", kind, "chat", [3])
    traffic = write_traffic(tmp_path / "one.jsonl", recs)
    report = write_report(tmp_path / "one.json", [verdict("p", 0.9, "suspicious", ts=1.0), verdict("q", 0.1)])
    dev = evaluate(traffic, report=report).metrics["splits"]["dev"]
    other = "attack" if kind == "benign" else "benign"
    assert dev["roc_auc"]["value"] is None and dev["roc_auc"]["note"] == f"undefined: no {other} accounts"
    assert all(r["tpr"] is None and r["note"] for r in dev["tpr_at_fpr"])
    assert dev["roc_curve"] is None
    flagged = dev["benign_fpr"] if kind == "benign" else dev["attack_tpr"]
    assert (flagged["k"], flagged["n"]) == (1, 2)


def test_splits_are_scored_separately_and_every_block_names_its_split(tmp_path: Path) -> None:
    recs = account("dev-b", "benign", "chat", [1], split="dev") + account("dev-a", "attack", "bulk", [2], split="dev")
    recs += account("ho-b", "benign", "chat", [3], split="heldout")
    recs += account("ho-a", "attack", "bulk", [4], split="heldout")
    recs += account("nosplit", "attack", "bulk", [5], split=None)
    traffic = write_traffic(tmp_path / "s.jsonl", recs)
    report = write_report(tmp_path / "s.json", [  # perfect on dev, inverted on heldout
        verdict("dev-b", 0.1), verdict("dev-a", 0.9, "extraction", ts=2.0),
        verdict("ho-b", 0.9, "extraction", ts=3.0), verdict("ho-a", 0.1), verdict("nosplit", 0.5),
    ])  # fmt: skip
    m = evaluate(traffic, report=report).metrics
    assert list(m["splits"]) == ["dev", "heldout", "all"]
    dev, ho, al = (m["splits"][k] for k in ("dev", "heldout", "all"))
    assert dev["roc_auc"]["value"] == 1.0 and ho["roc_auc"]["value"] == 0.0
    assert al["accounts"] == {"benign": 2, "attack": 3, "missing_from_report": 0}
    assert (ho["benign_fpr"]["k"], ho["attack_tpr"]["k"], dev["attack_tpr"]["k"]) == (1, 0, 1)
    assert m["data"]["accounts_without_split"] == 1 and "heldout" in m["holdout_rule"]
    for name, block in m["splits"].items():
        assert block["split"] == name
        for key in ("roc_auc", "benign_fpr", "attack_tpr", "delay", "leakage"):
            assert block[key]["split"] == name
        rows = block["tpr_at_fpr"] + block["honest_personas"] + block["attack_personas"] + block["clusters"]
        assert rows and all(r["split"] == name for r in rows)


def test_every_simulator_split_is_scored_on_its_own_in_split_order(tmp_path: Path) -> None:
    # The simulator's splits (docs/simulator.md, "Hold-out discipline"), the reported-once fresh ones included.
    splits = ("dev", "heldout", "fresh", "fresh2", "fresh3", "fresh4")
    recs: list[dict[str, Any]] = []
    verdicts = []
    for i, split in enumerate(reversed(splits)):  # file order is not the report order
        recs += account(f"{split}-b", "benign", "chat", [10 * i + 1], split=split)
        recs += account(f"{split}-a", "attack", "bulk", [10 * i + 2], split=split)
        verdicts += [verdict(f"{split}-b", 0.1), verdict(f"{split}-a", 0.9, "extraction", ts=10.0 * i + 2)]
    m = evaluate(write_traffic(tmp_path / "s.jsonl", recs), report=write_report(tmp_path / "s.json", verdicts)).metrics
    assert list(m["splits"]) == [*splits, "all"]
    for split in splits:
        block = m["splits"][split]
        assert block["split"] == split and block["accounts"]["benign"] == block["accounts"]["attack"] == 1
    assert m["data"]["accounts_without_split"] == 0


def test_unlabelled_bad_label_and_conflicting_accounts_are_counted_not_scored(tmp_path: Path) -> None:
    recs = account("u", None, "", [1, 2]) + account("b", "benign", "chat", [1]) + account("a", "attack", "x", [2])
    recs.append({**record("weird", 3), "label": "friendly:chat"})
    recs += [record("flip", 4, "benign", "chat"), record("flip", 5, "attack", "bulk")]
    traffic = write_traffic(tmp_path / "u.jsonl", recs, extra_lines=[b"{not json", b'{"ts": 1}'])
    report = write_report(tmp_path / "u.json", [verdict("u", 0.9, "extraction", ts=1.0), verdict("a", 0.8)])
    result = evaluate(traffic, report=report)
    d = result.metrics["data"]
    assert (d["records"], d["bad_lines"], d["accounts"]) == (7, 2, 5)
    assert (d["unlabelled_accounts"], d["bad_label_accounts"], d["label_conflict_accounts"]) == (2, 1, 1)
    assert d["bad_line_examples"][0].startswith("line 8: not valid JSON")
    assert d["bad_line_examples"][1].startswith("line 9:") and "account_id" in d["bad_line_examples"][1]
    assert result.metrics["splits"]["all"]["accounts"]["benign"] == 2  # b and flip (first record wins)


def test_report_errors_name_the_field(tmp_path: Path) -> None:
    traffic, _ = ranking_case(tmp_path)
    cases = [
        ({"accounts": [{"account_id": "a1", "risk": 1.7, "verdict": "benign"}]}, "accounts[0] (account_id 'a1').risk"),
        ({"accounts": [{"account_id": "a1", "risk": 0.5, "verdict": "bad"}]}, "accounts[0] (account_id 'a1').verdict"),
        ({"accounts": [{"risk": 0.5, "verdict": "benign"}]}, "accounts[0].account_id: Field required"),
        ({"clusters": []}, "accounts: Field required"),
        ([1, 2], "expected a JSON object"),
        ({"accounts": [verdict("a1", 0.1), verdict("a1", 0.2)]}, "accounts[1].account_id 'a1' appears twice"),
        ({"accounts": [verdict("ghost", 0.1)]}, "1 account(s) in the report are not in the traffic"),
        ({"accounts": [verdict("a1", 0.9, "extraction", index=3)]}, "first_flag_index is 3 but the account has 3"),
        ({"accounts": [verdict("a1", 0.1, cluster="K")], "clusters": [{"cluster_id": "L", "accounts": ["a1"]}]},
         "already in cluster 'K'"),
    ]  # fmt: skip
    for i, (obj, needle) in enumerate(cases):
        path = tmp_path / f"bad{i}.json"
        path.write_bytes(orjson.dumps(obj))
        with pytest.raises(ReportError) as err:
            evaluate(traffic, report=path)
        assert needle in str(err.value) and str(path) in str(err.value), (needle, str(err.value))
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{nope")
    with pytest.raises(ReportError, match="not valid JSON"):
        evaluate(traffic, report=bad_json)


# ---------------------------------------------------------------- the baseline


def test_baseline_threshold_allows_at_most_the_target_share_of_dev_benign_accounts() -> None:
    volumes = list(range(1, 201))  # 200 dev benign accounts with 1..200 requests
    model = VolumeBaseline.fit(volumes)
    # 1% of 200 = 2 accounts may reach the threshold: 199 and 200 -> suspicious from 199 requests.
    assert model.suspicious_at == 199 and sum(v >= model.suspicious_at for v in volumes) == 2
    # 0.1% of 200 = 0 accounts: above the largest.
    assert model.extraction_at == 201 and model.tuned_on == "dev" and model.calibration_accounts == 200
    assert model.verdict(198) == "benign" and model.verdict(199) == "suspicious" and model.verdict(201) == "extraction"
    assert model.risk(199) == 0.5 and VolumeBaseline.fit([]).tuned_on is None


def test_baseline_is_fitted_on_dev_benign_only_and_flags_online(tmp_path: Path) -> None:
    recs: list[dict[str, Any]] = []
    for i in range(10):
        recs += account(f"dev{i}", "benign", "chat", [i * 0.1 + k for k in range(i + 1)])  # 1..10 requests
    recs += account("dev-att", "attack", "bulk", [100 + k for k in range(30)])
    # Held-out accounts with huge volumes must not move the thresholds.
    recs += account("ho-b", "benign", "batch", [200 + k * 0.01 for k in range(500)], split="heldout")
    recs += account("ho-a", "attack", "bulk", [300 + k for k in range(20)], split="heldout")
    traffic = write_traffic(tmp_path / "bl.jsonl", recs)
    result = evaluate(traffic, baseline=True)
    det = result.metrics["detector"]
    # 10 dev benign: 1% allows 0 accounts -> suspicious from 11 requests; the heldout 500 is ignored.
    assert (det["suspicious_at"], det["extraction_at"], det["tuned_on"], det["calibration_accounts"]) == \
        (11, 11, "dev", 10)  # fmt: skip
    by_id = {a["account_id"]: a for a in result.report["accounts"]}
    assert by_id["dev-att"]["first_flag_index"] == 10 and by_id["dev-att"]["first_flag_ts"] == 110
    assert by_id["dev9"]["verdict"] == "benign" and by_id["dev9"]["first_flag_ts"] is None
    ho = result.metrics["splits"]["heldout"]
    assert ho["benign_fpr"]["k"] == 1 and ho["attack_tpr"]["k"] == 1
    assert ho["delay"]["requests"]["median"] == 11 and ho["delay"]["seconds"]["median"] == 10.0
    assert ho["leakage"]["leaked"] == 11 and ho["leakage"]["exposure"] == 20
