"""Pivot to a new model: a harvesting campaign that moves to a newly released model within a day.

Signature: before the scenario's model release the campaign's accounts harvest from the existing
model; within `pivot_hours` of the release about `pivot_share` of their traffic moves to the new model
name (a step, not the gradual adoption honest users show). Needs `models.release` in the scenario.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from pydantic import Field

from distillshield.simulate import bodies, netid, text, timing
from distillshield.simulate.personas import harvest
from distillshield.simulate.personas.base import Account, IdFactory, Knobs, Persona, Req, pick


class ModelPivotKnobs(Knobs):
    requests_per_day: float = Field(2500.0, gt=0, description="requests per account per day")
    pivot_share: float = Field(0.5, ge=0, le=1, description="share of traffic moved to the new model")
    pivot_hours: float = Field(12.0, gt=0, le=24, description="hours after the release by which the pivot is done")
    capabilities: harvest.Capabilities = Field(
        default_factory=lambda: ["coding", "agentic", "math"],
        description=f"capabilities targeted, from {', '.join(harvest.CAPABILITIES)}",
    )


class ModelPivot(Persona):
    name = "model_pivot"
    kind = "attack"
    split = "heldout"
    Knobs = ModelPivotKnobs
    signature = "traffic steps to a newly released model name within a day of its release"
    tiers = (("pro", 0.6), ("enterprise", 0.4))
    verifications = (("email", 0.5), ("business", 0.5))
    apis = (("openai", 1.0),)
    rpm_fill = 0.8
    activity_sigma = 0.3
    account_age_days = (10.0, 120.0)
    needs_release = True

    def account_ips(self, rng: np.random.Generator) -> list[str]:
        return [netid.cloud_ip(rng) for _ in range(1 + int(rng.integers(2)))]

    def account_user_agent(self, rng: np.random.Generator, api: str) -> str:
        return netid.user_agent(rng, "openai-python")

    def after_accounts(self, accounts: list[Account], rng: np.random.Generator, ids: IdFactory) -> None:
        self.one_campaign(accounts, ids)
        for a in accounts:
            a.state["pivot_at"] = float(rng.uniform(0.5, 1.0))  # fraction of pivot_hours this account needs

    def requests(self, account: Account) -> Iterator[Req]:
        k = self.k
        assert isinstance(k, ModelPivotKnobs)
        r = account.r
        ctx = self.ctx
        m = ctx.models
        pivot_at = (m.release_at or ctx.end) + account.state["pivot_at"] * k.pivot_hours * timing.HOUR
        times = self.machine_times(account)
        template = pick(r, text.HARVEST_TEMPLATES)
        for t in times:
            model = m.release_model if m.release_model and t >= pivot_at and r.random() < k.pivot_share else m.primary
            cap = harvest.pick_capability(r, k.capabilities)
            q, _a, source = harvest.draw(r, cap, ctx.seed)
            tools = harvest.toolset_for(cap, q)
            endpoint, body = bodies.openai_chat(
                model,
                [{"role": "user", "content": template.format(q=q)}],
                max_tokens=4096,
                temperature=0.7,
                extra={"tools": tools} if tools else None,
            )
            sim = {"end_user": None, "harvest": True, "capability": cap, "source": source}
            yield (t, endpoint, body, self.ip(account), account.user_agent, sim)
