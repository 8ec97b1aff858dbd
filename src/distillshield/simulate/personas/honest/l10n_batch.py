"""L10n batch: an app's localisation job translating its UI strings into many languages in fast batches.

Imitates a product team's localisation step: when a release branch is cut (once or twice on a working
day) a script sends every new or changed UI string (`fresh4_text.l10n_strings`, verbs x objects x short
UI patterns) to the model once per target language, through one fixed template
(`fresh4_text.L10N_TEMPLATE`: keep the placeholders, about the same length, the translation only),
with many requests in flight and temperature 0.2: hundreds of requests in a few minutes, then nothing
until the next release. One cloud address, a script or SDK user agent.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from pydantic import Field

from distillshield.simulate import bodies, fresh4_text, netid, timing
from distillshield.simulate.personas.base import Account, Knobs, Persona, Req


class L10nBatchKnobs(Knobs):
    requests_per_day: float = Field(900.0, gt=0, description="mean requests per account per day (strings x languages)")
    releases_per_day: float = Field(1.5, gt=0, le=24, description="mean localisation runs per working day")
    languages: int = Field(
        6, ge=1, le=len(fresh4_text.L10N_LANGS), description="target languages (the first n of L10N_LANGS)"
    )
    concurrency: int = Field(12, ge=1, le=256, description="requests the script keeps in flight")
    latency_s: float = Field(1.2, gt=0, description="median model latency per request (paces the script)")


class L10nBatch(Persona):
    name = "l10n_batch"
    kind = "benign"
    split = "fresh4"
    Knobs = L10nBatchKnobs
    signature = "UI strings x target languages through one translation template, hundreds in minutes per release"
    tiers = (("standard", 0.5), ("pro", 0.5))
    verifications = (("business", 0.7), ("email", 0.3))
    apis = (("openai", 0.6), ("anthropic", 0.4))
    activity_sigma = 0.3

    def account_ips(self, rng: np.random.Generator) -> list[str]:
        return [netid.cloud_ip(rng)]

    def account_user_agent(self, rng: np.random.Generator, api: str) -> str:
        return netid.user_agent(rng, "script" if rng.random() < 0.4 else netid.sdk_family(api, rng))

    def requests(self, account: Account) -> Iterator[Req]:
        k = self.k
        assert isinstance(k, L10nBatchKnobs)
        ctx = self.ctx
        rng = account.np
        runs = timing.diurnal_times(rng, ctx.start, ctx.end, k.releases_per_day * ctx.days, account.tz, "work")
        per_run = self.expected_total(account) / max(runs.size, 1)
        langs = fresh4_text.L10N_LANGS[: k.languages]
        strings = fresh4_text.l10n_strings()
        model = self.model_for(account, ctx.start)
        pos = int(rng.integers(len(strings)))
        i = 0
        last = -1.0
        for run, t0 in enumerate(runs.tolist()):
            n_strings = max(1, round(per_run * float(rng.uniform(0.6, 1.4)) / len(langs)))
            batch = [strings[(pos + j) % len(strings)] for j in range(n_strings)]
            pos += n_strings
            jobs = [(s, lang) for s in batch for lang in langs]
            times = timing.lane_times(rng, max(t0, last), len(jobs), k.concurrency, k.latency_s).tolist()
            for t, (s, lang) in zip(times, jobs, strict=True):
                if t >= ctx.end:
                    return
                screen = fresh4_text.L10N_SCREENS[len(s) % len(fresh4_text.L10N_SCREENS)]
                prompt = fresh4_text.L10N_TEMPLATE.format(lang=lang, screen=screen, s=s)
                endpoint, body = bodies.chat(
                    account, model, [{"role": "user", "content": prompt}], max_tokens=200, temperature=0.2
                )
                sim = {
                    "end_user": None,
                    "harvest": False,
                    "conversation_id": f"{account.id}:run{run}:{i}",
                    "turn": 1,
                    "template_id": "l10n/ui",
                    "source": "ui-strings",
                    "target_lang": lang,
                }
                i += 1
                yield (t, endpoint, body, account.ips[0], account.user_agent, sim)
            last = times[-1] if times else last
