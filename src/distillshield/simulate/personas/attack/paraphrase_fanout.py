"""Paraphrase fan-out: each seed question asked in several wordings, each wording from another account.

Imitates an operator who builds a distillation set that is robust to phrasing: every seed item (a
concept to explain, from a hand-written list of ~80, or a generated maths word problem) is sent in
3-5 paraphrases (`fresh3_text.fanout_variants`: different question frames; for word problems the
problem as asked, wrapped, or turned around with the question first), and the paraphrases of one
item go to different accounts of the campaign, so no account sees an item twice and no two
accounts' texts are identical. The accounts look like chat users (residential addresses, a browser
front end or an SDK, a consumer day in their own time zones, single questions) with a little
ordinary chat as cover. One `cluster_id` per entry; `sim.seed_item` names the item a paraphrase is of.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from functools import lru_cache

import numpy as np
from pydantic import Field

from distillshield.simulate import bodies, corpora, fresh3_text, netid, timing
from distillshield.simulate.personas.base import Account, IdFactory, Knobs, Persona, Req
from distillshield.simulate.personas.common import ChatPool, chat_sessions

Variant = tuple[int, str, str, str]  # (seed item, text, source, capability)


@lru_cache(maxsize=8)
def fanout_bank(seed: int, lo: int, hi: int, problems: int) -> tuple[tuple[Variant, ...], ...]:
    """For every seed item, its paraphrases (between `lo` and `hi` of them), fixed by the scenario seed."""
    r = random.Random(seed * 7 + 3)
    items: list[tuple[tuple[str, str], str, str]] = [
        (("concept", c), "concept-list", "general") for c in fresh3_text.CONCEPTS
    ]
    items += [
        (("problem", q.question), q.source, "math") for q in corpora.dataset_items("gsm_symbolic", seed, problems)
    ]
    out = []
    for i, (item, source, cap) in enumerate(items):
        texts = fresh3_text.fanout_variants(r, item, r.randint(lo, hi))
        out.append(tuple((i, t, source, cap) for t in texts))
    return tuple(out)


class ParaphraseFanoutKnobs(Knobs):
    requests_per_day: float = Field(80.0, gt=0, description="requests per account per day (cover included)")
    paraphrases_min: int = Field(3, ge=1, le=8, description="fewest paraphrases of one seed item")
    paraphrases_max: int = Field(5, ge=1, le=8, description="most paraphrases of one seed item")
    problems: int = Field(600, ge=0, le=2000, description="generated word problems among the seed items")
    cover_share: float = Field(0.1, ge=0, lt=1, description="share of requests that are ordinary chat (cover)")


class ParaphraseFanout(Persona):
    name = "paraphrase_fanout"
    kind = "attack"
    split = "fresh3"
    Knobs = ParaphraseFanoutKnobs
    signature = "every seed question asked in 3-5 paraphrases, each from a different account of the campaign"
    tiers = (("free", 0.3), ("standard", 0.7))
    verifications = (("email", 0.8), ("phone", 0.2))
    apis = (("openai", 0.7), ("anthropic", 0.3))
    activity_sigma = 0.3
    account_age_days = (3.0, 30.0)

    def _k(self) -> ParaphraseFanoutKnobs:
        k = self.k
        assert isinstance(k, ParaphraseFanoutKnobs)
        return k

    def account_user_agent(self, rng: np.random.Generator, api: str) -> str:
        return netid.user_agent(rng, "chat-app" if rng.random() < 0.5 else netid.sdk_family(api, rng))

    def account_ips(self, rng: np.random.Generator) -> list[str]:
        return [netid.residential_ip(rng)]

    def after_accounts(self, accounts: list[Account], rng: np.random.Generator, ids: IdFactory) -> None:
        cluster, campaign = ids.new("clu"), ids.new("camp")
        for i, a in enumerate(accounts):
            a.cluster_id, a.campaign_id = cluster, campaign
            a.state["slot"], a.state["of"] = i, len(accounts)

    def requests(self, account: Account) -> Iterator[Req]:
        k = self._k()
        r = account.r
        ctx = self.ctx
        lo, hi = sorted((k.paraphrases_min, k.paraphrases_max))
        bank = fanout_bank(ctx.seed, lo, hi, k.problems)
        n, slot = account.state["of"], account.state["slot"]
        # Paraphrase v of item i goes to account (i + v) mod n: the paraphrases of one item land on
        # different accounts as long as there are at least as many accounts as paraphrases.
        queue = [variants[v] for i, variants in enumerate(bank) for v in range(len(variants)) if (i + v) % n == slot]
        r.shuffle(queue)
        total = self.expected_total(account)
        times = timing.diurnal_times(
            account.np, ctx.start, ctx.end, total * (1 - k.cover_share), account.tz, "consumer"
        )
        cover_starts = timing.diurnal_times(
            account.np, ctx.start, ctx.end, total * k.cover_share / 2.0, account.tz, "consumer"
        ).tolist()
        cover = chat_sessions(self, account, cover_starts, ChatPool.english(), turns_mean=2.0, think_s=40.0)
        stream = r.random() < 0.6
        model = self.model_for(account, ctx.start)
        asks = []
        for j, t in enumerate(times.tolist()):
            item, text, source, cap = queue[j % len(queue)]
            endpoint, body = bodies.chat(
                account, model, [{"role": "user", "content": text}], max_tokens=1024, temperature=0.9, stream=stream
            )
            sim = {
                "end_user": None,
                "harvest": True,
                "conversation_id": f"{account.id}:q{j}",
                "turn": 1,
                "capability": cap,
                "source": source,
                "seed_item": item,
            }
            asks.append((t, endpoint, body, account.ips[0], account.user_agent, sim))
        merged = sorted([*asks, *cover], key=lambda x: x[0])
        yield from merged
