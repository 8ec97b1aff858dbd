"""Employees behind one corporate NAT: many accounts of one company share one or two egress IPs.

Signature: dozens of accounts in one org send from the same one or two IP addresses with the same
internal-tool user agent, in office hours of one time zone; each account is one employee
(`label_meta.end_user`). Developers among them behave like coding-assistant users, the others like
chat users. This is the honest twin of a hydra cluster's shared proxy IPs.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from pydantic import Field

from distillshield.simulate import netid, timing
from distillshield.simulate.personas.base import Account, IdFactory, Knobs, Persona, Req
from distillshield.simulate.personas.common import ChatPool, chat_sessions
from distillshield.simulate.personas.honest.coding_assistant import CodingAssistant, CodingAssistantKnobs

INTERNAL_TOOLS = ("AcmeGPT/2.3 (internal)", "CorpAssist/1.8", "OpenAI/Python 1.58.1", "copilot-gateway/0.9")


class CorporateNatKnobs(Knobs):
    requests_per_day: float = Field(15.0, gt=0, description="mean requests per employee per day")
    companies: int = Field(4, ge=1, description="companies (NATs) the entry's accounts are spread over")
    egress_ips: int = Field(2, ge=1, le=8, description="NAT egress addresses per company")
    developer_share: float = Field(0.35, ge=0, le=1, description="share of employees who use it as a coding assistant")
    turns_mean: float = Field(2.5, ge=1, description="mean user turns per chat conversation")


class CorporateNat(Persona):
    name = "corporate_nat"
    kind = "benign"
    split = "dev"
    Knobs = CorporateNatKnobs
    signature = "many accounts of one org share 1-2 egress IPs and a user agent, office hours"
    tiers = (("enterprise", 1.0),)
    verifications = (("business", 1.0),)

    def make_accounts(self, n: int, rng: np.random.Generator, ids: IdFactory) -> list[Account]:
        k = self.k
        assert isinstance(k, CorporateNatKnobs)
        companies = []
        for _ in range(min(k.companies, max(n, 1))):
            block = netid.CLOUD_BLOCKS[int(rng.integers(len(netid.CLOUD_BLOCKS)))]
            third = int(rng.integers(256))
            ips = [f"{block[0]}.{block[1]}.{third}.{int(rng.integers(2, 254))}" for _ in range(k.egress_ips)]
            companies.append(
                (
                    ids.new("org"),
                    ips,
                    float(rng.choice([-5.0, -8.0, 0.0, 1.0, 5.5])),
                    INTERNAL_TOOLS[int(rng.integers(len(INTERNAL_TOOLS)))],
                )
            )
        out = []
        for i in range(n):
            org, ips, tz, ua = companies[i % len(companies)]
            a = self.new_account(rng, ids, i, org_id=org)
            a.ips, a.tz = list(ips), tz
            a.end_user = f"emp_{org[-6:]}_{i:04d}"
            developer = rng.random() < k.developer_share
            a.state["developer"] = developer
            a.user_agent = netid.user_agent(rng, "ide") if developer else ua
            a.api = "openai"
            out.append(a)
        return out

    def requests(self, account: Account) -> Iterator[Req]:
        k = self.k
        assert isinstance(k, CorporateNatKnobs)
        if account.state.get("developer"):
            dev = CodingAssistant(CodingAssistantKnobs(requests_per_day=k.requests_per_day), self.ctx)
            for t, endpoint, body, ip, ua, sim in dev.requests(account):
                yield (t, endpoint, body, ip, ua, {**(sim or {}), "end_user": account.end_user})
            return
        starts = timing.diurnal_times(
            account.np, self.ctx.start, self.ctx.end, self.expected_total(account) / k.turns_mean, account.tz, "work"
        )
        yield from chat_sessions(
            self,
            account,
            starts.tolist(),
            ChatPool.english(),
            turns_mean=k.turns_mean,
            think_s=60.0,
            end_user=account.end_user,
            adopt_new=0.2,
        )
