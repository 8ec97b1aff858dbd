"""Slow hydra: a campaign spread over aged, weeks-long small accounts, each asking a little every day.

Imitates an operator who learnt that fresh throw-away accounts and bursts are caught: the campaign
runs on accounts created weeks before it starts (a few creation waves, 2-8 weeks earlier, as bought or
warmed accounts are), each active on every day of the scenario (at least one conversation a day) but
only a few requests a day (a daily cap far under any limit), in daytime of its own time zone, from its
own residential address, with a browser or SDK user agent. Every harvesting request is a bank
question with a reasoning ask worded afresh from a grammar (`fresh2_text.slow_ask`: lead x ask x
tail, before or after the question), and some get a follow-up asking to justify a step; a share of
requests are ordinary chat as cover. What the accounts share is only content: reasoning asks over the
same capability banks. One `cluster_id` and `campaign_id` per entry.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
from pydantic import Field

from distillshield.simulate import bodies, fresh2_text, netid, timing
from distillshield.simulate.personas import harvest
from distillshield.simulate.personas.base import Account, IdFactory, Knobs, Persona, Req, pick
from distillshield.simulate.personas.common import ChatPool


class SlowHydraKnobs(Knobs):
    requests_per_day: float = Field(4.0, gt=0, description="mean requests per account per day")
    daily_cap: int = Field(10, ge=1, description="most requests one account sends in a day")
    cover_share: float = Field(0.2, ge=0, lt=1, description="share of conversations that are ordinary chat (cover)")
    follow_up_share: float = Field(
        0.25, ge=0, le=1, description="share of harvesting conversations with a 'justify that step' follow-up"
    )
    creation_waves: int = Field(3, ge=1, description="waves in which the accounts were created (2-8 weeks before)")
    capabilities: harvest.Capabilities = Field(
        default_factory=lambda: ["math", "logic", "puzzle", "code", "coding"],
        description=f"capabilities targeted, from {', '.join(harvest.CAPABILITIES)}",
    )


class SlowHydra(Persona):
    name = "slow_hydra"
    kind = "attack"
    split = "fresh2"
    Knobs = SlowHydraKnobs
    signature = "hundreds of weeks-old accounts, a few paraphrased reasoning asks each every day, own home address"
    tiers = (("free", 0.6), ("standard", 0.4))
    verifications = (("email", 0.7), ("phone", 0.3))
    apis = (("openai", 0.7), ("anthropic", 0.3))
    activity_sigma = 0.35

    def _k(self) -> SlowHydraKnobs:
        k = self.k
        assert isinstance(k, SlowHydraKnobs)
        return k

    def max_daily(self) -> float:
        return float(self._k().daily_cap)

    def account_ips(self, rng: np.random.Generator) -> list[str]:
        return [netid.residential_ip(rng)]

    def account_user_agent(self, rng: np.random.Generator, api: str) -> str:
        return netid.user_agent(rng, "chat-app" if rng.random() < 0.6 else netid.sdk_family(api, rng))

    def after_accounts(self, accounts: list[Account], rng: np.random.Generator, ids: IdFactory) -> None:
        k = self._k()
        cluster, campaign = ids.new("clu"), ids.new("camp")
        waves = self.ctx.start - rng.uniform(14, 56, k.creation_waves) * timing.DAY
        for i, a in enumerate(accounts):
            a.cluster_id, a.campaign_id = cluster, campaign
            a.created_at = float(waves[i % k.creation_waves] + rng.uniform(0, 6 * timing.HOUR))

    def requests(self, account: Account) -> Iterator[Req]:
        k = self._k()
        r = account.r
        ctx = self.ctx
        per_conv = k.cover_share * 1.6 + (1 - k.cover_share) * (1 + k.follow_up_share)
        starts = timing.diurnal_times(
            account.np, ctx.start, ctx.end, self.expected_total(account) / per_conv, account.tz, "consumer"
        ).tolist()
        # Every member shows up every day (that is what keeps an aged account looking alive).
        busy = {int((t - ctx.start) // timing.DAY) for t in starts}
        for d in range(int(math.ceil(ctx.days - 1e-9))):
            d0, d1 = ctx.start + d * timing.DAY, min(ctx.end, ctx.start + (d + 1) * timing.DAY)
            if d not in busy and d1 - d0 > timing.HOUR:
                day = timing.diurnal_times(account.np, d0, d1, 8.0, account.tz, "consumer")
                starts.append(float(day[0]) if day.size else float(account.np.uniform(d0, d1)))
        starts.sort()
        cover = ChatPool.english()
        stream = r.random() < 0.6
        per_day: dict[int, int] = {}
        t_free = ctx.start
        for c, t0 in enumerate(starts):
            t = max(t0, t_free + r.expovariate(1 / 600.0))
            if t >= ctx.end:
                return
            day = int((t - ctx.start) // timing.DAY)
            if per_day.get(day, 0) >= k.daily_cap:
                continue
            model = self.model_for(account, t, 0.3)
            turns: list[tuple[str, str, bool, str, str | None]] = []  # (text, reply, harvest, source, capability)
            if r.random() < k.cover_share:
                conv, users, replies = cover.draw(account, 1.6)
                turns = [
                    (u, replies[i] if i < len(replies) else "", False, conv.source, None) for i, u in enumerate(users)
                ]
            else:
                cap = harvest.pick_capability(r, k.capabilities)
                q, a, source = harvest.draw(r, cap, ctx.seed)
                turns.append((fresh2_text.slow_ask(r, q), a, True, source, cap))
                if r.random() < k.follow_up_share:
                    turns.append((pick(r, fresh2_text.SLOW_FOLLOW_UPS), "", True, source, cap))
            messages: list[dict[str, Any]] = []
            for i, (u, reply, is_harvest, source, cap) in enumerate(turns):
                if t >= ctx.end or per_day.get(day, 0) >= k.daily_cap:
                    break
                messages.append({"role": "user", "content": u})
                endpoint, body = bodies.chat(
                    account, model, list(messages), max_tokens=2048, temperature=0.7, stream=stream
                )
                sim: dict[str, Any] = {
                    "end_user": None,
                    "harvest": is_harvest,
                    "conversation_id": f"{account.id}:{c}",
                    "turn": i + 1,
                    "source": source,
                }
                if cap:
                    sim["capability"] = cap
                yield (t, endpoint, body, account.ips[0], account.user_agent, sim)
                per_day[day] = per_day.get(day, 0) + 1
                messages.append({"role": "assistant", "content": reply or "Let me work through it."})
                t += r.lognormvariate(math.log(60.0), 0.8) + len(reply) / 60.0
            t_free = t
