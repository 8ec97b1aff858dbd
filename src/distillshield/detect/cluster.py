"""Cross-account coordination: HydraClusterDetector joins accounts that share prompt templates or
near-duplicate prompts into clusters, then describes each cluster (how many accounts and orgs, how
much shared IP space and user agents, how synchronised their activity, how their first requests
bunch up in time) so that a cluster gets its own risk and each member inherits the evidence.

No step is all-pairs: links come from each account's few heavy-hitter templates (its `TopK` frames),
each template unions its accounts into one set (union-find, linear), and cluster descriptions are
linear in the members.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from distillshield.detect.signals.templates import example, is_template
from distillshield.detect.text import stable_hash

if TYPE_CHECKING:
    from distillshield.detect.engine import AccountState, Population

LINK_SHARE = 0.15  # a template links an account when it carries at least this share of the account's traffic
MIN_REQUESTS = 5  # accounts with fewer requests do not link yet
MIN_CLUSTER = 3  # fewer linked accounts are not a cluster
BOILERPLATE_SHARE = 0.5  # a template used by more than this share of all accounts is boilerplate, not a link
SERVICE_SHARE = 0.5  # a linked group holding more than this share of the linkable accounts is the service itself

CLUSTER_FEATURES = (
    "clu_size",
    "clu_orgs",
    "clu_ip_overlap",
    "clu_ua_top",
    "clu_sync",
    "clu_first_spread",
    "clu_cot",
    "clu_evenness",
)


class UnionFind:
    """Disjoint sets with path halving and union by size."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}
        self.size: dict[str, int] = {}

    def find(self, x: str) -> str:
        p = self.parent.setdefault(x, x)
        self.size.setdefault(x, 1)
        while p != x:
            gp = self.parent[p]
            self.parent[x] = gp
            x, p = p, gp
        return x

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]


@dataclass
class Cluster:
    cluster_id: str
    accounts: list[str]
    features: dict[str, float] = field(default_factory=dict)
    links: list[str] = field(default_factory=list)  # example shared templates
    risk: float = 0.0
    content_risk: float = 0.0  # a content campaign's risk from its pooled prompts (campaign.ContentCampaigns)
    evidence: str = ""  # a content campaign's account of why its members belong together
    campaign: frozenset[str] = frozenset()  # the accounts the content campaign found (they inherit its risk)
    linked: int = 0  # accounts that shared templates, before a campaign merged into it (Engine.recluster); 0: all

    def detail(self) -> str:
        if self.evidence and not self.links and not self.features.get("clu_orgs"):
            return self.evidence
        return self._template_detail() + (f"; {self.evidence}" if self.evidence else "")

    def member_detail(self, account_id: str) -> str:
        """What the cluster says of one member: all of `detail` for a member of its content campaign (or where it
        holds none); for another member, only what links it (shared templates) and that the campaign it holds is
        not this account's, whose evidence is the campaign members' and not its own."""
        if not self.campaign or account_id in self.campaign:
            return self.detail()
        return (
            f"{self._template_detail()}; the cluster holds a campaign of {len(self.campaign)} accounts that this "
            "account is not one of"
        )

    def _template_detail(self) -> str:
        f = self.features
        parts = [f"{self.linked or len(self.accounts)} accounts share prompt templates"]
        if self.links:
            parts[0] += f" (e.g. {self.links[0]!r})"
        if f.get("clu_orgs", 0) > 0.5:
            parts.append(f"across {f['clu_orgs']:.0%} distinct orgs")
        if f.get("clu_ip_overlap", 0) > 0.3:
            parts.append(f"{f['clu_ip_overlap']:.0%} share IP ranges")
        if f.get("clu_sync", 0) > 0.6:
            parts.append("synchronised activity")
        if f.get("clu_first_spread", 1) < 0.3:
            parts.append("first requests bunched in time")
        return ", ".join(parts)


class HydraClusterDetector:
    """Template-linked account clusters and their coordination features."""

    name = "coordination"

    def find(self, accounts: dict[str, AccountState], pop: Population) -> dict[str, Cluster]:
        """Clusters keyed by cluster id; accounts not in a cluster are absent."""
        uf = UnionFind()
        rep: dict[int, str] = {}
        examples: dict[int, str] = {}
        cap = max(BOILERPLATE_SHARE * max(len(accounts), 1), MIN_CLUSTER + 1)
        for aid, acc in accounts.items():
            t = acc.templates
            if t.n < MIN_REQUESTS:
                continue
            keys: list[tuple[int, str | None]] = []
            for topk in (t.heads, t.tails):
                for h, c in topk.top(4):
                    if c / t.n >= LINK_SHARE and is_template(topk, h) and 2 <= pop.frame_accounts(h) <= cap:
                        keys.append((h, example(topk, h)))
            if t.sampled >= MIN_REQUESTS:
                for fid, c in t.families.top(3):
                    if c / t.sampled >= LINK_SHARE and 2 <= pop.family_accounts(fid) <= cap:
                        keys.append((fid ^ 0x5A5A5A5A5A5A, None))
            for key, ex in keys:
                other = rep.setdefault(key, aid)
                if ex and key not in examples:
                    examples[key] = ex
                uf.union(aid, other)
        groups: dict[str, list[str]] = {}
        for aid in uf.parent:
            groups.setdefault(uf.find(aid), []).append(aid)
        root_links: dict[str, list[str]] = {}
        for key, aid in rep.items():
            if key in examples and aid in uf.parent:
                root_links.setdefault(uf.find(aid), []).append(examples[key])
        out: dict[str, Cluster] = {}
        linkable = sum(1 for a in accounts.values() if a.templates.n >= MIN_REQUESTS)
        for root, members in groups.items():
            # Coordination is a minority acting alike; when most of a service's accounts share its templates
            # (every user of a tutoring app doing the same exercises), that is what the service is for.
            if len(members) < MIN_CLUSTER or len(members) > SERVICE_SHARE * linkable:
                continue
            members.sort()
            cid = f"cl_{stable_hash(members[0]) & 0xFFFFFFFF:08x}"
            c = Cluster(cid, members, links=root_links.get(root, [])[:3], linked=len(members))
            c.features = self.describe(members, accounts, pop)
            out[cid] = c
        return out

    def describe(self, members: list[str], accounts: dict[str, AccountState], pop: Population) -> dict[str, float]:
        accs = [accounts[m] for m in members]
        k = len(accs)
        orgs = len({a.org for a in accs if a.org}) or k
        ip_counts = Counter(a.top_ip for a in accs if a.top_ip)
        ip_overlap = sum(c for c in ip_counts.values() if c > 1) / k
        ua_counts = Counter(a.top_ua for a in accs)
        ua_top = ua_counts.most_common(1)[0][1] / k if ua_counts else 0.0
        hours = np.asarray([a.behaviour.hours for a in accs], dtype=np.float64)
        hours /= np.maximum(hours.sum(axis=1, keepdims=True), 1)
        mean = hours.mean(axis=0)
        centred = hours - hours.mean(axis=1, keepdims=True)
        mc = mean - mean.mean()
        denom = np.linalg.norm(centred, axis=1) * (np.linalg.norm(mc) + 1e-12)
        sync = float(np.mean(np.where(denom > 0, centred @ mc / np.maximum(denom, 1e-12), 0.0)))
        firsts = np.asarray([a.behaviour.first_ts for a in accs])
        span = max(pop.last_ts - pop.first_ts, 3600.0)
        first_spread = float(np.std(firsts) / span)
        vols = np.asarray([a.behaviour.n for a in accs], dtype=np.float64)
        evenness = 1.0 / (1.0 + float(np.std(np.log1p(vols))))
        cot = float(np.mean([a.cot.cot_hits / max(a.cot.n, 1) for a in accs]))
        return {
            "clu_size": math.log1p(k),
            "clu_orgs": orgs / k,
            "clu_ip_overlap": ip_overlap,
            "clu_ua_top": ua_top,
            "clu_sync": sync,
            "clu_first_spread": min(first_spread * 4, 1.0),
            "clu_cot": cot,
            "clu_evenness": evenness,
        }
