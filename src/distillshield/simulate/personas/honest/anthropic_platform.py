"""Anthropic platform: a writing platform on the Anthropic Messages API naming each end user in metadata.

Imitates a writing-assistant product built on the Anthropic API: one account relays hundreds of end
users from every time zone (English speakers, and a share of Japanese speakers) around the clock, from
the product's few cloud addresses with the Anthropic SDK's user agent. Every request carries the
product's one long system prompt and names its end user in `metadata.user_id` (a UUID, as Anthropic
recommends: no names or emails). Users draft, rewrite and ask things in multi-turn conversations (real
WildChat requests, Vicuna and MT-Bench questions, Japanese MT-Bench / Vicuna / Rakuda), with a few
heavy users and a long tail. The honest twin of a harvester hidden among a platform's end users.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator

import numpy as np
from pydantic import Field

from distillshield.simulate import fresh2_text, netid, timing
from distillshield.simulate.personas.base import MESSAGES, Account, IdFactory, Knobs, Persona, Req, pick
from distillshield.simulate.personas.common import ChatPool, chat_sessions, merge_lanes, sub_account


class AnthropicPlatformKnobs(Knobs):
    requests_per_day: float = Field(1500.0, gt=0, description="mean requests per platform account per day")
    end_users: int = Field(600, ge=1, le=20000, description="end users behind one platform account")
    japanese_share: float = Field(0.15, ge=0, le=1, description="share of end users who write in Japanese")
    turns_mean: float = Field(2.2, ge=1, description="mean turns per conversation")


class AnthropicPlatform(Persona):
    name = "anthropic_platform"
    kind = "benign"
    split = "fresh2"
    Knobs = AnthropicPlatformKnobs
    signature = "Messages API only: one product system prompt, hundreds of end users in metadata.user_id, 24/7"
    tiers = (("enterprise", 1.0),)
    verifications = (("business", 1.0),)
    apis = (("anthropic", 1.0),)
    activity_sigma = 0.4

    def account_ips(self, rng: np.random.Generator) -> list[str]:
        return [netid.cloud_ip(rng) for _ in range(2 + int(rng.integers(2)))]

    def account_user_agent(self, rng: np.random.Generator, api: str) -> str:
        return netid.user_agent(rng, netid.sdk_family("anthropic", rng, node_share=0.5))

    def after_accounts(self, accounts: list[Account], rng: np.random.Generator, ids: IdFactory) -> None:
        k = self.k
        assert isinstance(k, AnthropicPlatformKnobs)
        for a in accounts:
            a.end_users = k.end_users

    @staticmethod
    def end_user_id(account: Account, u: int) -> str:
        return str(uuid.UUID(bytes=hashlib.sha256(f"{account.id}/user/{u}".encode()).digest()[:16], version=4))

    def requests(self, account: Account) -> Iterator[Req]:
        k = self.k
        assert isinstance(k, AnthropicPlatformKnobs)
        rng = account.np
        product = pick(account.r, fresh2_text.PLATFORM_PRODUCTS)
        system = fresh2_text.PLATFORM_SYSTEM.format(product=product)
        acts = rng.lognormal(-0.6, 1.1, k.end_users)
        acts = acts / acts.mean()
        daily = self.daily(account) / k.end_users
        lanes = []
        for u in range(k.end_users):
            japanese = rng.random() < k.japanese_share
            tz = 9.0 if japanese and rng.random() < 0.85 else float(timing.pick_timezone(rng))
            sub = sub_account(account, u, tz=tz, activity=float(acts[u]))
            expected = daily * float(acts[u]) * self.ctx.days / k.turns_mean
            starts = timing.diurnal_times(sub.np, self.ctx.start, self.ctx.end, expected, sub.tz, "consumer")
            user_id = self.end_user_id(account, u)
            lanes.append(
                self._named(
                    account,
                    chat_sessions(
                        self,
                        sub,
                        starts.tolist(),
                        ChatPool.japanese() if japanese else ChatPool.english(),
                        turns_mean=k.turns_mean,
                        think_s=50.0,
                        system_prompts=(system,),
                        stream_prob=0.9,
                        end_user=user_id,
                        max_tokens=(1024, 2048),
                    ),
                    user_id,
                )
            )
        yield from merge_lanes(lanes)

    def _named(self, account: Account, reqs: Iterator[Req], user_id: str) -> Iterator[Req]:
        """Re-address an end user's requests: the platform's addresses and agent, metadata.user_id."""
        ips, ua, r = account.ips, account.user_agent, account.r
        for t, endpoint, body, _ip, _ua, sim in reqs:
            if endpoint == MESSAGES:
                body["metadata"] = {"user_id": user_id}
            yield (t, endpoint, body, pick(r, ips), ua, {**(sim or {}), "end_user": user_id})
