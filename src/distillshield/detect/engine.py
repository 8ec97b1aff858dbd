"""The detection engine: per-account states, population-wide state, clusters and scoring, in one place
that both batch analysis and the gateway drive.

`observe(obs)` folds one request into its account's signal states and the population's indexes
(which accounts use which template, IP range and model); it is O(1). `rescore(account)` turns an
account's state into features, a risk, a verdict and reasons. `recluster()` rebuilds the hydra clusters
from the accounts' heavy-hitter templates. Batch analysis replays a file in time order and rescores
at checkpoints, so a first flag in a report is the moment an online engine would have raised it.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from distillshield.detect.base import AccountScore, Reason
from distillshield.detect.campaign import THIN_MAX, ContentCampaigns
from distillshield.detect.cluster import (
    BOILERPLATE_SHARE,
    CLUSTER_FEATURES,
    MIN_CLUSTER,
    Cluster,
    HydraClusterDetector,
)
from distillshield.detect.content import ContentPopulation, Genre, genres
from distillshield.detect.corpus import Obs
from distillshield.detect.scoring import RISK_EXTRACTION, RISK_SUSPICIOUS, Combiner, OperatingPoint
from distillshield.detect.signals.behaviour import Behaviour, BehaviourState, param_sweep
from distillshield.detect.signals.content import ContentState, PopulationContent
from distillshield.detect.signals.cot import CotElicitation, CotState
from distillshield.detect.signals.coverage import CapabilityCoverage
from distillshield.detect.signals.distribution import DistributionTest, EmbeddingReference, EmbedState
from distillshield.detect.signals.intel import IntelMatch, IntelState, intel_risk
from distillshield.detect.signals.logits import LogitSweep
from distillshield.detect.signals.templates import TemplateReuse, TemplateState, is_template, prompt_variety

NEW_MODEL_AFTER = 12 * 3600.0  # a model first seen this long after traffic began counts as a new release
MEMBER_CAP = 512  # distinct accounts remembered per template / IP range (counts saturate there)
GENRE_GROWTH = 0.25  # find minority genres again when the number of unusual accounts moved this much
MIN_EVIDENCE = 8  # fewer requests than this flag an account only through a flagged cluster
LSH_THRESHOLD = 0.5
NUM_PERM = 64
END_USERS_TRACKED = 32  # an account's most active end users, each judged on its own (see EndUsers)
ATTRIBUTABLE = 10  # an account relaying at least this many distinct end users is judged per person
# Behaviour features that add up over the people behind an account; per person, they are divided by them.
PER_PERSON = ("log_volume", "log_per_day", "log_peak_hour")
OWN_SIGNALS = frozenset({"templates", "cot", "behaviour"})  # what `Engine._own_signals` scores


def checkpoints(limit: int = 1 << 30) -> list[int]:
    """Request counts at which an account is rescored: dense early (detection delay), then geometric."""
    out = [4, 8, 12, 16, 24, 32, 48, 64, 80, 100, 128, 160, 200]
    while out[-1] < limit:
        out.append(int(out[-1] * 1.25))
    return out


CHECKPOINTS = frozenset(checkpoints(10_000_000))


class _Members:
    """Distinct accounts per key (template, family, IP range) with a memory cap: exact up to MEMBER_CAP."""

    __slots__ = ("first", "multi")

    def __init__(self) -> None:
        self.first: dict[Any, str] = {}
        self.multi: dict[Any, set[str]] = {}

    def add(self, key: Any, account: str) -> None:
        f = self.first.get(key)
        if f is None:
            self.first[key] = account
        elif f != account:
            s = self.multi.get(key)
            if s is None:
                self.multi[key] = {f, account}
            elif len(s) < MEMBER_CAP:
                s.add(account)

    def count(self, key: Any) -> int:
        s = self.multi.get(key)
        if s is not None:
            return len(s)
        return 1 if key in self.first else 0

    def prune_singletons(self) -> int:
        """Forget keys seen by one account only (bounded memory for a long-running gateway)."""
        gone = [k for k in self.first if k not in self.multi]
        for k in gone:
            del self.first[k]
        return len(gone)


class Population:
    """Population-wide state: who shares which template, family and IP range; models and time span."""

    def __init__(self) -> None:
        self.frames = _Members()
        self.prompts = _Members()
        self.families = _Members()
        self.ips = _Members()
        self.content = ContentPopulation()  # a sample of the deployment's own prompts (detect/content.py)
        self.n_accounts = 0  # accounts seen so far
        self.model_first: dict[str, float] = {}
        self.first_ts = math.inf
        self.last_ts = -math.inf

    def frame_accounts(self, h: int) -> int:
        return self.frames.count(h)

    def prompt_accounts(self, raw_hash: int) -> int:
        return self.prompts.count(raw_hash)

    def family_accounts(self, fid: int) -> int:
        return self.families.count(fid)

    def ip_accounts(self, ip24: str) -> int:
        return self.ips.count(ip24)

    def is_boilerplate(self, k: int) -> bool:
        """A template, prompt or family used by `k` accounts is the service's own when that is more than
        BOILERPLATE_SHARE of its accounts (every user of a tutoring app doing the same exercises): shared,
        but not a sign of coordination."""
        return k > max(BOILERPLATE_SHARE * self.n_accounts, MIN_CLUSTER + 1)

    def new_models(self) -> dict[str, float]:
        cut = self.first_ts + NEW_MODEL_AFTER
        return {m: t for m, t in self.model_first.items() if t > cut}


@dataclass
class Context:
    """What a signal may look at beyond its own account: the population and the account's cluster."""

    population: Population
    cluster: Cluster | None = None
    own_template_share: float = 0.0  # the account's traffic share in its most-used template (apps: high)
    prompt_variety: float = 1.0  # distinct prompts per request it sent (signals/templates.prompt_variety)


class EndUsers:
    """The most active end users of an account that names them (OpenAI `user`, Anthropic
    `metadata.user_id`): a reseller, a platform, an app passing its customers' ids. Each has its own
    template, CoT and behaviour state, so that the account is judged per person and an end user who
    harvests is found among honest ones. At most END_USERS_TRACKED: a new end user takes the place of
    the least active one when all places are taken, so the heavy ones (the only ones with enough evidence
    to judge) stay. Hand-written: a dict and a min over 32 entries; no sketch library keeps state per key."""

    __slots__ = ("states",)

    def __init__(self) -> None:
        self.states: dict[int, AccountState] = {}

    def state_for(self, obs: Obs) -> AccountState:
        st = self.states.get(obs.end_user)
        if st is None:
            if len(self.states) >= END_USERS_TRACKED:
                del self.states[min(self.states, key=lambda k: self.states[k].n)]
            st = self.states[obs.end_user] = AccountState(obs.end_user_id or f"#{obs.end_user & 0xFFFFFFFF:08x}")
        return st


@dataclass
class AccountState:
    """Everything detection keeps about one account: bounded, whatever its volume."""

    account_id: str
    templates: TemplateState = field(default_factory=TemplateState)
    cot: CotState = field(default_factory=CotState)
    behaviour: BehaviourState = field(default_factory=BehaviourState)
    embed: EmbedState = field(default_factory=EmbedState)
    content: ContentState = field(default_factory=ContentState)
    org: str = ""
    created_at: float = 0.0  # when the account was created (its records' account_created_at); 0: unknown
    ips: Counter[str] = field(default_factory=Counter)
    uas: Counter[str] = field(default_factory=Counter)
    score: AccountScore | None = None
    own_risk: float = 0.0  # the combiner's risk before the thin-evidence cap (what the cluster pools)
    logits: list[float] | None = None  # each combiner's log-odds at the last rescore (what OperatingPoints pool)
    features: dict[str, float] = field(default_factory=dict)
    cluster_id: str | None = None
    dirty: bool = True
    end_users: EndUsers | None = None  # per end user, when the account's requests name them
    intel: IntelState | None = None  # imported indicators it matched (signals/intel.py), once intel is on

    @property
    def n(self) -> int:
        return self.behaviour.n

    @property
    def top_ip(self) -> str:
        return self.ips.most_common(1)[0][0] if self.ips else ""

    @property
    def top_ua(self) -> str:
        return self.uas.most_common(1)[0][0] if self.uas else ""


def _minhash_lsh() -> Any:
    from datasketch import MinHashLSH

    return MinHashLSH(threshold=LSH_THRESHOLD, num_perm=NUM_PERM)


class MinHasher:
    """MinHash signatures (datasketch, affine32 scheme, crc32 shingle hash): callable on shingles."""

    def __init__(self, num_perm: int = NUM_PERM, seed: int = 1) -> None:
        import zlib

        from datasketch import MinHash

        self._proto = MinHash(num_perm=num_perm, seed=seed)
        self._hash = zlib.crc32
        self.num_perm = num_perm

    def __call__(self, shingles: list[bytes]) -> np.ndarray:
        from datasketch import MinHash

        m = MinHash(
            num_perm=self.num_perm, hashfunc=self._hash, permutations=self._proto.permutations, scheme="affine32"
        )
        m.update_batch(shingles)
        return m.hashvalues

    def lean(self, hashvalues: np.ndarray) -> Any:
        from datasketch import LeanMinHash

        return LeanMinHash(seed=1, hashvalues=hashvalues, scheme="affine32")


def _own_context(pop: Population, cluster: Cluster | None, t: TemplateState) -> Context:
    """The context an actor's own signals are judged in: the population, its cluster, and how it uses prompts."""
    return Context(pop, cluster, _own_template_share(t, pop), prompt_variety(t))


def _own_template_share(t: TemplateState, pop: Population) -> float:
    """Share of the account's requests in its most-used template of its own: a frame it fills with varied
    content and that fewer than three accounts use (a shared one is a campaign's or boilerplate)."""
    best = 0
    for topk in (t.heads, t.tails):
        for h, c in topk.top(3):
            if c > best and is_template(topk, h) and pop.frame_accounts(h) < 3:
                best = c
    return best / max(t.n, 1)


def content_risk(score: float) -> float:
    """The risk that content evidence alone gives: its score 0.5..1 onto the suspicious band, below extraction."""
    return RISK_SUSPICIOUS + (RISK_EXTRACTION - RISK_SUSPICIOUS) * 0.98 * min(max((score - 0.5) / 0.5, 0.0), 1.0)


def logit_risk(score: float) -> float:
    """The risk of logit-extraction evidence (score 0.5..1): the extraction band, 0.8..0.99."""
    return RISK_EXTRACTION + (0.99 - RISK_EXTRACTION) * min(max((score - 0.5) / 0.5, 0.0), 1.0)


def _band(risk: float) -> int:
    return 2 if risk >= RISK_EXTRACTION else 1 if risk >= RISK_SUSPICIOUS else 0


class Engine:
    """Per-account detection state, population state, clusters, and scoring with the model's combiners.

    One combiner, or several (scoring.DetectionModel.ensemble): each is set at its own operating point in this
    deployment, and an account's risk is the highest any of them gives, with that combiner's reasons."""

    def __init__(
        self,
        combiner: Combiner | Sequence[Combiner],
        reference: EmbeddingReference | None = None,
        *,
        cohorts: bool = True,
    ) -> None:
        self.combiners = [combiner] if isinstance(combiner, Combiner) else list(combiner)
        if not self.combiners:
            raise ValueError("an engine needs at least one combiner")
        self.operating_points = [OperatingPoint(c.population_reference) for c in self.combiners]
        self.operating = self.operating_points[0]  # the primary combiner's (summary.operating_point)
        self.population = Population()
        self.accounts: dict[str, AccountState] = {}
        self.templates = TemplateReuse()
        self.cot = CotElicitation()
        self.behaviour = Behaviour()
        self.distribution = DistributionTest()
        self.coverage = CapabilityCoverage()
        self.content = PopulationContent()
        self.logits = LogitSweep()
        self.intel = IntelMatch()  # imported threat intelligence: off until `engine.intel.fit(matcher)`
        self.reference = reference
        if reference is not None:
            self.distribution.fit(reference)
        self.hydra = HydraClusterDetector()
        self.campaigns = ContentCampaigns(cohorts=cohorts)
        self._genre_n = 0  # unusual accounts when minority genres were last found
        self.clusters: dict[str, Cluster] = {}
        self._lsh = _minhash_lsh()
        self._hasher: MinHasher | None = None
        self._family_of: dict[int, int] = {}
        self._next_family = 1
        self.now = -math.inf
        self.observed = 0
        self.snapshots: list[tuple[str, int, dict[str, float]]] | None = None  # training: features per rescore

    # -- observing ------------------------------------------------------------------------------------

    def _family(self, hashvalues: np.ndarray) -> int:
        """The near-duplicate family of a MinHash signature (LSH query; a new family when nothing is close)."""
        if self._hasher is None:
            self._hasher = MinHasher()
        lean = self._hasher.lean(hashvalues)
        hits = self._lsh.query(lean)
        if hits:
            return self._family_of[min(hits)]
        fid = self._next_family
        self._next_family += 1
        self._lsh.insert(fid, lean)
        self._family_of[fid] = fid
        return fid

    def observe(self, obs: Obs) -> AccountState:
        acc = self.accounts.get(obs.account)
        if acc is None:
            acc = self.accounts[obs.account] = AccountState(obs.account, org=obs.org)
            acc.content.account = obs.account
            self.population.n_accounts += 1
        if obs.account_created:
            acc.created_at = obs.account_created
        pop = self.population
        self.observed += 1
        self.now = max(self.now, obs.ts)
        pop.first_ts = min(pop.first_ts, obs.ts)
        pop.last_ts = max(pop.last_ts, obs.ts)
        if obs.model not in pop.model_first:
            pop.model_first[obs.model] = obs.ts
        if obs.head:
            pop.frames.add(obs.head, obs.account)
            pop.frames.add(obs.tail, obs.account)
        if obs.raw_hash:
            pop.prompts.add(obs.raw_hash, obs.account)
        if obs.ip24:
            if len(acc.ips) < 16 or obs.ip24 in acc.ips:
                acc.ips[obs.ip24] += 1
            pop.ips.add(obs.ip24, obs.account)
        if len(acc.uas) < 8 or obs.ua in acc.uas:
            acc.uas[obs.ua] += 1
        self.templates.update(acc.templates, obs)
        self.cot.update(acc.cot, obs)
        self.behaviour.update(acc.behaviour, obs)
        if self.intel.matcher is not None:
            if acc.intel is None:
                acc.intel = self.intel.new_state()
            self.intel.update(acc.intel, obs)
        if obs.minhash is not None:
            fid = self._family(obs.minhash)
            pop.families.add(fid, obs.account)
            self.templates.add_family(acc.templates, fid)
        if obs.end_user:
            if acc.end_users is None:
                acc.end_users = EndUsers()
            sub = acc.end_users.state_for(obs)
            self.templates.update(sub.templates, obs)
            self.cot.update(sub.cot, obs)
            self.behaviour.update(sub.behaviour, obs)
            if obs.minhash is not None:
                self.templates.add_family(sub.templates, fid)
        if obs.cvec is not None and acc.content.is_new(obs.raw_hash):
            self.content.update(acc.content, obs.cvec)
            pop.content.offer(obs.account, obs.cvec)
        if obs.emb is not None and self.reference is not None:
            e = obs.emb[None, :]
            self.distribution.update_embeddings(acc.embed, e, self.reference.features(e), self.reference.topics(e))
        acc.dirty = True
        return acc

    # -- clusters and scores --------------------------------------------------------------------------

    def _refresh_content(self, new_epoch: bool = False) -> None:
        """Refresh the population's content statistics, then hand it the recent windows of the excluded
        accounts that content has flagged (far and broad), which other accounts' prompts are compared with
        (a campaign's shared bank). Accounts that are only unusual vouch against nobody."""
        self.population.content.refresh(new_epoch)
        self._hand_outliers()

    def _hand_outliers(self) -> bool:
        """Hand the population the windows of the excluded accounts that content has flagged; True when any."""
        pop = self.population.content
        windows = {}
        for a in pop.excluded:
            st = self.accounts[a].content if a in self.accounts else None
            if st is not None and st.window is not None and st.flagged:
                windows[a] = st.window[: st.m]
        pop.set_outliers(windows)
        return bool(windows)

    def _reflag_far(self) -> None:
        """Judge the content of the accounts the population's statistics exclude as far again, against the
        population as it stands (which sets their `flagged`)."""
        pop = self.population
        for a in sorted(pop.content.excluded):
            acc = self.accounts.get(a)
            if acc is not None:
                self.content.score(acc.content, _own_context(pop, None, acc.templates))

    def recluster(self, final: bool = False) -> dict[str, Cluster]:
        """Template clusters, then content campaigns: a campaign that overlaps template clusters is merged into
        the largest of them (one campaign, one object), which then carries the campaign's evidence and risk. Where
        two campaigns meet in one host, it carries both campaigns' members and the higher risk, and the reason of
        the campaign that gave that risk: a weaker campaign met later never replaces the headline."""
        self.clusters = self.hydra.find(self.accounts, self.population)
        member_of = {m: cid for cid, c in self.clusters.items() for m in c.accounts}
        found = self.campaigns.find(self.accounts, self.population, force=final, own_evidence=self.own_evidence)
        for cid, c in found.items():
            overlap = Counter(member_of[m] for m in c.accounts if m in member_of)
            if not overlap:
                self.clusters[cid] = c
                continue
            host = self.clusters[overlap.most_common(1)[0][0]]
            host.accounts = sorted(set(host.accounts) | {m for m in c.accounts if m not in member_of})
            if c.content_risk > host.content_risk or not host.evidence:
                host.evidence = c.evidence
            host.content_risk = max(host.content_risk, c.content_risk)
            host.campaign = host.campaign | c.campaign
        member_of = {m: cid for cid, c in self.clusters.items() for m in c.accounts}
        for aid, acc in self.accounts.items():
            cid = member_of.get(aid)
            if cid != acc.cluster_id:
                acc.cluster_id = cid
                acc.dirty = True
        self._genres(member_of, final)
        return self.clusters

    def _genres(self, member_of: dict[str, str], final: bool) -> None:
        """Which unusual accounts belong to a minority genre of this service (content.genres), recomputed at
        the end and whenever the number of unusual accounts has moved by a quarter."""
        pop = self.population.content
        unusual = {a: acc for a, acc in self.accounts.items() if acc.content.unusual}
        n = len(unusual)
        if not final and abs(n - self._genre_n) < max(GENRE_GROWTH * self._genre_n, 1):
            return
        self._genre_n = n
        windows = {a: pop.centred(acc.content.less_typical(pop.stats).astype(np.float32)) for a, acc in unusual.items()}
        vouchers = {a for a, acc in unusual.items() if acc.n > THIN_MAX}
        found = genres(windows, vouchers, member_of, pop)
        for a, acc in self.accounts.items():
            g = found.get(a, Genre())
            if g != acc.content.genre:
                acc.content.genre = g
                acc.dirty = True

    def operate(self) -> list[AccountState]:
        """Set the model's operating point from this deployment's accounts (scoring.OperatingPoint); returns the
        accounts whose verdict the new shift would change (marked dirty: the caller rescores them)."""
        before = [op.shift for op in self.operating_points]
        scored = [a.logits for a in self.accounts.values() if a.logits is not None and a.n >= MIN_EVIDENCE]
        changed = False
        for i, op in enumerate(self.operating_points):
            changed = op.update([lg[i] for lg in scored]) or changed
        if not changed:
            return []
        after = [op.shift for op in self.operating_points]
        moved = []
        for acc in self.accounts.values():
            if acc.logits is None:
                continue
            if _band(self._risk(acc.logits, before)) != _band(self._risk(acc.logits, after)):
                acc.dirty = True
                moved.append(acc)
        return moved

    def _risk(self, logits: list[float], shifts: list[float]) -> float:
        return max(c.risk(lg, sh) for c, lg, sh in zip(self.combiners, logits, shifts, strict=True))

    def judge(self, feats: dict[str, float], *, shifted: bool = True) -> tuple[float, list[float], dict[str, float]]:
        """(risk, each combiner's log-odds, per-signal contributions) of one feature set: the highest risk any
        combiner gives at its operating point, with the contributions of the combiner that gave it. `shifted`:
        at the point this deployment's population set (OperatingPoint), else at the artefact's own."""
        best: tuple[float, dict[str, float]] | None = None
        logits = []
        for comb, op in zip(self.combiners, self.operating_points, strict=True):
            logit, contrib = comb.explain(comb.vector(feats))
            logits.append(logit)
            risk = comb.risk(logit, op.shift if shifted else 0.0)
            if best is None or risk > best[0]:
                best = (risk, contrib)
        assert best is not None
        return best[0], logits, best[1]

    def features(self, acc: AccountState, *, alone: bool = False) -> tuple[dict[str, float], list[Any]]:
        """The account's features and signals; `alone`: as if it were in no cluster, and without content (the
        combiners do not read it; Engine.own_evidence says why it is left out there)."""
        cluster = self.clusters.get(acc.cluster_id) if acc.cluster_id and not alone else None
        ctx = _own_context(self.population, cluster, acc.templates)
        if self.population.content.stale():
            self._refresh_content()
        sigs = self._own_signals(acc, ctx)
        if acc.content.count and not alone:  # content on (detect/content.py) and this account has sampled prompts
            sigs.append(self.content.score(acc.content, ctx))
        if acc.behaviour.logit_sweeps:
            sigs.append(self.logits.score(acc.behaviour, ctx))
        if self.reference is not None:
            sigs.append(self.distribution.score(acc.embed, ctx))
            sigs.append(self.coverage.score(acc.embed, ctx))
        feats: dict[str, float] = {}
        for s in sigs:
            feats.update(s.features)
        ip_k = self.population.ip_accounts(acc.top_ip) if acc.top_ip else 1
        feats["ip_shared"] = math.log1p(max(ip_k - 1, 0))
        for name in CLUSTER_FEATURES:
            feats[name] = cluster.features.get(name, 0.0) if cluster else 0.0
        return feats, sigs

    def _own_signals(self, acc: AccountState, ctx: Context) -> list[Any]:
        """The signals of what one actor (an account, or one of its end users) did itself: OWN_SIGNALS."""
        return [
            self.templates.score(acc.templates, ctx),
            self.cot.score(acc.cot, ctx),
            self.behaviour.score(acc.behaviour, ctx),
        ]

    def _people(self, acc: AccountState) -> float:
        """How many people the account relays, when it is enough to judge it per person (else 0)."""
        if acc.end_users is None:
            return 0.0
        people = acc.behaviour.end_users.estimate()
        return people if people >= ATTRIBUTABLE else 0.0

    def _per_person(self, acc: AccountState, feats: dict[str, float], people: float) -> dict[str, float]:
        """The account's features as one of its people sees them: volumes divided by the people it relays, and
        the largest parameter sweep any one tracked end user runs (a reseller relays each user's settings)."""
        assert acc.end_users is not None
        out = dict(feats)
        for k in PER_PERSON:
            out[k] = math.log1p(math.expm1(feats[k]) / people)
        out["param_sweep"] = max((param_sweep(s.behaviour) for s in acc.end_users.states.values()), default=0.0)
        return out

    def _worst_end_user(
        self, acc: AccountState, feats: dict[str, float], alone: bool
    ) -> tuple[float, dict[str, float], list[Any], AccountState] | None:
        """The tracked end user with the most evidence against it: (risk, contributions, signals, state). Its
        own templates, CoT and behaviour; the account's content, addresses and cluster (`alone`: no cluster, and the
        artefact's own operating point, as Engine.own_evidence reads it)."""
        assert acc.end_users is not None
        cluster = self.clusters.get(acc.cluster_id) if acc.cluster_id and not alone else None
        worst = None
        for sub in acc.end_users.states.values():
            if sub.n < MIN_EVIDENCE or sub.cot.n < MIN_EVIDENCE:
                continue  # too little of its own: rates over a handful of classified prompts are noise
            ctx = _own_context(self.population, cluster, sub.templates)
            sigs = self._own_signals(sub, ctx)
            f = dict(feats)
            for sg in sigs:
                f.update(sg.features)
            risk, _, contrib = self.judge(f, shifted=not alone)
            if worst is None or risk > worst[0]:
                worst = (risk, contrib, sigs, sub)
        return worst

    def own_evidence(self, acc: AccountState) -> float:
        """The risk of what the account did itself, by the known techniques: the trained model (its worst end user's
        where it relays many) and logit sweeps, as if it were in no cluster, at the artefact's own operating point.
        What a group of heavier accounts is judged on (campaign.ContentCampaigns), so it leaves out two things:
        - content: a group's members read as far when their genre is not vouched for (content.genres leaves a
          campaign's members out), and what a group asks cannot call it (docs/detection.md round 13);
        - the clusters and the operating point that earlier scoring left: both move with when the engine last
          scored and finalised, and online and batch would then differ."""
        feats, sigs = self.features(acc, alone=True)
        people = self._people(acc)
        if people:
            feats = self._per_person(acc, feats, people)
        risk, _, contrib = self.judge(feats, shifted=False)
        return self._own_judgement(acc, feats, sigs, people, risk, contrib, alone=True)[0]

    def _own_judgement(
        self,
        acc: AccountState,
        feats: dict[str, float],
        sigs: list[Any],
        people: float,
        risk: float,
        contrib: dict[str, float],
        *,
        alone: bool = False,
    ) -> tuple[float, dict[str, float], list[Any]]:
        """(risk, contributions, signals) of what the account did itself, from the combiners' `risk`: its worst end
        user's evidence where it relays many, then content (not when `alone`: Engine.own_evidence) and logit-sweep
        evidence, which flag on their own."""
        person = self._worst_end_user(acc, feats, alone) if people else None
        if person is not None and person[0] > risk:
            risk, contrib, sub_sigs, sub = person
            # The end user's own signals stand in for the account's (content stays the account's).
            sigs = [
                *(s.with_detail(f"end user {sub.account_id}: {s.detail}") for s in sub_sigs),
                *(s for s in sigs if s.signal not in OWN_SIGNALS),
            ]
        content = next((s for s in sigs if s.signal == "content"), None)
        if content is None or alone:
            pass
        elif content.score >= RISK_SUSPICIOUS:
            # Population-relative evidence flags on its own, without the trained model; alone it is
            # "unusual", so it stays below extraction: a stop needs known-TTP evidence too.
            risk = max(risk, content_risk(content.score))
            contrib["content"] = max(contrib.get("content", 0.0), 10.0 * content.score)
        elif content.score >= 0.3:
            contrib["content"] = max(contrib.get("content", 0.0), 0.06)  # worth reading, not what decided
        logits = next((s for s in sigs if s.signal == "logits"), None)
        if logits is not None and logits.score >= RISK_SUSPICIOUS:
            # A known technique with no honest use: it puts the account in the extraction band on its own.
            risk = max(risk, logit_risk(logits.score))
            contrib["logits"] = max(contrib.get("logits", 0.0), 10.0 * logits.score)
        return risk, contrib, sigs

    def rescore(self, acc: AccountState) -> AccountScore:
        feats, sigs = self.features(acc)
        people = self._people(acc)
        if people:
            feats = self._per_person(acc, feats, people)
        if self.snapshots is not None:
            self.snapshots.append((acc.account_id, acc.n, feats))
        risk, acc.logits, contrib = self.judge(feats)
        risk, contrib, sigs = self._own_judgement(acc, feats, sigs, people, risk, contrib)
        acc.own_risk = risk
        cluster = self.clusters.get(acc.cluster_id) if acc.cluster_id else None
        in_campaign = cluster is not None and acc.account_id in cluster.campaign
        if cluster is not None and in_campaign and cluster.content_risk >= RISK_SUSPICIOUS:
            # A campaign's members are flagged on the campaign's pooled evidence, however thin each one is.
            risk = max(risk, cluster.content_risk)
            contrib["coordination"] = max(contrib.get("coordination", 0.0), 10.0 * cluster.content_risk)
        campaign_risk = cluster.content_risk if cluster is not None and in_campaign else 0.0
        thin = acc.n < MIN_EVIDENCE and (cluster is None or max(cluster.risk, campaign_risk) < RISK_SUSPICIOUS)
        if thin:
            # A handful of requests is too little to accuse an account on its own evidence.
            risk = min(risk, RISK_SUSPICIOUS * 0.98)
        intel = self.intel.score(acc.intel, Context(self.population, cluster)) if acc.intel is not None else None
        if intel is not None and intel_risk(intel.score) > 0:
            # Another provider's indicator is evidence from outside this account: it flags even a new one.
            risk = max(risk, intel_risk(intel.score))
            contrib["intel"] = 10.0 * intel.score
            sigs.append(intel)
            thin = thin and risk < RISK_SUSPICIOUS
        verdict = "extraction" if risk >= RISK_EXTRACTION else "suspicious" if risk >= RISK_SUSPICIOUS else "benign"
        reasons = self._reasons(sigs, contrib, cluster, acc)
        if people:
            reasons.append(
                Reason("end_users", 0.0, f"relays {people:.0f} end users: volume and timing are judged per end user")
            )
        if thin:
            reasons.append(Reason("evidence", 0.0, f"only {acc.n} requests: not flagged on its own evidence yet"))
        prev = acc.score
        sc = AccountScore(acc.account_id, risk, verdict, acc.cluster_id, reasons, acc.n)  # type: ignore[arg-type]
        if prev is not None and prev.first_flag_ts is not None:
            sc.first_flag_ts, sc.first_flag_index = prev.first_flag_ts, prev.first_flag_index
        elif verdict != "benign":
            sc.first_flag_ts, sc.first_flag_index = self.now, acc.n - 1
        acc.score = sc
        acc.features = feats
        acc.dirty = False
        return sc

    def _reasons(
        self, sigs: list[Any], contrib: dict[str, float], cluster: Cluster | None, acc: AccountState
    ) -> list[Reason]:
        """Signals ordered by how much they pushed the risk up; each with its score and what it saw."""
        out: list[tuple[float, Reason]] = []
        for s in sigs:
            out.append((contrib.get(s.signal, 0.0), s.reason()))
        coord = contrib.get("coordination", 0.0)
        if cluster is not None:
            score = min(1.0, max(0.0, 0.5 + coord / 8))
            out.append(
                (
                    coord,
                    Reason(
                        "coordination",
                        score,
                        f"member of cluster {cluster.cluster_id}: " + cluster.member_detail(acc.account_id),
                    ),
                )
            )
        elif acc.top_ip and self.population.ip_accounts(acc.top_ip) > 5:
            k = self.population.ip_accounts(acc.top_ip)
            out.append((coord, Reason("coordination", 0.2, f"IP range {acc.top_ip} is shared with {k - 1} accounts")))
        out.sort(key=lambda t: -t[0])
        return [r for c, r in out if c > 0.05] or [out[0][1]] if out else []

    def finalise(self) -> None:
        """Recluster, rescore every account, set cluster risks, then rescore the thin members of flagged
        clusters (they may be flagged through their cluster). Content is judged against the final population."""
        content = self.population.content
        if content.rows:
            # The far accounts whose windows every prompt is compared with are chosen by their content verdicts:
            # judged here against the final population (before any windows are handed over), not taken from
            # whenever each was last scored, which in the gateway depends on when the engine last finalised.
            content.refresh(new_epoch=True)
            self.content.rejudge_all([a.content for a in self.accounts.values()], content)
            self._reflag_far()
            if self._hand_outliers():
                self.content.rejudge_all([a.content for a in self.accounts.values()], content)
            self.content.mark_unusual([a.content for a in self.accounts.values()], content)
        self.recluster(final=True)
        for acc in self.accounts.values():
            self.rescore(acc)
        before = [op.shift for op in self.operating_points]
        self.operate()
        if [op.shift for op in self.operating_points] != before:
            # The final population moved the operating point: every risk moves with it, not only those whose
            # band it moved (operate's list), else the risks, and the cluster medians over them, would keep
            # the shift of whenever they were last rescored, and the report would depend on arrival order.
            for acc in self.accounts.values():
                self.rescore(acc)
        for c in self.clusters.values():
            c.risk = self.cluster_risk(c)
        for c in self.clusters.values():
            if c.risk >= RISK_SUSPICIOUS:
                for m in c.accounts:
                    if self.accounts[m].n < MIN_EVIDENCE:
                        self.rescore(self.accounts[m])

    def cluster_risk(self, c: Cluster) -> float:
        """The larger of a content campaign's pooled evidence (set when it was found) and the median of the
        members' risks before the thin-evidence cap: a cluster pools its members'
        evidence, so twenty accounts of five requests each are judged together, not each on five."""
        members = (self.accounts[m] for m in c.accounts)
        risks = sorted((a.own_risk for a in members if a.score is not None), reverse=True)
        return max(float(np.median(risks)) if risks else 0.0, c.content_risk)
