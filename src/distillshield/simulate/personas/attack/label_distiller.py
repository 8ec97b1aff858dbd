"""Label distiller: task-domain extraction, a public corpus pushed through one fixed labelling instruction.

Imitates an operator who wants the model's skill at one task (here a multilingual dialogue-act,
sentiment and topic annotator with a written rationale) rather than its general knowledge: every
utterance of a public dialogue corpus (chatterbot-corpus, 28 languages, ~19,600 utterances; the
previous utterance as context) goes through ONE fixed annotation instruction, as an app's back end
would send it: JSON output (`response_format` on the OpenAI API), temperature 0, steady scripted
pacing day and night under its rpm share, one cloud address and a script or SDK user agent per
account. The campaign's accounts split the corpus between them and walk their share in corpus order
(language by language, file by file). It is the attacking twin of `labeling_pipeline`; only the
source of the text (a public corpus walked systematically, not customers' messages arriving on a
day curve) and the rationale it asks for tell them apart. One `cluster_id` and `campaign_id`.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache

import numpy as np
from pydantic import Field, field_validator

from distillshield.simulate import bodies, corpora, fresh2_text, netid
from distillshield.simulate.personas.base import Account, IdFactory, Knobs, Persona, Req

LANGS = tuple(sorted(set(corpora.CHATTERBOT_LANGS.values())))

# (utterance, previous utterance or "", lang, source)
Utterance = tuple[str, str, str, str]


@lru_cache(maxsize=8)
def utterances(langs: tuple[str, ...]) -> tuple[Utterance, ...]:
    """Every distinct (previous, utterance) pair of the corpus in the given languages, in corpus order."""
    seen: set[tuple[str, str]] = set()
    out = []
    for d in corpora.chatterbot():
        if d.lang not in langs:
            continue
        for i, u in enumerate(d.turns):
            prev = d.turns[i - 1] if i else ""
            if (prev, u) in seen:
                continue
            seen.add((prev, u))
            out.append((u, prev, d.lang, d.source))
    return tuple(out)


class LabelDistillerKnobs(Knobs):
    requests_per_day: float = Field(1500.0, gt=0, description="requests per account per day")
    languages: list[str] = Field(
        default_factory=lambda: list(LANGS),
        description="corpus languages labelled (ISO codes of chatterbot-corpus's 28 languages)",
    )

    @field_validator("languages")
    @classmethod
    def _langs(cls, v: list[str]) -> list[str]:
        bad = [x for x in v if x not in LANGS]
        if bad or not v:
            raise ValueError(f"unknown language(s) {bad or '[]'}; choose from {', '.join(LANGS)}")
        return v


class LabelDistiller(Persona):
    name = "label_distiller"
    kind = "attack"
    split = "fresh2"
    Knobs = LabelDistillerKnobs
    signature = "one fixed labelling instruction with a rationale over a public corpus, split over accounts, 24/7"
    tiers = (("pro", 0.6), ("enterprise", 0.4))
    verifications = (("business", 0.7), ("email", 0.3))
    apis = (("openai", 0.8), ("anthropic", 0.2))
    rpm_fill = 0.6
    activity_sigma = 0.2
    account_age_days = (5.0, 60.0)

    def account_ips(self, rng: np.random.Generator) -> list[str]:
        return [netid.cloud_ip(rng)]

    def account_user_agent(self, rng: np.random.Generator, api: str) -> str:
        return netid.user_agent(rng, "script" if rng.random() < 0.4 else netid.sdk_family(api, rng, node_share=0.0))

    def after_accounts(self, accounts: list[Account], rng: np.random.Generator, ids: IdFactory) -> None:
        cluster, campaign = ids.new("clu"), ids.new("camp")
        for i, a in enumerate(accounts):
            a.cluster_id, a.campaign_id = cluster, campaign
            a.state["slot"], a.state["of"] = i, len(accounts)

    def requests(self, account: Account) -> Iterator[Req]:
        k = self.k
        assert isinstance(k, LabelDistillerKnobs)
        ctx = self.ctx
        items = utterances(tuple(sorted(k.languages)))
        n, slot = account.state["of"], account.state["slot"]
        mine = [i for i in range(len(items)) if i % n == slot] or list(range(len(items)))
        model = ctx.models.secondary[0] if ctx.models.secondary and account.r.random() < 0.5 else ctx.models.primary
        extra = {"response_format": {"type": "json_object"}}
        ip, ua = account.ips[0], account.user_agent
        for j, t in enumerate(self.machine_times(account)):
            text, prev, lang, source = items[mine[j % len(mine)]]
            prompt = fresh2_text.LABEL_DISTILL_INSTRUCTION.format(prev=prev or "(start of dialogue)", text=text)
            endpoint, body = bodies.chat(
                account, model, [{"role": "user", "content": prompt}], max_tokens=300, temperature=0.0, extra=extra
            )
            sim = {
                "end_user": None,
                "harvest": True,
                "template_id": "label_distill/0",
                "capability": "labelling",
                "source": source,
                "lang": lang,
            }
            yield (t, endpoint, body, ip, ua, sim)
