"""Chain-of-thought harvester: prompts that coerce the model into writing out its reasoning traces.

Signature: nearly every request asks the model to "articulate the internal reasoning ... step by
step" (or to show its chain of thought in tags, or to reconstruct the reasoning behind a given final
answer), in many languages (about half not English); questions are reasoning-heavy (maths, logic,
puzzles from generated banks, MT-Bench reasoning/maths); all accounts of the entry share one
campaign id; steady, round-the-clock, script-like pacing.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
from pydantic import Field, field_validator

from distillshield.simulate import bodies, netid, text
from distillshield.simulate.personas import harvest
from distillshield.simulate.personas.base import Account, IdFactory, Knobs, Persona, Req, pick

LANGS = tuple(text.COT_TEMPLATES)


class CotHarvesterKnobs(Knobs):
    requests_per_day: float = Field(1500.0, gt=0, description="requests per account per day")
    non_english_share: float = Field(0.5, ge=0, le=1, description="share of requests in a language other than English")
    languages: list[str] = Field(
        default_factory=lambda: [lang for lang in LANGS if lang != "en"],
        description=f"non-English languages used, from {', '.join(LANGS)}",
    )
    with_answer_share: float = Field(
        0.35, ge=0, le=1, description="share that give the final answer and ask for the reasoning behind it"
    )
    capabilities: harvest.Capabilities = Field(
        default_factory=lambda: ["math", "logic", "puzzle", "general"],
        description=f"capabilities targeted, from {', '.join(harvest.CAPABILITIES)}",
    )

    @field_validator("languages")
    @classmethod
    def _langs(cls, v: list[str]) -> list[str]:
        bad = [x for x in v if x not in LANGS]
        if bad or not v:
            raise ValueError(f"unknown language(s) {bad or '[]'}; choose from {', '.join(LANGS)}")
        return v


def cot_prompt(r: random.Random, q: str, a: str, lang: str, with_answer: bool) -> tuple[str, str]:
    """(prompt, template id) coercing a reasoning trace for question `q` (answer `a`) in `lang`."""
    options = text.COT_TEMPLATES[lang]
    # Answer-conditioned templates contain "{a}"; pick one when asked and the answer is known.
    wanted = [i for i, tpl in enumerate(options) if ("{a}" in tpl) == (with_answer and bool(a))]
    idx = pick(r, wanted) if wanted else r.randrange(len(options))
    return options[idx].format(q=q, a=a), f"cot/{lang}/{idx}"


class CotHarvester(Persona):
    name = "cot_harvester"
    kind = "attack"
    split = "dev"
    Knobs = CotHarvesterKnobs
    signature = "nearly every prompt coerces step-by-step internal reasoning, about half not in English"
    tiers = (("standard", 0.6), ("pro", 0.4))
    verifications = (("email", 0.7), ("phone", 0.3))
    apis = (("openai", 0.7), ("anthropic", 0.3))
    rpm_fill = 0.8
    activity_sigma = 0.3
    account_age_days = (2.0, 45.0)

    def account_ips(self, rng: np.random.Generator) -> list[str]:
        return [netid.cloud_ip(rng) for _ in range(1 + int(rng.integers(2)))]

    def account_user_agent(self, rng: np.random.Generator, api: str) -> str:
        return netid.user_agent(rng, netid.sdk_family(api, rng, node_share=0.0))

    def after_accounts(self, accounts: list[Account], rng: np.random.Generator, ids: IdFactory) -> None:
        self.one_campaign(accounts, ids)

    def requests(self, account: Account) -> Iterator[Req]:
        k = self.k
        assert isinstance(k, CotHarvesterKnobs)
        r = account.r
        ctx = self.ctx
        times = self.machine_times(account)
        model = ctx.models.primary
        for t in times:
            cap = harvest.pick_capability(r, k.capabilities)
            q, a, source = harvest.draw(r, cap, ctx.seed)
            lang = pick(r, k.languages) if r.random() < k.non_english_share else "en"
            prompt, tid = cot_prompt(r, q, a, lang, r.random() < k.with_answer_share)
            endpoint, body = bodies.chat(
                account, model, [{"role": "user", "content": prompt}], max_tokens=4096, temperature=0.6
            )
            sim = {
                "end_user": None,
                "harvest": True,
                "template_id": tid,
                "capability": cap,
                "source": source,
                "lang": lang,
            }
            yield (t, endpoint, body, self.ip(account), account.user_agent, sim)
