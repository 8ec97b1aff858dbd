"""The evaluator's metrics: the join of ground truth with a report, and the figures computed on it.

docs/evaluation.md defines every figure; the definitions below are the implementation of that page.
Every block this module returns carries the split it was computed on ("dev", "heldout", "fresh", "fresh2",
"fresh3", "fresh4" or "all").
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from distillshield.contracts import FLAGGED_VERDICTS
from distillshield.evaluate.truth import SPLITS, AccountTruth, TrafficTruth
from distillshield.evaluate.verdicts import AccountVerdict, ReportError, Verdicts

FPR_TARGETS: tuple[float, ...] = (0.001, 0.01)  # benign false-positive rates at which TPR is reported
SPLIT_ORDER: tuple[str, ...] = (*SPLITS, "all")
# An analyser cluster acts on a campaign only once this many of the campaign's members in it are linked: the
# shipped analyser's own minimum (detect/cluster.py MIN_CLUSTER: "fewer linked accounts are not a cluster").
LINK_MIN_CLUSTER = 3


@dataclass(slots=True)
class ScoredAccount:
    """One labelled account: its ground truth joined with what the report said and when it was stopped."""

    truth: AccountTruth
    risk: float
    verdict: str
    in_report: bool
    flagged: bool
    flag_ts: float | None  # own first flag, when flagged and the report says when
    flag_time_known: bool  # False: flagged but the report gives no first_flag_ts / first_flag_index
    delay_requests: int | None  # attack accounts only
    delay_seconds: float | None
    analyser_cluster: str | None
    # Attack accounts: own flag, or the first flag of a member of its own ground-truth campaign in its analyser
    # cluster once both were linked (see join), whichever is first. Benign accounts: own flag or the first flag
    # in its analyser cluster (collateral is charged on the clusters as reported). inf = never stopped.
    stop_ts: float
    stop_known: bool
    stopped: bool  # flagged, or stopped through its analyser cluster as above
    stopped_via_cluster: bool  # stopped because another member of its analyser cluster was flagged first
    headline: dict[str, Any] | None  # flagged accounts: the report's strongest reason (signal, score, detail)
    leaked: int | None  # attack accounts: responses (or requests) served up to the stop; None = unknown
    leaked_tokens: int | None
    exposure: int  # attack accounts: everything served (or requested) in the traffic


def check_report_fits(truth: TrafficTruth, verdicts: Verdicts) -> None:
    """Every account the report names must be in the traffic, and flag indexes must be within its requests."""
    unknown = sorted(verdicts.referenced_accounts() - truth.accounts.keys())
    if unknown:
        shown = ", ".join(repr(a) for a in unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise ReportError(f"{verdicts.source}: {len(unknown)} account(s) in the report are not in the traffic "
                          f"{truth.path}: {shown}; was the report made from this file?")  # fmt: skip
    for i, (aid, v) in enumerate(verdicts.by_account.items()):
        n = truth.accounts[aid].requests
        if v.first_flag_index is not None and v.first_flag_index >= n:
            raise ReportError(f"{verdicts.source}: accounts[{i}] (account_id {aid!r}).first_flag_index is "
                              f"{v.first_flag_index} but the account has {n} requests in the traffic")  # fmt: skip


@dataclass(slots=True)
class _GroupStop:
    """When an analyser cluster could stop the members of one ground-truth campaign in it (see join)."""

    ts: float = math.inf  # inf: never
    known: bool = True  # False: a flagged member that could have set it has no flag time


def _group_stops(
    truth: TrafficTruth, verdicts: Verdicts, flag_time: dict[str, float | None]
) -> dict[tuple[str, str], _GroupStop]:
    """(analyser cluster, ground-truth cluster) -> the stop it could put on that campaign's members there.

    Membership as known at each moment: a member counts from its LINK_MIN_REQUESTS-th request (the analyser
    cannot link it earlier), the group is a cluster once LINK_MIN_CLUSTER of the campaign's members are linked,
    and a member's flag stops the group from the later of its flag and its link. Only members of the same
    ground-truth campaign count: an unrelated account in the analyser's cluster (another attacker, a benign
    or unlabelled account) neither stops the campaign nor makes its stop time unknown.
    """
    groups: dict[tuple[str, str], list[tuple[str, float]]] = defaultdict(list)  # -> [(member, link time)]
    for cid, members in verdicts.members.items():
        for m in members:
            acc = truth.accounts[m]
            link = acc.link_ts
            if acc.labelled and acc.cluster_id is not None and link is not None:
                groups[(cid, acc.cluster_id)].append((m, link))
    out: dict[tuple[str, str], _GroupStop] = {}
    for key, linked in groups.items():
        links = sorted(t for _, t in linked)
        ready = links[LINK_MIN_CLUSTER - 1] if len(links) >= LINK_MIN_CLUSTER else math.inf
        g = _GroupStop()
        for aid, link in linked:
            if aid not in flag_time:
                continue
            t = flag_time[aid]
            if t is None:
                g.known = False
                continue
            g.ts = min(g.ts, max(t, link, ready))
        out[key] = g
    return out


def join(truth: TrafficTruth, verdicts: Verdicts, flag_on: str = "suspicious") -> list[ScoredAccount]:
    """Score every labelled account. Accounts missing from the report count as risk 0, not flagged.

    An attack account is stopped at its own first flag or, earlier, through its analyser cluster, but only
    by a flagged member of its own ground-truth campaign and never before both it and that member could
    have been linked to the cluster (`_group_stops`; docs/evaluation.md, "Leakage, exactly").
    """
    flagged_verdicts = FLAGGED_VERDICTS[flag_on]

    # Own first-flag time of every flagged account (labelled or not).
    flag_time: dict[str, float | None] = {}
    for aid, v in verdicts.by_account.items():
        if v.verdict not in flagged_verdicts:
            continue
        if v.first_flag_ts is not None:
            flag_time[aid] = v.first_flag_ts
        elif v.first_flag_index is not None:
            flag_time[aid] = truth.accounts[aid].probe_ts
        else:
            flag_time[aid] = None
    # Collateral on benign accounts is charged on the analyser's clusters as they are at the end: a benign
    # account sits in a cluster with a flagged member, whoever that member is, and the gateway blocks it.
    # (first known flag, all times known, flagged members)
    cluster_stop: dict[str, tuple[float, bool, int]] = {}
    for cid, members in verdicts.members.items():
        times = [flag_time[m] for m in members if m in flag_time]
        known = [t for t in times if t is not None]
        cluster_stop[cid] = (min(known, default=math.inf), len(known) == len(times), len(times))
    group_stop = _group_stops(truth, verdicts, flag_time)

    out: list[ScoredAccount] = []
    for acc in truth.accounts.values():
        if not acc.labelled:
            continue
        v = verdicts.by_account.get(acc.account_id)
        flagged = v is not None and v.verdict in flagged_verdicts
        own_ts = flag_time.get(acc.account_id) if flagged else None
        own_known = not flagged or own_ts is not None
        own_stop = own_ts if own_ts is not None else math.inf
        cid = verdicts.cluster_of.get(acc.account_id)
        if acc.kind == "attack":
            # Credit for stopping an attacker comes only from its own campaign's flags, once it was linked.
            g = group_stop.get((cid, acc.cluster_id)) if cid and acc.cluster_id is not None else None
            if g is None or acc.link_ts is None:
                g = _GroupStop()
            c_ts = max(g.ts, acc.link_ts) if acc.link_ts is not None else math.inf
            stop_ts = min(own_stop, c_ts)
            stop_known = own_known and g.known
            via_cluster = c_ts < own_stop or (not flagged and not g.known)
            stopped = flagged or not math.isinf(c_ts) or not g.known
        else:
            c_ts, c_known, c_flagged = cluster_stop.get(cid, (math.inf, True, 0)) if cid else (math.inf, True, 0)
            stop_ts = min(own_stop, c_ts)
            stop_known = own_known and c_known
            via_cluster = own_known and c_ts < own_stop if flagged else c_flagged > 0
            stopped = flagged or c_flagged > 0

        delay_requests = delay_seconds = None
        leaked = leaked_tokens = None
        exposure = 0
        tl = acc.timeline
        if acc.kind == "attack" and tl is not None:
            if own_ts is not None and v is not None:
                delay_requests = v.first_flag_index + 1 if v.first_flag_index is not None else tl.upto(own_ts)[0]
                # A flag before the account's first request (e.g. a cluster verdict) is zero delay, not negative.
                delay_seconds = max(0.0, own_ts - acc.first_ts)
            exposure = acc.served if truth.has_responses else acc.requests
            if stop_known:
                if math.isinf(stop_ts):
                    leaked, leaked_tokens = exposure, acc.served_tokens
                else:
                    n_req, n_served, tokens = tl.upto(stop_ts)
                    leaked, leaked_tokens = (n_served, tokens) if truth.has_responses else (n_req, 0)
        out.append(ScoredAccount(
            truth=acc, risk=v.risk if v is not None else 0.0, verdict=v.verdict if v is not None else "benign",
            in_report=v is not None, flagged=flagged, flag_ts=own_ts, flag_time_known=own_known,
            delay_requests=delay_requests, delay_seconds=delay_seconds, analyser_cluster=cid,
            stop_ts=stop_ts, stop_known=stop_known, stopped=stopped, stopped_via_cluster=via_cluster,
            headline=_headline(v) if flagged and v is not None else None,
            leaked=leaked, leaked_tokens=leaked_tokens, exposure=exposure,
        ))  # fmt: skip
    return out


def _headline(v: AccountVerdict) -> dict[str, Any] | None:
    """The report's strongest reason for flagging an account (highest score; the first on a tie)."""
    if not v.reasons:
        return None
    best = max(v.reasons, key=lambda r: r.score if r.score is not None else -math.inf)
    return {"signal": best.signal, "score": best.score, "detail": best.detail}


# ---------------------------------------------------------------- basic figures


def rate(k: int, n: int) -> dict[str, Any]:
    """k of n, the fraction, and its 95% Wilson score interval (honest for small n and for 0 or n)."""
    if n == 0:
        return {"k": 0, "n": 0, "rate": None, "ci95": None}
    z = 1.959963984540054
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return {"k": k, "n": n, "rate": p, "ci95": [max(0.0, centre - half), min(1.0, centre + half)]}


def roc_auc(y_true: Sequence[int], scores: Sequence[float]) -> dict[str, Any]:
    """ROC-AUC (scikit-learn; ties count one half). Undefined with one class: null and the reason."""
    n_pos = int(sum(y_true))
    n_neg = len(y_true) - n_pos
    if n_pos == 0 or n_neg == 0:
        missing = "attack" if n_pos == 0 else "benign"
        return {"value": None, "note": f"undefined: no {missing} accounts"}
    from sklearn.metrics import roc_auc_score

    return {"value": float(roc_auc_score(np.asarray(y_true), np.asarray(scores, dtype=float))), "note": None}


def roc_points(y_true: Sequence[int], scores: Sequence[float]) -> dict[str, list[float]] | None:
    """The ROC curve's corners (one per distinct risk, tied accounts move together); None with one class."""
    if not y_true or sum(y_true) in (0, len(y_true)):
        return None
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(np.asarray(y_true), np.asarray(scores, dtype=float), drop_intermediate=True)
    return {"fpr": [round(float(x), 6) for x in fpr], "tpr": [round(float(x), 6) for x in tpr]}


def tpr_at_fpr(y_true: Sequence[int], scores: Sequence[float], target: float) -> dict[str, Any]:
    """The highest TPR of a rule "flag when risk >= t" whose benign FPR is at most `target`.

    Thresholds are the distinct risks, so accounts with equal risk are flagged together: a tie is never
    split to hit the target exactly (that would be a randomised detector), and no interpolation is done.
    With fewer than 1/target benign accounts the only allowed FPR is 0, which the note says.
    """
    n_pos = int(sum(y_true))
    n_neg = len(y_true) - n_pos
    row: dict[str, Any] = {"fpr_target": target, "tpr": None, "threshold": None, "achieved_fpr": None,
                           "benign": n_neg, "attack": n_pos, "note": None}  # fmt: skip
    if n_pos == 0 or n_neg == 0:
        row["note"] = f"undefined: no {'attack' if n_pos == 0 else 'benign'} accounts"
        return row
    from sklearn.metrics import roc_curve

    fpr, tpr, thr = roc_curve(np.asarray(y_true), np.asarray(scores, dtype=float), drop_intermediate=False)
    # fpr is non-decreasing; the last point within the target has the highest TPR among them.
    i = int(np.searchsorted(fpr, target + 1e-12, side="right")) - 1
    row.update(tpr=float(tpr[i]), achieved_fpr=float(fpr[i]),
               threshold=None if math.isinf(thr[i]) else float(thr[i]))  # fmt: skip
    if 1.0 / n_neg > target:
        row["note"] = (
            f"{n_neg} benign accounts: the smallest non-zero FPR is 1/{n_neg} > {target:g}, so this is TPR at zero false positives"  # noqa: E501
        )
    return row


def stats(values: Iterable[float]) -> dict[str, float | int] | None:
    """n, median, 90th percentile (numpy's linear interpolation), mean and max; None when empty."""
    a = np.asarray(list(values), dtype=float)
    if a.size == 0:
        return None
    return {"n": int(a.size), "median": float(np.median(a)), "p90": float(np.percentile(a, 90)),
            "mean": float(a.mean()), "max": float(a.max())}  # fmt: skip


def _share(leaked: int | None, exposure: int) -> float | None:
    return None if leaked is None or exposure == 0 else leaked / exposure


def _leak_sum(accounts: Sequence[ScoredAccount]) -> tuple[int | None, int | None, int]:
    """(leaked, leaked tokens, exposure) over accounts; leaked is None if any account's stop is unknown."""
    exposure = sum(a.exposure for a in accounts)
    if any(a.leaked is None for a in accounts):
        return None, None, exposure
    return sum(a.leaked or 0 for a in accounts), sum(a.leaked_tokens or 0 for a in accounts), exposure


def _median(values: Iterable[float | int | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.median(vals)) if vals else None


# ---------------------------------------------------------------- one split


def summarize_split(
    scored: Sequence[ScoredAccount], split: str, *, has_flag_times: bool, leakage_basis: str
) -> dict[str, Any]:
    """Every figure for one split's accounts; every block and row says `split`."""
    benign = [a for a in scored if a.truth.kind == "benign"]
    attack = [a for a in scored if a.truth.kind == "attack"]
    y = [1 if a.truth.kind == "attack" else 0 for a in scored]
    risk = [a.risk for a in scored]

    out: dict[str, Any] = {
        "split": split,
        "accounts": {"benign": len(benign), "attack": len(attack),
                     "missing_from_report": sum(1 for a in scored if not a.in_report)},
        "roc_auc": {"split": split, **roc_auc(y, risk)},
        "roc_curve": roc_points(y, risk),
        "tpr_at_fpr": [{"split": split, **tpr_at_fpr(y, risk, t)} for t in FPR_TARGETS],
        "benign_fpr": {"split": split, **rate(sum(a.flagged for a in benign), len(benign))},
        "attack_tpr": {"split": split, **rate(sum(a.flagged for a in attack), len(attack))},
        "benign_stopped_via_cluster": sum(1 for a in benign if a.stopped_via_cluster),
    }  # fmt: skip

    by_persona: dict[tuple[str, str], list[ScoredAccount]] = defaultdict(list)
    for a in scored:
        by_persona[(a.truth.kind or "", a.truth.persona or "")].append(a)
    out["honest_personas"] = [
        {"split": split, "persona": p, **rate(sum(a.flagged for a in accs), len(accs)),
         "stopped_via_cluster": sum(1 for a in accs if a.stopped_via_cluster)}
        for (kind, p), accs in sorted(by_persona.items()) if kind == "benign"
    ]  # fmt: skip
    out["attack_personas"] = []
    for (kind, p), accs in sorted(by_persona.items()):
        if kind != "attack":
            continue
        leaked, tokens, exposure = _leak_sum(accs)
        out["attack_personas"].append({
            "split": split, "persona": p, **rate(sum(a.flagged for a in accs), len(accs)),
            "median_delay_requests": _median(a.delay_requests for a in accs),
            "median_delay_seconds": _median(a.delay_seconds for a in accs),
            "leaked": leaked, "leaked_completion_tokens": tokens, "exposure": exposure,
            "leaked_share": _share(leaked, exposure),
        })  # fmt: skip

    by_cluster: dict[str, list[ScoredAccount]] = defaultdict(list)
    for a in attack:
        if a.truth.cluster_id is not None:
            by_cluster[a.truth.cluster_id].append(a)
    out["clusters"] = []
    for cid, accs in sorted(by_cluster.items()):
        leaked, tokens, exposure = _leak_sum(accs)
        flag_times = [a.flag_ts for a in accs if a.flag_ts is not None]
        start = min(a.truth.first_ts for a in accs)
        # The headline: the cluster's own first flagged member (never an unrelated account the analyser
        # clustered with it) and the report's strongest reason for flagging it.
        first = min((a for a in accs if a.flag_ts is not None),
                    key=lambda a: (a.flag_ts, a.truth.account_id), default=None)  # fmt: skip
        out["clusters"].append({
            "split": split, "cluster_id": cid,
            "personas": sorted({a.truth.persona or "" for a in accs}),
            "campaigns": sorted({a.truth.campaign_id for a in accs if a.truth.campaign_id is not None}),
            **rate(sum(a.flagged for a in accs), len(accs)),
            "detected": any(a.flagged for a in accs),
            # Cluster-level delay: from the cluster's first request to its first flagged member.
            "first_detection_delay_seconds": max(0.0, min(flag_times) - start) if flag_times else None,
            "first_flagged": None if first is None else {
                "account_id": first.truth.account_id, "flag_ts": first.flag_ts,
                "analyser_cluster": first.analyser_cluster, "reason": first.headline},
            "stopped_accounts": sum(1 for a in accs if a.stopped),
            "stopped_via_cluster": sum(1 for a in accs if a.stopped_via_cluster),
            "leaked": leaked, "leaked_completion_tokens": tokens, "exposure": exposure,
            "leaked_share": _share(leaked, exposure),
        })  # fmt: skip
    out["clusters_detected"] = rate(sum(c["detected"] for c in out["clusters"]), len(out["clusters"]))

    flagged_attack = [a for a in attack if a.flagged]
    no_time = sum(1 for a in flagged_attack if not a.flag_time_known)
    delay: dict[str, Any] = {"split": split, "available": has_flag_times, "note": None,
                             "flagged_attack_accounts": len(flagged_attack), "without_flag_time": no_time,
                             "requests": None, "seconds": None}  # fmt: skip
    if not has_flag_times:
        delay["note"] = ("not available: the report gives no first_flag_ts / first_flag_index (a batch "
                         "report); the evaluator does not invent flag times")  # fmt: skip
    else:
        delay["requests"] = stats(a.delay_requests for a in flagged_attack if a.delay_requests is not None)
        delay["seconds"] = stats(a.delay_seconds for a in flagged_attack if a.delay_seconds is not None)
        if no_time:
            delay["note"] = f"{no_time} flagged attack accounts have no flag time in the report and are left out"
    out["delay"] = delay

    leaked, tokens, exposure = _leak_sum(attack)
    unknown = sum(1 for a in attack if a.leaked is None)
    out["leakage"] = {
        "split": split, "basis": leakage_basis, "available": leaked is not None,
        "leaked": leaked, "leaked_completion_tokens": tokens, "exposure": exposure,
        "leaked_share": _share(leaked, exposure),
        "never_stopped_accounts": sum(1 for a in attack if not a.stopped),
        "note": None if leaked is not None else
        f"not available: {unknown} attack accounts were stopped at a time the report does not give",
    }  # fmt: skip
    return out


def split_groups(scored: Sequence[ScoredAccount]) -> dict[str, list[ScoredAccount]]:
    """dev and heldout (when present) and all; accounts without a split are in "all" only."""
    groups: dict[str, list[ScoredAccount]] = {}
    for name in SPLITS:
        members = [a for a in scored if a.truth.split == name]
        if members:
            groups[name] = members
    groups["all"] = list(scored)
    return groups
