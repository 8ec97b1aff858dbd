"""Support bot: a shop's customer-service bot with order tools, naming each customer in `user`.

Imitates an online shop's support assistant: one account per shop, thousands of customers writing
in their own words (`fresh3_text.support_ask`: where is my order, a broken item to return, a
cancellation, an exchange; typos, the email on the same line or asked for), each named by an opaque
hashed id in the OpenAI `user` field; the bot calls the shop's order tools (look the customer up,
get the order, track, cancel, return, exchange: `fresh3_text.EPISODE_TOOLS["retail"]`), a few
seconds per tool step, then answers, and some customers reply. One system prompt per shop, arrivals
on the customers' day in the shop's market, one or two cloud addresses, one SDK user agent. The
honest twin of `trajectory_farm`: the same tools and the same step structure, one domain, real people.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator

import numpy as np
from pydantic import Field

from distillshield.simulate import bodies, fresh3_text, netid, timing
from distillshield.simulate.personas.attack.trajectory_farm import episode_messages
from distillshield.simulate.personas.base import Account, IdFactory, Knobs, Persona, Req, pick

REPLIES = (
    "I can help with that! Could you share the email address on your account?",
    "Thanks! I've taken care of that for you. Is there anything else I can help with?",
    "Done - you'll get a confirmation email shortly.",
)


class SupportBotKnobs(Knobs):
    requests_per_day: float = Field(1200.0, gt=0, description="mean requests per shop account per day")
    customers: int = Field(5000, ge=1, le=1_000_000, description="customers who may write to one shop")
    reply_share: float = Field(
        0.35, ge=0, le=1, description="share of conversations where the customer replies once more"
    )


class SupportBot(Persona):
    name = "support_bot"
    kind = "benign"
    split = "fresh3"
    Knobs = SupportBotKnobs
    signature = "a shop's bot: customers' own words named in `user`, order tools a few seconds apart"
    tiers = (("pro", 0.5), ("enterprise", 0.5))
    verifications = (("business", 1.0),)
    apis = (("openai", 1.0),)  # tool calls go through the OpenAI shape
    activity_sigma = 0.3

    def account_ips(self, rng: np.random.Generator) -> list[str]:
        return [netid.cloud_ip(rng) for _ in range(1 + int(rng.random() < 0.5))]

    def account_user_agent(self, rng: np.random.Generator, api: str) -> str:
        return netid.user_agent(rng, netid.sdk_family(api, rng, node_share=0.6))

    def after_accounts(self, accounts: list[Account], rng: np.random.Generator, ids: IdFactory) -> None:
        k = self.k
        assert isinstance(k, SupportBotKnobs)
        for a in accounts:
            a.end_users = k.customers

    def customer_id(self, account: Account, u: int) -> str:
        return "cus_" + hashlib.sha256(f"{account.id}/{u}".encode()).hexdigest()[:20]

    def requests(self, account: Account) -> Iterator[Req]:
        k = self.k
        assert isinstance(k, SupportBotKnobs)
        ctx = self.ctx
        r = account.r
        system = fresh3_text.SUPPORT_BOT_SYSTEM.format(store=pick(r, fresh3_text.SUPPORT_STORES))
        tools = fresh3_text.EPISODE_TOOLS["retail"]
        model = ctx.models.secondary[0] if ctx.models.secondary and r.random() < 0.7 else ctx.models.primary
        per_conv = 3.6 + k.reply_share
        starts = timing.diurnal_times(
            account.np, ctx.start, ctx.end, self.expected_total(account) / per_conv, account.tz, "consumer"
        ).tolist()
        out: list[Req] = []
        for c, t in enumerate(starts):
            who = self.customer_id(account, int(r.random() * k.customers))
            template, seq = pick(r, fresh3_text.SUPPORT_ASKS)
            slots = fresh3_text.episode_slots(r)
            first = fresh3_text.support_ask(r, template, slots)
            steps = episode_messages(r, system, first, seq, slots, f"{account.seed % 10**6}_{c}", reasoning=None)
            if slots["email"] not in first:  # the bot asks for the email; the customer gives it
                prefix = steps[0] + [
                    {"role": "assistant", "content": REPLIES[0]},
                    {"role": "user", "content": pick(r, fresh3_text.SUPPORT_EMAIL_LINES).format(**slots)},
                ]
                steps = [steps[0]] + [prefix + m[2:] for m in steps]
            if r.random() < k.reply_share:
                follow = pick(r, fresh3_text.SUPPORT_FOLLOW_UPS)
                steps.append(
                    [*steps[-1], {"role": "assistant", "content": REPLIES[1]}, {"role": "user", "content": follow}]
                )
            for i, messages in enumerate(steps):
                if t >= ctx.end:
                    break
                endpoint, body = bodies.openai_chat(
                    model, messages, max_tokens=512, temperature=0.2,
                    extra={"tools": tools, "tool_choice": "auto", "user": who},
                )  # fmt: skip
                sim = {
                    "end_user": who,
                    "harvest": False,
                    "conversation_id": f"{account.id}:{c}",
                    "turn": i + 1,
                    "source": "support-asks",
                }
                out.append((t, endpoint, body, self.ip(account), account.user_agent, sim))
                last = messages[-1]
                if i + 1 < len(steps) and steps[i + 1][-1]["role"] == "user":
                    t += r.lognormvariate(math.log(35.0), 0.7)  # the customer reads and types
                else:
                    t += r.lognormvariate(math.log(2.5), 0.5) + (0.5 if last["role"] == "tool" else 0.0)
        out.sort(key=lambda x: x[0])
        yield from out
