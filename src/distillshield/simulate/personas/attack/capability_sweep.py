"""Systematic capability sweep: walking generated question banks capability by capability.

Signature: the account's requests cover capabilities in long blocks (coding, maths, logic, puzzles,
code reasoning, agentic tool use), walking each bank in order, so coverage of capability areas is
near-uniform and broad; one sweep template per capability; agentic items carry `tools` but are
single-shot (no growing tool transcript, unlike real agents); scripted round-the-clock pacing.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from pydantic import Field

from distillshield.simulate import bodies, netid, text, timing
from distillshield.simulate.personas import harvest
from distillshield.simulate.personas.base import Account, IdFactory, Knobs, Persona, Req


class CapabilitySweepKnobs(Knobs):
    requests_per_day: float = Field(3000.0, gt=0, description="requests per account per day")
    capabilities: harvest.Capabilities = Field(
        default_factory=lambda: ["coding", "math", "logic", "puzzle", "code", "agentic"],
        description=f"capabilities swept, in order, from {', '.join(harvest.CAPABILITIES)}",
    )
    block: int = Field(250, ge=1, description="requests per capability block before moving to the next")
    jitter: float = Field(0.3, ge=0, le=0.5, description="timing jitter as a fraction of the interval")


class CapabilitySweep(Persona):
    name = "capability_sweep"
    kind = "attack"
    split = "dev"
    Knobs = CapabilitySweepKnobs
    signature = "bank-ordered sweep over capability blocks: broad, near-uniform coverage; single-shot tool tasks"
    tiers = (("pro", 0.5), ("standard", 0.5))
    verifications = (("email", 0.7), ("phone", 0.3))
    apis = (("openai", 1.0),)
    activity_sigma = 0.3
    account_age_days = (2.0, 60.0)
    rpm_fill = 0.4  # with jitter 0.3 the closest two requests are 0.4 intervals apart: still under the limit

    def account_ips(self, rng: np.random.Generator) -> list[str]:
        return [netid.cloud_ip(rng)]

    def account_user_agent(self, rng: np.random.Generator, api: str) -> str:
        return netid.user_agent(rng, "script" if rng.random() < 0.5 else "openai-python")

    def after_accounts(self, accounts: list[Account], rng: np.random.Generator, ids: IdFactory) -> None:
        self.one_campaign(accounts, ids)
        for i, a in enumerate(accounts):
            a.state["offset"] = i  # accounts of one campaign start the sweep at different capabilities

    def requests(self, account: Account) -> Iterator[Req]:
        k = self.k
        assert isinstance(k, CapabilitySweepKnobs)
        r = account.r
        ctx = self.ctx
        interval = timing.DAY / self.daily(account)
        times = timing.regular_times(account.np, ctx.start, ctx.end, interval, k.jitter).tolist()
        caps = k.capabilities
        offset = account.state.get("offset", 0)
        cursor = {c: r.randrange(1000) for c in caps}  # where in each bank this account resumes
        model = ctx.models.primary
        for i, t in enumerate(times):
            cap = caps[(i // k.block + offset) % len(caps)]
            pool = harvest.items(cap, ctx.seed)
            q, _a, source = pool[cursor[cap] % len(pool)]
            cursor[cap] += 1
            template = text.SWEEP_TEMPLATES.get(cap, "{q}")
            tools = harvest.toolset_for(cap, q)
            extra = {"tools": tools, "tool_choice": "auto"} if tools else None
            endpoint, body = bodies.openai_chat(
                model,
                [{"role": "user", "content": template.format(q=q)}],
                max_tokens=4096,
                temperature=0.0,
                extra=extra,
            )
            sim = {
                "end_user": None,
                "harvest": True,
                "template_id": f"sweep/{cap}",
                "capability": cap,
                "source": source,
            }
            yield (t, endpoint, body, account.ips[0], account.user_agent, sim)
