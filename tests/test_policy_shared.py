"""Standing blocks and challenges shared by every replica on a real Redis (issue 11; gateway/policy/shared.py): a
block one replica sets stands on the others even after the verdict that set it has dipped, a lift (a review
clear, a challenge passed by verifying) on any replica lifts it everywhere, a replica that starts loads the
blocks that stand, shadow-mode blocks stay where they were recorded, and the gateway shares them exactly when
its risk board is shared. Each test uses a namespace of its own and deletes only its keys."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from distillshield.config import load_settings
from distillshield.contracts import AccountRisk
from distillshield.gateway.app import build_state
from distillshield.gateway.policy import PolicyEngine, compile_policy, parse_policy
from distillshield.gateway.policy.actions import block_refusal
from distillshield.gateway.policy.engine import BlockBook
from distillshield.gateway.policy.shared import SharedBlocks, decode, encode
from distillshield.store.database import Account, ApiKey, KeyContext, Org
from tests.conftest import ADMIN_TOKEN, REDIS_URL, RunningGateway, until

POLICY = """
rules:
  - {name: stop-harvesters, when: {verdict: [extraction], risk: {gte: 0.9}}, action: block,
     params: {scope: account, message: "blocked for harvesting"}}
  - {name: verify-first, when: {verdict: [suspicious]}, action: challenge, params: {level: phone}}
"""


def ctx(account: str = "a1", verification: str = "none") -> KeyContext:
    key = ApiKey("k" + account, account, "", "00", "00", 0.0, None)
    return KeyContext(
        key, Account(account, "o1", account, 0.0, "standard", verification, "active"), Org("o1", "o1", 0.0)
    )


def risk(account: str = "a1", verdict: str = "extraction", r: float = 0.95) -> AccountRisk:
    return AccountRisk(account, r, verdict, None, {"cot": r})


@pytest.fixture
async def replicas(namespace: str) -> AsyncIterator[Callable[..., Any]]:
    """Policy engines of separate replicas, each with its own book shared through the namespace's Redis keys."""
    made: list[SharedBlocks] = []

    async def make(mode: str = "enforce") -> PolicyEngine:
        e = PolicyEngine(compile_policy(parse_policy(POLICY), "test"), mode=mode)  # type: ignore[arg-type]
        shared = SharedBlocks(e.blocks, REDIS_URL, namespace=namespace, block_ms=200)
        await shared.start()
        made.append(shared)
        return e

    yield make
    for s in made:
        await s.stop()


async def test_a_block_set_on_one_replica_stands_on_the_others_after_the_verdict_dips(
    replicas: Callable[..., Any],
) -> None:
    a, b, c = await replicas(), await replicas(), await replicas()
    assert b.decide(ctx(), risk(verdict="benign", r=0.1)).action == "allow"
    assert a.decide(ctx(), risk()).action == "block"
    # replica b never saw the extraction verdict: the block it applies is the one replica a set
    took = await until(lambda: b.decide(ctx(), risk(verdict="benign", r=0.1)).action == "block", timeout=1.0)
    d = b.decide(ctx(), None)
    assert (d.action, d.rule, d.verdict, d.risk) == ("block", "stop-harvesters", "extraction", 0.95)
    assert block_refusal(d, d.effects.block, ctx(), None).message == "blocked for harvesting"  # type: ignore[arg-type]
    assert took < 1.0
    assert c.decide(ctx("a2"), None).action == "allow"  # other accounts are not touched
    # a review clear on replica c (what PolicyStage.apply_item does) lifts it on every replica
    await until(lambda: c.blocks.count == 1)
    assert c.blocks.lift_account("a1") == 1
    await until(lambda: a.blocks.count == 0 and b.blocks.count == 0, timeout=1.0)
    assert a.decide(ctx(), risk(verdict="benign", r=0.1)).action == "allow"


async def test_a_replica_that_starts_later_loads_the_blocks_that_stand(
    replicas: Callable[..., Any], namespace: str
) -> None:
    a = await replicas()
    a.decide(ctx("early"), risk("early"))
    assert a.blocks.listener is not None
    await a.blocks.listener.wait_published()  # type: ignore[attr-defined]
    late = await replicas()  # a restarted gateway: no amnesty for the blocked account
    assert late.blocks.count == 1 and late.decide(ctx("early"), None).action == "block"
    r = aioredis.from_url(REDIS_URL)
    assert await r.hkeys(f"{namespace}:policy:blocks") == [b"account:early"]
    late.blocks.lift("account", "early")  # lifted: gone from the shared hash too
    await late.blocks.listener.wait_published()  # type: ignore[union-attr]
    assert await r.hkeys(f"{namespace}:policy:blocks") == []
    await r.aclose()


async def test_a_challenge_passed_on_one_replica_is_lifted_on_all(replicas: Callable[..., Any]) -> None:
    a, b = await replicas(), await replicas()
    assert a.decide(ctx("c1"), risk("c1", "suspicious", 0.6)).action == "challenge"
    await until(lambda: b.decide(ctx("c1"), None).action == "challenge", timeout=1.0)
    assert b.decide(ctx("c1", verification="phone"), None).action == "allow"  # verified: passed, lifted
    await until(lambda: a.decide(ctx("c1"), None).action == "allow", timeout=1.0)


async def test_shadow_blocks_stay_on_the_replica_that_recorded_them(replicas: Callable[..., Any]) -> None:
    shadow, enforcing = await replicas("shadow"), await replicas()
    d = shadow.decide(ctx("s1"), risk("s1"))
    assert d.action == "block" and d.shadow and shadow.blocks.count == 1
    await shadow.blocks.listener.wait_published()  # type: ignore[union-attr]
    enforcing.decide(ctx("s2"), risk("s2"))  # a real block, after anything the shadow replica published
    listener = enforcing.blocks.listener
    assert isinstance(listener, SharedBlocks)
    await until(lambda: listener.shared.received >= 1)  # its own block read back: the stream read past s1
    await until(lambda: shadow.blocks.count == 2)
    assert listener.shared.received == 1 and enforcing.blocks.count == 1
    assert enforcing.decide(ctx("s1"), None).action == "allow"


async def test_an_old_review_clear_replayed_at_start_does_not_lift_a_newer_block(replicas: Callable[..., Any]) -> None:
    """A replica that starts loads the fleet's blocks, then replays the review book: a clear decided before a
    block was set (on a worse verdict since) must not lift it, on that replica or through it on the others."""
    a = await replicas()
    a.decide(ctx("r1"), risk("r1"))
    (block,) = a.blocks.all()
    late = await replicas()
    assert late.blocks.lift_account("r1", set_before=block.ts - 60) == 0  # the clear came a minute before
    assert late.blocks.lift("account", "r1", set_before=block.ts - 60) is False
    await asyncio.sleep(0.3)
    assert a.blocks.count == late.blocks.count == 1
    assert late.blocks.lift_account("r1", set_before=block.ts + 1) == 1  # a clear decided after it lifts it
    await until(lambda: a.blocks.count == 0, timeout=1.0)


def test_a_standing_block_survives_its_wire_form() -> None:
    book = BlockBook()
    e = PolicyEngine(compile_policy(parse_policy(POLICY), "test"), blocks=book)
    d = e.decide(ctx(), risk())
    (block,) = book.all()
    back = decode(encode(block))
    assert (back.scope, back.subject, back.account_id, back.ts) == (block.scope, block.subject, "a1", block.ts)
    assert back.decision.as_dict() == d.as_dict() and back.decision.effects.block == d.effects.block
    assert back.decision.audit() == d.audit()


def test_the_gateway_shares_its_blocks_exactly_when_its_risk_board_is_shared(tmp_path: Any) -> None:
    local = build_state(load_settings(None, store__url=f"sqlite+aiosqlite:///{tmp_path}/a.db"), [])
    assert local.policy is not None and local.policy.shared_blocks is None
    fleet = build_state(
        load_settings(
            None,
            store__url=f"sqlite+aiosqlite:///{tmp_path}/b.db",
            risk__backend="redis",
            risk__namespace="dstest-wiring",
            limits__redis_url=REDIS_URL,
        ),
        [],
    )
    assert fleet.policy is not None and isinstance(fleet.policy.shared_blocks, SharedBlocks)
    assert fleet.policy.engine.blocks.listener is fleet.policy.shared_blocks
    assert fleet.policy.shared_blocks.shared.hash_key == "dstest-wiring:policy:blocks"


async def test_a_challenge_set_through_one_gateway_stands_on_another_after_the_verdict_drops(
    redis_replicas: tuple[RunningGateway, RunningGateway],
) -> None:
    """Through two gateway processes' apps on one Redis: replica 1 challenges an unverified account with an
    extraction verdict (the default policy); a newer report then calls it benign; replica 2, which never
    decided anything for it, still refuses it: the challenge stands until the account verifies."""
    gw1, gw2 = redis_replicas
    key = gw1.create_key("harvester-1")
    body = {"model": "fake-model", "messages": [{"role": "user", "content": "hello"}]}
    auth = {"authorization": f"Bearer {key}"}
    admin = {"authorization": f"Bearer {ADMIN_TOKEN}"}

    def report(verdict: str, score: float) -> dict[str, Any]:
        return {"accounts": [{"account_id": "harvester-1", "risk": score, "verdict": verdict,
                              "reasons": [{"signal": "cot", "score": score}]}]}  # fmt: skip

    async with httpx.AsyncClient(timeout=30) as client:
        assert (await client.post(f"{gw1.base}/admin/risk", json=report("extraction", 0.97), headers=admin)).is_success
        t0 = time.perf_counter()
        while (await client.post(f"{gw1.base}/v1/chat/completions", json=body, headers=auth)).status_code != 403:
            assert time.perf_counter() - t0 < 5.0
            await asyncio.sleep(0.01)
        assert (await client.post(f"{gw2.base}/admin/risk", json=report("benign", 0.02), headers=admin)).is_success
        deadline = time.perf_counter() + 1.0
        got = await client.post(f"{gw2.base}/v1/chat/completions", json=body, headers=auth)
        while got.status_code != 403 and time.perf_counter() < deadline:
            await asyncio.sleep(0.01)
            got = await client.post(f"{gw2.base}/v1/chat/completions", json=body, headers=auth)
    assert got.status_code == 403 and "verif" in got.text.lower(), got.text
