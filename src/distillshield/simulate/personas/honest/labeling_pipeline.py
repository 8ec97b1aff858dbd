"""Labelling pipeline: one fixed classification instruction over a company's own customers' messages.

Imitates a company's ticket/chat triage service: every incoming customer message goes through ONE
fixed classification instruction (route to a queue, rate sentiment, flag urgency, or detect language)
as it arrives, so requests follow the customers' day in the company's market rather than a machine's
schedule; the answer is a word or a tiny JSON object (small max_tokens, temperature 0). The messages
are real chat text: tech-support problems and conversation turns from chatterbot-corpus (mostly
English, some in the customers' other languages) and real WildChat requests; short ones recur
("hello", "my laptop won't turn on") as they do in any inbox. One cloud address, one SDK or script
user agent. The honest twin of `label_distiller`: one instruction over many texts, no rationale asked.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache

import numpy as np
from pydantic import Field, field_validator

from distillshield.simulate import bodies, corpora, fresh2_text, netid, timing
from distillshield.simulate.personas.base import Account, Knobs, Persona, Req, pick

TASKS = tuple(fresh2_text.LABELING_TEMPLATES)
_CUSTOMER_TOPICS = ("tech_support", "conversations", "greetings", "money", "food", "health", "computers")


@lru_cache(maxsize=1)
def customer_messages() -> tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]:
    """(support-like lines, general requests) as (text, source): what customers write to a company."""
    support = tuple(
        (u, d.source)
        for d in corpora.chatterbot()
        if d.topic in _CUSTOMER_TOPICS and (d.lang == "en" or d.topic == "conversations")
        for u in d.turns[: 1 if d.topic == "tech_support" else None : 2]  # the customer's side of a dialogue
    )
    general = tuple((c.turns[0], c.source) for c in corpora.wildchat_prompts())
    return support, general


class LabelingPipelineKnobs(Knobs):
    requests_per_day: float = Field(1500.0, gt=0, description="messages labelled per pipeline per day")
    tasks: list[str] = Field(
        default_factory=lambda: list(TASKS), description=f"tasks pipelines may run, from {', '.join(TASKS)}"
    )
    general_share: float = Field(
        0.3, ge=0, le=1, description="share of messages that are general requests rather than support lines"
    )

    @field_validator("tasks")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        bad = [t for t in v if t not in fresh2_text.LABELING_TEMPLATES]
        if bad or not v:
            raise ValueError(f"unknown task(s) {bad or '[]'}; choose from {', '.join(TASKS)}")
        return v


class LabelingPipeline(Persona):
    name = "labeling_pipeline"
    kind = "benign"
    split = "fresh2"
    Knobs = LabelingPipelineKnobs
    signature = "one fixed classification instruction over customers' messages as they arrive, tiny answers"
    tiers = (("enterprise", 0.5), ("pro", 0.5))
    verifications = (("business", 1.0),)
    apis = (("openai", 0.8), ("anthropic", 0.2))
    activity_sigma = 0.3

    def account_ips(self, rng: np.random.Generator) -> list[str]:
        return [netid.cloud_ip(rng)]

    def account_user_agent(self, rng: np.random.Generator, api: str) -> str:
        return netid.user_agent(rng, "script" if rng.random() < 0.3 else netid.sdk_family(api, rng, node_share=0.3))

    def requests(self, account: Account) -> Iterator[Req]:
        k = self.k
        assert isinstance(k, LabelingPipelineKnobs)
        r = account.r
        ctx = self.ctx
        task = pick(r, k.tasks)
        template = fresh2_text.LABELING_TEMPLATES[task]
        model = ctx.models.secondary[0] if ctx.models.secondary and r.random() < 0.8 else ctx.models.primary
        support, general = customer_messages()
        times = timing.diurnal_times(
            account.np, ctx.start, ctx.end, self.expected_total(account), account.tz, "consumer"
        )
        ip, ua = account.ips[0], account.user_agent
        for t in times.tolist():
            text, source = pick(r, general) if r.random() < k.general_share else pick(r, support)
            endpoint, body = bodies.chat(
                account,
                model,
                [{"role": "user", "content": template.format(text=text)}],
                max_tokens=16 if task != "language" else 40,
                temperature=0.0,
            )
            sim = {"end_user": None, "harvest": False, "template_id": f"label/{task}", "source": source}
            yield (t, endpoint, body, ip, ua, sim)
