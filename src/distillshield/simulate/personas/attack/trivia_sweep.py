"""Trivia sweep: a public knowledge-question bank sent as plain chat questions, hidden in cover traffic.

Imitates an operator who distils general knowledge from a public question set: every question of the
bank (chatterbot-corpus's English knowledge questions: trivia, science, history, literature,
computers, coding, money, politics, health, sports, food, AI) is sent verbatim as a one-question chat,
with no wrapper or instruction at all, each `samples` times over the campaign (at temperature 1, to
collect several answers), each sample from another account of the campaign, so the accounts split
the bank between them. Between the questions the accounts hold ordinary multi-turn conversations
(real WildChat, Vicuna and MT-Bench prompts) as cover. The accounts look like chat users: residential
addresses, a browser front end or an SDK, a consumer day in the operator's one time zone. All
accounts of an entry are one operator (`cluster_id`, `campaign_id`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

import numpy as np
from pydantic import Field

from distillshield.simulate import bodies, corpora, fresh2_text, netid, timing
from distillshield.simulate.personas.base import Account, IdFactory, Knobs, Persona, Req
from distillshield.simulate.personas.common import ChatPool


@lru_cache(maxsize=1)
def knowledge_bank() -> tuple[tuple[str, str, str], ...]:
    """(question, reference answer, source) for every distinct English knowledge question of the corpus."""
    seen: set[str] = set()
    out = []
    for d in corpora.chatterbot():
        if d.lang != "en" or d.topic not in fresh2_text.TRIVIA_TOPICS:
            continue
        q = d.turns[0]
        first = q.split(" ", 1)[0].lower()
        if not (q.endswith("?") or first in fresh2_text.QUESTION_WORDS) or len(q) < 12 or q.lower() in seen:
            continue
        seen.add(q.lower())
        out.append((q, d.turns[1] if len(d.turns) > 1 else "", d.source))
    return tuple(out)


class TriviaSweepKnobs(Knobs):
    requests_per_day: float = Field(250.0, gt=0, description="requests per account per day (cover included)")
    cover_share: float = Field(0.2, ge=0, lt=1, description="share of conversations that are benign cover")
    samples: int = Field(2, ge=1, le=8, description="times the campaign asks each bank question (other accounts)")
    think_s: float = Field(20.0, gt=0, description="median seconds between the operator's requests in a session")


class TriviaSweep(Persona):
    name = "trivia_sweep"
    kind = "attack"
    split = "fresh2"
    Knobs = TriviaSweepKnobs
    signature = "a public knowledge bank asked verbatim, one question per chat, split over accounts, amid chat cover"
    tiers = (("standard", 0.7), ("pro", 0.3))
    verifications = (("email", 0.7), ("phone", 0.3))
    apis = (("openai", 0.75), ("anthropic", 0.25))
    activity_sigma = 0.25
    account_age_days = (3.0, 40.0)

    def account_ips(self, rng: np.random.Generator) -> list[str]:
        return [netid.residential_ip(rng) for _ in range(1 + int(rng.random() < 0.3))]

    def account_user_agent(self, rng: np.random.Generator, api: str) -> str:
        return netid.user_agent(rng, "chat-app" if rng.random() < 0.6 else netid.sdk_family(api, rng))

    def after_accounts(self, accounts: list[Account], rng: np.random.Generator, ids: IdFactory) -> None:
        cluster, campaign = ids.new("clu"), ids.new("camp")
        tz = timing.pick_timezone(rng)  # one operator, one place
        for i, a in enumerate(accounts):
            a.cluster_id, a.campaign_id = cluster, campaign
            a.tz = tz
            a.state["slot"], a.state["of"] = i, len(accounts)

    def _queue(self, account: Account) -> list[int]:
        """The bank items this account asks: sample s of item j goes to account (j + s) mod n."""
        k = self.k
        assert isinstance(k, TriviaSweepKnobs)
        n, slot = account.state["of"], account.state["slot"]
        bank = knowledge_bank()
        mine = [j for s in range(k.samples) for j in range(len(bank)) if (j + s) % n == slot]
        account.r.shuffle(mine)
        return mine

    def requests(self, account: Account) -> Iterator[Req]:
        k = self.k
        assert isinstance(k, TriviaSweepKnobs)
        r = account.r
        ctx = self.ctx
        bank = knowledge_bank()
        queue = self._queue(account)
        cover = ChatPool.english()
        per_conv = k.cover_share * 2.5 + (1 - k.cover_share)
        starts = timing.diurnal_times(
            account.np, ctx.start, ctx.end, self.expected_total(account) / per_conv, account.tz, "consumer"
        ).tolist()
        stream = r.random() < 0.6
        t_free = ctx.start
        asked = 0
        for c, t0 in enumerate(starts):
            t = max(t0, t_free + r.lognormvariate(math.log(k.think_s), 0.7))
            if t >= ctx.end:
                return
            model = self.model_for(account, t)
            if r.random() < k.cover_share:
                conv, users, replies = cover.draw(account, 2.5)
                turns = [(u, replies[i] if i < len(replies) else "", conv.source) for i, u in enumerate(users)]
                messages: list[dict[str, Any]] = []
                for i, (u, reply, source) in enumerate(turns):
                    if t >= ctx.end:
                        return
                    messages.append({"role": "user", "content": u})
                    endpoint, body = bodies.chat(
                        account, model, list(messages), max_tokens=1024, temperature=0.7, stream=stream
                    )
                    sim = {
                        "end_user": None,
                        "harvest": False,
                        "conversation_id": f"{account.id}:{c}",
                        "turn": i + 1,
                        "source": source,
                    }
                    yield (t, endpoint, body, self.ip(account), account.user_agent, sim)
                    messages.append({"role": "assistant", "content": reply or "Sure."})
                    t += r.lognormvariate(math.log(40.0), 0.8) + len(reply) / 60.0
            else:
                j = queue[asked % len(queue)]
                asked += 1
                q, _a, source = bank[j]
                endpoint, body = bodies.chat(
                    account, model, [{"role": "user", "content": q}], max_tokens=1024, temperature=1.0, stream=stream
                )
                sim = {
                    "end_user": None,
                    "harvest": True,
                    "conversation_id": f"{account.id}:{c}",
                    "turn": 1,
                    "capability": "general",
                    "source": source,
                    "lang": "en",
                }
                yield (t, endpoint, body, self.ip(account), account.user_agent, sim)
            t_free = t
