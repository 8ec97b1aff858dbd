"""Paraphrasing chain-of-thought harvester (fresh variant of `cot_harvester`): new words every request.

Imitates a CoT-harvesting script that has learnt template detectors exist: every request asks for the
model's internal reasoning ("lay out the full internal reasoning ... one step per line") in a wording
built afresh from a grammar (thousands of combinations, before or after the question), in English, on
reasoning-heavy bank questions; some give the final answer and ask for the reasoning behind it. The
rest is a script's: steady round-the-clock pacing under its rpm share, cloud addresses, an SDK.
"""

from __future__ import annotations

from collections.abc import Iterator

from pydantic import Field

from distillshield.simulate import bodies, fresh_text
from distillshield.simulate.personas import harvest
from distillshield.simulate.personas.attack.cot_harvester import CotHarvester
from distillshield.simulate.personas.base import Account, Knobs, Req


class CotParaphraserKnobs(Knobs):
    requests_per_day: float = Field(800.0, gt=0, description="requests per account per day")
    with_answer_share: float = Field(
        0.3, ge=0, le=1, description="share that give the final answer and ask for the reasoning behind it"
    )
    capabilities: harvest.Capabilities = Field(
        default_factory=lambda: ["math", "logic", "puzzle", "code"],
        description=f"capabilities targeted, from {', '.join(harvest.CAPABILITIES)}",
    )


class CotParaphraser(CotHarvester):
    name = "cot_paraphraser"
    split = "fresh"
    Knobs = CotParaphraserKnobs
    signature = "script-paced CoT coercion whose instruction is reworded afresh on every request"

    def requests(self, account: Account) -> Iterator[Req]:
        k = self.k
        assert isinstance(k, CotParaphraserKnobs)
        r = account.r
        ctx = self.ctx
        model = ctx.models.primary
        for t in self.machine_times(account):
            cap = harvest.pick_capability(r, k.capabilities)
            q, a, source = harvest.draw(r, cap, ctx.seed)
            prompt = fresh_text.cot_instruction(r, q, a, r.random() < k.with_answer_share)
            endpoint, body = bodies.chat(
                account, model, [{"role": "user", "content": prompt}], max_tokens=4096, temperature=0.6
            )
            sim = {"end_user": None, "harvest": True, "capability": cap, "source": source, "lang": "en"}
            yield (t, endpoint, body, self.ip(account), account.user_agent, sim)
