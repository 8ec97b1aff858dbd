"""Quiz app: a one-subject (chemistry) homework-help app for a school system's teachers and students.

Imitates an edtech app for one subject: teachers generate practice material (`fresh3_text.QUIZ_REQUESTS`:
"create 10 multiple-choice questions on the mole for year 10, with an answer key"), mostly in
school hours, and students ask chemistry questions in their own words (`fresh3_text.chem_ask`:
balancing equations, molar masses, "why does ice float", with slips and follow-ups), in school hours
and in the evening; every request names its teacher or student with the app's opaque id in the
OpenAI `user` field (and `sim.end_user`), under the app's one system prompt, from the app's cloud
address with its SDK user agent, in one country's time zone. The honest twin of `selfinstruct_farm`:
it too asks for sets of questions with worked answers, but a teacher's few at a time on one subject.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
from pydantic import Field

from distillshield.simulate import bodies, fresh3_text, netid, timing
from distillshield.simulate.personas.base import Account, IdFactory, Knobs, Persona, Req, pick
from distillshield.simulate.personas.common import ChatPool


class QuizAppKnobs(Knobs):
    requests_per_day: float = Field(600.0, gt=0, description="mean requests per app account per day")
    teachers: int = Field(60, ge=1, le=100_000, description="teachers using the app")
    students: int = Field(2000, ge=1, le=1_000_000, description="students using the app")
    teacher_share: float = Field(
        0.15, ge=0, le=1, description="share of conversations that are teachers' quiz requests"
    )


class QuizApp(Persona):
    name = "quiz_app"
    kind = "benign"
    split = "fresh3"
    Knobs = QuizAppKnobs
    signature = (
        "one subject: teachers' quiz requests with answer keys and students' own questions, each named in `user`"
    )
    tiers = (("pro", 0.6), ("enterprise", 0.4))
    verifications = (("business", 1.0),)
    apis = (("openai", 1.0),)
    activity_sigma = 0.3

    def account_ips(self, rng: np.random.Generator) -> list[str]:
        return [netid.cloud_ip(rng)]

    def account_user_agent(self, rng: np.random.Generator, api: str) -> str:
        return netid.user_agent(rng, netid.sdk_family(api, rng, node_share=0.7))

    def after_accounts(self, accounts: list[Account], rng: np.random.Generator, ids: IdFactory) -> None:
        k = self.k
        assert isinstance(k, QuizAppKnobs)
        for a in accounts:
            a.end_users = k.teachers + k.students

    def user_id(self, account: Account, role: str, u: int) -> str:
        return "cp_" + hashlib.sha256(f"{account.id}/{role}/{u}".encode()).hexdigest()[:16]

    def requests(self, account: Account) -> Iterator[Req]:
        k = self.k
        assert isinstance(k, QuizAppKnobs)
        ctx = self.ctx
        r = account.r
        per_conv = k.teacher_share * 1.3 + (1 - k.teacher_share) * 2.2
        n_conv = self.expected_total(account) / per_conv
        school = timing.diurnal_times(account.np, ctx.start, ctx.end, n_conv * 0.65, account.tz, "work").tolist()
        evening = timing.diurnal_times(account.np, ctx.start, ctx.end, n_conv * 0.35, account.tz, "consumer").tolist()
        stand_ins = ChatPool.english().stand_ins
        model = ctx.models.secondary[0] if ctx.models.secondary else ctx.models.primary
        out: list[Req] = []
        for c, t in enumerate(sorted(school + evening)):
            teacher = r.random() < k.teacher_share
            if teacher:
                who = self.user_id(account, "t", int(r.random() * k.teachers))
                turns = [
                    pick(r, fresh3_text.QUIZ_REQUESTS).format(
                        n=pick(r, (5, 8, 10, 12, 15)),
                        topic=pick(r, fresh3_text.CHEM_TOPICS),
                        grade=pick(r, fresh3_text.QUIZ_GRADES),
                    )
                ]
                if r.random() < 0.3:
                    turns.append(
                        pick(
                            r,
                            ("make them a bit harder", "add two more on the same topic", "shorter explanations please"),
                        )
                    )
            else:
                who = self.user_id(account, "s", int(r.random() * k.students))
                n = 1 + int(math.log(1 - r.random()) / math.log(1 - 1 / 2.2))
                turns = [fresh3_text.chem_ask(r)] + [
                    pick(r, fresh3_text.CHEM_FOLLOW_UPS).format(g=r.randrange(2, 99)) for _ in range(min(n, 6) - 1)
                ]
            messages: list[dict[str, Any]] = []
            for i, u in enumerate(turns):
                if t >= ctx.end:
                    break
                messages.append({"role": "user", "content": u})
                endpoint, body = bodies.chat(
                    account, model, list(messages), system=fresh3_text.QUIZ_APP_SYSTEM,
                    max_tokens=2000 if teacher else 700, temperature=0.5, extra={"user": who},
                )  # fmt: skip
                sim = {
                    "end_user": who,
                    "harvest": False,
                    "conversation_id": f"{account.id}:{c}",
                    "turn": i + 1,
                    "source": "quiz-requests" if teacher else "chem-asks",
                }
                out.append((t, endpoint, body, account.ips[0], account.user_agent, sim))
                reply = pick(r, stand_ins)
                messages.append({"role": "assistant", "content": reply})
                t += r.lognormvariate(math.log(45.0 if not teacher else 120.0), 0.7) + len(reply) / 60.0
        out.sort(key=lambda x: x[0])
        yield from out
