"""Logprobs harvester: probing next-token distributions, not answers (Carlini et al. 2024 style).

Signature: nearly every request asks for log-probabilities (chat `logprobs` + `top_logprobs` 20, or
legacy completions `logprobs` 5) with tiny `max_tokens` (1-16) at temperature 0; a large share add a
`logit_bias` that sweeps token ids in order (the projection-recovery attack); prompts are short text
prefixes cut from real text; steady scripted pacing.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from pydantic import Field

from distillshield.simulate import bodies, corpora, netid
from distillshield.simulate.personas.base import Account, IdFactory, Knobs, Persona, Req, pick


class LogprobsHarvesterKnobs(Knobs):
    requests_per_day: float = Field(5000.0, gt=0, description="requests per account per day")
    logit_bias_share: float = Field(0.6, ge=0, le=1, description="share of requests carrying a logit_bias sweep")
    bias_tokens: int = Field(4, ge=1, le=300, description="token ids biased per request")
    vocab: int = Field(100_000, ge=1000, description="token-id range the sweep walks through")
    completions_share: float = Field(0.4, ge=0, le=1, description="share sent to /v1/completions (logprobs=5)")


def prefixes() -> list[tuple[str, str]]:
    """(source, text) prefixes: the first words of real documents and prompts."""
    out = [("in-the-year-2889", p) for p in corpora.book_passages()]
    out += [("ifbench-wildchat", c.turns[0]) for c in corpora.wildchat_prompts()]
    out += [("vicuna", c.turns[0]) for c in corpora.vicuna()]
    return out


class LogprobsHarvester(Persona):
    name = "logprobs_harvester"
    kind = "attack"
    split = "dev"
    Knobs = LogprobsHarvesterKnobs
    signature = "logprobs/top_logprobs on nearly every request, max_tokens <= 16, logit_bias sweeps over token ids"
    tiers = (("pro", 0.5), ("standard", 0.5))
    verifications = (("email", 0.8), ("phone", 0.2))
    apis = (("openai", 1.0),)
    rpm_fill = 0.9
    activity_sigma = 0.2
    account_age_days = (2.0, 30.0)

    def account_ips(self, rng: np.random.Generator) -> list[str]:
        return [netid.cloud_ip(rng)]

    def account_user_agent(self, rng: np.random.Generator, api: str) -> str:
        return netid.user_agent(rng, "script")

    def after_accounts(self, accounts: list[Account], rng: np.random.Generator, ids: IdFactory) -> None:
        self.one_campaign(accounts, ids)

    def requests(self, account: Account) -> Iterator[Req]:
        k = self.k
        assert isinstance(k, LogprobsHarvesterKnobs)
        r = account.r
        ctx = self.ctx
        times = self.machine_times(account)
        docs = prefixes()
        model = ctx.models.primary
        next_token = r.randrange(k.vocab)  # the sweep's position
        for t in times:
            source, doc = pick(r, docs)
            words = doc.split()
            prefix = " ".join(words[: 3 + r.randrange(max(1, min(40, len(words))))])
            extra: dict[str, object] = {}
            if r.random() < k.logit_bias_share:
                extra["logit_bias"] = {str((next_token + i) % k.vocab): 100 for i in range(k.bias_tokens)}
                next_token = (next_token + k.bias_tokens) % k.vocab
            max_tokens = (1, 1, 1, 4, 16)[r.randrange(5)]
            if r.random() < k.completions_share:
                endpoint, body = bodies.completion(
                    model, prefix, max_tokens=max_tokens, temperature=0.0, extra={"logprobs": 5, **extra}
                )
            else:
                endpoint, body = bodies.openai_chat(
                    model,
                    [{"role": "user", "content": prefix}],
                    max_tokens=max_tokens,
                    temperature=0.0,
                    extra={"logprobs": True, "top_logprobs": 20, **extra},
                )
            sim = {"end_user": None, "harvest": True, "capability": "logprobs", "source": source}
            yield (t, endpoint, body, account.ips[0], account.user_agent, sim)
