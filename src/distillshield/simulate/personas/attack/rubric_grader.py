"""Rubric / reward-model grading: using the model as a judge to label training data.

Signature: most requests are grading prompts (score a response against a rubric, compare responses A
and B, PASS/FAIL against a reference) that embed a question and one or two long candidate answers and
ask for structured scores (JSON, A/B); the candidates are real model-written answers and generated
bank answers, sometimes deliberately corrupted; scripted pacing.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator

import numpy as np
from pydantic import Field

from distillshield.simulate import bodies, corpora, netid, text
from distillshield.simulate.personas import harvest
from distillshield.simulate.personas.base import Account, IdFactory, Knobs, Persona, Req, pick

_DIGIT = re.compile(r"[0-9]")


class RubricGraderKnobs(Knobs):
    requests_per_day: float = Field(1500.0, gt=0, description="requests per account per day")
    corrupt_share: float = Field(0.4, ge=0, le=1, description="share of candidate answers deliberately made wrong")
    bank_share: float = Field(0.5, ge=0, le=1, description="share of items from generated banks (vs. real Q/A pairs)")


def corrupt(r: random.Random, answer: str) -> str:
    """A plausible wrong answer: a changed number or a truncated explanation."""
    digits = [m.start() for m in _DIGIT.finditer(answer)]
    if digits:
        i = pick(r, digits)
        return answer[:i] + str((int(answer[i]) + 1 + r.randrange(8)) % 10) + answer[i + 1 :]
    return answer[: max(20, len(answer) // 2)] + " ... therefore the answer is the opposite."


class RubricGrader(Persona):
    name = "rubric_grader"
    kind = "attack"
    split = "dev"
    Knobs = RubricGraderKnobs
    signature = "grading prompts (rubric scores, A/B comparisons, PASS/FAIL) with embedded candidate answers"
    tiers = (("pro", 0.6), ("standard", 0.4))
    verifications = (("email", 0.7), ("phone", 0.3))
    apis = (("openai", 0.6), ("anthropic", 0.4))
    rpm_fill = 0.8
    activity_sigma = 0.3
    account_age_days = (5.0, 90.0)

    def account_ips(self, rng: np.random.Generator) -> list[str]:
        return [netid.cloud_ip(rng)]

    def account_user_agent(self, rng: np.random.Generator, api: str) -> str:
        return netid.user_agent(rng, netid.sdk_family(api, rng, node_share=0.0))

    def after_accounts(self, accounts: list[Account], rng: np.random.Generator, ids: IdFactory) -> None:
        self.one_campaign(accounts, ids)

    def requests(self, account: Account) -> Iterator[Req]:
        k = self.k
        assert isinstance(k, RubricGraderKnobs)
        r = account.r
        ctx = self.ctx
        times = self.machine_times(account)
        pairs = corpora.reference_answers()
        model = ctx.models.primary
        for t in times:
            if r.random() < k.bank_share:
                cap = ("math", "logic", "puzzle")[r.randrange(3)]
                q, ref, source = harvest.draw(r, cap, ctx.seed)
            else:
                q, ref = pick(r, pairs)
                source = "reference-answers"
            a = corrupt(r, ref) if r.random() < k.corrupt_share else ref
            t_idx = r.randrange(len(text.RUBRIC_TEMPLATES))
            b = corrupt(r, ref) if a == ref else ref
            if r.random() < 0.5:
                a, b = b, a
            prompt = text.RUBRIC_TEMPLATES[t_idx].format(q=q, a=a, b=b, ref=ref)
            endpoint, body = bodies.chat(
                account, model, [{"role": "user", "content": prompt}], max_tokens=600, temperature=0.0
            )
            sim = {
                "end_user": None,
                "harvest": True,
                "template_id": f"rubric/{t_idx}",
                "capability": "grading",
                "source": source,
            }
            yield (t, endpoint, body, self.ip(account), account.user_agent, sim)
