"""RAG / customer-support apps: a company's support bot answering its customers from a knowledge base.

Signature: one account serves many end users (`sim.end_user`, and OpenAI's `user` field); every
request has the same long system prompt with retrieved knowledge-base articles plus a short customer
question; one or two cloud IPs and one SDK user agent; a smooth day curve in the company's market.
Questions: typical support questions (hand-written; no public support-ticket corpus ships offline)
and real WildChat requests, because people ask support bots anything.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator
from typing import ClassVar

import numpy as np
from pydantic import Field

from distillshield.simulate import bodies, corpora, netid, text, timing
from distillshield.simulate.personas.base import Account, IdFactory, Knobs, Persona, Req, pick


class RagSupportKnobs(Knobs):
    requests_per_day: float = Field(400.0, gt=0, description="mean requests per app per day")
    end_users: int = Field(2000, ge=1, description="customers who may talk to one app over the scenario")
    turns_mean: float = Field(1.6, ge=1, description="mean user turns per support conversation")
    articles: int = Field(3, ge=1, le=10, description="knowledge-base articles retrieved into each request")
    off_topic_share: float = Field(
        0.15, ge=0, le=1, description="share of conversations that are not support questions"
    )


class RagSupport(Persona):
    name = "rag_support"
    kind = "benign"
    split = "dev"
    Knobs = RagSupportKnobs
    signature = "one app account, many end users, a fixed system prompt with retrieved articles + short questions"
    tiers = (("pro", 0.5), ("enterprise", 0.5))
    verifications = (("business", 1.0),)
    activity_sigma = 0.6
    # The app's world: (company, product) choices, knowledge-base articles, typical questions, system
    # prompt template (variants swap in their own).
    companies: ClassVar[tuple[tuple[str, str], ...]] = text.COMPANIES
    kb_topics: ClassVar[tuple[tuple[str, str], ...]] = text.KB_TOPICS
    questions: ClassVar[tuple[str, ...]] = text.SUPPORT_QUESTIONS
    system_template: ClassVar[str] = text.SUPPORT_SYSTEM

    def account_ips(self, rng: np.random.Generator) -> list[str]:
        return [netid.cloud_ip(rng) for _ in range(1 + int(rng.random() < 0.5))]

    def after_accounts(self, accounts: list[Account], rng: np.random.Generator, ids: IdFactory) -> None:
        k = self.k
        assert isinstance(k, RagSupportKnobs)
        for a in accounts:
            a.end_users = k.end_users
            a.tz = float(rng.choice([-5.0, -8.0, 0.0, 1.0, 9.0]))  # the company's market

    def requests(self, account: Account) -> Iterator[Req]:
        k = self.k
        assert isinstance(k, RagSupportKnobs)
        r = account.r
        ctx = self.ctx
        company, product = pick(r, self.companies)
        kb = [
            (title, body.format(n=r.choice((2, 7, 14, 30, 48, 60)), product=product)) for title, body in self.kb_topics
        ]
        model = self.model_for(account, ctx.start)
        starts = timing.diurnal_times(
            account.np, ctx.start, ctx.end, self.expected_total(account) / k.turns_mean, account.tz, "consumer"
        ).tolist()
        # Customers come back: a Zipf-like draw over the population (a few regulars, a long tail).
        weights = 1.0 / np.arange(1, k.end_users + 1) ** 0.8
        users = account.np.choice(k.end_users, size=len(starts), p=weights / weights.sum()).tolist()
        stream = r.random() < 0.5
        # Conversations overlap (many customers at once): a heap of (next turn ts, user, conversation,
        # turn) releases turns in time order; a new conversation starts once earlier turns are out.
        pending: list[tuple[float, int, int, int]] = []
        for conv_no, (t0, u) in enumerate(zip(starts, users, strict=True)):
            while pending and pending[0][0] <= t0:
                yield from self._turn(account, pending, heapq.heappop(pending), kb, company, model, stream)
            heapq.heappush(pending, (t0, u, conv_no, 0))
        while pending:
            yield from self._turn(account, pending, heapq.heappop(pending), kb, company, model, stream)

    def _turn(
        self,
        account: Account,
        pending: list[tuple[float, int, int, int]],
        item: tuple[float, int, int, int],
        kb: list[tuple[str, str]],
        company: str,
        model: str,
        stream: bool,
    ) -> Iterator[Req]:
        """Send one turn; schedule the conversation's next turn, if any."""
        k = self.k
        assert isinstance(k, RagSupportKnobs)
        r = account.r
        t, u, conv_no, turn = item
        if t >= self.ctx.end:
            return
        state = account.state.setdefault("conv", {})
        if turn == 0:
            wild = corpora.wildchat_prompts()
            off = r.random() < k.off_topic_share
            q = pick(r, wild).turns[0] if off else pick(r, self.questions)
            picked = r.sample(range(len(kb)), min(k.articles, len(kb)))
            context = "\n\n".join(f"## {kb[i][0]}\n{kb[i][1]}" for i in picked)
            n_turns = 1 + int(math.log(1 - r.random()) / math.log(1 - 1 / k.turns_mean)) if k.turns_mean > 1 else 1
            state[conv_no] = {
                "messages": [{"role": "user", "content": q}],
                "system": self.system_template.format(company=company, context=context),
                "left": min(n_turns, 6),
                "reply": kb[picked[0]][1],
                "source": "ifbench-wildchat" if off else "support-questions",
            }
        c = state[conv_no]
        end_user = f"cust_{u:06d}"
        endpoint, body = bodies.chat(
            account,
            model,
            list(c["messages"]),
            system=c["system"],
            max_tokens=400,
            temperature=0.3,
            stream=stream,
            extra={"user": f"{account.id[-6:]}-{u:06d}"},
        )
        sim = {
            "end_user": end_user,
            "harvest": False,
            "conversation_id": f"{account.id}:{conv_no}",
            "turn": turn + 1,
            "source": c["source"],
        }
        yield (t, endpoint, body, self.ip(account), account.user_agent, sim)
        c["left"] -= 1
        if c["left"] <= 0:
            del state[conv_no]
            return
        c["messages"] += [
            {"role": "assistant", "content": c["reply"]},
            {"role": "user", "content": pick(r, text.FOLLOW_UPS_EN)},
        ]
        heapq.heappush(pending, (t + r.lognormvariate(math.log(30.0), 0.7), u, conv_no, turn + 1))
