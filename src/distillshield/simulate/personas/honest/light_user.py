"""Light users: the long tail of people who try a chat app a few times and go (the thin hydra's honest twin).

Imitates ordinary people with a handful of requests over the whole scenario (1-10 per account): one to
a few short conversations in their own words (real WildChat requests, Vicuna and MT-Bench questions,
typed follow-ups), in daytime hours of their time zone, from their own home or phone address, through
a browser front end or an SDK. Hundreds of such accounts sit next to a thin hydra's hundreds of small
accounts; only content and coordination tell them apart.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice

from pydantic import Field

from distillshield.simulate import timing
from distillshield.simulate.personas.base import Account, Req
from distillshield.simulate.personas.common import ChatPool, chat_sessions
from distillshield.simulate.personas.honest.casual_chat import CasualChat, CasualChatKnobs


class LightUserKnobs(CasualChatKnobs):
    requests_per_day: float = Field(1.8, gt=0, description="mean requests (turns) per account per day")
    turns_mean: float = Field(1.6, ge=1, description="mean user turns per conversation (geometric)")
    min_requests: int = Field(1, ge=1, description="fewest requests one account sends")
    max_requests: int = Field(10, ge=1, description="most requests one account sends")


class LightUser(CasualChat):
    name = "light_user"
    kind = "benign"
    split = "fresh"
    Knobs = LightUserKnobs
    signature = "1-10 requests per account of ordinary chat in people's own words, daytime, own home/phone IPs"
    activity_sigma = 0.6

    def max_daily(self) -> float:
        k = self.k
        assert isinstance(k, LightUserKnobs)
        return k.max_requests / self.ctx.days

    def requests(self, account: Account) -> Iterator[Req]:
        k = self.k
        assert isinstance(k, LightUserKnobs)
        r = account.r
        ctx = self.ctx
        n = max(k.min_requests, min(k.max_requests, int(round(self.expected_total(account) + r.uniform(-1, 1)))))
        starts = timing.diurnal_times(account.np, ctx.start, ctx.end, n / k.turns_mean, account.tz, "consumer")
        if starts.size == 0:  # everyone in the population sends at least once
            day = timing.diurnal_times(account.np, ctx.start, ctx.end, 8.0, account.tz, "consumer")
            starts = day[:1] if day.size else account.np.uniform(ctx.start, ctx.end, 1)
        reqs = chat_sessions(
            self,
            account,
            starts.tolist(),
            ChatPool.english(),
            turns_mean=k.turns_mean,
            think_s=k.think_s,
            stream_prob=k.stream_prob,
            adopt_new=k.new_model_share,
        )
        yield from islice(reqs, n)
