"""Multilingual users: people chatting in their own language (Japanese here), on their local day.

Signature: most prompts are not English (Japanese script), conversations are multi-turn, activity
follows a day in UTC+9 (with some users elsewhere); a share of users switch to English for some
conversations. Prompts: Japanese MT-Bench (both turns), Japanese Vicuna and Rakuda: real Japanese
benchmark questions; Japanese follow-ups are hand-written. (Japanese is the one non-English language
with real prompts that ship offline; see docs/simulator.md.)
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from pydantic import Field

from distillshield.simulate import netid, text, timing
from distillshield.simulate.personas.base import Account, Knobs, Persona, Req
from distillshield.simulate.personas.common import ChatPool, chat_sessions, merge_lanes


class MultilingualKnobs(Knobs):
    requests_per_day: float = Field(8.0, gt=0, description="mean requests (turns) per account per day")
    turns_mean: float = Field(2.2, ge=1, description="mean user turns per conversation")
    think_s: float = Field(50.0, gt=0, description="median seconds between an answer and the next turn")
    english_share: float = Field(0.2, ge=0, le=1, description="share of conversations held in English")
    home_tz: float = Field(9.0, ge=-12, le=14, description="UTC offset (hours) where most of these users live")
    abroad_share: float = Field(0.15, ge=0, le=1, description="share of users living in another time zone")


class Multilingual(Persona):
    name = "multilingual"
    kind = "benign"
    split = "dev"
    Knobs = MultilingualKnobs
    signature = "mostly non-English (Japanese) multi-turn conversations on a UTC+9 day"
    activity_sigma = 1.0
    tiers = (("free", 0.3), ("standard", 0.55), ("pro", 0.15))

    def account_user_agent(self, rng: np.random.Generator, api: str) -> str:
        return netid.user_agent(rng, "chat-app" if rng.random() < 0.6 else netid.sdk_family(api, rng))

    def requests(self, account: Account) -> Iterator[Req]:
        k = self.k
        assert isinstance(k, MultilingualKnobs)
        ctx = self.ctx
        tz = account.tz if account.r.random() < k.abroad_share else k.home_tz  # people abroad keep their language
        total = self.expected_total(account) / k.turns_mean
        ja = timing.diurnal_times(account.np, ctx.start, ctx.end, total * (1 - k.english_share), tz, "consumer")
        en = timing.diurnal_times(account.np, ctx.start, ctx.end, total * k.english_share, tz, "consumer")
        # Two pools, one person: merged streams; a conversation in one language at a time is close
        # enough (they rarely overlap at these rates).
        yield from merge_lanes(
            [
                chat_sessions(
                    self,
                    account,
                    ja.tolist(),
                    ChatPool.japanese(),
                    turns_mean=k.turns_mean,
                    think_s=k.think_s,
                    system_prompts=text.CHAT_SYSTEM_PROMPTS_JA,
                    lane="ja",
                ),
                chat_sessions(
                    self,
                    account,
                    en.tolist(),
                    ChatPool.english(),
                    turns_mean=k.turns_mean,
                    think_s=k.think_s,
                    lane="en",
                ),
            ]
        )
