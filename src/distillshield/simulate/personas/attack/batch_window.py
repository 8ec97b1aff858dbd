"""Batch-window harvester: a whole day's capability sweep submitted in one or two dense windows.

Imitates an operator who runs extraction as an offline batch job: once a day (or twice) a JSONL file of
requests, one per cell of a capability sweep in the operator's own wording (`fresh4_text.sweep_grid`:
12 skills x 30 subjects x 4 levels x 5 output forms x 4 example domains, 28,800 cells; the accounts
split the grid, each shuffles its share once, and each cell goes out once), is pushed through the API
by a pool of workers: thousands of requests in a few minutes at a fixed local hour (night by default),
then nothing until the next window. Never over the provider's per-minute limit. One cloud address, an
SDK or script user agent, one `cluster_id` per entry; all accounts run on the operator's one scheduler
(one time zone).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
from pydantic import Field, field_validator

from distillshield.simulate import bodies, fresh4_text, netid, timing
from distillshield.simulate.personas.base import Account, IdFactory, Knobs, Persona, Req


def paced(times: np.ndarray, min_gap: float) -> np.ndarray:
    """Sorted `times` pushed later where needed so that no two are closer than `min_gap` seconds."""
    if times.size == 0:
        return times
    steps = np.arange(times.size) * min_gap
    return np.maximum.accumulate(np.sort(times) - steps) + steps


class BatchWindowKnobs(Knobs):
    requests_per_day: float = Field(2500.0, gt=0, description="requests per account per day (all windows)")
    window_hours: list[float] = Field(
        default_factory=lambda: [1.5], description="local hours the batch windows open (one or two a day)"
    )
    concurrency: int = Field(48, ge=1, le=512, description="requests the batch runner keeps in flight")
    latency_s: float = Field(6.0, gt=0, description="median model latency per request (paces the workers)")

    @field_validator("window_hours")
    @classmethod
    def _hours(cls, v: list[float]) -> list[float]:
        if not 1 <= len(v) <= 2 or any(not 0 <= h < 24 for h in v):
            raise ValueError("give one or two local hours, each in [0, 24)")
        return sorted(v)


class BatchWindow(Persona):
    name = "batch_window"
    kind = "attack"
    split = "fresh4"
    Knobs = BatchWindowKnobs
    signature = "a capability-sweep grid in its own wording, a day's harvest in one or two windows of minutes"
    tiers = (("pro", 0.4), ("enterprise", 0.6))
    verifications = (("business", 0.7), ("email", 0.3))
    apis = (("openai", 0.7), ("anthropic", 0.3))
    activity_sigma = 0.2
    rpm_fill = 0.95
    account_age_days = (10.0, 90.0)

    def _k(self) -> BatchWindowKnobs:
        k = self.k
        assert isinstance(k, BatchWindowKnobs)
        return k

    def account_ips(self, rng: np.random.Generator) -> list[str]:
        return [netid.cloud_ip(rng)]

    def account_user_agent(self, rng: np.random.Generator, api: str) -> str:
        return netid.user_agent(rng, netid.sdk_family(api, rng, node_share=0.0) if rng.random() < 0.7 else "script")

    def after_accounts(self, accounts: list[Account], rng: np.random.Generator, ids: IdFactory) -> None:
        cluster, campaign = ids.new("clu"), ids.new("camp")
        tz = float(accounts[0].tz) if accounts else 0.0
        for i, a in enumerate(accounts):
            a.cluster_id, a.campaign_id = cluster, campaign
            a.tz = tz  # one operator, one scheduler
            a.state["slot"], a.state["of"] = i, len(accounts)

    def window_starts(self, account: Account) -> list[float]:
        """When this account's windows open: the knob's local hours every day, plus a minute or two of cron jitter."""
        k, ctx = self._k(), self.ctx
        out = []
        day = math.floor((ctx.start + account.tz * timing.HOUR) / timing.DAY) - 1
        while True:
            base = day * timing.DAY - account.tz * timing.HOUR
            if base >= ctx.end:
                break
            for h in k.window_hours:
                t0 = base + h * timing.HOUR + account.r.uniform(0, 120)
                if ctx.start <= t0 < ctx.end:
                    out.append(t0)
            day += 1
        return out

    def requests(self, account: Account) -> Iterator[Req]:
        k = self._k()
        ctx = self.ctx
        starts = self.window_starts(account)
        per_window = self.daily(account) / len(k.window_hours)
        chunks = []
        for t0 in starts:
            n = max(1, round(per_window * account.r.uniform(0.9, 1.1)))
            chunks.append(timing.lane_times(account.np, t0, n, k.concurrency, k.latency_s))
        times = paced(np.concatenate(chunks), self.min_gap()) if chunks else np.empty(0)
        grid = fresh4_text.sweep_grid()
        cells = list(range(account.state["slot"], len(grid), account.state["of"]))
        account.r.shuffle(cells)  # the operator shuffles its share of the grid once: every skill every night
        model = self.model_for(account, ctx.start)
        for i, t in enumerate(times.tolist()):
            if t >= ctx.end:
                return
            prompt, cell = grid[cells[i % len(cells)]]
            endpoint, body = bodies.chat(
                account,
                model,
                [{"role": "user", "content": prompt}],
                system=fresh4_text.SWEEP_SYSTEM,
                max_tokens=2048,
                temperature=0.7,
            )
            sim = {
                "end_user": None,
                "harvest": True,
                "conversation_id": f"{account.id}:{i}",
                "turn": 1,
                "capability": "general",
                "template_id": f"sweep/{cell.split('/')[0]}",
                "source": "sweep-grid",
                "cell": cell,
            }
            yield (t, endpoint, body, account.ips[0], account.user_agent, sim)
