"""Copy agency: a content-marketing agency's key, catalogue copy jobs from a brief plus staff chat.

Imitates an agency that writes product copy for its clients: when a client's catalogue comes in
(a few times a day, in office hours), the agency's script fills one brief template per client
(`fresh3_text.COPY_BRIEFS`) for every product of the batch (varied products, features, audiences,
tones and channels: `fresh3_text.copy_brief`) and sends them a few at a time; in between, the
agency's staff use a chat front end on the same key for taglines, rewrites, proofreading and
ordinary questions (real WildChat, Vicuna and MT-Bench prompts, multi-turn). Both from the office's
address, a script and a browser user agent, on the office day. The honest twin of `mixed_in_app`:
one key, two kinds of traffic.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from pydantic import Field

from distillshield.simulate import bodies, corpora, fresh3_text, netid, timing
from distillshield.simulate.personas.base import Account, IdFactory, Knobs, Persona, Req, pick
from distillshield.simulate.personas.common import ChatPool, chat_sessions, merge_lanes, sub_account


class CopyAgencyKnobs(Knobs):
    requests_per_day: float = Field(500.0, gt=0, description="mean requests per agency account per day")
    batch_share: float = Field(0.7, ge=0, le=1, description="share of requests that are catalogue copy jobs")
    batch_mean: int = Field(80, ge=1, le=2000, description="mean products in one catalogue batch")
    staff: int = Field(8, ge=1, le=200, description="staff who chat on the agency's key")


class CopyAgency(Persona):
    name = "copy_agency"
    kind = "benign"
    split = "fresh3"
    Knobs = CopyAgencyKnobs
    signature = "catalogue batches from one brief per client with varied products, plus staff chat, office hours"
    tiers = (("pro", 0.7), ("enterprise", 0.3))
    verifications = (("business", 1.0),)
    apis = (("openai", 0.7), ("anthropic", 0.3))
    activity_sigma = 0.3

    def account_ips(self, rng: np.random.Generator) -> list[str]:
        return [netid.residential_ip(rng)]

    def account_user_agent(self, rng: np.random.Generator, api: str) -> str:
        return netid.user_agent(rng, netid.sdk_family(api, rng))

    def after_accounts(self, accounts: list[Account], rng: np.random.Generator, ids: IdFactory) -> None:
        k = self.k
        assert isinstance(k, CopyAgencyKnobs)
        for a in accounts:
            a.end_users = k.staff
            a.state["chat_ua"] = netid.user_agent(rng, "chat-app")

    def requests(self, account: Account) -> Iterator[Req]:
        k = self.k
        assert isinstance(k, CopyAgencyKnobs)
        ctx = self.ctx
        total = self.expected_total(account)
        batches = timing.diurnal_times(
            account.np, ctx.start, ctx.end, total * k.batch_share / k.batch_mean, account.tz, "work"
        ).tolist()
        lanes: list[Iterator[Req]] = [self._batch(account, b, t0) for b, t0 in enumerate(batches)]
        per_staff = total * (1 - k.batch_share) / k.staff / 2.0
        for s in range(k.staff):
            sub = sub_account(account, s)
            starts = timing.diurnal_times(sub.np, ctx.start, ctx.end, per_staff, sub.tz, "work").tolist()
            lanes.append(self._staff(account, sub, s, starts))
        yield from merge_lanes(lanes)

    def _staff(self, account: Account, sub: Account, s: int, starts: list[float]) -> Iterator[Req]:
        r = sub.r
        ua = account.state["chat_ua"]
        passages = corpora.book_passages()
        clients = fresh3_text.AGENCY_CLIENTS
        asks: dict[str, str] = {}  # conversations that open with an agency ask instead of a general one
        for t, endpoint, body, ip, _ua, sim in chat_sessions(
            self, sub, starts, ChatPool.english(), turns_mean=2.0, think_s=60.0, lane=f"staff{s}"
        ):
            sim = dict(sim or {})
            cid = sim.get("conversation_id", "")
            if sim.get("turn") == 1 and r.random() < 0.4:
                asks[cid] = pick(r, fresh3_text.AGENCY_ASKS).format(
                    brand=pick(r, clients), text=pick(r, passages)[:600]
                )
            if cid in asks:
                first = next(m for m in body["messages"] if m["role"] == "user")
                first["content"] = asks[cid]
                sim["source"] = "agency-asks"
            sim["end_user"] = f"staff{s}"
            yield (t, endpoint, body, ip, ua, sim)

    def _batch(self, account: Account, b: int, t0: float) -> Iterator[Req]:
        k = self.k
        assert isinstance(k, CopyAgencyKnobs)
        r = account.r
        ctx = self.ctx
        c = r.randrange(len(fresh3_text.AGENCY_CLIENTS))
        brand = fresh3_text.AGENCY_CLIENTS[c]
        t_idx = c % len(fresh3_text.COPY_BRIEFS)  # each client has its brief
        size = max(1, int(r.expovariate(1 / k.batch_mean)))
        times = timing.lane_times(np.random.default_rng([account.seed, b]), t0, size, 4, 8.0).tolist()
        model = self.model_for(account, t0)
        for j, t in enumerate(times):
            if t >= ctx.end:
                return
            brief, p = fresh3_text.copy_brief(r, fresh3_text.COPY_BRIEFS[t_idx], brand)
            endpoint, body = bodies.chat(
                account, model, [{"role": "user", "content": brief}], max_tokens=600, temperature=0.8
            )
            sim = {
                "end_user": None,
                "harvest": False,
                "conversation_id": f"{account.id}:batch{b}:{j}",
                "turn": 1,
                "template_id": f"copy/{c}/{t_idx}",
                "source": "copy-briefs",
            }
            yield (t, endpoint, body, account.ips[0], account.user_agent, sim)
