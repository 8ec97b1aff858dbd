"""Reseller mixing attack traffic with real customers': a proxy account that relays both.

Signature: looks like an honest reseller (hundreds of real end users, 24/7, cloud IPs, one server
user agent) but a few hidden end users send harvesting traffic (bank questions in harvesting/CoT
templates, long answers) that makes up `attack_share` of the account's requests (`sim.harvest`).
The whole account is labelled attack: the reseller is the channel the campaign uses.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
from pydantic import Field

from distillshield.simulate import bodies, text, timing
from distillshield.simulate.personas import harvest
from distillshield.simulate.personas.base import Account, IdFactory, Req, pick
from distillshield.simulate.personas.common import merge_lanes
from distillshield.simulate.personas.honest.reseller import Reseller, ResellerKnobs


class ResellerMixKnobs(ResellerKnobs):
    attack_share: float = Field(0.3, ge=0, lt=1, description="share of the account's requests that are harvesting")
    attack_users: int = Field(3, ge=1, description="hidden end users who send the harvesting traffic")
    capabilities: harvest.Capabilities = Field(
        default_factory=lambda: ["coding", "math", "logic", "agentic"],
        description=f"capabilities harvested, from {', '.join(harvest.CAPABILITIES)}",
    )


class ResellerMix(Reseller):
    name = "reseller_mix"
    kind = "attack"
    split = "heldout"
    Knobs = ResellerMixKnobs
    signature = "an honest-looking reseller whose few hidden end users send a fixed share of harvesting traffic"

    def after_accounts(self, accounts: list[Account], rng: np.random.Generator, ids: IdFactory) -> None:
        k = self.k
        assert isinstance(k, ResellerMixKnobs)
        self.one_campaign(accounts, ids)
        for a in accounts:
            a.end_users = k.end_users + k.attack_users

    def requests(self, account: Account) -> Iterator[Req]:
        k = self.k
        assert isinstance(k, ResellerMixKnobs)
        honest_daily = self.daily(account) * (1 - k.attack_share) / k.end_users
        lanes = self.customer_lanes(account, per_user_daily=honest_daily)
        for j in range(k.attack_users):
            lanes.append(self._attacker(account, j, self.daily(account) * k.attack_share / k.attack_users))
        yield from merge_lanes(lanes)

    def _attacker(self, account: Account, j: int, daily: float) -> Iterator[Req]:
        k = self.k
        assert isinstance(k, ResellerMixKnobs)
        ctx = self.ctx
        # Own randomness per hidden user, so the honest lanes' draws do not depend on the attack's.
        rng = np.random.default_rng([account.seed, 77, j])
        r = random.Random(account.seed * 31 + j)
        end_user = f"u_{account.id[-6:]}_{k.end_users + j:05d}"
        times = timing.spaced_times(rng, ctx.start, ctx.end, daily * ctx.days, 1.0).tolist()
        t_idx = r.randrange(len(text.HARVEST_TEMPLATES))
        for t in times:
            cap = harvest.pick_capability(r, k.capabilities)
            q, _a, source = harvest.draw(r, cap, ctx.seed)
            tools = harvest.toolset_for(cap, q)
            extra: dict[str, object] = {"user": end_user}
            if tools:
                extra["tools"] = tools
            endpoint, body = bodies.openai_chat(
                ctx.models.primary,
                [{"role": "user", "content": text.HARVEST_TEMPLATES[t_idx].format(q=q)}],
                max_tokens=4096,
                temperature=0.7,
                extra=extra,
            )
            sim = {
                "end_user": end_user,
                "harvest": True,
                "template_id": f"harvest/{t_idx}",
                "capability": cap,
                "source": source,
            }
            yield (t, endpoint, body, pick(r, account.ips), account.user_agent, sim)
