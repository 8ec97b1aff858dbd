"""Casual chat users: people talking to a chat app in multi-turn conversations, on a human day.

Signature: multi-turn conversations whose `messages` carry every previous turn, sent on a day/week
rhythm in the person's time zone, a few conversations a day, from one to three home/phone IPs.
Prompts: real WildChat requests (IFBench), Vicuna and MT-Bench questions (MT-Bench's real second turns),
then short typed follow-ups.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
from pydantic import Field

from distillshield.simulate import netid, timing
from distillshield.simulate.personas.base import Account, Knobs, Persona, Req
from distillshield.simulate.personas.common import ChatPool, chat_sessions


class CasualChatKnobs(Knobs):
    requests_per_day: float = Field(8.0, gt=0, description="mean requests (turns) per account per day")
    turns_mean: float = Field(2.5, ge=1, description="mean user turns per conversation (geometric)")
    think_s: float = Field(40.0, gt=0, description="median seconds between an answer and the next turn")
    stream_prob: float = Field(0.7, ge=0, le=1, description="share of accounts whose client streams")
    new_model_share: float = Field(
        0.3,
        ge=0,
        le=1,
        description="share of turns on a newly released model once adoption has ramped up (over 3 days)",
    )


class CasualChat(Persona):
    name = "casual_chat"
    kind = "benign"
    split = "dev"
    Knobs = CasualChatKnobs
    signature = "multi-turn conversations carrying previous turns, on a diurnal/weekly human rhythm"
    activity_sigma = 1.0
    tiers = (("free", 0.35), ("standard", 0.5), ("pro", 0.15))
    verifications = (("email", 0.85), ("phone", 0.15))

    def account_user_agent(self, rng: np.random.Generator, api: str) -> str:
        # Most people reach the API through a chat front end; some script their own client.
        return netid.user_agent(rng, "chat-app" if rng.random() < 0.6 else netid.sdk_family(api, rng))

    def requests(self, account: Account) -> Iterator[Req]:
        k = self.k
        assert isinstance(k, CasualChatKnobs)
        sessions = self.expected_total(account) / k.turns_mean
        starts = timing.diurnal_times(account.np, self.ctx.start, self.ctx.end, sessions, account.tz, "consumer")
        yield from chat_sessions(
            self,
            account,
            starts.tolist(),
            self.pool_for(account),
            turns_mean=k.turns_mean,
            think_s=k.think_s,
            stream_prob=k.stream_prob,
            adopt_new=k.new_model_share,
            opening=self.opening,
        )

    def pool(self) -> ChatPool:
        """Where this population's conversations come from."""
        return ChatPool.english()

    def pool_for(self, account: Account) -> ChatPool:
        """Where this account's conversations come from: the population's pool unless a persona draws per account."""
        return self.pool()

    def opening(self, r: random.Random, prompt: str) -> str:
        """A conversation's first message as the person sends it: here, the real prompt as it is."""
        return prompt
