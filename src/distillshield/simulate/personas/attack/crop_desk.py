"""Crop desk: a slow, human-paced agronomy Q&A farm (the fresh4 split's control: not fast).

Imitates a campaign that distils one domain through people: a few dozen accounts, each worked by a
person who pastes the next question of an agronomy bank (`fresh4_text.crop_bank`: crop x problem x
growing condition x ask, 7,680 questions, each asked once in the campaign) into a chat front end and
reads the plain answer before sending the next, always asking to have it explained "in detail". No
reasoning asks, no answer schema, no system prompt. Tens of requests a day per account, on the
person's own day in their own time zone, at least half a minute apart (reading time), from home
addresses with a browser user agent. One `cluster_id` per entry. It is there so that the fresh4 split
is not only about speed.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from pydantic import Field

from distillshield.simulate import bodies, fresh4_text, netid, timing
from distillshield.simulate.personas.attack.batch_window import paced
from distillshield.simulate.personas.base import Account, IdFactory, Knobs, Persona, Req


class CropDeskKnobs(Knobs):
    requests_per_day: float = Field(25.0, gt=0, description="mean requests per account per day")
    read_s: float = Field(30.0, ge=0, description="fewest seconds between two questions of one account (reading)")


class CropDesk(Persona):
    name = "crop_desk"
    kind = "attack"
    split = "fresh4"
    Knobs = CropDeskKnobs
    signature = "an agronomy bank asked once each, 'explain in detail', by people at human pace on their own day"
    tiers = (("free", 0.4), ("standard", 0.6))
    verifications = (("email", 0.8), ("phone", 0.2))
    apis = (("openai", 0.6), ("anthropic", 0.4))
    activity_sigma = 0.4
    account_age_days = (5.0, 120.0)

    def _k(self) -> CropDeskKnobs:
        k = self.k
        assert isinstance(k, CropDeskKnobs)
        return k

    def account_user_agent(self, rng: np.random.Generator, api: str) -> str:
        return netid.user_agent(rng, "chat-app")

    def after_accounts(self, accounts: list[Account], rng: np.random.Generator, ids: IdFactory) -> None:
        cluster, campaign = ids.new("clu"), ids.new("camp")
        for i, a in enumerate(accounts):
            a.cluster_id, a.campaign_id = cluster, campaign
            a.state["slot"], a.state["of"] = i, len(accounts)

    def requests(self, account: Account) -> Iterator[Req]:
        k = self._k()
        ctx = self.ctx
        times = timing.diurnal_times(
            account.np, ctx.start, ctx.end, self.expected_total(account), account.tz, "consumer"
        )
        times = paced(times, k.read_s)
        bank = fresh4_text.crop_bank()
        queue = list(range(account.state["slot"], len(bank), account.state["of"]))
        account.r.shuffle(queue)
        model = self.model_for(account, ctx.start)
        for i, t in enumerate(times.tolist()):
            if t >= ctx.end:
                return
            q, cell = bank[queue[i % len(queue)]]
            endpoint, body = bodies.chat(account, model, [{"role": "user", "content": q}], stream=True)
            sim = {
                "end_user": None,
                "harvest": True,
                "conversation_id": f"{account.id}:{i}",
                "turn": 1,
                "capability": "general",
                "template_id": f"crop/{cell.rsplit('/', 1)[1]}",
                "source": "crop-bank",
                "cell": cell,
            }
            yield (t, endpoint, body, self.ip(account), account.user_agent, sim)
