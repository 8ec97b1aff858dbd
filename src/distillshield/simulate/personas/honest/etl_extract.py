"""ETL extract: a freight forwarder's pipeline pulling fields out of shipping documents, around the clock.

Imitates a document pipeline: bills of lading, booking confirmations, arrival notices and forwarded
emails land in a queue at all hours (ships and partners work in every time zone), and a worker drains
the queue every few minutes, sending each document through one fixed extraction template
(`fresh4_text.ETL_TEMPLATE`, JSON only, temperature 0) with several requests in flight: a short burst
of sub-second to few-second gaps every few minutes, all day and night, volume a little higher in the
company's working hours. One cloud address, a script or SDK user agent, one template.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from pydantic import Field

from distillshield.simulate import bodies, fresh4_text, netid, timing
from distillshield.simulate.personas.base import Account, Knobs, Persona, Req


class EtlExtractKnobs(Knobs):
    requests_per_day: float = Field(3000.0, gt=0, description="mean documents (requests) per account per day")
    drain_every_min: float = Field(5.0, gt=0, le=240, description="minutes between two drains of the queue")
    concurrency: int = Field(8, ge=1, le=256, description="requests the worker keeps in flight")
    latency_s: float = Field(1.5, gt=0, description="median model latency per request (paces the worker)")


class EtlExtract(Persona):
    name = "etl_extract"
    kind = "benign"
    split = "fresh4"
    Knobs = EtlExtractKnobs
    signature = "one JSON extraction template over shipping documents, the queue drained in bursts every few minutes"
    tiers = (("pro", 0.5), ("enterprise", 0.5))
    verifications = (("business", 1.0),)
    apis = (("openai", 1.0),)
    activity_sigma = 0.3

    def account_ips(self, rng: np.random.Generator) -> list[str]:
        return [netid.cloud_ip(rng)]

    def account_user_agent(self, rng: np.random.Generator, api: str) -> str:
        return netid.user_agent(rng, "script" if rng.random() < 0.5 else "openai-python")

    def requests(self, account: Account) -> Iterator[Req]:
        k = self.k
        assert isinstance(k, EtlExtractKnobs)
        ctx = self.ctx
        rng = account.np
        every = k.drain_every_min * 60.0
        drains = timing.regular_times(rng, ctx.start, ctx.end, every, 0.1)
        # Documents arrive at all hours, somewhat more in the company's working day.
        weight = 0.6 + 0.4 * timing.activity_weight(drains, account.tz, "work")
        sizes = rng.poisson(self.expected_total(account) / max(drains.size, 1) * weight / weight.mean())
        chunks = [
            timing.lane_times(rng, t0, int(n), k.concurrency, k.latency_s) for t0, n in zip(drains, sizes, strict=True)
        ]
        times = np.sort(np.concatenate(chunks)) if chunks else np.empty(0)
        model = self.ctx.models.primary
        r = account.r
        for i, t in enumerate(times.tolist()):
            if t >= ctx.end:
                return
            doc, layout = fresh4_text.etl_document(r)
            endpoint, body = bodies.openai_chat(
                model,
                [
                    {"role": "system", "content": fresh4_text.ETL_SYSTEM},
                    {"role": "user", "content": fresh4_text.ETL_TEMPLATE.format(doc=doc)},
                ],
                max_tokens=400,
                temperature=0.0,
                extra={"response_format": {"type": "json_object"}},
            )
            sim = {
                "end_user": None,
                "harvest": False,
                "conversation_id": f"{account.id}:{i}",
                "turn": 1,
                "template_id": "etl/shipping",
                "source": f"etl-docs/{layout}",
            }
            yield (t, endpoint, body, account.ips[0], account.user_agent, sim)
