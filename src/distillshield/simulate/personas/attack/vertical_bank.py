"""Vertical bank: a domain Q&A bank written from a topic taxonomy, spread over mid-volume accounts.

Imitates an operator who distils one vertical (law or medicine) rather than general capability: a
taxonomy is expanded into questions (legal: area x issue x jurisdiction x angle, 9,216 questions;
medical: condition x aspect x patient profile, 5,600; `fresh3_text.vertical_bank`), and every question
is asked once (an account that runs through its share asks it again), under one fixed answer schema in
the system prompt (`fresh3_text.VERTICAL_SYSTEM`: structured sections with a step-by-step analysis),
by one of a few dozen accounts that split the taxonomy between them. Each account passes for a
professional's: tens of requests a day in office hours of its own time zone, one cloud or home
address, an SDK user agent, single-turn questions in clean professional wording. `account_cap` turns
it into a thin campaign (at most that many requests per account). All accounts of an entry are one
campaign (`cluster_id`, `campaign_id`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import numpy as np
from pydantic import Field

from distillshield.simulate import bodies, fresh3_text, netid, timing
from distillshield.simulate.personas.base import Account, IdFactory, Knobs, Persona, Req


class VerticalBankKnobs(Knobs):
    requests_per_day: float = Field(70.0, gt=0, description="mean requests per account per day")
    vertical: Literal["legal", "medical"] = Field("legal", description="the taxonomy harvested: legal or medical")
    account_cap: int = Field(
        0, ge=0, description="most requests one account sends over the whole scenario (0: no cap; >0: thin)"
    )


class VerticalBank(Persona):
    name = "vertical_bank"
    kind = "attack"
    split = "fresh3"
    Knobs = VerticalBankKnobs
    signature = "a legal or medical taxonomy expanded into questions, each asked once under one answer schema"
    tiers = (("standard", 0.6), ("pro", 0.4))
    verifications = (("email", 0.6), ("phone", 0.4))
    apis = (("openai", 0.6), ("anthropic", 0.4))
    activity_sigma = 0.4
    account_age_days = (5.0, 60.0)

    def _k(self) -> VerticalBankKnobs:
        k = self.k
        assert isinstance(k, VerticalBankKnobs)
        return k

    def expected_total_mean(self) -> float:
        total = super().expected_total_mean()
        cap = self._k().account_cap
        return min(total, float(cap)) if cap else total

    def account_ips(self, rng: np.random.Generator) -> list[str]:
        return [netid.cloud_ip(rng) if rng.random() < 0.6 else netid.residential_ip(rng)]

    def after_accounts(self, accounts: list[Account], rng: np.random.Generator, ids: IdFactory) -> None:
        cluster, campaign = ids.new("clu"), ids.new("camp")
        for i, a in enumerate(accounts):
            a.cluster_id, a.campaign_id = cluster, campaign
            a.state["slot"], a.state["of"] = i, len(accounts)

    def requests(self, account: Account) -> Iterator[Req]:
        k = self._k()
        r = account.r
        ctx = self.ctx
        bank = fresh3_text.vertical_bank(k.vertical)
        n, slot = account.state["of"], account.state["slot"]
        queue = list(range(slot, len(bank), n))  # the accounts split the taxonomy
        r.shuffle(queue)
        times = timing.diurnal_times(account.np, ctx.start, ctx.end, self.expected_total(account), account.tz, "work")
        times = times.tolist()
        if k.account_cap:
            times = times[: k.account_cap]
        system = fresh3_text.VERTICAL_SYSTEM[k.vertical]
        model = self.model_for(account, ctx.start)
        for i, t in enumerate(times):
            q, cell = bank[queue[i % len(queue)]]
            endpoint, body = bodies.chat(
                account, model, [{"role": "user", "content": q}], system=system, max_tokens=1500, temperature=0.3
            )
            sim = {
                "end_user": None,
                "harvest": True,
                "conversation_id": f"{account.id}:{i}",
                "turn": 1,
                "capability": "general",
                "template_id": f"vertical/{k.vertical}",
                "source": f"taxonomy/{k.vertical}",
                "cell": cell,
            }
            yield (t, endpoint, body, account.ips[0], account.user_agent, sim)
