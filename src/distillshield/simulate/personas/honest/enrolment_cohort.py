"""Enrolment cohorts: honest people who signed up together because a course or a school told them to.

The honest counterpart of a campaign's accounts created in waves (detect/cohort.py), so that the cohort
evidence is measured against people who really do arrive together: a course whose first week says "create an
API account", or a school's intake week. Each cohort's accounts are created within a couple of days of its
enrolment date, a few weeks before the traffic starts, each its own account (individual sign-ups, not an
organisation's seats), from home addresses. Then each participant studies like a self-learner (the grammar of
`self_learner`: practice problems in their own words, often asking to be walked through, then probing), a
handful of requests over the days simulated.

What they study is the knob that matters:
- a course (`subjects: 1`): one subject, its practice problems drawn from that subject's banks (arithmetic and
  word problems for a maths course, logic puzzles for a logic course);
- an intake (`subjects: 0`): every subject, the broad study mix of `self_learner` (MT-Bench maths, reasoning
  and STEM questions, Vicuna, practice maths and logic): freshmen who signed up in orientation week and use
  the model for all their classes. That is as wide as a capability sweep, asks for reasoning as often as a
  slow campaign, and its accounts were born together: the hardest honest case for cohort evidence.

In the `dev_cohorts` scenario only (measurement, not training): the shipped model never saw it.
"""

from __future__ import annotations

import dataclasses
from functools import lru_cache

import numpy as np
from pydantic import Field

from distillshield.simulate import corpora, timing
from distillshield.simulate.personas.base import Account, IdFactory
from distillshield.simulate.personas.common import ChatPool
from distillshield.simulate.personas.honest.self_learner import (
    LEARNER_FOLLOW_UPS,
    SelfLearner,
    SelfLearnerKnobs,
    learner_pool,
)

COURSE_SUBJECTS = ("math", "logic")  # subjects with practice banks a course can be built on


@lru_cache(maxsize=8)
def course_pool(subject: str) -> ChatPool:
    """One subject's practice problems (its reasoning-gym banks), with the learners' follow-ups."""
    practice = tuple(
        corpora.Conversation(q.source, q.capability, (q.question,), (), "en")
        for q in corpora.question_bank(subject, 23, 24)
    )
    pool = ChatPool.build([(1.0, practice)])
    follow = tuple(f.format(guess=g) for f in LEARNER_FOLLOW_UPS for g in ((12, 40, 7) if "{guess}" in f else (0,)))
    return dataclasses.replace(pool, follow_ups=follow)


class EnrolmentCohortKnobs(SelfLearnerKnobs):
    requests_per_day: float = Field(1.6, gt=0, description="mean requests (turns) per participant per day")
    cohorts: int = Field(2, ge=1, description="cohorts (courses or intakes) the accounts are split into")
    subjects: int = Field(
        1, ge=0, le=1, description="1: each cohort is a course on one subject; 0: an intake studying everything"
    )
    enrol_hours: float = Field(48.0, gt=0, description="how long a cohort's sign-ups take, from its enrolment date")
    enrolled_days_before: tuple[float, float] = Field(
        (7.0, 45.0), description="how long before the traffic starts each cohort enrolled (days, uniform)"
    )


class EnrolmentCohort(SelfLearner):
    """Self-learners who signed up together in a cohort, studying one subject (a course) or all (an intake)."""

    name = "enrolment_cohort"
    kind = "benign"
    split = "dev"
    Knobs = EnrolmentCohortKnobs
    signature = (
        "participants of a course or a school intake, accounts created within days of each other, studying in "
        "their own words and asking for the reasoning"
    )
    tiers = (("free", 0.8), ("standard", 0.2))

    def make_accounts(self, n: int, rng: np.random.Generator, ids: IdFactory) -> list[Account]:
        k = self.k
        assert isinstance(k, EnrolmentCohortKnobs)
        lo, hi = k.enrolled_days_before
        enrolled = self.ctx.start - rng.uniform(lo, hi, k.cohorts) * timing.DAY
        subjects = [COURSE_SUBJECTS[int(rng.integers(len(COURSE_SUBJECTS)))] for _ in range(k.cohorts)]
        out = []
        for i in range(n):
            c = i % k.cohorts
            a = self.new_account(rng, ids, i)
            # Sign-ups bunch at the start of the enrolment window (the first lecture) and trail off.
            a.created_at = float(enrolled[c] + min(rng.exponential(k.enrol_hours / 3), k.enrol_hours) * 3600.0)
            a.state["subject"] = subjects[c] if k.subjects == 1 else ""
            out.append(a)
        self.after_accounts(out, rng, ids)
        return out

    def pool_for(self, account: Account) -> ChatPool:
        subject = account.state.get("subject") or ""
        return course_pool(subject) if subject else learner_pool()
