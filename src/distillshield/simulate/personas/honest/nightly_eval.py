"""Nightly eval: a data-science team's harness re-running one public benchmark subset every night.

Imitates a team that tracks the model in production with a cron job: every night at the same local
hour (plus a few minutes of queueing) the harness sends the same fixed subset of public benchmarks
(MT-Bench first turns, then GSM-style word problems generated from one fixed benchmark seed) in
three prompt formats each (`fresh3_text.NIGHTLY_TEMPLATES`: bare, "Question/Answer", an instruction
with an answer marker: a prompt-sensitivity evaluation), with parallel workers, temperature 0 and
the harness's system prompt; nothing by day. So the same texts recur night after night, and each
item recurs in several wordings within a night. One cloud address, the harness's user agent. The
honest twin of `paraphrase_fanout`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from functools import lru_cache

import numpy as np
from pydantic import Field

from distillshield.simulate import bodies, corpora, fresh3_text, netid, timing
from distillshield.simulate.personas.base import Account, Knobs, Persona, Req
from distillshield.simulate.personas.common import merge_lanes

BENCH_SEED = 2024  # the benchmark's own published seed: the same items for every team, every night


@lru_cache(maxsize=1)
def benchmark() -> tuple[tuple[str, str], ...]:
    """(question, source) of the benchmark subset, in the harness's order."""
    out = [(c.turns[0], "mt-bench") for c in corpora.mt_bench()]
    out += [(q.question, q.source) for q in corpora.dataset_items("gsm_symbolic", BENCH_SEED, 250)]
    return tuple(out)


class NightlyEvalKnobs(Knobs):
    requests_per_day: float = Field(600.0, gt=0, description="requests per nightly run (items x prompt formats)")
    run_hour: float = Field(2.0, ge=0, lt=24, description="local hour the nightly job starts")
    concurrency: int = Field(8, ge=1, le=128, description="parallel requests the harness keeps in flight")
    latency_s: float = Field(5.0, gt=0, description="median model latency per request (paces the workers)")


class NightlyEval(Persona):
    name = "nightly_eval"
    kind = "benign"
    split = "fresh3"
    Knobs = NightlyEvalKnobs
    signature = "the same benchmark subset every night at the same hour, each item in three prompt formats"
    tiers = (("pro", 0.5), ("enterprise", 0.5))
    verifications = (("business", 1.0),)
    apis = (("openai", 0.6), ("anthropic", 0.4))
    activity_sigma = 0.0  # a cron job: the same size every night

    def account_ips(self, rng: np.random.Generator) -> list[str]:
        return [netid.cloud_ip(rng)]

    def account_user_agent(self, rng: np.random.Generator, api: str) -> str:
        return fresh3_text.NIGHTLY_UA[0 if api == "openai" else 1]

    def requests(self, account: Account) -> Iterator[Req]:
        k = self.k
        assert isinstance(k, NightlyEvalKnobs)
        ctx = self.ctx
        runs = []
        first_night = math.floor((ctx.start + account.tz * timing.HOUR) / timing.DAY) - 1
        night = first_night
        while True:
            t0 = night * timing.DAY + (k.run_hour - account.tz) * timing.HOUR + account.r.uniform(0, 300)
            if t0 >= ctx.end:
                break
            if t0 >= ctx.start:
                runs.append(self._run(account, len(runs), t0))
            night += 1
        yield from merge_lanes(runs)

    def _run(self, account: Account, run: int, t0: float) -> Iterator[Req]:
        k = self.k
        assert isinstance(k, NightlyEvalKnobs)
        ctx = self.ctx
        formats = fresh3_text.NIGHTLY_TEMPLATES
        items = benchmark()[: max(1, round(k.requests_per_day / len(formats)))]
        n = len(items) * len(formats)
        times = timing.lane_times(account.np, t0, n, k.concurrency, k.latency_s).tolist()
        model = self.model_for(account, t0)
        for j, t in enumerate(times):
            if t >= ctx.end:
                return
            i, f = divmod(j, len(formats))
            q, source = items[i]
            endpoint, body = bodies.chat(
                account, model, [{"role": "user", "content": formats[f].format(q=q)}],
                system=fresh3_text.NIGHTLY_SYSTEM, max_tokens=1024, temperature=0.0,
            )  # fmt: skip
            sim = {
                "end_user": None,
                "harvest": False,
                "conversation_id": f"{account.id}:night{run}:{i}:{f}",
                "turn": 1,
                "template_id": f"nightly/{f}",
                "source": source,
            }
            yield (t, endpoint, body, account.ips[0], account.user_agent, sim)
