"""CI evals: a product team's regression suite fired at the model on every commit.

Imitates a team that tests its app's prompts in continuous integration: each push to the repository
(on the team's working day) starts a CI job that runs the whole fixed suite (`fresh4_text.ci_suite`:
20 cases of the app's own questions in 4 variants, the same 80 prompts every run) with many requests
in flight, temperature 0 and the app's system prompt: a minute of dense traffic, then silence until
the next push. Each job runs on a fresh CI runner, so the address changes from run to run (cloud
ranges); the harness's user agent names it. The honest twin of the fast attackers' bursts.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from pydantic import Field

from distillshield.simulate import bodies, fresh4_text, netid, timing
from distillshield.simulate.personas.base import Account, Knobs, Persona, Req
from distillshield.simulate.personas.common import merge_lanes


class CiEvalsKnobs(Knobs):
    requests_per_day: float = Field(800.0, gt=0, description="mean requests per account per day (suite x pushes)")
    concurrency: int = Field(16, ge=1, le=256, description="requests the CI job keeps in flight")
    latency_s: float = Field(2.5, gt=0, description="median model latency per request (paces the workers)")


class CiEvals(Persona):
    name = "ci_evals"
    kind = "benign"
    split = "fresh4"
    Knobs = CiEvalsKnobs
    signature = "the same 80-prompt suite at temperature 0 in a dense burst per push, a new CI address each run"
    tiers = (("pro", 0.6), ("enterprise", 0.4))
    verifications = (("business", 1.0),)
    apis = (("openai", 1.0),)
    activity_sigma = 0.3

    def account_ips(self, rng: np.random.Generator) -> list[str]:
        return [netid.cloud_ip(rng)]

    def account_user_agent(self, rng: np.random.Generator, api: str) -> str:
        return fresh4_text.CI_UA[int(rng.integers(len(fresh4_text.CI_UA)))]

    def requests(self, account: Account) -> Iterator[Req]:
        ctx = self.ctx
        suite = fresh4_text.ci_suite()
        pushes = self.expected_total(account) / len(suite)
        starts = timing.diurnal_times(account.np, ctx.start, ctx.end, pushes, account.tz, "work").tolist()
        runner_ips = [netid.cloud_ip(account.np) for _ in starts]
        yield from merge_lanes(self._run(account, j, t0, runner_ips[j]) for j, t0 in enumerate(starts))

    def _run(self, account: Account, run: int, t0: float, ip: str) -> Iterator[Req]:
        k = self.k
        assert isinstance(k, CiEvalsKnobs)
        suite = fresh4_text.ci_suite()
        rng = np.random.default_rng([account.seed, 7, run])
        times = timing.lane_times(rng, t0 + float(rng.uniform(20, 90)), len(suite), k.concurrency, k.latency_s)
        model = self.ctx.models.primary
        for i, t in enumerate(times.tolist()):
            if t >= self.ctx.end:
                return
            endpoint, body = bodies.openai_chat(
                model,
                [{"role": "system", "content": fresh4_text.CI_SYSTEM}, {"role": "user", "content": suite[i]}],
                max_tokens=300,
                temperature=0.0,
                extra={"seed": 1234},
            )
            sim = {
                "end_user": None,
                "harvest": False,
                "conversation_id": f"{account.id}:run{run}:{i}",
                "turn": 1,
                "template_id": f"ci/{i // len(fresh4_text.CI_VARIANTS)}",
                "source": "ci-suite",
            }
            yield (t, endpoint, body, ip, account.user_agent, sim)
