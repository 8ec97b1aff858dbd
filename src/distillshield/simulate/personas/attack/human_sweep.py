"""Human-looking capability sweep: a harvester that imitates one person's timing and phrasing.

Imitates an operator who runs a capability sweep through one or a few accounts at an ordinary
person's volume (100-400 requests over a few days): conversations on a consumer day curve in the
account's time zone with human think times, the questions put in casual, varied words with typos,
sometimes after a turn of small talk, from one or two residential addresses and a browser. What gives
it away is only coverage: its questions walk the capabilities round-robin (coding, maths, logic,
puzzles, code reasoning, general knowledge) from generated banks, far broader than a person's. All
accounts of an entry are one operator (`cluster_id`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
from pydantic import Field

from distillshield.simulate import bodies, fresh_text, netid, timing
from distillshield.simulate.personas import harvest
from distillshield.simulate.personas.base import Account, IdFactory, Knobs, Persona, Req, pick


class HumanSweepKnobs(Knobs):
    requests_per_day: float = Field(80.0, gt=0, description="requests per account per day (a busy person's)")
    questions_mean: float = Field(2.5, ge=1, description="mean sweep questions per conversation")
    padding_share: float = Field(0.3, ge=0, le=1, description="share of conversations opened with small talk")
    think_s: float = Field(50.0, gt=0, description="median seconds between an answer and the next turn")
    typo_rate: float = Field(0.4, ge=0, le=1, description="chance of slips (typos, lower case) in a message")
    capabilities: harvest.Capabilities = Field(
        default_factory=lambda: ["coding", "math", "logic", "puzzle", "code", "general"],
        description=f"capabilities swept round-robin, from {', '.join(harvest.CAPABILITIES)}",
    )


class HumanSweep(Persona):
    name = "human_sweep"
    kind = "attack"
    split = "fresh"
    Knobs = HumanSweepKnobs
    signature = "a person's volume, timing and casual wording, but questions sweep every capability round-robin"
    tiers = (("standard", 0.6), ("pro", 0.4))
    verifications = (("email", 0.6), ("phone", 0.4))
    activity_sigma = 0.3
    account_age_days = (10.0, 120.0)

    def account_ips(self, rng: np.random.Generator) -> list[str]:
        return [netid.residential_ip(rng) for _ in range(1 + int(rng.random() < 0.4))]

    def account_user_agent(self, rng: np.random.Generator, api: str) -> str:
        return netid.user_agent(rng, "chat-app" if rng.random() < 0.75 else netid.sdk_family(api, rng))

    def after_accounts(self, accounts: list[Account], rng: np.random.Generator, ids: IdFactory) -> None:
        self.one_campaign(accounts, ids)
        cluster = ids.new("clu")
        for i, a in enumerate(accounts):
            a.cluster_id = cluster
            a.state["offset"] = i * 2  # accounts of one operator start the sweep at different capabilities

    def requests(self, account: Account) -> Iterator[Req]:
        k = self.k
        assert isinstance(k, HumanSweepKnobs)
        r = account.r
        ctx = self.ctx
        per_conv = k.questions_mean + k.padding_share
        starts = timing.diurnal_times(
            account.np, ctx.start, ctx.end, self.expected_total(account) / per_conv, account.tz, "consumer"
        ).tolist()
        caps = k.capabilities
        step = account.state.get("offset", 0)
        stream = r.random() < 0.8
        t_free = ctx.start
        for c, t0 in enumerate(starts):
            t = max(t0, t_free + r.expovariate(1 / 180.0))
            model = self.model_for(account, t, 0.3)
            turns: list[tuple[str, str, bool, str, str | None]] = []
            if r.random() < k.padding_share:
                opener = fresh_text.typo(r, pick(r, fresh_text.CASUAL_OPENERS).strip() or "hi", k.typo_rate)
                turns.append(
                    (opener + " how's it going", "Hi! Doing well. What can I help with?", False, "chatter", None)
                )
            n_q = 1 + int(math.log(1 - r.random()) / math.log(1 - 1 / k.questions_mean)) if k.questions_mean > 1 else 1
            for _ in range(min(n_q, 8)):
                cap = caps[step % len(caps)]
                step += 1
                q, a, source = harvest.draw(r, cap, ctx.seed)
                ask = fresh_text.human_ask(r, q)
                if r.random() < k.typo_rate:
                    ask = fresh_text.typo(r, ask, k.typo_rate)
                turns.append((ask, a or "", True, source, cap))
            messages: list[dict[str, Any]] = []
            for i, (u, reply, is_harvest, source, cap) in enumerate(turns):
                if t >= ctx.end:
                    return
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
                yield (t, endpoint, body, self.ip(account), account.user_agent, sim)
                messages.append({"role": "assistant", "content": reply or "Sure, here's how I'd work it out."})
                t += r.lognormvariate(math.log(k.think_s), 0.8) + len(reply) / 70.0
            t_free = t
