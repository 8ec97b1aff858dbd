"""Bulk single-account harvester: one account pulling as many answers as its limits allow, 24/7.

Signature: one account sends all day and night at a steady high rate just under its per-account rpm
limit, wraps questions from generated banks across many capabilities in one fixed harvesting template,
asks for long answers (high max_tokens, sometimes n>1), from one or two cloud IPs with a script user
agent.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from pydantic import Field

from distillshield.simulate import bodies, netid, text
from distillshield.simulate.personas import harvest
from distillshield.simulate.personas.base import Account, Knobs, Persona, Req


class BulkHarvesterKnobs(Knobs):
    requests_per_day: float = Field(6000.0, gt=0, description="requests per account per day (<= the limits)")
    rpm_fill: float = Field(0.9, gt=0, le=1, description="never exceed this share of the per-account rpm limit")
    capabilities: harvest.Capabilities = Field(
        default_factory=lambda: ["coding", "math", "logic", "puzzle", "code", "general"],
        description=f"capabilities harvested, from {', '.join(harvest.CAPABILITIES)}",
    )
    n_share: float = Field(0.2, ge=0, le=1, description="share of requests asking for several samples (n=4)")
    max_tokens: int = Field(4096, ge=1, description="max_tokens asked for")


class BulkHarvester(Persona):
    name = "bulk_harvester"
    kind = "attack"
    split = "dev"
    Knobs = BulkHarvesterKnobs
    signature = "one account at a steady rate just under its rpm limit around the clock, one template, long answers"
    tiers = (("pro", 0.7), ("standard", 0.3))
    verifications = (("email", 0.6), ("phone", 0.4))
    apis = (("openai", 1.0),)
    activity_sigma = 0.2
    account_age_days = (3.0, 60.0)

    def account_ips(self, rng: np.random.Generator) -> list[str]:
        return [netid.cloud_ip(rng) for _ in range(1 + int(rng.random() < 0.3))]

    def account_user_agent(self, rng: np.random.Generator, api: str) -> str:
        return netid.user_agent(rng, "script" if rng.random() < 0.5 else "openai-python")

    def max_daily(self) -> float:
        k = self.k
        assert isinstance(k, BulkHarvesterKnobs)
        return min(float(self.ctx.limits.rpd), self.ctx.limits.rpm * k.rpm_fill * 1440)

    def min_gap(self) -> float:
        k = self.k
        assert isinstance(k, BulkHarvesterKnobs)
        return 60.0 / (self.ctx.limits.rpm * k.rpm_fill)

    def requests(self, account: Account) -> Iterator[Req]:
        k = self.k
        assert isinstance(k, BulkHarvesterKnobs)
        r = account.r
        ctx = self.ctx
        times = self.machine_times(account)
        t_idx = r.randrange(len(text.HARVEST_TEMPLATES))
        template = text.HARVEST_TEMPLATES[t_idx]
        model = ctx.models.primary
        temperature = (0.7, 1.0)[r.randrange(2)]
        for t in times:
            cap = harvest.pick_capability(r, k.capabilities)
            q, _a, source = harvest.draw(r, cap, ctx.seed)
            extra = {"n": 4} if r.random() < k.n_share else None
            tools = harvest.toolset_for(cap, q)
            if tools:
                extra = {**(extra or {}), "tools": tools}
            endpoint, body = bodies.openai_chat(
                model,
                [{"role": "user", "content": template.format(q=q)}],
                max_tokens=k.max_tokens,
                temperature=temperature,
                extra=extra,
            )
            sim = {
                "end_user": None,
                "harvest": True,
                "template_id": f"harvest/{t_idx}",
                "capability": cap,
                "source": source,
            }
            yield (t, endpoint, body, self.ip(account), account.user_agent, sim)
