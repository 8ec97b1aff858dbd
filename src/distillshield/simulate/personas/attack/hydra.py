"""Hydra cluster: many accounts run by one operator, low and slow, sharing templates and proxies.

Signature: the entry's accounts form clusters (`label_meta.cluster_id`); members send from a small
set of shared templates with small variations (`sim.template_id` repeats across accounts), each
member stays well under the per-account limits (rpm and daily) while the cluster's total is many
times one account's limit; members are active in staggered windows; most draw their IPs from a
shared pool of a few proxy /24s (some use their own); accounts were created in a few bursts shortly
before the campaign (`label_meta.account_created_at`); cheap tiers, weak verification.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from pydantic import Field

from distillshield.simulate import bodies, netid, text, timing
from distillshield.simulate.personas import harvest
from distillshield.simulate.personas.base import Account, IdFactory, Knobs, Persona, Req, pick

# Template family a hydra operator starts from; each cluster takes a few and varies them slightly.
HYDRA_TEMPLATES = (
    "You are an expert software engineer. Solve the task completely. First reason step by step about the "
    "approach, then give the final, tested solution.\n\nTask:\n{q}",
    "Solve the following problem. Think through it step by step, explaining each step, then give the "
    "final answer clearly marked.\n\nProblem: {q}",
    "{q}\n\nProvide a detailed, complete answer. Explain your reasoning step by step before the final answer.",
    "As an autonomous agent, plan the tool calls you would make for this task, explain why, then carry it "
    "out.\n\nTask: {q}",
    "Answer as an expert tutor would: full reasoning, every intermediate step, final answer at the end.\n\n{q}",
    "Task ID: {tid}\nInstructions: produce a complete and correct solution with step-by-step reasoning.\nInput:\n{q}",
)


class HydraKnobs(Knobs):
    requests_per_day: float = Field(150.0, gt=0, description="requests per member account per active day")
    clusters: int = Field(1, ge=1, description="clusters the entry's accounts are split into (one operator each)")
    templates: int = Field(4, ge=1, le=len(HYDRA_TEMPLATES), description="shared templates per cluster")
    rpm_fraction: float = Field(0.25, gt=0, le=1, description="each member's peak rate, as a share of the rpm limit")
    rpd_fraction: float = Field(0.4, gt=0, le=1, description="each member's daily cap, as a share of the daily limit")
    active_days: float = Field(4.0, gt=0, description="days each member is active (staggered windows)")
    shared_ip_share: float = Field(0.7, ge=0, le=1, description="share of members using the cluster's proxy pool")
    proxy_pool: int = Field(40, ge=1, description="addresses in a cluster's proxy pool")
    proxy_subnets: int = Field(3, ge=1, description="/24 ranges the proxy pool sits in")
    creation_waves: int = Field(4, ge=1, description="bursts in which a cluster's accounts were created")
    capabilities: harvest.Capabilities = Field(
        default_factory=lambda: ["coding", "agentic", "math", "logic"],
        description=f"capabilities targeted, from {', '.join(harvest.CAPABILITIES)}",
    )


class Hydra(Persona):
    name = "hydra"
    kind = "attack"
    split = "dev"
    Knobs = HydraKnobs
    signature = "clusters of accounts with shared templates and proxy IPs, each under the limits, staggered"
    tiers = (("free", 0.5), ("standard", 0.5))
    verifications = (("none", 0.3), ("email", 0.7))
    apis = (("openai", 0.8), ("anthropic", 0.2))
    activity_sigma = 0.3

    def max_daily(self) -> float:
        k = self.k
        assert isinstance(k, HydraKnobs)
        return min(k.rpd_fraction * self.ctx.limits.rpd, k.rpm_fraction * self.ctx.limits.rpm * 1440)

    def min_gap(self) -> float:
        k = self.k
        assert isinstance(k, HydraKnobs)
        return 60.0 / (k.rpm_fraction * self.ctx.limits.rpm)

    def active_days(self) -> float:
        k = self.k
        assert isinstance(k, HydraKnobs)
        return min(k.active_days, self.ctx.days)

    def make_accounts(self, n: int, rng: np.random.Generator, ids: IdFactory) -> list[Account]:
        k = self.k
        assert isinstance(k, HydraKnobs)
        ctx = self.ctx
        out: list[Account] = []
        n_clusters = max(1, min(k.clusters, n))
        for c in range(n_clusters):
            members = n // n_clusters + (1 if c < n % n_clusters else 0)
            cluster_id, campaign_id = ids.new("clu"), ids.new("camp")
            pool = netid.proxy_pool(rng, k.proxy_pool, k.proxy_subnets)
            uas = [netid.user_agent(rng, fam) for fam in ("openai-python", "script")]
            templates = sorted(rng.choice(len(HYDRA_TEMPLATES), size=k.templates, replace=False).tolist())
            waves = ctx.start - rng.uniform(0.3, 12.0, k.creation_waves) * timing.DAY
            span = max(0.0, ctx.days - k.active_days)
            for i in range(members):
                a = self.new_account(rng, ids, len(out))
                a.cluster_id, a.campaign_id = cluster_id, campaign_id
                a.created_at = float(waves[i % k.creation_waves] + rng.uniform(0, 1200))
                if rng.random() < k.shared_ip_share:
                    a.ips = [
                        pool[int(j)]
                        for j in rng.choice(len(pool), size=min(len(pool), 1 + int(rng.integers(4))), replace=False)
                    ]
                else:
                    a.ips = [netid.residential_ip(rng)]
                a.user_agent = uas[int(rng.integers(len(uas)))]
                a.api = "openai" if "OpenAI" in a.user_agent or rng.random() < 0.8 else "anthropic"
                first = ctx.start + float(rng.uniform(0, span)) * timing.DAY
                a.state.update(cluster=c, templates=templates, active=(first, first + k.active_days * timing.DAY))
                out.append(a)
        return out

    def requests(self, account: Account) -> Iterator[Req]:
        k = self.k
        assert isinstance(k, HydraKnobs)
        r = account.r
        ctx = self.ctx
        a0, a1 = account.state["active"]
        a1 = min(a1, ctx.end)
        times = timing.spaced_times(account.np, a0, a1, self.expected_total(account), self.min_gap())
        # The daily cap is per UTC day: drop what would exceed it (the operator's scheduler does this).
        cap = int(k.rpd_fraction * ctx.limits.rpd)
        days = (times // timing.DAY).astype(np.int64)
        _, first_idx, counts = np.unique(days, return_index=True, return_counts=True)
        keep = np.ones(times.size, dtype=bool)
        for f, c in zip(first_idx.tolist(), counts.tolist(), strict=True):
            if c > cap:
                keep[f + cap : f + c] = False
        templates = account.state["templates"]
        model = ctx.models.primary
        for t in times[keep].tolist():
            cap_name = harvest.pick_capability(r, k.capabilities)
            q, _a, source = harvest.draw(r, cap_name, ctx.seed)
            ti = pick(r, templates)
            prompt = text.vary(r, HYDRA_TEMPLATES[ti]).format(q=q, tid=f"T{r.randrange(10**6):06d}")
            tools = harvest.toolset_for(cap_name, q)
            if tools and account.api == "openai":
                endpoint, body = bodies.openai_chat(
                    model,
                    [{"role": "user", "content": prompt}],
                    max_tokens=4096,
                    temperature=0.7,
                    extra={"tools": tools},
                )
            else:
                endpoint, body = bodies.chat(
                    account, model, [{"role": "user", "content": prompt}], max_tokens=4096, temperature=0.7
                )
            sim = {
                "end_user": None,
                "harvest": True,
                "template_id": f"hydra/{account.cluster_id}/{ti}",
                "capability": cap_name,
                "source": source,
            }
            yield (t, endpoint, body, self.ip(account), account.user_agent, sim)
