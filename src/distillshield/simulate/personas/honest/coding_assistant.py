"""Coding-assistant users: a developer's IDE sending bursts of requests with large code contexts.

Signature: bursts (median ~10 requests, tens of seconds apart) in office hours on weekdays; chat
requests carry whole source files (thousands of characters) wrapped in the IDE's fixed request
template; some accounts also send fill-in-the-middle autocompletions to /v1/completions.
Prompts: real programs (CodeI/O set, via reasoning-gym) and HumanEval problems with solutions, asked
about through the IDE's templates (that part really is templated by the IDE).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator

import numpy as np
from pydantic import Field

from distillshield.simulate import bodies, corpora, netid, text, timing
from distillshield.simulate.personas.base import Account, Knobs, Persona, Req, pick

_DEF = re.compile(r"^\s*def (\w+)\(", re.M)


class CodingAssistantKnobs(Knobs):
    requests_per_day: float = Field(40.0, gt=0, description="mean requests per developer per day")
    burst_mean: float = Field(10.0, ge=1, description="mean requests per coding burst")
    gap_s: float = Field(30.0, gt=0, description="median seconds between requests inside a burst")
    max_files: int = Field(3, ge=1, le=8, description="most source files attached as context to one request")
    autocomplete_share: float = Field(
        0.2, ge=0, le=1, description="share of requests that are /v1/completions autocompletions (OpenAI accounts)"
    )
    autocomplete_accounts: float = Field(
        0.6, ge=0, le=1, description="share of OpenAI-API developers whose IDE also autocompletes"
    )
    follow_up_prob: float = Field(0.35, ge=0, le=1, description="chance a chat request continues the previous one")


def context_files(account: Account, max_files: int) -> tuple[str, list[str]]:
    """The files a developer has open: a few real programs, sometimes a HumanEval module."""
    r = account.r
    samples = corpora.code_samples()
    parts, fns = [], []
    for _ in range(1 + r.randrange(max_files)):
        s = pick(r, samples)
        mod = pick(r, text.CODE_MODULES)
        path = pick(r, text.CODE_FILE_HEADERS).format(mod=mod)
        parts.append(f"File: {path}\n```python\n# {s.description[:160]}\n{s.code}\n```")
        fns.extend(_DEF.findall(s.code))
    if r.random() < 0.3:
        task = pick(r, corpora.humaneval())
        parts.append(f"File: src/{task.entry_point}.py\n```python\n{task.prompt}{task.solution}```")
        fns.append(task.entry_point)
    return "\n\n".join(parts), fns or ["main_solution"]


class CodingAssistant(Persona):
    name = "coding_assistant"
    kind = "benign"
    split = "dev"
    Knobs = CodingAssistantKnobs
    signature = "bursts of requests with large code contexts in office hours"
    tiers = (("standard", 0.4), ("pro", 0.5), ("enterprise", 0.1))
    apis = (("openai", 0.65), ("anthropic", 0.35))

    def account_user_agent(self, rng: np.random.Generator, api: str) -> str:
        return netid.user_agent(rng, "ide")

    def requests(self, account: Account) -> Iterator[Req]:
        k = self.k
        assert isinstance(k, CodingAssistantKnobs)
        r = account.r
        bursts = timing.diurnal_times(
            account.np, self.ctx.start, self.ctx.end, self.expected_total(account) / k.burst_mean, account.tz, "work"
        )
        system = pick(r, text.IDE_SYSTEM_PROMPTS)
        autocomplete = account.api == "openai" and r.random() < k.autocomplete_accounts
        end = self.ctx.end
        t_free = self.ctx.start
        for b, t0 in enumerate(bursts.tolist()):
            t = max(t0, t_free)
            ctx_text, fns = context_files(account, k.max_files)
            n = 1 + int(math.log(1 - r.random()) / math.log(1 - 1 / k.burst_mean)) if k.burst_mean > 1 else 1
            history: list[dict[str, str]] = []
            for i in range(min(n, 80)):
                if t >= end:
                    return
                model = self.model_for(account, t, 0.3)
                sim = {
                    "end_user": None,
                    "harvest": False,
                    "conversation_id": f"{account.id}:{b}",
                    "turn": i + 1,
                    "source": "codeio+humaneval",
                }
                if autocomplete and r.random() < k.autocomplete_share:
                    cut = r.randrange(len(ctx_text) // 3, len(ctx_text))
                    endpoint, body = bodies.completion(
                        model,
                        ctx_text[max(0, cut - 6000) : cut],
                        max_tokens=64,
                        temperature=0.2,
                        extra={"stop": ["\n\n"], "suffix": ctx_text[cut : cut + 800]},
                    )
                    sim["turn"] = 0
                    yield (t, endpoint, body, self.ip(account), account.user_agent, sim)
                    t += r.lognormvariate(math.log(4.0), 0.6)
                    continue
                ask = pick(r, text.CODE_ASKS).format(fn=pick(r, fns))
                if history and r.random() < k.follow_up_prob:
                    messages = [*history, {"role": "user", "content": ask}]
                else:
                    messages = [{"role": "user", "content": f"{ctx_text}\n\n{ask}"}]
                endpoint, body = bodies.chat(
                    account, model, messages, system=system, max_tokens=2048, temperature=0.1, stream=True
                )
                yield (t, endpoint, body, self.ip(account), account.user_agent, sim)
                # The IDE keeps the exchange; offline, the stand-in answer is the code the developer asked about.
                history = [
                    *messages,
                    {"role": "assistant", "content": "Here is the revised part:\n\n" + ctx_text[-1200:]},
                ]
                t += r.lognormvariate(math.log(k.gap_s), 0.7)
            t_free = t
