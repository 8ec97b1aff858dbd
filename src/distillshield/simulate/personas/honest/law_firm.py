"""Law firm: one firm's account, dozens of lawyers behind the office's one address, on live matters.

Imitates a firm's internal research tool: one account (the firm's key) used by `lawyers` lawyers in
office hours of the firm's time zone, from the office's one or two egress addresses through the
tool's chat front end, under the tool's system prompt (`fresh3_text.LAW_FIRM_SYSTEM`). Lawyers ask
about the same legal ground a vertical harvester covers (the issues of `fresh3_text.LEGAL_ISSUES`,
many jurisdictions), but in their own words about a matter (`fresh3_text.law_ask`: an opener naming
the matter, a situation or a task: clause reviews with the clause pasted, client emails, comparisons
between jurisdictions), in multi-turn conversations with follow-ups. The honest twin of `vertical_bank`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
from pydantic import Field

from distillshield.simulate import bodies, fresh3_text, netid, timing
from distillshield.simulate.personas.base import Account, IdFactory, Knobs, Persona, Req, pick
from distillshield.simulate.personas.common import ChatPool, merge_lanes, sub_account

ISSUES = tuple(i for issues in fresh3_text.LEGAL_ISSUES.values() for i in issues)


class LawFirmKnobs(Knobs):
    requests_per_day: float = Field(400.0, gt=0, description="mean requests per firm account per day")
    lawyers: int = Field(40, ge=1, le=2000, description="lawyers sharing the firm's account")
    turns_mean: float = Field(2.5, ge=1, description="mean user turns per conversation (geometric)")


class LawFirm(Persona):
    name = "law_firm"
    kind = "benign"
    split = "fresh3"
    Knobs = LawFirmKnobs
    signature = "one firm account, dozens of lawyers behind one office address, matter questions in own words"
    tiers = (("enterprise", 0.7), ("pro", 0.3))
    verifications = (("business", 1.0),)
    apis = (("openai", 0.5), ("anthropic", 0.5))
    activity_sigma = 0.3

    def account_ips(self, rng: np.random.Generator) -> list[str]:
        return [netid.residential_ip(rng) for _ in range(1 + int(rng.random() < 0.5))]

    def account_user_agent(self, rng: np.random.Generator, api: str) -> str:
        return netid.user_agent(rng, "chat-app")

    def after_accounts(self, accounts: list[Account], rng: np.random.Generator, ids: IdFactory) -> None:
        k = self.k
        assert isinstance(k, LawFirmKnobs)
        for a in accounts:
            a.end_users = k.lawyers

    def requests(self, account: Account) -> Iterator[Req]:
        k = self.k
        assert isinstance(k, LawFirmKnobs)
        rng = account.np
        system = fresh3_text.LAW_FIRM_SYSTEM.format(firm=pick(account.r, fresh3_text.LAW_FIRMS))
        acts = rng.lognormal(-0.3, 0.8, k.lawyers)
        acts = acts / acts.mean()
        lanes = []
        for u in range(k.lawyers):
            sub = sub_account(account, u, activity=float(acts[u]))
            lanes.append(self._lawyer(account, sub, f"lw_{u:03d}", system))
        yield from merge_lanes(lanes)

    def _lawyer(self, account: Account, sub: Account, who: str, system: str) -> Iterator[Req]:
        k = self.k
        assert isinstance(k, LawFirmKnobs)
        ctx = self.ctx
        r = sub.r
        expected = self.daily(account) / k.lawyers * sub.activity * ctx.days / k.turns_mean
        starts = timing.diurnal_times(sub.np, ctx.start, ctx.end, expected, sub.tz, "work").tolist()
        stand_ins = ChatPool.english().stand_ins
        t_free = ctx.start
        for c, t0 in enumerate(starts):
            t = max(t0, t_free + r.expovariate(1 / 120.0))
            n = 1 if k.turns_mean <= 1 else 1 + int(math.log(1 - r.random()) / math.log(1 - 1 / k.turns_mean))
            turns = [fresh3_text.law_ask(r, pick(r, ISSUES))] + [
                pick(r, fresh3_text.LAW_FOLLOW_UPS) for _ in range(min(n, 8) - 1)
            ]
            model = self.model_for(sub, t, 0.2)
            messages: list[dict[str, Any]] = []
            for i, u in enumerate(turns):
                if t >= ctx.end:
                    return
                messages.append({"role": "user", "content": u})
                endpoint, body = bodies.chat(
                    account, model, list(messages), system=system, max_tokens=2048, temperature=0.2, stream=True
                )
                sim = {
                    "end_user": who,
                    "harvest": False,
                    "conversation_id": f"{account.id}:{who}:{c}",
                    "turn": i + 1,
                    "source": "law-firm-asks",
                }
                yield (t, endpoint, body, self.ip(account), account.user_agent, sim)
                reply = pick(r, stand_ins)
                messages.append({"role": "assistant", "content": reply})
                t += r.lognormvariate(math.log(90.0), 0.8) + len(reply) / 40.0
            t_free = t
