"""Campaigns of thin accounts (and of heavier ones), found by what they ask rather than by exact templates.

The 2026 disclosures describe one campaign spread over hundreds of accounts, each with a handful of
requests, each wrapping its questions in a reworded instruction: no account has enough traffic to be
judged, and no exact frame repeats enough to link them. What they share is content: the same intent in
varied words and questions drawn from one bank. So:

1. each account with a few sampled prompts gets the mean of its content vectors (detect/content.py);
2. HDBSCAN (scikit-learn) over those vectors finds groups of any density and leaves honest users, who
   each ask their own things, as noise; a noise account whose nearest accounts are mostly one group's
   members joins it (HDBSCAN leaves a campaign's sparser fringe out). Two selections of its clusters are
   read: the most persistent (excess of mass) first, then the finest (leaves) among the accounts not yet
   placed in a campaign (`candidates`);
3. each group of at least MIN_CAMPAIGN accounts is a candidate, and so is each campaign found at an earlier
   run (those of its members not in a new campaign that still ask like it), so a campaign is not lost when a
   later grouping cuts it differently;
4. the candidate's pooled prompts are judged like one account's (signals/content.judge), against the
   packaged reference of real users' prompts: far from them and spread over topic areas like a sweep; or,
   whatever the questions look like, mostly asking for the model's reasoning (the prompt classifier) over
   many topic areas; or its accounts were created in waves this deployment's history makes improbable
   (detect/cohort.py) and its prompts ask for the model's reasoning well beyond what the rest of the service
   asks, over many topic areas (then only the members created in the waves are the campaign's). Only then
   is it a campaign, and every member is flagged from the campaign's evidence, however thin it is;
5. a heavier account (more than THIN_MAX requests) that asks as the campaign's own members do joins it: the
   accounts of one campaign need not all be thin, and one that sends more requests through human-looking
   wording is judged on its own evidence, which a campaign's wrapped bank questions need not carry
   (`Joining`). It joins a campaign whose evidence is its content or its reasoning sweep, not one whose
   evidence is the waves its accounts were created in (there an account is in it only if it was made in them);
6. the heavier accounts no thin campaign took are grouped the same way, and a group of them is a campaign when its
   core members (`group_core`) typically carry evidence of their own well above what accounts that only ask alike
   carry (`HEAVY_ELEVATED`, read by `Engine.own_evidence`) and many of them stay under the flag
   (`HEAVY_UNDER_SHARE`): one operator spreading a harvest over a few dozen accounts keeps many under it. What such
   a group asks cannot call it: a service's coding assistants make groups as dense and as far from the packaged
   reference (docs/detection.md round 13). Once called, it also takes in each lighter account (THIN_MAX requests
   or fewer, in no thin campaign) that passes the test its core passed and carries evidence of its own of
   HEAVY_ELEVATED or more (`Lighter`): an operator's accounts need not all be heavy.

A classroom of honest students asking for step-by-step help also forms a dense group. Where its homework
stays in a few topic areas, step 4 tells it from a bank that sweeps capabilities; but a class can span as
many areas as a sweep (8.6-13.2 on the fresh split's students), and then only its reasoning share, just under
half, keeps it out (docs/detection.md round 9; `benchmarks/detect_campaigns.py` shows each group's figures).
A class whose accounts came one by one is no wave; one that signed up together and studies everything (a
school's intake) is at the edge of the third rule: docs/detection.md round 10 measures it.

Cost: one N x N distance matrix and HDBSCAN, twice, over the thin accounts' mean vectors (at most MAX_ACCOUNTS,
the most recently active), run when their number has grown by a quarter since the last run (and once
more at the end); the same over the heavier accounts' when theirs has (or the thin run is due), with each
candidate's core members' own evidence scored once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import chain
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from distillshield.detect.base import SignalScore
from distillshield.detect.cluster import Cluster
from distillshield.detect.cohort import Cohort, born_in_waves, creation_cohort
from distillshield.detect.text import stable_hash

if TYPE_CHECKING:
    from distillshield.detect.engine import AccountState, Population

THIN_MAX = 64  # accounts with more requests are judged on their own evidence
MIN_PROMPTS = 2  # content-sampled prompts an account needs to take part
MAX_ACCOUNTS = 4_000  # the most recently active thin accounts considered (the distances are N x N)
K_DENSE = 5  # nearest accounts that vote when a noise account may join a group
MIN_CAMPAIGN = 8
GROUP_MAX_SHARE = 0.5  # a candidate group holds at most this share of the accounts it is found among
POOLED_MAX = 512  # prompts of a candidate judged together
GROWTH = 0.25
GROUP_EXCESS = 0.25  # a group's pooled prompts: far share above everyone else's, at least this much
GROUP_GAP = 0.2  # ...or mean typicality rank this far below everyone else's typical account
GROUP_COT = 0.5  # ...or this share of their prompts asking for the model's reasoning, over a sweep of areas
# ...or, for a group whose accounts were created in a wave (detect/cohort.py), a reasoning share this much above
# the rest of the service's, significantly (-log10 binomial tail at least COT_EXCESS_LOGP), over a sweep of areas
GROUP_COT_EXCESS = 0.1
COT_EXCESS_LOGP = 6.0
KEEP_QUANTILE = 0.99  # a kept campaign's member is closer to the members' mean than this share of other accounts
# A heavier account joins a campaign when its mean prompt vector is at least as close to the members' mean as the
# campaign's typical member is (the median of the members' closeness to the mean of the *other* members), and
# closer than KEEP_QUANTILE of the other thin accounts (those the grouping did not put in the campaign): it asks
# as the campaign does, in a way this service's other users do not. (A lower bar, the members' 10% quantile, let
# heavy honest accounts into the diffuse campaign of a thin hydra: a heavy account's mean over many prompts is
# less noisy than a thin member's, so it sits closer to any group's centre than its own members do.)
JOIN_QUANTILE = 0.5
# A dense group of heavier accounts is a campaign when the typical one of its core members (`group_core`) carries
# evidence of its own at least this high: its risk by the known techniques as if it were in no cluster
# (Engine.own_evidence), two fifths of the way to a flag. An operator that spreads one harvest over accounts keeps
# many under the flag, not at nothing; honest accounts that ask alike (the coding assistants of one service, its
# office users) sit near nothing.
HEAVY_ELEVATED = 0.2
# ...and at least this share of its core members are under the flag on their own evidence. Pooling is for the
# accounts an operator keeps under it, and one that does keeps many (a median over the flag is not the verdicts:
# those add the deployment's operating point and the accounts' clusters). A group flagged on its own but for one
# or two members has no pooled evidence to give them: those may be an honest neighbour that asks alike (an eval run
# next to a paraphrase fan-out, docs/detection.md round 17).
HEAVY_UNDER_SHARE = 0.25

OwnEvidence = Callable[["AccountState"], float]  # an account's risk from its own evidence (Engine.own_evidence)


class ContentCampaigns:
    """Finds campaigns of thin accounts by content density, and judges each on its pooled prompts."""

    name = "campaign"

    def __init__(self, *, cohorts: bool = True) -> None:
        self.cohorts = cohorts  # judge the waves the members' accounts were created in (detect/cohort.py)
        self._last_n = 0
        self._last_heavy = 0
        self.campaigns: dict[str, Cluster] = {}
        self.heavier: set[str] = set()  # ids of the campaigns found among heavier accounts (`_find_heavier`)

    def find(
        self,
        accounts: dict[str, AccountState],
        pop: Population,
        force: bool = False,
        own_evidence: OwnEvidence | None = None,
    ) -> dict[str, Cluster]:
        """Campaign clusters keyed by cluster id (recomputed when due, else the last ones): those of thin accounts,
        then, given `own_evidence`, those of heavier accounts (`_find_heavier`). Each grouping is due when its
        accounts have grown by GROWTH since it last ran; the heavier one also whenever the thin one runs."""
        n_thin = sum(1 for a in accounts.values() if _eligible(a))
        n_heavy = sum(1 for a in accounts.values() if _heavy(a)) if own_evidence is not None else 0
        thin_due = force or _grown(n_thin, self._last_n)
        heavy_due = own_evidence is not None and (thin_due or _grown(n_heavy, self._last_heavy))
        if not thin_due and not heavy_due:
            return self.campaigns
        service = ServiceCounts.of(accounts)
        thin = {k: c for k, c in self.campaigns.items() if k not in self.heavier}
        heavier = {k: c for k, c in self.campaigns.items() if k in self.heavier}
        if thin_due:
            self._last_n = n_thin
            thin = self._find_thin(accounts, pop, thin, service)
        if own_evidence is not None and heavy_due:
            self._last_heavy = n_heavy
            taken = {m for c in thin.values() for m in c.campaign}
            earlier = list(heavier.values())
            heavier = {}
            if pop.content.stats.tau >= -0.5:
                heavier = self._find_heavier(accounts, own_evidence, taken, earlier, service)
        self.heavier = set(heavier)
        self.campaigns = {**thin, **heavier}
        return self.campaigns

    def _find_thin(
        self, accounts: dict[str, AccountState], pop: Population, previous: dict[str, Cluster], service: ServiceCounts
    ) -> dict[str, Cluster]:
        """The campaigns of thin accounts (and the heavier accounts that join them); `previous`: those found before."""
        thin = thin_accounts(accounts)
        found: dict[str, Cluster] = {}
        if len(thin) < MIN_CAMPAIGN or pop.content.stats.tau < -0.5:
            return found
        groups = density_groups(thin)
        vecs = groups.vecs
        joining = Joining.of(thin, vecs, accounts)
        placed: set[str] = set()
        for _level, members in candidates(groups, thin, placed):
            c = self._judge(members, accounts, pop, service, joining)
            if c is not None:
                found[c.cluster_id] = c
                placed.update(c.campaign)
        # A campaign found before is kept while its members, judged together again, still make one. The density
        # grouping is a means of finding candidates: run over a grown population it may cut a campaign's
        # accounts differently (split it, or fold it into a larger group that is not judged one), which would
        # otherwise drop a campaign the evidence still shows.
        # Each member stays only while it still asks like the campaign: closer to the members' mean than
        # KEEP_QUANTILE of the other thin accounts are. An account an earlier grouping swept in, whose own
        # prompts are ordinary, stays no longer than that.
        index = {a.account_id: i for i, a in enumerate(thin)}
        for old in previous.values():
            rows = [index[m] for m in old.campaign if m in index and m not in placed]
            if len(rows) < MIN_CAMPAIGN:
                continue
            centre = vecs[rows].mean(axis=0)
            sims = vecs @ (centre / max(float(np.linalg.norm(centre)), 1e-8))
            others = np.ones(len(thin), dtype=bool)
            others[[index[m] for m in old.campaign if m in index]] = False
            if others.sum() < MIN_CAMPAIGN:
                continue
            bar = float(np.quantile(sims[others], KEEP_QUANTILE))
            keep = sorted(thin[i].account_id for i in rows if sims[i] > bar)
            if len(keep) < MIN_CAMPAIGN:
                continue
            c = self._judge(keep, accounts, pop, service, joining)
            if c is not None:
                found[c.cluster_id] = c
                placed.update(keep)
        return found

    def _find_heavier(
        self,
        accounts: dict[str, AccountState],
        own_evidence: OwnEvidence,
        taken: set[str],
        earlier: list[Cluster],
        service: ServiceCounts,
    ) -> dict[str, Cluster]:
        """Campaigns among the heavier accounts (more than THIN_MAX requests) that no thin campaign holds (`taken`).

        Each of them is judged on its own evidence, and an operator can keep every one under the flag: a campaign
        spread over a few dozen accounts of a hundred or so requests each, in human-looking wording, with cover
        traffic (docs/detection.md round 16). The density grouping finds such accounts as one group, as it finds
        thin ones; what they ask cannot call it (a service's coding assistants or office users make groups as dense,
        and their code prompts sit as far from the packaged reference of chat prompts as a bank does), but what
        each one did can: a group whose core members typically carry evidence of their own at HEAVY_ELEVATED or
        more, HEAVY_UNDER_SHARE of them or more under the flag, is one. Its core members are flagged from that
        pooled evidence (suspicious: review, not a stop), and so are the lighter accounts that pass the test the core
        passed and carry HEAVY_ELEVATED of their own (`Lighter`). A campaign found before is judged again on its
        members (as thin ones are kept), so a regrouping that cuts it differently does not drop it."""
        from distillshield.detect.scoring import RISK_SUSPICIOUS

        heavy = [a for a in heavier_accounts(accounts) if a.account_id not in taken]
        found: dict[str, Cluster] = {}
        if len(heavy) < MIN_CAMPAIGN:
            return found
        groups = density_groups(heavy)
        index = {a.account_id: i for i, a in enumerate(heavy)}
        placed: set[str] = set()
        own: dict[str, float] = {}  # each account's own evidence, scored once per run (groups of two levels overlap)

        def own_of(a: str) -> float:
            if a not in own:
                own[a] = own_evidence(accounts[a])
            return own[a]

        proposed = chain(
            (members for _level, members in candidates(groups, heavy, placed)),
            (sorted(m for m in c.campaign if m in index and m not in placed) for c in earlier),
        )
        lighter: Lighter | None = None  # built for the first group called
        for members in proposed:
            grouped = group_core(members, groups.vecs, index)
            if grouped is None or len(grouped.members) < MIN_CAMPAIGN:
                continue
            core = grouped.members
            risks = np.asarray([own_of(m) for m in core])
            typical = float(np.median(risks))
            if typical < HEAVY_ELEVATED or (risks < RISK_SUSPICIOUS).mean() < HEAVY_UNDER_SHARE:
                continue  # accounts that only ask alike, or flagged on their own but for a straggler or two
            score = 0.5 + 0.49 * min(1.0, (typical - HEAVY_ELEVATED) / (RISK_SUSPICIOUS - HEAVY_ELEVATED))
            requests = [accounts[m].n for m in core]
            evidence = (
                f"{len(core)} heavier accounts of {min(requests)}-{max(requests)} requests ask alike (a dense group in "
                f"what they ask, where other accounts each ask their own things), and they carry evidence of their "
                f"own: {int((risks >= HEAVY_ELEVATED).sum())} of the {len(core)} a risk of {HEAVY_ELEVATED:.2f} or "
                f"more by what each did alone (median {typical:.2f}; {int((risks >= RISK_SUSPICIOUS).sum())} flagged "
                "on it), where accounts that only ask alike carry next to none: the shape of one operator's harvest "
                "spread over accounts, some of them kept under the flag"
            )
            if lighter is None:
                lighter = Lighter.of(accounts, taken)
            joined = [a for a in lighter.like(grouped) if own_of(a) >= HEAVY_ELEVATED]
            if joined:
                lo, hi = min(accounts[a].n for a in joined), max(accounts[a].n for a in joined)
                evidence += (
                    f"; {len(joined)} lighter accounts ({lo}-{hi} requests) ask as they do (as close to what the group "
                    "asks as its core members are) and carry evidence of their own too"
                )
                lighter.taken.update(joined)
            c = _campaign(sorted([*core, *joined]), evidence, score, accounts, service, prefix="ch")
            found[c.cluster_id] = c
            placed.update(core)
        return found

    def _judge(
        self,
        members: list[str],
        accounts: dict[str, AccountState],
        pop: Population,
        service: ServiceCounts,
        joining: Joining,
    ) -> Cluster | None:
        ev = group_evidence(members, accounts, pop, cohorts=self.cohorts, service=service)
        called = campaign_call(ev)
        if called is None:
            return None
        score, why = called.score, called.why
        members = campaign_members(members, ev, called)
        joined = joining.joiners(members, called)
        if joined:
            n_thin = len(members)
            lo, hi = min(accounts[m].n for m in joined), max(accounts[m].n for m in joined)
            why += (
                f"; {len(joined)} heavier accounts ({lo}-{hi} requests) ask as its {n_thin} thinner members do (what "
                f"each asks sits as close to the members' as a typical member's, closer than {KEEP_QUANTILE:.0%} of "
                "this service's other thin accounts)"
            )
            members = sorted([*members, *joined])
        requests = [accounts[m].n for m in members]
        evidence = (
            f"{len(members)} accounts of {min(requests)}-{max(requests)} requests ask alike (a dense group in "
            f"what they ask, where other accounts each ask their own things); together: {why}"
        )
        return _campaign(members, evidence, score, accounts, service)


def _campaign(
    members: list[str],
    evidence: str,
    score: float,
    accounts: dict[str, AccountState],
    service: ServiceCounts,
    prefix: str = "cp",
) -> Cluster:
    """The campaign cluster of `members` (sorted), with its evidence and the risk its score (0.5..1) gives."""
    from distillshield.detect.engine import content_risk

    firsts = np.asarray([accounts[m].behaviour.first_ts for m in members])
    span = max(service.span, 3600.0)
    c = Cluster(f"{prefix}_{stable_hash(members[0]) & 0xFFFFFFFF:08x}", members, campaign=frozenset(members))
    first_spread = min(float(np.std(firsts)) / span * 4, 1.0)  # not `spread`: that is the areas function
    c.features = {"clu_size": math.log1p(len(members)), "clu_first_spread": first_spread}
    c.risk = c.content_risk = content_risk(score)
    c.evidence = evidence
    return c


class Core(NamedTuple):
    """The members of a dense group that ask as the group does (`group_core`), and the test they passed: closer to
    `centre` (the unit mean of the group's vectors) than `bar`."""

    members: list[str]
    centre: np.ndarray
    bar: float


def group_core(members: list[str], vecs: np.ndarray, index: dict[str, int]) -> Core | None:
    """The group's core: the members (sorted) that ask as the group does, in a way the other accounts of `index` do
    not, each closer to the mean of the *other* members than KEEP_QUANTILE of the non-members are to the members'
    mean, and at least half as close as the typical member (the density grouping's fringe, taken in by its nearest
    accounts' votes, may ask otherwise; next to a group far from everything, the first bar alone is low). None with
    too few members or non-members."""
    rows = [index[m] for m in members]
    others = np.ones(len(vecs), dtype=bool)
    others[rows] = False
    if len(rows) < MIN_CAMPAIGN or others.sum() < MIN_CAMPAIGN:
        return None
    total = vecs[rows].sum(axis=0)
    centre = total / max(float(np.linalg.norm(total)), 1e-8)
    bar = float(np.quantile(vecs[others] @ centre, KEEP_QUANTILE))
    rest = total[None, :] - vecs[rows]
    own = np.einsum("ij,ij->i", vecs[rows], rest) / np.maximum(np.linalg.norm(rest, axis=1), 1e-8)
    bar = max(bar, 0.5 * float(np.median(own)))
    kept = sorted(m for m, closeness in zip(members, own.tolist(), strict=True) if closeness > bar)
    return Core(kept, centre, bar)


@dataclass(frozen=True, slots=True)
class ServiceCounts:
    """Every account's reasoning counts and creation time, and the service's span of first requests, as arrays
    built once per run of `find`: each group's "rest of the service" is then the totals less its members' (numpy
    over N accounts) instead of a Python pass over every account per group."""

    index: dict[str, int]  # account id -> row
    asked: np.ndarray  # classified prompts per account (int64)
    reasoning: np.ndarray  # of those, asking for the model's reasoning (int64)
    created: np.ndarray  # account creation time, 0 when unknown (float64)
    span: float  # seconds between the service's earliest and latest first request

    @classmethod
    def of(cls, accounts: dict[str, AccountState]) -> ServiceCounts:
        n = len(accounts)
        asked = np.fromiter((a.cot.n for a in accounts.values()), dtype=np.int64, count=n)
        reasoning = np.fromiter((a.cot.either_hits for a in accounts.values()), dtype=np.int64, count=n)
        created = np.fromiter((a.created_at for a in accounts.values()), dtype=np.float64, count=n)
        return cls({k: i for i, k in enumerate(accounts)}, asked, reasoning, created, content_span(accounts))

    def outside(self, members: list[str]) -> np.ndarray:
        """A mask of the accounts that are not members (in the accounts' order)."""
        mask = np.ones(len(self.asked), dtype=bool)
        mask[[self.index[m] for m in members]] = False
        return mask


@dataclass(slots=True)
class Joining:
    """Every account that could join a campaign, with its unit mean prompt vector: the thin accounts of the
    grouping and the heavier ones (more than THIN_MAX requests, a few sampled prompts), which the grouping leaves
    out (their own evidence judges them) but which may be a campaign's members too."""

    ids: list[str]
    index: dict[str, int]
    vecs: np.ndarray  # (N, dim) unit mean vectors, the thin accounts' first
    heavy: np.ndarray  # bool (N,): more than THIN_MAX requests
    taken: set[str] = field(default_factory=set)  # heavier accounts already joined to a campaign of this run

    @classmethod
    def of(cls, thin: list[AccountState], thin_vecs: np.ndarray, accounts: dict[str, AccountState]) -> Joining:
        heavy = heavier_accounts(accounts)
        ids = [a.account_id for a in thin] + [a.account_id for a in heavy]
        vecs = np.vstack([thin_vecs, *(_mean_vector(a)[None, :] for a in heavy)]) if heavy else thin_vecs
        mask = np.zeros(len(ids), dtype=bool)
        mask[len(thin) :] = True
        return cls(ids, {a: i for i, a in enumerate(ids)}, vecs, mask)

    def joiners(self, members: list[str], call: CampaignCall) -> list[str]:
        """The heavier accounts that join the campaign `call` makes of `members`: those that ask as its members do
        (`heavier_like`), and none when its evidence is the waves its accounts were created in (a campaign of
        those is the members made in them)."""
        return [] if call.by_waves else self.heavier_like(members)

    def heavier_like(self, members: list[str]) -> list[str]:
        """The heavier accounts that ask as the members do (JOIN_QUANTILE, KEEP_QUANTILE), sorted; each joins one
        campaign of a run (the first that takes it)."""
        rows = [self.index[m] for m in members if m in self.index]
        if len(rows) < MIN_CAMPAIGN or not self.heavy.any():
            return []
        total = self.vecs[rows].sum(axis=0)
        sims = self.vecs @ (total / max(float(np.linalg.norm(total)), 1e-8))
        rest = total[None, :] - self.vecs[rows]  # each member's closeness to the others' mean: no self-inflation
        own = np.einsum("ij,ij->i", self.vecs[rows], rest) / np.maximum(np.linalg.norm(rest, axis=1), 1e-8)
        others = np.ones(len(self.ids), dtype=bool)
        others[rows] = False
        thin_others = others & ~self.heavy
        if thin_others.sum() < MIN_CAMPAIGN:
            return []
        bar = max(float(np.quantile(own, JOIN_QUANTILE)), float(np.quantile(sims[thin_others], KEEP_QUANTILE)))
        joined = sorted(self.ids[i] for i in np.flatnonzero(others & self.heavy & (sims >= bar)))
        joined = [a for a in joined if a not in self.taken]
        self.taken.update(joined)
        return joined


@dataclass
class Lighter:
    """The thin accounts no thin campaign holds, with their unit mean prompt vectors: those a campaign of heavier
    accounts may reach. One operator's accounts need not all be heavy: the grouping of heavier accounts leaves out
    those of THIN_MAX requests or fewer, and a few of them are too few for a thin campaign of their own. A lighter
    account that passes the test the heavier campaign's core passed, and carries evidence of its own
    (`_find_heavier`), is one of its members (docs/detection.md round 19: a slow bank's accounts of 45-64 requests
    beside its heavier ones)."""

    ids: list[str]
    vecs: np.ndarray  # (N, dim)
    taken: set[str] = field(default_factory=set)  # joined to a campaign of this run already

    @classmethod
    def of(cls, accounts: dict[str, AccountState], taken: set[str]) -> Lighter:
        light = [a for a in thin_accounts(accounts) if a.account_id not in taken]
        vecs = np.stack([_mean_vector(a) for a in light]) if light else np.zeros((0, 1), dtype=np.float32)
        return cls([a.account_id for a in light], vecs)

    def closeness(self, core: Core) -> np.ndarray:
        """Each lighter account's closeness to the group's mean (its unit mean prompt vector's cosine)."""
        return self.vecs @ core.centre if self.ids else np.zeros(0, dtype=np.float32)

    def like(self, core: Core) -> list[str]:
        """The lighter accounts (sorted) that pass the test the core's members passed: closer to the group's mean
        than its bar (`group_core`); each joins one campaign of a run."""
        sims = self.closeness(core)
        return sorted(self.ids[i] for i in np.flatnonzero(sims > core.bar) if self.ids[i] not in self.taken)


@dataclass(frozen=True, slots=True)
class GroupEvidence:
    """What a group of accounts is judged on: the content judgement of its pooled prompts, how many of its
    classified prompts ask for the model's reasoning, and how many topic areas its prompts cover."""

    content: SignalScore
    asked: int
    reasoning: int  # classified prompts that ask for reasoning (or are rubric prompts): a prompt counts once
    areas: float
    rest_asked: int = 0  # the same counts over every other account of the service
    rest_reasoning: int = 0
    cohort: Cohort | None = None  # the most improbable wave in which members' accounts were created, if judged
    born: tuple[str, ...] = ()  # the members created in a significant wave (cohort.born_in_waves)

    @property
    def reasoning_share(self) -> float:
        return self.reasoning / max(self.asked, 1)

    @property
    def rest_share(self) -> float:
        return self.rest_reasoning / max(self.rest_asked, 1)


def group_evidence(
    members: list[str],
    accounts: dict[str, AccountState],
    pop: Population,
    *,
    cohorts: bool = True,
    service: ServiceCounts | None = None,
) -> GroupEvidence:
    """The group's pooled prompts (at most POOLED_MAX, the same number from each member) judged like one
    account's, against the packaged reference of real users' prompts; with `cohorts`, also the waves in which the
    members' accounts were created. `service`: the accounts' counts, when the caller judges several groups."""
    from distillshield.detect.content import breadth
    from distillshield.detect.signals.content import judge, spread

    content = pop.content
    rows = []
    per = max(1, POOLED_MAX // len(members))
    for m in members:
        st = accounts[m].content
        if st.window is not None:
            rows.append(st.window[: min(st.m, per)])
    x = np.concatenate(rows).astype(np.float32)
    # A member's near twins are the campaign itself: judge how far the pooled prompts sit from real
    # users' prompts (the packaged reference) against how far everyone else's sit (ContentPopulation.
    # group_null). Resembling flagged accounts is left out here: in a large group of honest users a few
    # always resemble someone, and a group is judged on its own content.
    null = content.group_null(set(members))
    typ = content.reference_typicality(x)
    assoc = np.zeros(len(x), dtype=bool)
    areas = content.area_of(x)
    verdict, _ = judge("content", typ, assoc, areas, null, 0.0, breadth(x), excess_min=GROUP_EXCESS, rank_gap=GROUP_GAP)
    service = service if service is not None else ServiceCounts.of(accounts)
    rest = service.outside(members)
    rest_asked, rest_reasoning = int(service.asked[rest].sum()), int(service.reasoning[rest].sum())
    asked, reasoning = int(service.asked.sum()) - rest_asked, int(service.reasoning.sum()) - rest_reasoning
    created = np.asarray([accounts[m].created_at for m in members], dtype=np.float64)
    history = service.created[rest]  # every other account's creation time (0: unknown): what the waves are judged on
    cohort = creation_cohort(created, history) if cohorts else None
    born: tuple[str, ...] = ()
    if cohort is not None and cohort.significant:
        in_waves, _waves = born_in_waves(created, history, first=cohort)
        born = tuple(m for m, w in zip(members, in_waves.tolist(), strict=True) if w)
    return GroupEvidence(verdict, asked, reasoning, spread(areas), rest_asked, rest_reasoning, cohort, born)


class CampaignCall(NamedTuple):
    """Why a group is a campaign: its score (0.5..1), the reason, and whether the evidence is the waves its
    accounts were created in (then only the members created in them are the campaign's)."""

    score: float
    why: str
    by_waves: bool = False


def campaign_call(ev: GroupEvidence) -> CampaignCall | None:
    """The call when the evidence makes the group a campaign, else None."""
    from distillshield.detect.scoring import RISK_SUSPICIOUS
    from distillshield.detect.signals.content import AREAS_SWEEP, far_logp

    if ev.content.score >= RISK_SUSPICIOUS:
        return CampaignCall(ev.content.score, ev.content.detail)
    # Or the known technique, whatever the questions look like: a dense group of thin accounts whose prompts
    # mostly ask for the model's reasoning, spread over many topic areas (a capability sweep wrapped in a
    # reasoning-elicitation instruction). A class of students can be as wide: see the module's docstring.
    cot = ev.reasoning_share
    if cot >= GROUP_COT and ev.areas >= AREAS_SWEEP:
        why = (
            f"{cot:.0%} of their {ev.asked} classified prompts ask for the model's reasoning, spread over "
            f"{ev.areas:.1f} topic areas like a capability sweep"
        )
        return CampaignCall(0.5 + 0.49 * min(1.0, (cot - GROUP_COT) / (1.0 - GROUP_COT)), why)
    # Or a group whose accounts were made together in a wave, asking for the model's reasoning well beyond what
    # the rest of the service asks, over a sweep of areas: the shape of a campaign run on accounts bought or
    # registered in bulk (a slow hydra whose members also send ordinary requests). A class whose accounts came
    # one by one is not a wave; a course's cohort enrolled together stays in its syllabus's few areas.
    cohort = ev.cohort
    if cohort is not None and cohort.significant and len(ev.born) >= MIN_CAMPAIGN and ev.areas >= AREAS_SWEEP:
        rest = min(max(ev.rest_share, 1e-3), 0.999)
        excess = cot - rest
        if excess >= GROUP_COT_EXCESS and far_logp(ev.reasoning, ev.asked, rest) >= COT_EXCESS_LOGP:
            why = (
                f"{len(ev.born)} of them were created in waves (the most improbable: {cohort.describe()}); "
                f"{cot:.0%} of their {ev.asked} classified prompts ask for the model's "
                f"reasoning against {rest:.0%} of the rest of this service's, spread over {ev.areas:.1f} topic areas"
            )
            return CampaignCall(0.5 + 0.49 * min(1.0, excess / 0.5), why, by_waves=True)
    return None


def campaign_members(members: list[str], ev: GroupEvidence, call: CampaignCall) -> list[str]:
    """The accounts a called group's campaign holds: all its members, or, when the evidence is the waves its
    accounts were created in, only those created in them (one that asks alike but was created on its own is not
    in it)."""
    return sorted(ev.born) if call.by_waves else members


def thin_accounts(accounts: dict[str, AccountState]) -> list[AccountState]:
    """The accounts the grouping considers: thin ones with a few sampled prompts, the MAX_ACCOUNTS most
    recently active."""
    thin = sorted((a for a in accounts.values() if _eligible(a)), key=lambda a: -a.behaviour.last_ts)
    return thin[:MAX_ACCOUNTS]


def heavier_accounts(accounts: dict[str, AccountState]) -> list[AccountState]:
    """The accounts above THIN_MAX with a few sampled prompts that may join a campaign (`Joining`), the MAX_ACCOUNTS
    most recently active."""
    return sorted((a for a in accounts.values() if _heavy(a)), key=lambda a: -a.behaviour.last_ts)[:MAX_ACCOUNTS]


class Groups(NamedTuple):
    """The accounts' unit mean prompt vectors and two groupings of them (labels, -1 for none), both HDBSCAN's:
    its leaf clusters (the finest dense groups) and its excess-of-mass clusters (the most persistent ones).
    Neither alone is reliable: leaves may cut one campaign into a few small groups and leave the rest as
    noise (docs/detection.md round 14), and excess of mass may fold a campaign into most of a service."""

    vecs: np.ndarray
    fine: np.ndarray
    coarse: np.ndarray


def candidates(groups: Groups, accs: list[AccountState], placed: set[str]) -> Iterator[tuple[str, list[str]]]:
    """Each candidate group as (its level, its members' ids, sorted): the most persistent groups first, then the
    finest ones, each without the accounts in `placed`, which the caller grows as it calls campaigns (read
    lazily). So a campaign that the leaf selection cuts into a few leaves and noise is still found as one, and
    one that a coarse group dilutes among ordinary users is still found in its leaf. A group both selections
    find is one candidate. A group of more than GROUP_MAX_SHARE of the accounts is none: a candidate is judged
    against everyone else's prompts (content.group_null), and a group that is most of the service leaves too
    few of them to stand for the service (excess of mass may fold most of a service into one group)."""
    seen: set[tuple[str, ...]] = set()
    for level, labels in (("coarse", groups.coarse), ("fine", groups.fine)):
        for label in sorted(set(labels.tolist()) - {-1}):
            members = sorted(accs[i].account_id for i in np.flatnonzero(labels == label))
            members = [m for m in members if m not in placed]
            if len(members) > GROUP_MAX_SHARE * len(accs):
                continue
            if len(members) >= MIN_CAMPAIGN and tuple(members) not in seen:
                seen.add(tuple(members))
                yield level, members


def density_groups(accs: list[AccountState]) -> Groups:
    """The density groups of the accounts' mean prompt vectors (`Groups`)."""
    vecs = np.stack([_mean_vector(a) for a in accs])
    dist = np.clip(1.0 - vecs @ vecs.T, 0.0, 2.0).astype(np.float64)
    fine, coarse = _density_clusters(dist, "leaf"), _density_clusters(dist, "eom")
    if (fine >= 0).any() or (coarse >= 0).any():
        np.fill_diagonal(dist, np.inf)
        near = np.argsort(dist, axis=1)[:, :K_DENSE]
        fine, coarse = _with_fringe(fine, near), _with_fringe(coarse, near)
    return Groups(vecs, fine, coarse)


def _grown(n: int, last: int) -> bool:
    """Whether a grouping over `n` accounts is due, having last run over `last` (0: never)."""
    return n >= MIN_CAMPAIGN and (last == 0 or n >= (1 + GROWTH) * last)


def content_span(accounts: dict[str, AccountState]) -> float:
    firsts = [a.behaviour.first_ts for a in accounts.values()]
    return (max(firsts) - min(firsts)) if firsts else 0.0


def _eligible(acc: AccountState) -> bool:
    return acc.n <= THIN_MAX and acc.content.count >= MIN_PROMPTS and acc.content.window is not None


def _heavy(acc: AccountState) -> bool:
    return acc.n > THIN_MAX and acc.content.count >= MIN_PROMPTS and acc.content.window is not None


def _mean_vector(acc: AccountState) -> np.ndarray:
    st = acc.content
    assert st.window is not None
    v = st.window[: st.m].astype(np.float32).mean(axis=0)
    return v / max(float(np.linalg.norm(v)), 1e-8)


def _density_clusters(dist: np.ndarray, selection: str) -> np.ndarray:
    """HDBSCAN (scikit-learn) over the accounts' cosine distances (`dist`, N x N, zero diagonal), with the given
    cluster selection ("leaf" or "eom"): groups of any density, honest users who each ask their own things left
    as noise (-1)."""
    from sklearn.cluster import HDBSCAN

    return HDBSCAN(
        min_cluster_size=MIN_CAMPAIGN, metric="precomputed", cluster_selection_method=selection, copy=True
    ).fit_predict(dist)


def _with_fringe(labels: np.ndarray, near: np.ndarray) -> np.ndarray:
    """A noise account joins a group when most of its nearest accounts (`near`: their indices) are members:
    HDBSCAN's core-distance cut leaves a campaign's sparser fringe out."""
    if not (labels >= 0).any():
        return labels
    joined = labels.copy()
    for i in np.flatnonzero(labels < 0):
        votes = labels[near[i]]
        votes = votes[votes >= 0]
        if len(votes) > K_DENSE // 2:
            top = np.bincount(votes).argmax()
            if (votes == top).sum() > K_DENSE // 2:
                joined[i] = top
    return joined
