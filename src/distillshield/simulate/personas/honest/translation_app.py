"""Translation app: a translation service's back end, one fixed instruction, many languages, high volume.

Imitates a consumer translation app (web, phone keyboard, browser extension) that sends whatever its
users paste or type to the model under ONE fixed system prompt ("translate into {target} ... output
only the translation"), the target being each user's chosen language (17 languages, English and
Spanish most often). The texts are real and in many languages: utterances of chatterbot-corpus's 28
languages, WildChat requests, Japanese and English benchmark prompts (people translate questions too).
Volume is high and follows its users' day in a few markets (a smooth sum of day curves, not a
machine's schedule); temperature is low; one or two cloud addresses and one SDK user agent. The app
does not name its end users. The honest twin of a fixed-instruction extraction campaign and of a
sweep that hops between languages.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache

import numpy as np
from pydantic import Field

from distillshield.simulate import bodies, corpora, fresh2_text, netid, timing
from distillshield.simulate.personas.base import Account, Knobs, Persona, Req, pick

# (text, language code or "", source)
Text = tuple[str, str, str]


@lru_cache(maxsize=1)
def texts() -> tuple[tuple[Text, ...], tuple[Text, ...]]:
    """(short texts, longer texts) users translate: corpus utterances; requests and benchmark prompts."""
    short = tuple((u, d.lang, d.source) for d in corpora.chatterbot() for u in d.turns if len(u) >= 4)
    long = tuple((c.turns[0], c.lang, c.source) for c in corpora.wildchat_prompts() + corpora.vicuna())
    long += tuple((t, c.lang, c.source) for c in corpora.japanese() + corpora.mt_bench() for t in c.turns)
    return short, long


class TranslationAppKnobs(Knobs):
    requests_per_day: float = Field(1500.0, gt=0, description="mean requests per app per day")
    markets: int = Field(3, ge=1, le=8, description="time zones the app's users mostly live in")
    long_share: float = Field(0.3, ge=0, le=1, description="share of requests that translate a long text")


class TranslationApp(Persona):
    name = "translation_app"
    kind = "benign"
    split = "fresh2"
    Knobs = TranslationAppKnobs
    signature = "one fixed translate-into-{target} prompt over users' real texts in many languages, high volume"
    tiers = (("enterprise", 0.6), ("pro", 0.4))
    verifications = (("business", 1.0),)
    apis = (("openai", 0.7), ("anthropic", 0.3))
    activity_sigma = 0.3

    def account_ips(self, rng: np.random.Generator) -> list[str]:
        return [netid.cloud_ip(rng) for _ in range(1 + int(rng.random() < 0.5))]

    def account_user_agent(self, rng: np.random.Generator, api: str) -> str:
        return netid.user_agent(rng, netid.sdk_family(api, rng, node_share=0.5))

    def requests(self, account: Account) -> Iterator[Req]:
        k = self.k
        assert isinstance(k, TranslationAppKnobs)
        r = account.r
        ctx = self.ctx
        t_idx = r.randrange(len(fresh2_text.TRANSLATION_SYSTEMS))
        system = fresh2_text.TRANSLATION_SYSTEMS[t_idx]
        targets = fresh2_text.TRANSLATION_TARGETS
        weights = np.array([w for _, _, w in targets])
        cum = np.cumsum(weights / weights.sum()).tolist()
        short, long = texts()
        model = ctx.models.secondary[0] if ctx.models.secondary and r.random() < 0.7 else ctx.models.primary
        # Users in a few markets: the sum of their day curves.
        zones = [account.tz] + [timing.pick_timezone(account.np) for _ in range(k.markets - 1)]
        share = account.np.dirichlet(np.full(len(zones), 3.0))
        total = self.expected_total(account)
        times = np.sort(
            np.concatenate(
                [
                    timing.diurnal_times(account.np, ctx.start, ctx.end, total * float(s), tz, "consumer")
                    for tz, s in zip(zones, share, strict=True)
                ]
            )
        ).tolist()
        ips = account.ips
        for t in times:
            text, lang, source = pick(r, long) if r.random() < k.long_share else pick(r, short)
            x = r.random()
            name, code = targets[-1][0], targets[-1][1]
            for (n, c, _), edge in zip(targets, cum, strict=True):
                if x <= edge:
                    name, code = n, c
                    break
            if code == lang:  # nobody translates into the language the text is in
                name, code = ("Spanish", "es") if lang == "en" else ("English", "en")
            endpoint, body = bodies.chat(
                account,
                model,
                [{"role": "user", "content": text}],
                system=system.format(target=name),
                max_tokens=min(4096, 64 + 2 * len(text)),
                temperature=0.2,
            )
            sim = {
                "end_user": None,
                "harvest": False,
                "template_id": f"translate/{t_idx}",
                "source": source,
                "lang": code,
            }
            yield (t, endpoint, body, ips[0] if len(ips) == 1 else pick(r, ips), account.user_agent, sim)
