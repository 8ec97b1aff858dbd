"""School district: a district's tutoring app that names each student in `user` / `metadata.user_id`.

Imitates a district-wide tutoring app: one account relays the questions of a thousand or more students
of several schools, from the app's back end (one or two cloud addresses, the app's user agent), and
passes each student's opaque id the way the API asks (OpenAI `user`, Anthropic `metadata.user_id`).
The system prompt is the district tutor's, with the student's grade. In class periods (weekdays,
8:00-14:00 in the district's time zone, 50-minute periods) a class of one school opens the teacher's
problem within minutes and most of its students ask about it step by step, each in their own words
(opener, framing, ask and slips from a grammar: `fresh2_text.school_ask`), with short personal
follow-ups; in the evening, scattered homework questions. Many ids, near-identical problems at once,
"step by step" everywhere: it looks like coordinated reasoning harvesting and is not. Problems: the
same assignment pool as `education` (GSM-style and maths from reasoning-gym, MT-Bench, Vicuna).
"""

from __future__ import annotations

import hashlib
import heapq
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
from pydantic import Field

from distillshield.simulate import bodies, fresh2_text, netid, timing
from distillshield.simulate.personas.base import MESSAGES, Account, IdFactory, Knobs, Persona, Req, pick
from distillshield.simulate.personas.common import ChatPool, merge_lanes
from distillshield.simulate.personas.honest.education import assignment

PERIOD_S = 50 * 60.0
PERIODS = 7  # 8:00 to 13:50 local


class SchoolDistrictKnobs(Knobs):
    requests_per_day: float = Field(600.0, gt=0, description="mean requests per district account per day")
    students: int = Field(1200, ge=10, le=100_000, description="students behind one district account")
    schools: int = Field(6, ge=1, le=200, description="schools the students are spread over")
    class_share: float = Field(0.6, ge=0, le=1, description="share of requests sent during class periods")
    class_size: int = Field(28, ge=2, description="students in a class")
    attendance: float = Field(0.7, gt=0, le=1, description="share of a class's students who ask during the period")


class SchoolDistrict(Persona):
    name = "school_district"
    kind = "benign"
    split = "fresh2"
    Knobs = SchoolDistrictKnobs
    signature = "one district account, each request naming its student (user / metadata.user_id), classes at once"
    tiers = (("enterprise", 0.6), ("pro", 0.4))
    verifications = (("business", 1.0),)
    activity_sigma = 0.3

    def account_ips(self, rng: np.random.Generator) -> list[str]:
        return [netid.cloud_ip(rng) for _ in range(1 + int(rng.random() < 0.5))]

    def account_user_agent(self, rng: np.random.Generator, api: str) -> str:
        return fresh2_text.SD_USER_AGENTS[int(rng.integers(len(fresh2_text.SD_USER_AGENTS)))]

    def after_accounts(self, accounts: list[Account], rng: np.random.Generator, ids: IdFactory) -> None:
        k = self.k
        assert isinstance(k, SchoolDistrictKnobs)
        for i, a in enumerate(accounts):
            a.end_users = k.students
            a.tz = float(rng.choice([-8.0, -7.0, -6.0, -5.0, 0.0, 1.0]))  # districts in the US or Europe
            a.api = "openai" if i % 2 == 0 else "anthropic"  # apps on both APIs in every scenario

    @staticmethod
    def student_id(account: Account, u: int) -> str:
        return "stu_" + hashlib.sha256(f"{account.id}/student/{u}".encode()).hexdigest()[:12]

    def _slots(self, account: Account) -> list[float]:
        """Start times of every class period of the scenario (weekdays, local 8:00 + 50-minute periods)."""
        ctx = self.ctx
        off = account.tz * timing.HOUR
        day0 = math.floor((ctx.start + off) / timing.DAY) * timing.DAY - off
        out = []
        for d in range(int(math.ceil(ctx.days)) + 1):
            midnight = day0 + d * timing.DAY
            if ((midnight + off) // timing.DAY + 3) % 7 >= 5:  # Saturday, Sunday
                continue
            for p in range(PERIODS):
                t = midnight + 8 * timing.HOUR + p * PERIOD_S
                if ctx.start <= t < ctx.end - 600:
                    out.append(t)
        return out

    def requests(self, account: Account) -> Iterator[Req]:
        k = self.k
        assert isinstance(k, SchoolDistrictKnobs)
        r = account.r
        ctx = self.ctx
        district = pick(r, fresh2_text.SD_DISTRICTS)
        model = self.model_for(account, ctx.start)
        total = self.expected_total(account)
        per_class = k.class_size * k.attendance * 1.6  # students ask about 1.6 times in a period
        slots = self._slots(account)
        classes: list[tuple[float, int]] = []
        n_classes = min(int(round(total * k.class_share / per_class)), len(slots) * k.schools)
        if n_classes:  # one class of a school per period at most
            picks = account.np.choice(len(slots) * k.schools, size=n_classes, replace=False)
            classes = sorted((slots[int(p) // k.schools], int(p) % k.schools) for p in picks)
        homework = timing.diurnal_times(
            account.np, ctx.start, ctx.end, total * (1 - k.class_share) / 1.5, account.tz, "consumer"
        ).tolist()
        yield from merge_lanes(
            [self._classes(account, classes, district, model), self._homework(account, homework, district, model)]
        )

    def _send(
        self, account: Account, t: float, u: int, messages: list[dict[str, Any]], district: str, model: str, sim: dict
    ) -> Req:
        k = self.k
        assert isinstance(k, SchoolDistrictKnobs)
        sid = self.student_id(account, u)
        grade = fresh2_text.SD_GRADES[(u // k.schools) % len(fresh2_text.SD_GRADES)]
        endpoint, body = bodies.chat(
            account,
            model,
            list(messages),
            system=fresh2_text.SD_SYSTEM.format(district=district, grade=grade),
            max_tokens=700,
            temperature=0.5,
            stream=True,
            extra={"user": sid},
        )
        if endpoint == MESSAGES:
            body["metadata"] = {"user_id": sid}
        ips = account.ips
        return (t, endpoint, body, ips[u % len(ips)], account.user_agent, {**sim, "end_user": sid})

    def _conversation(
        self,
        account: Account,
        t: float,
        u: int,
        problem: str,
        source: str,
        cid: str,
        turns: int,
        district: str,
        model: str,
    ) -> list[Req]:
        r = account.r
        stand_ins = ChatPool.english().stand_ins  # real English answers as offline replies
        out = []
        messages: list[dict[str, Any]] = []
        for turn in range(1, turns + 1):
            if turn == 1:
                ask = fresh2_text.school_ask(r, problem)
            else:
                ask = pick(r, fresh2_text.SD_FOLLOW_UPS).format(guess=r.randrange(2, 300))
            messages.append({"role": "user", "content": ask})
            sim = {"end_user": None, "harvest": False, "conversation_id": cid, "turn": turn, "source": source}
            out.append(self._send(account, t, u, messages, district, model, sim))
            messages.append({"role": "assistant", "content": pick(r, stand_ins)})
            t += r.lognormvariate(math.log(120.0), 0.6)
        return out

    def _classes(self, account: Account, classes: list[tuple[float, int]], district: str, model: str) -> Iterator[Req]:
        k = self.k
        assert isinstance(k, SchoolDistrictKnobs)
        r = account.r
        roster = {s: list(range(s, k.students, k.schools)) for s in range(k.schools)}
        pending: list[tuple[float, int, Req]] = []
        seq = 0
        for c, (t0, school) in enumerate(classes):
            while pending and pending[0][0] <= t0:
                yield heapq.heappop(pending)[2]
            problem, source = assignment(account, self.ctx.seed)
            students = roster[school]
            for u in r.sample(students, min(k.class_size, len(students))):
                if r.random() > k.attendance:
                    continue
                t = t0 + r.lognormvariate(math.log(300.0), 0.6)  # most open the problem in the first minutes
                turns = 1 + int(r.random() < 0.5) + int(r.random() < 0.2)
                cid = f"{account.id}:class{c}:{u}"
                for req in self._conversation(account, t, u, problem, source, cid, turns, district, model):
                    if req[0] < t0 + PERIOD_S:  # the bell rings
                        heapq.heappush(pending, (req[0], seq, req))
                        seq += 1
        while pending:
            yield heapq.heappop(pending)[2]

    def _homework(self, account: Account, times: list[float], district: str, model: str) -> Iterator[Req]:
        k = self.k
        assert isinstance(k, SchoolDistrictKnobs)
        r = account.r
        pending: list[tuple[float, int, Req]] = []
        seq = 0
        for i, t in enumerate(times):
            while pending and pending[0][0] <= t:
                yield heapq.heappop(pending)[2]
            u = r.randrange(k.students)
            problem, source = assignment(account, self.ctx.seed)
            turns = 1 + int(r.random() < 0.4)
            for req in self._conversation(
                account, t, u, problem, source, f"{account.id}:hw{i}", turns, district, model
            ):
                heapq.heappush(pending, (req[0], seq, req))
                seq += 1
        while pending:
            yield heapq.heappop(pending)[2]
