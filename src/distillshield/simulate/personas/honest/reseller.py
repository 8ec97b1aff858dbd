"""Resellers: one account (a platform or API reseller) relaying many honest end users' requests.

Signature: one account, hundreds of distinct end users (OpenAI `user` field and `sim.end_user`) from
all time zones, so traffic runs around the clock with a broad mix of chat and code; it all comes from
the reseller's few cloud IPs with one server user agent. High volume and broad capability coverage
from one account make it look like a bulk harvester; it is not.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from pydantic import Field

from distillshield.simulate import netid, timing
from distillshield.simulate.personas.base import Account, IdFactory, Knobs, Persona, Req, pick
from distillshield.simulate.personas.common import ChatPool, chat_sessions, merge_lanes, sub_account
from distillshield.simulate.personas.honest.coding_assistant import CodingAssistant, CodingAssistantKnobs


class ResellerKnobs(Knobs):
    requests_per_day: float = Field(3000.0, gt=0, description="mean requests per reseller account per day")
    end_users: int = Field(300, ge=1, le=20000, description="end users behind one reseller account")
    coder_share: float = Field(0.25, ge=0, le=1, description="share of end users who send coding requests")
    turns_mean: float = Field(2.5, ge=1, description="mean turns per chat conversation")


class Reseller(Persona):
    name = "reseller"
    kind = "benign"
    split = "heldout"
    Knobs = ResellerKnobs
    signature = "one account relays hundreds of end users from all time zones: 24/7, broad mix, few cloud IPs"
    tiers = (("enterprise", 1.0),)
    verifications = (("business", 1.0),)
    apis = (("openai", 1.0),)
    activity_sigma = 0.5

    def account_ips(self, rng: np.random.Generator) -> list[str]:
        return [netid.cloud_ip(rng) for _ in range(2 + int(rng.integers(3)))]

    def account_user_agent(self, rng: np.random.Generator, api: str) -> str:
        return netid.user_agent(rng, "openai-node" if rng.random() < 0.5 else "openai-python")

    def after_accounts(self, accounts: list[Account], rng: np.random.Generator, ids: IdFactory) -> None:
        k = self.k
        assert isinstance(k, ResellerKnobs)
        for a in accounts:
            a.end_users = k.end_users

    def customer_lanes(self, account: Account, per_user_daily: float | None = None) -> list[Iterator[Req]]:
        """One request stream per honest end user, re-addressed to come from the reseller."""
        k = self.k
        assert isinstance(k, ResellerKnobs)
        rng = account.np
        # Heavy-tailed usage: a few power users, many occasional ones (mean 1).
        acts = rng.lognormal(-0.5, 1.0, k.end_users)
        acts = acts / acts.mean()  # the account's volume is the knob's, however the tail falls
        daily = per_user_daily if per_user_daily is not None else self.daily(account) / k.end_users
        lanes = []
        coder_knobs = CodingAssistantKnobs(requests_per_day=daily)
        for u in range(k.end_users):
            sub = sub_account(account, u, tz=float(timing.pick_timezone(rng)), activity=float(acts[u]))
            end_user = self.end_user_id(account, u)
            if rng.random() < k.coder_share:
                lanes.append(self._readdress(account, CodingAssistant(coder_knobs, self.ctx).requests(sub), end_user))
            else:
                expected = daily * float(acts[u]) * self.ctx.days / k.turns_mean
                starts = timing.diurnal_times(sub.np, self.ctx.start, self.ctx.end, expected, sub.tz, "consumer")
                lanes.append(
                    self._readdress(
                        account,
                        chat_sessions(
                            self,
                            sub,
                            starts.tolist(),
                            ChatPool.english(),
                            turns_mean=k.turns_mean,
                            think_s=45.0,
                            end_user=end_user,
                            user_field=end_user,
                        ),
                        end_user,
                    )
                )
        return lanes

    def end_user_id(self, account: Account, u: int) -> str:
        """The id the reseller gives its end user `u` (sent in the OpenAI `user` field)."""
        return f"u_{account.id[-6:]}_{u:05d}"

    def _readdress(self, account: Account, reqs: Iterator[Req], end_user: str) -> Iterator[Req]:
        ips = account.ips
        ua = account.user_agent
        r = account.r
        for t, endpoint, body, _ip, _ua, sim in reqs:
            if endpoint == "/v1/chat/completions":
                body["user"] = end_user
            yield (t, endpoint, body, pick(r, ips), ua, {**(sim or {}), "end_user": end_user})

    def requests(self, account: Account) -> Iterator[Req]:
        yield from merge_lanes(self.customer_lanes(account))
