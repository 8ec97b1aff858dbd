"""Building blocks shared by personas: people's multi-turn conversations, and lane merging."""

from __future__ import annotations

import dataclasses
import heapq
import math
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from operator import itemgetter
from typing import Any

from distillshield.simulate import bodies, corpora, text
from distillshield.simulate.personas.base import Account, Persona, Req, pick

_ts = itemgetter(0)


def merge_lanes(lanes: Iterable[Iterator[Req]]) -> Iterator[Req]:
    """Merge several time-ordered request streams of one account (end users, workers) into one."""
    return heapq.merge(*lanes, key=_ts)


@dataclass(frozen=True)
class ChatPool:
    """Where a population's conversations come from: weighted real-prompt pools and follow-ups."""

    pools: tuple[tuple[float, tuple[corpora.Conversation, ...]], ...]
    follow_ups: tuple[str, ...]
    stand_ins: tuple[str, ...]  # real model-written answers used as the offline assistant turns
    cum: tuple[float, ...]

    @classmethod
    def build(cls, weighted: list[tuple[float, tuple[corpora.Conversation, ...]]], lang: str = "en") -> ChatPool:
        weighted = [(w, p) for w, p in weighted if w > 0 and p]
        total = sum(w for w, _ in weighted)
        cum, acc = [], 0.0
        for w, _ in weighted:
            acc += w / total
            cum.append(acc)
        refs = tuple(
            a
            for conv_pool in (corpora.mt_bench(), corpora.vicuna(), corpora.japanese())
            for conv in conv_pool
            if conv.lang == lang
            for a in conv.references
        )
        follow = text.FOLLOW_UPS_JA if lang == "ja" else text.FOLLOW_UPS_EN
        return cls(tuple(weighted), follow, refs or tuple(a for _, a in corpora.reference_answers()), tuple(cum))

    @classmethod
    def english(cls) -> ChatPool:
        """The general English mix: real WildChat requests, Vicuna and MT-Bench questions."""
        return _english()

    @classmethod
    def japanese(cls) -> ChatPool:
        """Real Japanese prompts: Japanese MT-Bench, Japanese Vicuna, Rakuda."""
        return _japanese()

    def draw(self, account: Account, turns_mean: float) -> tuple[corpora.Conversation, list[str], list[str]]:
        """A conversation: the real prompt's own turns first, then typed follow-ups; and the assistant
        turns to carry between them (the set's reference answers, else real answers from the pool)."""
        r = account.r
        x = r.random()
        pool = self.pools[-1][1]
        for (_, p), c in zip(self.pools, self.cum, strict=True):
            if x <= c:
                pool = p
                break
        conv = pick(r, pool)
        # Geometric number of turns with the requested mean (at least one).
        n = 1 if turns_mean <= 1 else 1 + int(math.log(1 - r.random()) / math.log(1 - 1 / turns_mean))
        n = min(n, 12)
        turns = list(conv.turns[:n])
        while len(turns) < n:
            turns.append(pick(r, self.follow_ups))
        replies = []
        for i in range(n - 1):
            if i < len(conv.references):
                replies.append(conv.references[i])
            else:
                replies.append(pick(r, self.stand_ins))
        return conv, turns, replies


@lru_cache(maxsize=1)
def _english() -> ChatPool:
    return ChatPool.build([(0.5, corpora.wildchat_prompts()), (0.25, corpora.vicuna()), (0.25, corpora.mt_bench())])


@lru_cache(maxsize=1)
def _japanese() -> ChatPool:
    return ChatPool.build([(1.0, corpora.japanese())], lang="ja")


def chat_sessions(
    persona: Persona,
    account: Account,
    starts: list[float],
    pool: ChatPool,
    *,
    turns_mean: float,
    think_s: float,
    system_prompts: tuple[str | None, ...] = text.CHAT_SYSTEM_PROMPTS,
    stream_prob: float = 0.7,
    adopt_new: float = 0.0,
    end_user: str | None = None,
    ip: str | None = None,
    user_field: str | None = None,
    max_tokens: tuple[int, ...] = (512, 1024, 2048),
    lane: str = "",
    harvest: bool = False,
    opening: Callable[[random.Random, str], str] | None = None,
) -> Iterator[Req]:
    """One person's conversations, one at a time: each turn re-sends the whole conversation so far.

    `starts` are conversation start times; a conversation that would overlap the previous one starts
    when the previous ends (one person, one chat at a time). Think time between turns is lognormal
    around `think_s` (reading the answer and typing the next message). `lane` tells apart several
    streams of one account in conversation ids; `end_user` is the person, when the account has several.
    `opening` rewrites each conversation's first message in the person's own words (the question is
    pasted, the words around it typed).
    """
    r = account.r
    end = persona.ctx.end
    stream = r.random() < stream_prob
    mt = pick(r, max_tokens)
    temperature = (None, 0.7, 1.0)[r.randrange(3)]
    system = pick(r, system_prompts)
    ua = account.user_agent
    t_free = persona.ctx.start
    n_conv = 0
    for t0 in starts:
        t = t0 if t0 > t_free else t_free + r.expovariate(1 / 60.0)
        if t >= end:
            return
        conv, turns, replies = pool.draw(account, turns_mean)
        if opening is not None:
            turns[0] = opening(r, turns[0])
        model = persona.model_for(account, t, adopt_new)
        n_conv += 1
        cid = f"{account.id}:{end_user or lane}:{n_conv}"
        messages: list[dict[str, Any]] = []
        for k, u in enumerate(turns):
            if t >= end:
                return
            messages.append({"role": "user", "content": u})
            extra = {"user": user_field} if user_field else None
            endpoint, body = bodies.chat(
                account,
                model,
                list(messages),
                system=system,
                max_tokens=mt,
                temperature=temperature,
                stream=stream,
                extra=extra,
            )
            sim = {
                "end_user": end_user,
                "harvest": harvest,
                "conversation_id": cid,
                "turn": k + 1,
                "source": conv.source,
            }
            yield (t, endpoint, body, ip or persona.ip(account), ua, sim)
            if k < len(replies):
                messages.append({"role": "assistant", "content": replies[k]})
                # Reading time grows with the answer's length; typing with the next message's.
                t += r.lognormvariate(math.log(think_s), 0.8) + len(replies[k]) / 60.0
        t_free = t


def sub_account(account: Account, i: int, *, tz: float | None = None, activity: float = 1.0) -> Account:
    """A person behind a multi-user account (reseller customer, team member): own randomness, time zone
    and volume, same account identity. Requests generated for it are sent as the parent account."""
    return dataclasses.replace(
        account,
        seed=(account.seed * 1_000_003 + i * 7919 + 1) % (2**62),
        tz=account.tz if tz is None else tz,
        activity=activity,
        state={},
        _np=None,
        _r=None,
    )
