"""Accounts that name their end users (OpenAI `user`, Anthropic `metadata.user_id`): a reseller relaying
many people is judged per person, and one end user who harvests is found among its honest ones."""

from __future__ import annotations

import functools
import random
from typing import Any

from distillshield.detect.analyze import analyze_records
from distillshield.simulate import corpora
from distillshield.simulate.text import COT_TEMPLATES
from distillshield.traffic import TrafficRecord

T0 = 1_772_409_600.0  # 2026-03-02T00:00:00Z
DAYS = 2
UAS = ("OpenAI/Python 1.99.1", "Anthropic/Python 0.40.0", "python-requests/2.32.3", "Mozilla/5.0 (Macintosh)")


@functools.lru_cache(maxsize=1)
def chat() -> tuple[str, ...]:
    convs = corpora.wildchat_prompts() + corpora.mt_bench() + corpora.vicuna()
    return tuple(c.turns[0] for c in convs)


def record(account: str, ts: float, prompt: str, ip: str, ua: str, user: str | None = None,
           max_tokens: int = 512, temperature: float | None = None) -> TrafficRecord:  # fmt: skip
    body: dict[str, Any] = {"model": "m1", "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens}
    if temperature is not None:
        body["temperature"] = temperature
    if user is not None:
        body["user"] = user
    return TrafficRecord(ts=ts, account_id=account, endpoint="/v1/chat/completions", request=body, ip=ip,
                         user_agent=ua, org_id=f"org-{account}")  # fmt: skip


def people(rng: random.Random, n: int = 30) -> list[TrafficRecord]:
    """Ordinary accounts: one person each, a few dozen chat requests in their daytime."""
    out = []
    for i in range(n):
        ip, ua = f"81.{i}.{rng.randrange(256)}.{rng.randrange(1, 255)}", rng.choice(UAS)
        for _ in range(rng.randrange(40, 90)):
            day, hour = rng.randrange(DAYS), rng.uniform(8, 22)
            out.append(record(f"person-{i:02d}", T0 + day * 86400 + hour * 3600, rng.choice(chat()), ip, ua))
    return out


def reseller(rng: random.Random, account: str, *, ids: bool = True, harvester: bool = False) -> list[TrafficRecord]:
    """A platform relaying 120 people from every time zone, around the clock, each with their own settings;
    with `harvester`, one of them sends 400 reasoning-harvesting requests over a bank of questions."""
    out = []
    ip, ua = f"34.{rng.randrange(256)}.{rng.randrange(256)}.10", "platform-server/2.1"
    for u in range(120):
        mt, temp = rng.choice((256, 512, 1024, 2048)), rng.choice((None, 0.2, 0.7, 1.0))
        for _ in range(rng.randrange(6, 20)):
            ts = T0 + rng.uniform(0, DAYS * 86400)
            user = f"{account}-u{u:04d}" if ids else None
            out.append(record(account, ts, rng.choice(chat()), ip, ua, user, mt, temp))
    if harvester:
        bank = [q.question for cap in corpora.CAPABILITIES for q in corpora.question_bank(cap, seed=4, per_dataset=4)]
        for _ in range(400):
            prompt = rng.choice(COT_TEMPLATES["en"]).format(q=rng.choice(bank), a="42")
            out.append(record(account, T0 + rng.uniform(0, DAYS * 86400), prompt, ip, ua, f"{account}-u9999", 2048))
    return out


def analysed(ids: bool) -> dict[str, dict[str, Any]]:
    rng = random.Random(21)
    records = people(rng) + reseller(rng, "platform-a", ids=ids) + reseller(rng, "platform-b", ids=ids)
    records += reseller(rng, "platform-x", ids=ids, harvester=True)
    records.sort(key=lambda r: r.ts)
    return {a["account_id"]: a for a in analyze_records(records).report["accounts"]}


@functools.lru_cache(maxsize=2)
def with_ids() -> dict[str, dict[str, Any]]:
    return analysed(True)


def test_a_reseller_that_names_its_end_users_is_judged_per_person() -> None:
    acc = with_ids()
    for account in ("platform-a", "platform-b"):
        assert acc[account]["verdict"] == "benign", acc[account]["reasons"]
        details = [r["detail"] for r in acc[account]["reasons"]]
        assert any("end users: volume and timing are judged per end user" in d for d in details)
    assert [a for a, v in acc.items() if a.startswith("person-") and v["verdict"] != "benign"] == []


def test_without_end_user_ids_the_same_reseller_looks_like_one_bulk_client() -> None:
    """The control: the same traffic with the ids removed is one actor's volume, around the clock, over
    many settings; what clears the resellers above is the ids."""
    acc = analysed(False)
    assert acc["platform-a"]["verdict"] != "benign" or acc["platform-b"]["verdict"] != "benign"


def test_a_harvesting_end_user_is_found_among_the_honest_ones_and_named() -> None:
    x = with_ids()["platform-x"]
    assert x["verdict"] != "benign"
    assert any("end user platform-x-u9999:" in r["detail"] for r in x["reasons"]), x["reasons"]
