"""Mixed-in app: a real customer app whose key also quietly runs a question bank (a side job).

Imitates a company with a genuine product (a notes and productivity app with its own system
prompt, `fresh3_text.APP_SYSTEM`) whose developers also push a question bank through the same API
key to build a training set: the app's users chat in the app (real WildChat, Vicuna and MT-Bench
prompts, multi-turn) on a consumer day in the app's market, and a background worker on the same
servers sends bank questions (maths, logic, puzzles, code reasoning, coding) inside one fixed
"solve with a detailed explanation" wrapper, without the app's system prompt, steadily around the
clock. The side job is `attack_share` of the account's requests (`sim.harvest`); same cloud
addresses, same SDK user agent, no end-user ids. The whole account is labelled attack (`campaign_id`).
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
from pydantic import Field

from distillshield.simulate import bodies, fresh3_text, netid, timing
from distillshield.simulate.personas import harvest
from distillshield.simulate.personas.base import Account, IdFactory, Knobs, Persona, Req, pick
from distillshield.simulate.personas.common import ChatPool, chat_sessions, merge_lanes, sub_account


class MixedInAppKnobs(Knobs):
    requests_per_day: float = Field(
        1500.0, gt=0, description="mean requests per app account per day (side job included)"
    )
    app_users: int = Field(300, ge=1, le=5000, description="the app's users behind one account")
    attack_share: float = Field(0.25, ge=0, lt=1, description="share of the account's requests that are the side job")
    capabilities: harvest.Capabilities = Field(
        default_factory=lambda: ["math", "logic", "puzzle", "code", "coding"],
        description=f"capabilities the side job harvests, from {', '.join(harvest.CAPABILITIES)}",
    )


class MixedInApp(Persona):
    name = "mixed_in_app"
    kind = "attack"
    split = "fresh3"
    Knobs = MixedInAppKnobs
    signature = "a real app's users chatting under its system prompt, plus a steady bank side job on the same key"
    tiers = (("pro", 0.5), ("enterprise", 0.5))
    verifications = (("business", 1.0),)
    apis = (("openai", 0.6), ("anthropic", 0.4))
    activity_sigma = 0.3

    def account_ips(self, rng: np.random.Generator) -> list[str]:
        return [netid.cloud_ip(rng) for _ in range(2)]

    def account_user_agent(self, rng: np.random.Generator, api: str) -> str:
        return netid.user_agent(rng, netid.sdk_family(api, rng, node_share=0.6))

    def after_accounts(self, accounts: list[Account], rng: np.random.Generator, ids: IdFactory) -> None:
        k = self.k
        assert isinstance(k, MixedInAppKnobs)
        self.one_campaign(accounts, ids)
        for a in accounts:
            a.end_users = k.app_users

    def requests(self, account: Account) -> Iterator[Req]:
        k = self.k
        assert isinstance(k, MixedInAppKnobs)
        ctx = self.ctx
        rng = account.np
        system = fresh3_text.APP_SYSTEM.format(product=pick(account.r, fresh3_text.APP_PRODUCTS))
        acts = rng.lognormal(-0.5, 1.0, k.app_users)
        acts = acts / acts.mean()
        per_user = self.daily(account) * (1 - k.attack_share) / k.app_users
        lanes: list[Iterator[Req]] = []
        for u in range(k.app_users):
            sub = sub_account(
                account, u, tz=account.tz + float(rng.choice((-1.0, 0.0, 0.0, 1.0))), activity=float(acts[u])
            )
            expected = per_user * float(acts[u]) * ctx.days / 2.2
            starts = timing.diurnal_times(sub.np, ctx.start, ctx.end, expected, sub.tz, "consumer").tolist()
            lanes.append(
                chat_sessions(
                    self, sub, starts, ChatPool.english(), turns_mean=2.2, think_s=40.0, system_prompts=(system,),
                    lane=f"u{u}", stream_prob=1.0,
                )
            )  # fmt: skip
        lanes.append(self._side_job(account, self.daily(account) * k.attack_share))
        yield from merge_lanes(lanes)

    def _side_job(self, account: Account, daily: float) -> Iterator[Req]:
        k = self.k
        assert isinstance(k, MixedInAppKnobs)
        ctx = self.ctx
        rng = np.random.default_rng([account.seed, 0xF3])
        r = random.Random(account.seed * 41 + 7)
        template = pick(r, fresh3_text.SIDE_JOB_TEMPLATES)  # one worker, one wrapper
        times = timing.spaced_times(rng, ctx.start, ctx.end, daily * ctx.days, 15.0).tolist()
        for j, t in enumerate(times):
            cap = k.capabilities[j % len(k.capabilities)]
            q, _a, source = harvest.draw(r, cap, ctx.seed)
            endpoint, body = bodies.chat(
                account, ctx.models.primary, [{"role": "user", "content": template.format(q=q)}],
                max_tokens=4096, temperature=0.7,
            )  # fmt: skip
            sim = {
                "end_user": None,
                "harvest": True,
                "conversation_id": f"{account.id}:job{j}",
                "turn": 1,
                "capability": cap,
                "template_id": f"side_job/{fresh3_text.SIDE_JOB_TEMPLATES.index(template)}",
                "source": source,
            }
            yield (t, endpoint, body, pick(r, account.ips), account.user_agent, sim)
