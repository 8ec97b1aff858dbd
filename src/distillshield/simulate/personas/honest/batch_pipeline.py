"""Enterprise batch pipelines: one fixed instruction template over thousands of documents, 24/7.

Signature: every request of an account uses the same template (`sim.template_id` is constant), the
documents differ; arrivals are machine-regular (near-constant inter-arrival, at every hour of the day
and night), temperature 0, one cloud IP, one script user agent. This is the honest twin of a hydra
cluster's shared templates, and the main false-positive trap for template-repetition detectors.
Documents: real text (WildChat requests as customer messages, book passages, program descriptions).
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from typing import ClassVar

import numpy as np
from pydantic import Field, field_validator

from distillshield.simulate import bodies, corpora, netid, text, timing
from distillshield.simulate.personas.base import Account, Knobs, Persona, Req, pick

TASKS = tuple(text.PIPELINE_TEMPLATES)


class BatchPipelineKnobs(Knobs):
    requests_per_day: float = Field(2000.0, gt=0, description="documents per pipeline per day")
    tasks: list[str] = Field(
        default_factory=lambda: list(TASKS), description=f"tasks pipelines may run, from {', '.join(TASKS)}"
    )
    jitter: float = Field(0.05, ge=0, le=0.5, description="timing jitter as a fraction of the interval")
    max_tokens: int = Field(256, ge=1, description="the pipeline's fixed max_tokens")

    @field_validator("tasks")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        bad = [t for t in v if t not in text.PIPELINE_TEMPLATES]
        if bad or not v:
            raise ValueError(f"unknown task(s) {bad or '[]'}; choose from {', '.join(TASKS)}")
        return v


@lru_cache(maxsize=1)
def documents() -> tuple[tuple[str, str], ...]:
    """(source, text) documents a pipeline may process, in a fixed order."""
    docs = [("ifbench-wildchat", c.turns[0]) for c in corpora.wildchat_prompts()]
    docs += [("in-the-year-2889", p) for p in corpora.book_passages()]
    docs += [("codeio", s.description) for s in corpora.code_samples()]
    docs += [("vicuna", c.turns[0]) for c in corpora.vicuna()]
    return tuple(docs)


class BatchPipeline(Persona):
    name = "batch_pipeline"
    kind = "benign"
    split = "dev"
    Knobs = BatchPipelineKnobs
    signature = "one fixed template per account over many documents, machine-regular timing around the clock"
    tiers = (("enterprise", 0.7), ("pro", 0.3))
    verifications = (("business", 0.9), ("id", 0.1))
    apis = (("openai", 0.8), ("anthropic", 0.2))
    activity_sigma = 0.5
    # task -> instruction templates a pipeline of this persona may run (variants swap in their own)
    templates: ClassVar[dict[str, tuple[str, ...]]] = text.PIPELINE_TEMPLATES

    def account_ips(self, rng: np.random.Generator) -> list[str]:
        return [netid.cloud_ip(rng)]

    def account_user_agent(self, rng: np.random.Generator, api: str) -> str:
        return (
            netid.user_agent(rng, "script") if rng.random() < 0.4 else netid.user_agent(rng, netid.sdk_family(api, rng))
        )

    def requests(self, account: Account) -> Iterator[Req]:
        k = self.k
        assert isinstance(k, BatchPipelineKnobs)
        r = account.r
        task = pick(r, k.tasks)
        templates = self.templates[task]
        t_idx = r.randrange(len(templates))
        template = templates[t_idx]
        template_id = f"{task}/{t_idx}"
        lang = pick(r, text.PIPELINE_LANGS)
        model = (
            self.ctx.models.secondary[0] if self.ctx.models.secondary and r.random() < 0.6 else self.ctx.models.primary
        )
        docs = documents()
        offset = r.randrange(len(docs))
        prefix = "".join(r.choice("ABCDEFGHJKLMNPQRSTUVWXYZ") for _ in range(3))
        # The pipeline's dispatcher releases documents at a fixed rate (its rate limit or cron cadence);
        # workers only set how many are in flight, not when each starts.
        times = timing.regular_times(
            account.np, self.ctx.start, self.ctx.end, timing.DAY / self.daily(account), k.jitter
        )
        ip, ua = account.ips[0], account.user_agent
        for i, t in enumerate(times.tolist()):
            source, doc = docs[(offset + i) % len(docs)]
            prompt = template.format(doc=doc, doc_id=f"{prefix}-{100000 + i}", lang=lang)
            endpoint, body = bodies.chat(
                account, model, [{"role": "user", "content": prompt}], max_tokens=k.max_tokens, temperature=0.0
            )
            yield (
                t,
                endpoint,
                body,
                ip,
                ua,
                {"end_user": None, "harvest": False, "template_id": template_id, "source": source},
            )
