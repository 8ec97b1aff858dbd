"""Rapid CoT harvester: a question bank wrapped in reasoning-elicitation asks, sent as fast as the client allows.

Imitates an operator who does not bother to look human: one or a few accounts, an async client with
many requests in flight, a bank of reasoning questions (maths, logic, puzzles, code reasoning from the
generated banks) each wrapped in an ask for the full worked reasoning before a marked final answer
(`fresh4_text.REASONING_ASKS`). It sends in bursts of hundreds with sub-second to few-second gaps
(`burst_times`), short pauses between bursts (the client refilling its queue), around the clock, never
over the provider's per-minute limit. One cloud address, an async SDK or HTTP-library user agent, one
`cluster_id` per entry.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
from pydantic import Field

from distillshield.simulate import bodies, fresh4_text, netid
from distillshield.simulate.personas import harvest
from distillshield.simulate.personas.base import Account, IdFactory, Knobs, Persona, Req

ASYNC_UA = {
    "openai": ("AsyncOpenAI/Python 1.59.7", "python-httpx/0.28.1", "aiohttp/3.11.11"),
    "anthropic": ("AsyncAnthropic/Python 0.49.0", "python-httpx/0.28.1", "aiohttp/3.11.11"),
}


def burst_times(
    rng: np.random.Generator,
    start: float,
    end: float,
    expected: float,
    burst_mean: float,
    gap_median: float,
    min_gap: float,
    gap_sigma: float = 0.9,
) -> np.ndarray:
    """Machine-paced bursts: about `expected` times in [start, end), in bursts of ~`burst_mean` requests
    (lognormal sizes) whose gaps are lognormal around `gap_median` seconds, never below `min_gap`; the
    pauses between bursts (exponential, at least `min_gap`) make the long-run rate come out right."""
    if expected <= 0 or end <= start:
        return np.empty(0)
    gap_mean = max(gap_median * math.exp(gap_sigma**2 / 2), min_gap)
    cycle = burst_mean * (end - start) / expected  # mean seconds from one burst's start to the next
    pause_mean = max(cycle - burst_mean * gap_mean, 10.0)
    t = start + float(rng.uniform(0, pause_mean))
    out: list[np.ndarray] = []
    while t < end:
        n = max(5, int(rng.lognormal(math.log(burst_mean) - 0.125, 0.5)))
        gaps = np.maximum(rng.lognormal(math.log(gap_median), gap_sigma, n), min_gap)
        gaps[0] = 0.0
        ts = t + np.cumsum(gaps)
        out.append(ts)
        t = float(ts[-1]) + min_gap + float(rng.exponential(pause_mean))
    arr = np.concatenate(out)
    return arr[arr < end]


class RapidCotKnobs(Knobs):
    requests_per_day: float = Field(6000.0, gt=0, description="requests per account per day")
    burst_mean: int = Field(300, ge=20, le=5000, description="mean requests in one burst")
    gap_median_s: float = Field(0.8, gt=0, le=30, description="median seconds between two requests of a burst")
    capabilities: harvest.Capabilities = Field(
        default_factory=lambda: ["math", "logic", "puzzle", "code"],
        description=f"capabilities harvested, from {', '.join(harvest.CAPABILITIES)}",
    )


class RapidCot(Persona):
    name = "rapid_cot"
    kind = "attack"
    split = "fresh4"
    Knobs = RapidCotKnobs
    signature = "reasoning questions wrapped in asks for the full worked reasoning, in bursts of hundreds, 24/7"
    tiers = (("pro", 0.5), ("enterprise", 0.5))
    verifications = (("email", 0.5), ("business", 0.5))
    apis = (("openai", 0.75), ("anthropic", 0.25))
    activity_sigma = 0.2
    rpm_fill = 0.95  # as fast as the client allows: up to the provider's per-minute limit, never over it
    account_age_days = (3.0, 40.0)

    def _k(self) -> RapidCotKnobs:
        k = self.k
        assert isinstance(k, RapidCotKnobs)
        return k

    def account_ips(self, rng: np.random.Generator) -> list[str]:
        return [netid.cloud_ip(rng)]

    def account_user_agent(self, rng: np.random.Generator, api: str) -> str:
        options = ASYNC_UA[api]
        return options[int(rng.integers(len(options)))]

    def after_accounts(self, accounts: list[Account], rng: np.random.Generator, ids: IdFactory) -> None:
        cluster, campaign = ids.new("clu"), ids.new("camp")
        for a in accounts:
            a.cluster_id, a.campaign_id = cluster, campaign
            a.state["system"] = rng.random() < 0.5

    def requests(self, account: Account) -> Iterator[Req]:
        k = self._k()
        r = account.r
        ctx = self.ctx
        times = burst_times(
            account.np, ctx.start, ctx.end, self.expected_total(account), k.burst_mean, k.gap_median_s, self.min_gap()
        )
        system = fresh4_text.RAPID_SYSTEM if account.state.get("system") else None
        model = ctx.models.primary
        for i, t in enumerate(times.tolist()):
            cap = harvest.pick_capability(r, k.capabilities)
            q, _a, source = harvest.draw(r, cap, ctx.seed)
            idx = int(r.random() * len(fresh4_text.REASONING_ASKS))
            endpoint, body = bodies.chat(
                account,
                model,
                [{"role": "user", "content": fresh4_text.REASONING_ASKS[idx].format(q=q)}],
                system=system,
                max_tokens=4096,
                temperature=0.7,
            )
            sim = {
                "end_user": None,
                "harvest": True,
                "conversation_id": f"{account.id}:{i}",
                "turn": 1,
                "capability": cap,
                "template_id": f"rapid/{idx}",
                "source": source,
            }
            yield (t, endpoint, body, account.ips[0], account.user_agent, sim)
