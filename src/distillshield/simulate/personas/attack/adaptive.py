"""Adaptive attackers: harvesting dressed up as people, against detectors that look for templates.

Signature (what is left when the obvious tells are removed): requests are paraphrased afresh every
time (almost no verbatim template reuse), sent on a human day with human think times from residential
IPs (one or two per account), inside multi-turn conversations that open with small talk; a share of
conversations are pure benign cover (real chat prompts). What remains is content: the harvest turns
still come from generated question banks, concentrated on a few capabilities, and ask how to reason.
All accounts of an entry are one operator (`cluster_id`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
from pydantic import Field

from distillshield.simulate import bodies, netid, text, timing
from distillshield.simulate.personas import harvest
from distillshield.simulate.personas.base import Account, IdFactory, Knobs, Persona, Req, pick
from distillshield.simulate.personas.common import ChatPool


class AdaptiveKnobs(Knobs):
    requests_per_day: float = Field(60.0, gt=0, description="requests per account per day (person-like)")
    cover_share: float = Field(0.35, ge=0, le=1, description="share of conversations that are benign cover traffic")
    padding_turns_mean: float = Field(1.0, ge=0, description="mean small-talk turns before the first real question")
    harvest_turns_mean: float = Field(2.5, ge=1, description="mean harvesting questions per conversation")
    think_s: float = Field(35.0, gt=0, description="median seconds between turns (human-like)")
    capabilities: harvest.Capabilities = Field(
        default_factory=lambda: ["math", "logic", "coding"],
        description=f"capabilities targeted, from {', '.join(harvest.CAPABILITIES)}",
    )


def _geometric(r: random.Random, mean: float, at_least: int) -> int:
    """A count >= at_least with the given mean (geometric tail)."""
    if mean <= 0:
        return 0
    if mean <= at_least:
        return at_least
    p = 1 / (mean - at_least + 1)
    return at_least + int(math.log(1 - r.random()) / math.log(1 - p)) if p < 1 else at_least


class Adaptive(Persona):
    name = "adaptive"
    kind = "attack"
    split = "heldout"
    Knobs = AdaptiveKnobs
    signature = "fresh paraphrases, human timing, small-talk padding and benign cover, residential IPs"
    tiers = (("free", 0.4), ("standard", 0.6))
    verifications = (("email", 0.7), ("phone", 0.3))
    activity_sigma = 0.5
    account_age_days = (5.0, 200.0)

    def account_ips(self, rng: np.random.Generator) -> list[str]:
        return [netid.residential_ip(rng) for _ in range(1 + int(rng.random() < 0.4))]

    def account_user_agent(self, rng: np.random.Generator, api: str) -> str:
        return netid.user_agent(rng, "chat-app" if rng.random() < 0.7 else netid.sdk_family(api, rng))

    def after_accounts(self, accounts: list[Account], rng: np.random.Generator, ids: IdFactory) -> None:
        cluster, campaign = ids.new("clu"), ids.new("camp")
        for a in accounts:
            a.cluster_id, a.campaign_id = cluster, campaign

    def requests(self, account: Account) -> Iterator[Req]:
        k = self.k
        assert isinstance(k, AdaptiveKnobs)
        r = account.r
        ctx = self.ctx
        per_conv = (1 - k.cover_share) * (k.padding_turns_mean + k.harvest_turns_mean) + k.cover_share * 2.5
        starts = timing.diurnal_times(
            account.np, ctx.start, ctx.end, self.expected_total(account) / per_conv, account.tz, "consumer"
        ).tolist()
        cover = ChatPool.english()
        stream = r.random() < 0.7
        t_free = ctx.start
        for c, t0 in enumerate(starts):
            t = max(t0, t_free + r.expovariate(1 / 120.0))
            model = self.model_for(account, t, 0.3)
            cid = f"{account.id}:{c}"
            turns: list[tuple[str, str, bool, str, str | None]] = []  # (user text, reply, harvest, source, capability)
            if r.random() < k.cover_share:
                conv, users, replies = cover.draw(account, 2.5)
                turns = [
                    (u, replies[i] if i < len(replies) else "", False, conv.source, None) for i, u in enumerate(users)
                ]
            else:
                for _ in range(_geometric(r, k.padding_turns_mean, 0)):
                    turns.append(
                        (
                            pick(r, text.CHATTER),
                            pick(r, text.CHATTER_REPLIES),
                            False,
                            "chatter",
                            None,
                        )
                    )
                for _ in range(_geometric(r, k.harvest_turns_mean, 1)):
                    cap = harvest.pick_capability(r, k.capabilities)
                    q, a, source = harvest.draw(r, cap, ctx.seed)
                    turns.append((text.paraphrase(r, q), a or "", True, source, cap))
            messages: list[dict[str, Any]] = []
            for i, (u, reply, is_harvest, source, cap) in enumerate(turns):
                if t >= ctx.end:
                    return
                messages.append({"role": "user", "content": u})
                endpoint, body = bodies.chat(
                    account, model, list(messages), max_tokens=2048, temperature=0.8, stream=stream
                )
                sim: dict[str, Any] = {
                    "end_user": None,
                    "harvest": is_harvest,
                    "conversation_id": cid,
                    "turn": i + 1,
                    "source": source,
                }
                if cap:
                    sim["capability"] = cap
                yield (t, endpoint, body, self.ip(account), account.user_agent, sim)
                messages.append({"role": "assistant", "content": reply or "Sure! Here's how I'd think about it."})
                t += r.lognormvariate(math.log(k.think_s), 0.8) + len(reply) / 80.0
            t_free = t
