"""Self-learners: adults studying a subject on their own who ask the model to show its reasoning.

The honest side of chain-of-thought elicitation, in the dev split so that training can see it: people
preparing for an exam, a certification or an interview, or working through a textbook, who paste a
practice problem and ask, in their own words, to be walked through it ("show each step so I can
follow"). Most conversations go on: the learner reads the answer and probes it ("why does that step
work?", "can you give me another one like it to try?"). Questions are real (MT-Bench maths, reasoning
and STEM questions with their real second turns, Vicuna) or generated practice problems (reasoning-gym
maths and logic). The words around each question come from a small grammar of openers, framings and
asks, with typing slips, so common phrasings recur across learners the way they do among real people.
Timing is a person's (evenings and weekends, reading and think times); one home address, a second one
(phone, work) for some.

This persona exists because none of the dev split's honest clients asks for reasoning: a model trained
on them learns that any reasoning ask is an attacker's. Only the `dev_learners` scenario holds it (docs/
detection.md round 9 trained with it and measured the cost; the shipped model was not). It is written
independently of the fresh split's `student` persona (a different grammar, sources and rhythm).
"""

from __future__ import annotations

import dataclasses
import random
from functools import lru_cache

import numpy as np
from pydantic import Field

from distillshield.simulate import corpora, fresh_text, netid
from distillshield.simulate.personas.common import ChatPool
from distillshield.simulate.personas.honest.casual_chat import CasualChat, CasualChatKnobs
from distillshield.simulate.sampling import pick

LEARNER_OPENERS = (
    "",
    "",
    "",
    "",
    "Quick question. ",
    "I'm studying for my exam and this one beats me. ",
    "Revising for a certification: ",
    "I'm teaching myself this. ",
    "Self-study question: ",
    "Going through my textbook, ",
    "From my online course: ",
    "I'm trying to learn this properly. ",
    "Stuck on a practice problem. ",
    "Night class question. ",
    "Can you help? ",
    "Hey! ",
    "I'm a bit rusty on this. ",
    "Prepping for an interview: ",
    "My tutor is away this week, so: ",
    "Practice exam, question 4: ",
)
LEARNER_FRAMES = (
    "{q}",
    "{q}",
    "{q}",
    "Problem: {q}",
    "Here's the question. {q}",
    "The exercise says: {q}",
    "{q}\n\n",
)
LEARNER_ASKS = (
    "",
    "",
    "",
    "",
    " Walk me through the reasoning.",
    " Please show each step so I can follow.",
    " Can you break it down step by step?",
    " Explain the method, not just the answer.",
    " How would you think about this, one step at a time?",
    " I want to understand why, so show your working.",
    " What's the reasoning behind it?",
    " Could you go through it slowly?",
    " Show me how you get there.",
    " I'll compare with my notes, so list the steps.",
    " I tried {guess}, is that right? Explain where I went wrong.",
    " Explain it like I'm new to this.",
)
LEARNER_FOLLOW_UPS = (
    "Why does that step work?",
    "I don't follow the part in the middle, can you redo it?",
    "ok, and what if we changed one of the numbers?",
    "Can you give me another one like it to try?",
    "So the key idea is what exactly?",
    "That's different from what my book does. Which is right?",
    "thanks, that helped",
    "Can you check my attempt? I got {guess}",
    "Where do people usually make a mistake here?",
    "Can you summarise the method in two lines?",
    "makes sense now",
    "Is there a faster way?",
    "How would this show up on an exam?",
    "what's this technique called?",
    "Could you explain the second part differently?",
)


def learner_opening(r: random.Random, question: str) -> str:
    """A learner's first message around a pasted question: opener, framing, maybe a reasoning ask, slips."""
    text = fresh_text.typo(r, pick(r, LEARNER_OPENERS), 0.4) + pick(r, LEARNER_FRAMES).format(q=question)
    text += fresh_text.typo(r, pick(r, LEARNER_ASKS).format(guess=r.randrange(2, 500)), 0.5)
    if r.random() < 0.25:
        text = text[:1].lower() + text[1:]
    return text.strip()


@lru_cache(maxsize=1)
def learner_pool() -> ChatPool:
    """Study questions: MT-Bench maths/reasoning/STEM (real second turns), Vicuna, generated practice."""
    mt = tuple(c for c in corpora.mt_bench() if c.category in ("math", "reasoning", "stem"))
    practice = tuple(
        corpora.Conversation(q.source, q.capability, (q.question,), (), "en")
        for cap in ("math", "logic")
        for q in corpora.question_bank(cap, 7, 16)
    )
    pool = ChatPool.build([(0.35, mt), (0.15, corpora.vicuna()), (0.5, practice)])
    follow = tuple(f.format(guess=g) for f in LEARNER_FOLLOW_UPS for g in ((12, 40, 7) if "{guess}" in f else (0,)))
    return dataclasses.replace(pool, follow_ups=follow)


class SelfLearnerKnobs(CasualChatKnobs):
    requests_per_day: float = Field(5.0, gt=0, description="mean requests (turns) per learner per day")
    turns_mean: float = Field(2.3, ge=1, description="mean user turns per study conversation (geometric)")
    think_s: float = Field(90.0, gt=0, description="median seconds between an answer and the next turn")
    stream_prob: float = Field(0.75, ge=0, le=1, description="share of accounts whose client streams")
    new_model_share: float = Field(0.0, ge=0, le=1, description="share of turns on a newly released model")
    second_ip_share: float = Field(
        0.3, ge=0, le=1, description="share of learners who also study from a second address"
    )


class SelfLearner(CasualChat):
    """Casual chat's conversations, on study questions opened in the learner's own words."""

    name = "self_learner"
    kind = "benign"
    split = "dev"
    Knobs = SelfLearnerKnobs
    signature = (
        "one learner per account: practice problems in their own words, asking for the reasoning, then probing it"
    )
    tiers = (("free", 0.6), ("standard", 0.3), ("pro", 0.1))
    verifications = (("email", 0.85), ("phone", 0.15))
    activity_sigma = 0.8
    account_age_days = (10.0, 600.0)

    def account_user_agent(self, rng: np.random.Generator, api: str) -> str:
        return netid.user_agent(rng, "chat-app" if rng.random() < 0.7 else netid.sdk_family(api, rng))

    def account_ips(self, rng: np.random.Generator) -> list[str]:
        k = self.k
        assert isinstance(k, SelfLearnerKnobs)
        ips = [netid.residential_ip(rng)]
        if rng.random() < k.second_ip_share:
            ips.append(netid.residential_ip(rng))
        return ips

    def pool(self) -> ChatPool:
        return learner_pool()

    def opening(self, r: random.Random, prompt: str) -> str:
        return learner_opening(r, prompt)
