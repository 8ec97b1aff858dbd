"""Education accounts: a school or course whose students ask a tutor app, together, in class.

Signature: one account, many students (`sim.end_user`); during class periods on weekdays dozens of
students send near-identical requests about the same assigned problem within minutes (the teacher's
assignment), typically asking for step-by-step explanations; scattered homework questions in the
evening; one or a few campus IPs. It looks like coordinated chain-of-thought harvesting and is not.
Problems: GSM-style word problems and maths from reasoning-gym, MT-Bench STEM/humanities/reasoning
questions, Vicuna questions.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
from pydantic import Field

from distillshield.simulate import bodies, corpora, netid, text, timing
from distillshield.simulate.personas.base import Account, IdFactory, Knobs, Persona, Req, pick
from distillshield.simulate.personas.common import merge_lanes


class EducationKnobs(Knobs):
    requests_per_day: float = Field(250.0, gt=0, description="mean requests per school account per day")
    students: int = Field(60, ge=2, description="students behind one account")
    class_share: float = Field(0.65, ge=0, le=1, description="share of requests sent during class periods")
    class_minutes: float = Field(50.0, gt=5, description="length of a class period")
    attendance: float = Field(0.8, gt=0, le=1, description="share of a class's students who ask during the period")


def assignment(account: Account, seed: int) -> tuple[str, str]:
    """(problem, source) a teacher assigns: generated maths or a real benchmark question."""
    r = account.r
    x = r.random()
    if x < 0.5:
        items = corpora.dataset_items("gsm_symbolic", seed, 200)
        return pick(r, items).question, "reasoning-gym/gsm_symbolic"
    if x < 0.7:
        bank = corpora.question_bank("math", seed, 24)
        return pick(r, bank).question, "reasoning-gym/math"
    if x < 0.9:
        convs = [c for c in corpora.mt_bench() if c.category in ("stem", "humanities", "reasoning", "math")]
        return pick(r, convs).turns[0], "mt-bench"
    v = corpora.vicuna()
    return pick(r, v).turns[0], "vicuna"


class Education(Persona):
    name = "education"
    kind = "benign"
    split = "heldout"
    Knobs = EducationKnobs
    signature = "class periods: many students of one account send near-identical step-by-step requests within minutes"
    tiers = (("standard", 0.5), ("pro", 0.5))
    verifications = (("business", 0.7), ("email", 0.3))
    apis = (("openai", 0.8), ("anthropic", 0.2))
    activity_sigma = 0.5

    def account_ips(self, rng: np.random.Generator) -> list[str]:
        block = netid.RESIDENTIAL_BLOCKS[int(rng.integers(len(netid.RESIDENTIAL_BLOCKS)))]
        third = int(rng.integers(256))
        return [f"{block[0]}.{block[1]}.{third}.{int(rng.integers(2, 254))}" for _ in range(1 + int(rng.integers(3)))]

    def account_user_agent(self, rng: np.random.Generator, api: str) -> str:
        return ("EduTutor/3.1", "ClassroomAI/1.4 (LTI)", "OpenAI/JS 4.77.0")[int(rng.integers(3))]

    def after_accounts(self, accounts: list[Account], rng: np.random.Generator, ids: IdFactory) -> None:
        k = self.k
        assert isinstance(k, EducationKnobs)
        for a in accounts:
            a.end_users = k.students

    def requests(self, account: Account) -> Iterator[Req]:
        k = self.k
        assert isinstance(k, EducationKnobs)
        ctx = self.ctx
        r = account.r
        level = pick(r, text.EDU_LEVELS)
        system = pick(r, text.TUTOR_SYSTEM).format(level=level)
        model = self.model_for(account, ctx.start)
        per_class = k.students * k.attendance * 1.8  # students ask about 1.8 times in a period
        n_classes = self.expected_total(account) * k.class_share / per_class
        # Class periods start on the hour or half hour within the school day (local time).
        class_starts = timing.diurnal_times(account.np, ctx.start, ctx.end, n_classes, account.tz, "work")
        class_starts = np.unique(
            np.floor((class_starts + account.tz * timing.HOUR) / 1800) * 1800 - account.tz * timing.HOUR
        )
        homework = timing.diurnal_times(
            account.np, ctx.start, ctx.end, self.expected_total(account) * (1 - k.class_share), account.tz, "consumer"
        ).tolist()
        yield from merge_lanes(
            [
                self._classes(account, class_starts.tolist(), system, model),
                self._homework(account, homework, system, model),
            ]
        )

    def _ask(
        self,
        account: Account,
        t: float,
        student: int,
        problem: str,
        source: str,
        system: str,
        model: str,
        cid: str,
        turn: int,
        history: list[dict[str, str]],
    ) -> Req:
        r = account.r
        if turn == 1:
            ask = pick(r, text.STUDENT_ASKS).format(q=problem, guess=r.randrange(2, 500))
        else:
            ask = pick(r, text.FOLLOW_UPS_EN)
        history.append({"role": "user", "content": ask})
        endpoint, body = bodies.chat(
            account, model, list(history), system=system, max_tokens=800, temperature=0.5, stream=True
        )
        sim = {
            "end_user": f"student_{student:04d}",
            "harvest": False,
            "conversation_id": cid,
            "turn": turn,
            "source": source,
        }
        return (t, endpoint, body, account.ips[student % len(account.ips)], account.user_agent, sim)

    def _classes(self, account: Account, starts: list[float], system: str, model: str) -> Iterator[Req]:
        k = self.k
        assert isinstance(k, EducationKnobs)
        r = account.r
        stand_ins = corpora.reference_answers()
        t_free = self.ctx.start
        for c, t0 in enumerate(starts):
            t0 = max(t0, t_free)
            problem, source = assignment(account, self.ctx.seed)
            batch: list[Req] = []
            for s in range(k.students):
                if r.random() > k.attendance:
                    continue
                # Most students open the problem within the first ten minutes of the period.
                t = t0 + r.lognormvariate(math.log(240.0), 0.6)
                history: list[dict[str, str]] = []
                cid = f"{account.id}:class{c}:{s}"
                for turn in range(1, 2 + int(r.random() < 0.6) + int(r.random() < 0.3)):
                    if t > t0 + k.class_minutes * 60:
                        break
                    batch.append(self._ask(account, t, s, problem, source, system, model, cid, turn, history))
                    history.append({"role": "assistant", "content": pick(r, stand_ins)[1]})
                    t += r.lognormvariate(math.log(150.0), 0.6)
            batch.sort(key=lambda x: x[0])
            for req in batch:
                if req[0] >= self.ctx.end:
                    return
                yield req
            t_free = t0 + k.class_minutes * 60 + 600

    def _homework(self, account: Account, times: list[float], system: str, model: str) -> Iterator[Req]:
        k = self.k
        assert isinstance(k, EducationKnobs)
        r = account.r
        for i, t in enumerate(times):
            problem, source = assignment(account, self.ctx.seed)
            yield self._ask(
                account, t, r.randrange(k.students), problem, source, system, model, f"{account.id}:hw{i}", 1, []
            )
