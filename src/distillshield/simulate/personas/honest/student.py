"""Students: individual student accounts asking for step-by-step help with homework, in their own words.

Imitates honest students (one account each) who ask for explanations "step by step" because they need
to show their working: the same phrase a chain-of-thought harvester uses, asked honestly. Each first
message is the student's own wording around a homework problem (GSM-style word problems and maths
from reasoning-gym, MT-Bench STEM/reasoning questions, Vicuna questions): casual openers, framings,
asks and typos drawn from a grammar, so the words around the problem rarely repeat; follow-ups are
short and personal ("wait why did you do that in step 2?"). Timing is a person's (after school and
evenings, human think times). Part of the accounts sit behind a school's NAT (a few addresses in one
/24, shared with classmates) during school hours and at home otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
from pydantic import Field

from distillshield.simulate import bodies, corpora, fresh_text, netid, timing
from distillshield.simulate.personas.base import Account, IdFactory, Knobs, Persona, Req, pick
from distillshield.simulate.personas.honest.education import assignment


class StudentKnobs(Knobs):
    requests_per_day: float = Field(6.0, gt=0, description="mean requests per student per day")
    turns_mean: float = Field(2.0, ge=1, description="mean user turns per homework conversation")
    schools: int = Field(2, ge=1, description="schools whose NAT some of the students share")
    school_share: float = Field(0.5, ge=0, le=1, description="share of students behind a school NAT in school hours")
    think_s: float = Field(70.0, gt=0, description="median seconds between an answer and the next turn")


class Student(Persona):
    name = "student"
    kind = "benign"
    split = "fresh"
    Knobs = StudentKnobs
    signature = "one student per account: homework problems in the student's own words asking for steps"
    tiers = (("free", 0.7), ("standard", 0.3))
    verifications = (("email", 0.9), ("phone", 0.1))
    activity_sigma = 0.7
    account_age_days = (20.0, 400.0)

    def account_user_agent(self, rng: np.random.Generator, api: str) -> str:
        return netid.user_agent(rng, "chat-app" if rng.random() < 0.8 else netid.sdk_family(api, rng))

    def account_ips(self, rng: np.random.Generator) -> list[str]:
        return [netid.residential_ip(rng)]

    def after_accounts(self, accounts: list[Account], rng: np.random.Generator, ids: IdFactory) -> None:
        k = self.k
        assert isinstance(k, StudentKnobs)
        schools = []
        for _ in range(k.schools):
            home = netid.residential_ip(rng).rsplit(".", 1)[0]
            nat = [f"{home}.{int(rng.integers(2, 254))}" for _ in range(1 + int(rng.integers(2)))]
            schools.append((nat, timing.pick_timezone(rng)))
        for a in accounts:
            if rng.random() < k.school_share:
                nat, tz = schools[int(rng.integers(len(schools)))]
                a.state["school_ips"] = nat
                a.tz = tz  # classmates live where their school is

    def _ip(self, account: Account, t: float) -> str:
        """The school NAT on weekdays 8:00-15:00 local for school students, home otherwise."""
        nat = account.state.get("school_ips")
        if nat:
            local = t + account.tz * timing.HOUR
            if 8 <= (local // timing.HOUR) % 24 < 15 and (local // timing.DAY + 3) % 7 < 5:
                return pick(account.r, nat)
        return account.ips[0]

    def requests(self, account: Account) -> Iterator[Req]:
        k = self.k
        assert isinstance(k, StudentKnobs)
        r = account.r
        ctx = self.ctx
        starts = timing.diurnal_times(
            account.np, ctx.start, ctx.end, self.expected_total(account) / k.turns_mean, account.tz, "consumer"
        ).tolist()
        stand_ins = corpora.reference_answers()
        model = self.model_for(account, ctx.start)
        stream = r.random() < 0.8
        t_free = ctx.start
        for c, t0 in enumerate(starts):
            t = max(t0, t_free + r.expovariate(1 / 300.0))
            problem, source = assignment(account, ctx.seed)
            n = 1 + int(math.log(1 - r.random()) / math.log(1 - 1 / k.turns_mean)) if k.turns_mean > 1 else 1
            messages: list[dict[str, Any]] = []
            for turn in range(1, min(n, 6) + 1):
                if t >= ctx.end:
                    return
                if turn == 1:
                    ask = fresh_text.student_ask(r, problem)
                else:
                    ask = fresh_text.typo(
                        r, pick(r, fresh_text.STUDENT_FOLLOW_UPS).format(guess=r.randrange(2, 400)), 0.5
                    )
                messages.append({"role": "user", "content": ask})
                endpoint, body = bodies.chat(
                    account, model, list(messages), max_tokens=1024, temperature=0.7, stream=stream
                )
                sim = {
                    "end_user": None,
                    "harvest": False,
                    "conversation_id": f"{account.id}:{c}",
                    "turn": turn,
                    "source": source,
                }
                yield (t, endpoint, body, self._ip(account, t), account.user_agent, sim)
                reply = pick(r, stand_ins)[1]
                messages.append({"role": "assistant", "content": reply})
                t += r.lognormvariate(math.log(k.think_s), 0.8) + len(reply) / 60.0
            t_free = t
