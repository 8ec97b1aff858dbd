"""Self-instruct farm: the model asked to write whole training sets, instruction and worked answer alike.

Imitates an operator who distils by synthetic data generation (the self-instruct recipe): every
request asks for a batch of new tasks with expert, step-by-step answers (`fresh3_text.SI_INSTRUCTIONS`,
JSON or numbered), on one cell of a sweep over topics x task types, with three in-context seed tasks
drawn from real users' prompts (WildChat, MT-Bench, Vicuna) so that the generated tasks look real.
Long answers are asked for (max_tokens 4096, temperature 1). Scripted pacing around the clock under
the rpm share, one cloud address and a script or SDK user agent per account; the accounts (one
`cluster_id`) split the sweep.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache

import numpy as np
from pydantic import Field

from distillshield.simulate import bodies, corpora, fresh3_text, netid
from distillshield.simulate.personas.base import Account, IdFactory, Knobs, Persona, Req


@lru_cache(maxsize=1)
def seed_tasks() -> tuple[str, ...]:
    """Real user prompts used as in-context examples of what a task looks like."""
    return tuple(c.turns[0] for c in corpora.wildchat_prompts() + corpora.mt_bench() + corpora.vicuna())


class SelfInstructFarmKnobs(Knobs):
    requests_per_day: float = Field(300.0, gt=0, description="generation requests per account per day")
    batch_min: int = Field(5, ge=1, le=50, description="fewest tasks asked for in one request")
    batch_max: int = Field(20, ge=1, le=50, description="most tasks asked for in one request")


class SelfInstructFarm(Persona):
    name = "selfinstruct_farm"
    kind = "attack"
    split = "fresh3"
    Knobs = SelfInstructFarmKnobs
    signature = "requests for batches of new tasks with worked answers, sweeping topics x task types, 24/7"
    tiers = (("standard", 0.5), ("pro", 0.5))
    verifications = (("email", 0.6), ("business", 0.4))
    apis = (("openai", 0.7), ("anthropic", 0.3))
    activity_sigma = 0.3
    rpm_fill = 0.5
    account_age_days = (5.0, 90.0)

    def account_ips(self, rng: np.random.Generator) -> list[str]:
        return [netid.cloud_ip(rng)]

    def account_user_agent(self, rng: np.random.Generator, api: str) -> str:
        return netid.user_agent(rng, "script" if rng.random() < 0.4 else netid.sdk_family(api, rng))

    def after_accounts(self, accounts: list[Account], rng: np.random.Generator, ids: IdFactory) -> None:
        cluster, campaign = ids.new("clu"), ids.new("camp")
        for i, a in enumerate(accounts):
            a.cluster_id, a.campaign_id = cluster, campaign
            a.state["slot"], a.state["of"] = i, len(accounts)

    def requests(self, account: Account) -> Iterator[Req]:
        k = self.k
        assert isinstance(k, SelfInstructFarmKnobs)
        r = account.r
        n, slot = account.state["of"], account.state["slot"]
        cells = [(topic, task_type) for topic in fresh3_text.SI_TOPICS for task_type in fresh3_text.SI_TASK_TYPES]
        mine = cells[slot::n] or cells
        t_idx = r.randrange(len(fresh3_text.SI_INSTRUCTIONS))  # the operator's prompt of this account
        template = fresh3_text.SI_INSTRUCTIONS[t_idx]
        lo, hi = sorted((k.batch_min, k.batch_max))
        seeds = seed_tasks()
        model = self.model_for(account, self.ctx.start)
        for j, t in enumerate(self.machine_times(account)):
            topic, task_type = mine[j % len(mine)]
            prompt = template.format(
                n=r.randint(lo, hi), task_type=task_type, topic=topic, examples=fresh3_text.si_examples(r, seeds)
            )
            endpoint, body = bodies.chat(
                account, model, [{"role": "user", "content": prompt}], max_tokens=4096, temperature=1.0
            )
            sim = {
                "end_user": None,
                "harvest": True,
                "conversation_id": f"{account.id}:{j}",
                "turn": 1,
                "capability": "general",
                "template_id": f"selfinstruct/{t_idx}",
                "source": "ifbench-wildchat+mt-bench+vicuna",
                "cell": f"{topic}/{task_type}",
            }
            yield (t, endpoint, body, account.ips[0], account.user_agent, sim)
