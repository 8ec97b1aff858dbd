"""Platform reseller (fresh variant of `reseller`): an app platform relaying many honest end users.

Imitates a writing/assistant platform that resells model access: one account, hundreds of end users
from every time zone (chat and code), around the clock, from the platform's cloud servers with its one
SDK user agent. Each request names its end user the way the API asks: the OpenAI `user` field, or
Anthropic's `metadata.user_id` for platforms on the Messages API (opaque hashed ids). Same behaviour as
`reseller`, on either API.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import numpy as np
from pydantic import Field

from distillshield.simulate import netid
from distillshield.simulate.personas.base import MESSAGES, Account, IdFactory, Req
from distillshield.simulate.personas.honest.reseller import Reseller, ResellerKnobs


class PlatformResellerKnobs(ResellerKnobs):
    requests_per_day: float = Field(2000.0, gt=0, description="mean requests per platform account per day")
    end_users: int = Field(400, ge=1, le=20000, description="end users behind one platform account")


class PlatformReseller(Reseller):
    name = "platform_reseller"
    split = "fresh"
    Knobs = PlatformResellerKnobs
    signature = "one account relays hundreds of end users (user / metadata.user_id), 24/7, either API"
    apis = (("openai", 0.5), ("anthropic", 0.5))

    def account_user_agent(self, rng: np.random.Generator, api: str) -> str:
        return netid.user_agent(rng, netid.sdk_family(api, rng, node_share=0.5))

    def after_accounts(self, accounts: list[Account], rng: np.random.Generator, ids: IdFactory) -> None:
        super().after_accounts(accounts, rng, ids)
        for i, a in enumerate(accounts):  # platforms on both APIs in every scenario
            a.api = "openai" if i % 2 == 0 else "anthropic"
            a.user_agent = self.account_user_agent(rng, a.api)

    def end_user_id(self, account: Account, u: int) -> str:
        return "usr_" + hashlib.sha256(f"{account.id}/{u}".encode()).hexdigest()[:16]

    def _readdress(self, account: Account, reqs: Iterator[Req], end_user: str) -> Iterator[Req]:
        for t, endpoint, body, ip, ua, sim in super()._readdress(account, reqs, end_user):
            if endpoint == MESSAGES:
                body["metadata"] = {"user_id": end_user}
            yield (t, endpoint, body, ip, ua, sim)
