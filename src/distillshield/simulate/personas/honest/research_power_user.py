"""Research power user: one person, high volume, broad topics, long conversations, in their own words.

Imitates a researcher or analyst who lives in the chat: 100-300 requests on a busy day, long
multi-turn conversations (a mean of four turns and more), topics as broad as a sweep's (real WildChat
requests, MT-Bench questions of every category, Vicuna; HumanEval problems and real programs to
explain or test; maths and logic problems from reasoning-gym to check a derivation, sometimes "step
by step"; book passages to summarise and critique), each first message in their own words (a context
line from a small grammar: "For a grant proposal: ...") and follow-ups that dig in ("Which assumption
is doing the most work there?"). A long day in one time zone (morning to late evening), from home and
office addresses, through a browser front end or their own notebook's SDK. The honest twin of a
capability sweep: broad coverage and volume, but one person's timing, words and follow-ups.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
from pydantic import Field

from distillshield.simulate import bodies, corpora, fresh2_text, netid, text, timing
from distillshield.simulate.personas import harvest
from distillshield.simulate.personas.base import Account, Knobs, Persona, Req, pick
from distillshield.simulate.personas.common import ChatPool


class ResearchPowerUserKnobs(Knobs):
    requests_per_day: float = Field(150.0, gt=0, description="mean requests per person per day")
    turns_mean: float = Field(4.0, ge=1, description="mean user turns per conversation (geometric)")
    think_s: float = Field(60.0, gt=0, description="median seconds between an answer and the next turn")
    stream_prob: float = Field(0.8, ge=0, le=1, description="share of accounts whose client streams")


class ResearchPowerUser(Persona):
    name = "research_power_user"
    kind = "benign"
    split = "fresh2"
    Knobs = ResearchPowerUserKnobs
    signature = "one person, 100-300 requests a day, broad topics in their own words, long digging conversations"
    tiers = (("pro", 0.7), ("standard", 0.3))
    verifications = (("email", 0.6), ("phone", 0.4))
    activity_sigma = 0.35
    account_age_days = (60.0, 800.0)

    def account_ips(self, rng: np.random.Generator) -> list[str]:
        return [netid.residential_ip(rng) for _ in range(2)]  # home and office

    def account_user_agent(self, rng: np.random.Generator, api: str) -> str:
        return netid.user_agent(rng, "chat-app" if rng.random() < 0.6 else netid.sdk_family(api, rng))

    def _first(self, account: Account) -> tuple[str, str]:
        """(first message, source) of a new conversation: the topic, put in the person's own words."""
        r = account.r
        x = r.random()
        if x < 0.45:
            conv, _turns, _replies = ChatPool.english().draw(account, 1.0)
            return fresh2_text.research_ask(r, conv.turns[0]), conv.source
        if x < 0.6:
            conv = pick(r, corpora.mt_bench())
            return fresh2_text.research_ask(r, conv.turns[0]), conv.source
        if x < 0.75:
            cap = pick(r, ("math", "logic", "puzzle"))
            q, _a, source = harvest.draw(r, cap, self.ctx.seed)
            return fresh2_text.research_ask(r, pick(r, fresh2_text.RS_PROBLEM_ASKS).format(q=q)), source
        if x < 0.9:
            if r.random() < 0.5:
                task = pick(r, corpora.humaneval())
                doc, source = task.prompt + task.solution, "humaneval"
            else:
                doc, source = pick(r, corpora.code_samples()).code, "codeio"
            return fresh2_text.research_ask(r, pick(r, fresh2_text.RS_CODE_ASKS).format(doc=doc)), source
        doc = pick(r, corpora.book_passages())
        return fresh2_text.research_ask(r, pick(r, fresh2_text.RS_READ_ASKS).format(doc=doc)), "in-the-year-2889"

    def requests(self, account: Account) -> Iterator[Req]:
        k = self.k
        assert isinstance(k, ResearchPowerUserKnobs)
        r = account.r
        ctx = self.ctx
        starts = timing.diurnal_times(
            account.np, ctx.start, ctx.end, self.expected_total(account) / k.turns_mean, account.tz, "work"
        ).tolist()
        stream = r.random() < k.stream_prob
        stand_ins = ChatPool.english().stand_ins  # real English answers as offline replies
        follow_ups = fresh2_text.RS_FOLLOW_UPS + text.FOLLOW_UPS_EN
        t_free = ctx.start
        for c, t0 in enumerate(starts):
            t = max(t0, t_free + r.expovariate(1 / 90.0))
            first, source = self._first(account)
            n = 1 + int(math.log(1 - r.random()) / math.log(1 - 1 / k.turns_mean)) if k.turns_mean > 1 else 1
            model = self.model_for(account, t, 0.5)
            ip = account.ips[0] if (t / timing.HOUR + account.tz) % 24 >= 19 else account.ips[1]
            messages: list[dict[str, Any]] = []
            for turn in range(1, min(n, 20) + 1):
                if t >= ctx.end:
                    return
                messages.append({"role": "user", "content": first if turn == 1 else pick(r, follow_ups)})
                endpoint, body = bodies.chat(
                    account, model, list(messages), max_tokens=4096, temperature=0.7, stream=stream
                )
                sim = {
                    "end_user": None,
                    "harvest": False,
                    "conversation_id": f"{account.id}:{c}",
                    "turn": turn,
                    "source": source,
                }
                yield (t, endpoint, body, ip, account.user_agent, sim)
                reply = pick(r, stand_ins)
                messages.append({"role": "assistant", "content": reply})
                t += r.lognormvariate(math.log(k.think_s), 0.8) + len(reply) / 50.0
            t_free = t
