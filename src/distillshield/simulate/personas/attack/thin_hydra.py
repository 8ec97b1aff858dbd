"""Thin hydra: one campaign spread so thin over hundreds of accounts that no account looks like anything.

Imitates the shape of the 2026 disclosures: a campaign runs hundreds of throw-away accounts, each
sending only a handful of requests (3-10) from its own residential-looking address (every account in
its own /24, not a proxy pool), with ordinary browser or SDK user agents, in daytime hours of its time
zone. What the accounts share is content: a capability sweep (questions from the real corpora and
generated banks across many capabilities) wrapped in ~40 surface variants of ONE reasoning-elicitation
instruction, placed before or after the question. Accounts are created in a few cohorts, each shortly
before its members first send (`label_meta.account_created_at`). One `cluster_id` per entry.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from pydantic import Field, model_validator

from distillshield.simulate import bodies, fresh_text, netid, timing
from distillshield.simulate.personas import harvest
from distillshield.simulate.personas.base import Account, IdFactory, Knobs, Persona, Req, pick


class ThinHydraKnobs(Knobs):
    requests_per_day: float = Field(6.5, gt=0, description="mean requests per account per active day")
    min_requests: int = Field(3, ge=1, description="fewest requests one account sends")
    max_requests: int = Field(10, ge=1, description="most requests one account sends")
    active_days: float = Field(1.0, gt=0, description="days over which one account's requests are spread")
    cohorts: int = Field(5, ge=1, description="cohorts (creation bursts) the accounts were created in")
    wrappers: int = Field(
        40, ge=1, le=len(fresh_text.REASONING_WRAPPERS), description="wordings of the one reasoning instruction"
    )
    capabilities: harvest.Capabilities = Field(
        default_factory=lambda: ["coding", "math", "logic", "puzzle", "code", "general"],
        description=f"capabilities swept, from {', '.join(harvest.CAPABILITIES)}",
    )

    @model_validator(mode="after")
    def _range(self) -> ThinHydraKnobs:
        if self.max_requests < self.min_requests:
            raise ValueError("max_requests must be at least min_requests")
        return self


class ThinHydra(Persona):
    name = "thin_hydra"
    kind = "attack"
    split = "fresh"
    Knobs = ThinHydraKnobs
    signature = "hundreds of 3-10-request accounts, own /24 each, daytime, one CoT instruction in ~40 wordings"
    tiers = (("free", 0.7), ("standard", 0.3))
    verifications = (("email", 0.75), ("phone", 0.25))
    apis = (("openai", 0.7), ("anthropic", 0.3))
    activity_sigma = 0.35

    def _k(self) -> ThinHydraKnobs:
        k = self.k
        assert isinstance(k, ThinHydraKnobs)
        return k

    def max_daily(self) -> float:
        k = self._k()
        return k.max_requests / self.active_days()

    def active_days(self) -> float:
        return min(self._k().active_days, self.ctx.days)

    def account_user_agent(self, rng: np.random.Generator, api: str) -> str:
        return netid.user_agent(rng, "chat-app" if rng.random() < 0.55 else netid.sdk_family(api, rng))

    def make_accounts(self, n: int, rng: np.random.Generator, ids: IdFactory) -> list[Account]:
        k = self._k()
        ctx = self.ctx
        cluster_id, campaign_id = ids.new("clu"), ids.new("camp")
        # Cohorts are created one after another across the scenario; members start within ~1.5 days.
        span = max(0.0, ctx.days - self.active_days() - 0.2)
        cohort_at = np.sort(ctx.start + rng.uniform(-1.5, span - 0.3, k.cohorts) * timing.DAY)
        used_nets: set[str] = set()
        out: list[Account] = []
        for i in range(n):
            a = self.new_account(rng, ids, i)
            a.cluster_id, a.campaign_id = cluster_id, campaign_id
            while True:  # its own residential address, in a /24 no other member uses
                ip = netid.residential_ip(rng)
                net = ip.rsplit(".", 1)[0]
                if net not in used_nets:
                    used_nets.add(net)
                    break
            a.ips = [ip]
            created = float(cohort_at[i % k.cohorts] + rng.uniform(0, 2400))
            a.created_at = created
            first = max(ctx.start, created + float(rng.uniform(0.1, 1.5)) * timing.DAY)
            if first + self.active_days() * timing.DAY > ctx.end:
                first = max(ctx.start, ctx.end - self.active_days() * timing.DAY)
            a.state["active"] = (first, first + self.active_days() * timing.DAY)
            out.append(a)
        return out

    def _count(self, account: Account) -> int:
        k = self._k()
        n = int(round(self.expected_total(account) + account.r.uniform(-1.0, 1.0)))
        return max(k.min_requests, min(k.max_requests, n))

    def requests(self, account: Account) -> Iterator[Req]:
        k = self._k()
        r = account.r
        ctx = self.ctx
        a0, a1 = account.state["active"]
        n = self._count(account)
        # Daytime in the account's time zone: draw from a consumer day curve, keep n of the draws.
        pool = timing.diurnal_times(account.np, a0, a1, 4.0 * n + 8, account.tz, "consumer")
        if pool.size < n:
            pool = np.sort(np.concatenate([pool, account.np.uniform(a0, a1, n - pool.size)]))
        times = np.sort(account.np.choice(pool, size=n, replace=False)).tolist()
        wrappers = fresh_text.REASONING_WRAPPERS[: k.wrappers]
        model = self.model_for(account, a0)
        mt = pick(r, (1024, 2048, 4096))
        stream = r.random() < 0.6
        for j, t in enumerate(times):
            if t >= ctx.end:
                return
            cap = harvest.pick_capability(r, k.capabilities)
            q, _a, source = harvest.draw(r, cap, ctx.seed)
            wi = r.randrange(len(wrappers))
            prompt = wrappers[wi].format(q=q)
            endpoint, body = bodies.chat(
                account, model, [{"role": "user", "content": prompt}], max_tokens=mt, temperature=0.7, stream=stream
            )
            sim = {
                "end_user": None,
                "harvest": True,
                "conversation_id": f"{account.id}:{j}",
                "turn": 1,
                "template_id": f"thin_hydra/{wi}",
                "capability": cap,
                "source": source,
            }
            yield (t, endpoint, body, account.ips[0], account.user_agent, sim)
