"""Bursting hydra: dozens of throwaway accounts, each firing its share of one task bank in one short burst.

Imitates a campaign that spends accounts instead of time: 30-80 accounts (one `cluster_id`), each made a
day or two before it is used, each sending 20-60 requests in a single burst of a minute or two (gaps
of about a second) from its own address, then never again; the accounts' bursts are staggered over the
scenario so that only one or two are live at any time. Every request is a question from the shared
question bank (maths, logic, puzzles, general knowledge) inside one of the campaign's few task wrappers
(`fresh4_text.HYDRA_TASKS`, with a running job number); the whole campaign uses one HTTP client.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
from pydantic import Field, model_validator

from distillshield.simulate import bodies, fresh4_text, netid, timing
from distillshield.simulate.personas import harvest
from distillshield.simulate.personas.base import Account, IdFactory, Knobs, Persona, Req


class BurstHydraKnobs(Knobs):
    requests_per_day: float = Field(
        40.0, gt=0, description="not used: each account sends one burst of burst_min-burst_max requests"
    )
    burst_min: int = Field(20, ge=1, description="fewest requests one account sends (its only burst)")
    burst_max: int = Field(60, ge=1, description="most requests one account sends (its only burst)")
    gap_median_s: float = Field(1.2, gt=0, le=30, description="median seconds between two requests of a burst")
    capabilities: harvest.Capabilities = Field(
        default_factory=lambda: ["math", "logic", "puzzle", "general"],
        description=f"capabilities harvested, from {', '.join(harvest.CAPABILITIES)}",
    )

    @model_validator(mode="after")
    def _check(self) -> BurstHydraKnobs:
        if self.burst_max < self.burst_min:
            raise ValueError(f"burst_max ({self.burst_max}) must be at least burst_min ({self.burst_min})")
        if "requests_per_day" in self.model_fields_set:
            raise ValueError("burst_hydra sets its volume with burst_min/burst_max, not requests_per_day or requests")
        return self


class BurstHydra(Persona):
    name = "burst_hydra"
    kind = "attack"
    split = "fresh4"
    Knobs = BurstHydraKnobs
    signature = "dozens of fresh accounts, one burst of 20-60 requests each from its own address, staggered"
    tiers = (("free", 0.5), ("standard", 0.5))
    verifications = (("email", 0.9), ("phone", 0.1))
    apis = (("openai", 1.0),)
    activity_sigma = 0.0
    rpm_fill = 0.95

    def _k(self) -> BurstHydraKnobs:
        k = self.k
        assert isinstance(k, BurstHydraKnobs)
        return k

    def expected_total_mean(self) -> float:
        k = self._k()
        return (k.burst_min + k.burst_max) / 2

    def expected_total(self, account: Account) -> float:
        return float(account.state.get("size", self.expected_total_mean()))

    def make_accounts(self, n: int, rng: np.random.Generator, ids: IdFactory) -> list[Account]:
        k, ctx = self._k(), self.ctx
        cluster, campaign = ids.new("clu"), ids.new("camp")
        ua = netid.user_agent(rng, "script")
        span = max(ctx.end - ctx.start - timing.HOUR, 1.0)
        # Staggered: the bursts are spread evenly over the scenario, in a shuffled account order.
        slots = (np.arange(n) + rng.uniform(0.1, 0.9, n)) / max(n, 1) * span
        rng.shuffle(slots)
        out = []
        for i in range(n):
            a = self.new_account(rng, ids, i)
            a.cluster_id, a.campaign_id = cluster, campaign
            first = ctx.start + float(slots[i])
            a.created_at = first - float(rng.uniform(0.2, 2.5)) * timing.DAY
            a.ips = [netid.residential_ip(rng) if rng.random() < 0.7 else netid.cloud_ip(rng)]
            a.user_agent = ua
            a.state.update(first=first, size=int(rng.integers(k.burst_min, k.burst_max + 1)), job0=i * 1000)
            out.append(a)
        return out

    def requests(self, account: Account) -> Iterator[Req]:
        k = self._k()
        r = account.r
        ctx = self.ctx
        size = int(account.state["size"])
        gaps = np.maximum(account.np.lognormal(math.log(k.gap_median_s), 0.6, size), self.min_gap())
        gaps[0] = 0.0
        times = account.state["first"] + np.cumsum(gaps)
        model = ctx.models.primary
        for i, t in enumerate(times.tolist()):
            if t >= ctx.end:
                return
            cap = harvest.pick_capability(r, k.capabilities)
            q, _a, source = harvest.draw(r, cap, ctx.seed)
            ti = int(r.random() * len(fresh4_text.HYDRA_TASKS))
            prompt = fresh4_text.HYDRA_TASKS[ti].format(q=q, n=account.state["job0"] + i)
            endpoint, body = bodies.chat(
                account, model, [{"role": "user", "content": prompt}], max_tokens=3000, temperature=0.7
            )
            sim: dict[str, Any] = {
                "end_user": None,
                "harvest": True,
                "conversation_id": f"{account.id}:{i}",
                "turn": 1,
                "capability": cap,
                "template_id": f"burst-hydra/{ti}",
                "source": source,
            }
            yield (t, endpoint, body, account.ips[0], account.user_agent, sim)
