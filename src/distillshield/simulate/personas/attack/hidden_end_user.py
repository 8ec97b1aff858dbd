"""Hidden end user: a harvester posing as a few end users of a platform that names its end users.

Imitates a campaign that signs up to an honest-looking platform (or runs one) and harvests as a few of
its end users: the account relays hundreds of real end users around the clock from cloud addresses
with one SDK user agent, and names every end user the way the API asks (an opaque hashed id in the
OpenAI `user` field or in Anthropic's `metadata.user_id`), the hidden harvesters included, whose ids
look like everyone else's. Each hidden end user sends bank questions (coding, maths, logic, code
reasoning) in ordinary chat words, around the clock at a steady pace far above any one person's,
and in most conversations follows the answer with a second turn asking for the reasoning behind it.
Together they make `attack_share` of the account's requests (`sim.harvest`). As for `reseller_mix`,
the whole account is labelled attack (the platform is the campaign's channel; `campaign_id`).
Subclass of `platform_reseller`.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import numpy as np
from pydantic import Field

from distillshield.simulate import bodies, fresh2_text, timing
from distillshield.simulate.personas import harvest
from distillshield.simulate.personas.base import Account, IdFactory, Req, pick
from distillshield.simulate.personas.common import ChatPool, merge_lanes
from distillshield.simulate.personas.honest.platform_reseller import PlatformReseller, PlatformResellerKnobs


class HiddenEndUserKnobs(PlatformResellerKnobs):
    attack_share: float = Field(0.12, ge=0, lt=1, description="share of the account's requests that are harvesting")
    attack_users: int = Field(3, ge=1, description="hidden end users who send the harvesting traffic")
    reasoning_turn_share: float = Field(
        0.7, ge=0, le=1, description="share of harvesting conversations with a second turn asking for the reasoning"
    )
    capabilities: harvest.Capabilities = Field(
        default_factory=lambda: ["coding", "math", "logic", "code"],
        description=f"capabilities harvested, from {', '.join(harvest.CAPABILITIES)}",
    )


class HiddenEndUser(PlatformReseller):
    name = "hidden_end_user"
    kind = "attack"
    split = "fresh2"
    Knobs = HiddenEndUserKnobs
    signature = "a platform naming its end users, a few of whom send bank questions and then ask for the reasoning"

    def after_accounts(self, accounts: list[Account], rng: np.random.Generator, ids: IdFactory) -> None:
        k = self.k
        assert isinstance(k, HiddenEndUserKnobs)
        super().after_accounts(accounts, rng, ids)
        self.one_campaign(accounts, ids)
        for a in accounts:
            a.end_users = k.end_users + k.attack_users

    def requests(self, account: Account) -> Iterator[Req]:
        k = self.k
        assert isinstance(k, HiddenEndUserKnobs)
        honest_daily = self.daily(account) * (1 - k.attack_share) / k.end_users
        lanes = self.customer_lanes(account, per_user_daily=honest_daily)
        per_hidden = self.daily(account) * k.attack_share / k.attack_users
        for j in range(k.attack_users):
            end_user = self.end_user_id(account, k.end_users + j)
            lanes.append(self._readdress(account, self._hidden(account, j, end_user, per_hidden), end_user))
        yield from merge_lanes(lanes)

    def _hidden(self, account: Account, j: int, end_user: str, daily: float) -> Iterator[Req]:
        """One hidden end user's conversations (re-addressed to the platform by `_readdress`)."""
        k = self.k
        assert isinstance(k, HiddenEndUserKnobs)
        ctx = self.ctx
        # Own randomness per hidden user, so the honest lanes' draws do not depend on the attack's.
        rng = np.random.default_rng([account.seed, 0xF2, j])
        r = random.Random(account.seed * 37 + j)
        per_conv = 1 + k.reasoning_turn_share
        starts = timing.spaced_times(rng, ctx.start, ctx.end, daily * ctx.days / per_conv, 20.0).tolist()
        stand_ins = ChatPool.english().stand_ins  # real English answers as offline replies
        model = ctx.models.primary
        t_free = ctx.start
        for c, t0 in enumerate(starts):
            t = max(t0, t_free + r.expovariate(1 / 30.0))
            cap = harvest.pick_capability(r, k.capabilities)
            q, a, source = harvest.draw(r, cap, ctx.seed)
            turns = [pick(r, fresh2_text.HIDDEN_FRAMES).format(q=q)]
            if r.random() < k.reasoning_turn_share:
                turns.append(pick(r, fresh2_text.HIDDEN_REASONING_TURNS))
            messages: list[dict[str, Any]] = []
            for i, u in enumerate(turns):
                if t >= ctx.end:
                    return
                messages.append({"role": "user", "content": u})
                endpoint, body = bodies.chat(account, model, list(messages), max_tokens=4096, temperature=0.7)
                sim = {
                    "end_user": end_user,
                    "harvest": True,
                    "conversation_id": f"{account.id}:{end_user}:{c}",
                    "turn": i + 1,
                    "capability": cap,
                    "source": source,
                }
                yield (t, endpoint, body, "", "", sim)
                reply = a or pick(r, stand_ins)
                messages.append({"role": "assistant", "content": reply})
                t += r.lognormvariate(3.0, 0.5) + len(reply) / 200.0  # a script reads nothing: ~20 s
            t_free = t
