"""Polyglot sweep: a human-paced capability sweep that hops between languages from message to message.

Imitates an operator collecting multilingual training data while passing as one person: one or a few
accounts at a busy person's volume, conversations on a consumer day curve with human think times,
from one or two residential addresses and a browser. The questions walk the capabilities round-robin
(coding, maths, logic, puzzles, code reasoning from the attackers' banks, with a casual ask written in
the message's language; general knowledge as real questions in that language from chatterbot-corpus,
and Japanese MT-Bench / Vicuna / Rakuda for Japanese) and the languages round-robin (13 languages plus
some English), so consecutive messages of one conversation are often in different languages, which
a multilingual person's rarely are, and capability coverage is broad and even. One `cluster_id`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

import numpy as np
from pydantic import Field, field_validator

from distillshield.simulate import bodies, corpora, fresh2_text, netid, timing
from distillshield.simulate.personas import harvest
from distillshield.simulate.personas.base import Account, IdFactory, Knobs, Persona, Req, pick

# Topics of chatterbot-corpus that are chit-chat with or about the bot, not questions a sweep would ask.
_CHATTER_TOPICS = {
    "botprofile",
    "compliment",
    "conversations",
    "coversations",
    "emociones",
    "emotion",
    "emotions",
    "gossip",
    "greeting",
    "greetings",
    "humor",
    "perfilbot",
    "profile",
    "psicologia",
    "psychology",
}


@lru_cache(maxsize=1)
def native_questions() -> dict[str, tuple[tuple[str, str], ...]]:
    """Real questions per language: (question, source). chatterbot-corpus knowledge questions, and for
    Japanese also the Japanese MT-Bench, Vicuna and Rakuda first turns."""
    out: dict[str, list[tuple[str, str]]] = {lang: [] for lang in fresh2_text.POLYGLOT_LANGS}
    for d in corpora.chatterbot():
        q = d.turns[0]
        if d.lang in out and d.topic not in _CHATTER_TOPICS and q.endswith(("?", "？", "؟")) and len(q) >= 8:
            out[d.lang].append((q, d.source))
    out["ja"].extend((c.turns[0], c.source) for c in corpora.japanese())
    return {lang: tuple(v) for lang, v in out.items()}


class PolyglotSweepKnobs(Knobs):
    requests_per_day: float = Field(90.0, gt=0, description="requests per account per day (a busy person's)")
    questions_mean: float = Field(2.0, ge=1, description="mean sweep questions per conversation")
    english_share: float = Field(0.15, ge=0, le=1, description="share of questions asked in English")
    languages: list[str] = Field(
        default_factory=lambda: list(fresh2_text.POLYGLOT_LANGS),
        description=f"other languages rotated through, from {', '.join(fresh2_text.POLYGLOT_LANGS)}",
    )
    think_s: float = Field(45.0, gt=0, description="median seconds between an answer and the next message")
    capabilities: harvest.Capabilities = Field(
        default_factory=lambda: ["general", "coding", "math", "logic", "puzzle", "code"],
        description=f"capabilities swept round-robin, from {', '.join(harvest.CAPABILITIES)}",
    )

    @field_validator("languages")
    @classmethod
    def _langs(cls, v: list[str]) -> list[str]:
        bad = [x for x in v if x not in fresh2_text.POLYGLOT_LANGS]
        if bad or not v:
            raise ValueError(f"unknown language(s) {bad or '[]'}; choose from {', '.join(fresh2_text.POLYGLOT_LANGS)}")
        return v


class PolyglotSweep(Persona):
    name = "polyglot_sweep"
    kind = "attack"
    split = "fresh2"
    Knobs = PolyglotSweepKnobs
    signature = "a person's pace, but every message another language and the next capability round-robin"
    tiers = (("standard", 0.6), ("pro", 0.4))
    verifications = (("email", 0.6), ("phone", 0.4))
    activity_sigma = 0.3
    account_age_days = (10.0, 150.0)

    def account_ips(self, rng: np.random.Generator) -> list[str]:
        return [netid.residential_ip(rng) for _ in range(1 + int(rng.random() < 0.4))]

    def account_user_agent(self, rng: np.random.Generator, api: str) -> str:
        return netid.user_agent(rng, "chat-app" if rng.random() < 0.8 else netid.sdk_family(api, rng))

    def after_accounts(self, accounts: list[Account], rng: np.random.Generator, ids: IdFactory) -> None:
        self.one_campaign(accounts, ids)
        cluster = ids.new("clu")
        for i, a in enumerate(accounts):
            a.cluster_id = cluster
            a.state["offset"] = i * 3  # accounts of one operator start at different capabilities and languages

    def _question(self, account: Account, cap: str, lang: str) -> tuple[str, str]:
        """(message, source) asking about one capability in one language."""
        r = account.r
        native = native_questions().get(lang, ())
        opener = pick(r, fresh2_text.POLYGLOT_OPENERS[lang])
        if cap == "general" and len(native) >= 5:
            q, source = pick(r, native)
            return opener + q, source
        q, _a, source = harvest.draw(r, cap, self.ctx.seed)
        return opener + pick(r, fresh2_text.POLYGLOT_ASKS[lang]).format(q=q), source

    def requests(self, account: Account) -> Iterator[Req]:
        k = self.k
        assert isinstance(k, PolyglotSweepKnobs)
        r = account.r
        ctx = self.ctx
        starts = timing.diurnal_times(
            account.np, ctx.start, ctx.end, self.expected_total(account) / k.questions_mean, account.tz, "consumer"
        ).tolist()
        caps, langs = k.capabilities, list(k.languages)
        step = account.state.get("offset", 0)
        lang_step = step
        stream = r.random() < 0.8
        stand_ins = corpora.reference_answers()
        t_free = ctx.start
        for c, t0 in enumerate(starts):
            t = max(t0, t_free + r.expovariate(1 / 180.0))
            model = self.model_for(account, t, 0.3)
            n_q = 1 + int(math.log(1 - r.random()) / math.log(1 - 1 / k.questions_mean)) if k.questions_mean > 1 else 1
            messages: list[dict[str, Any]] = []
            for i in range(min(n_q, 8)):
                if t >= ctx.end:
                    return
                cap = caps[step % len(caps)]
                step += 1
                if r.random() < k.english_share:
                    lang = "en"
                else:
                    lang = langs[lang_step % len(langs)]
                    lang_step += 1
                ask, source = self._question(account, cap, lang)
                messages.append({"role": "user", "content": ask})
                endpoint, body = bodies.chat(
                    account, model, list(messages), max_tokens=2048, temperature=0.7, stream=stream
                )
                sim = {
                    "end_user": None,
                    "harvest": True,
                    "conversation_id": f"{account.id}:{c}",
                    "turn": i + 1,
                    "capability": cap,
                    "source": source,
                    "lang": lang,
                }
                yield (t, endpoint, body, self.ip(account), account.user_agent, sim)
                reply = pick(r, stand_ins)[1]
                messages.append({"role": "assistant", "content": reply})
                t += r.lognormvariate(math.log(k.think_s), 0.8) + len(reply) / 70.0
            t_free = t
