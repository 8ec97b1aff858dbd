"""Standing blocks and challenges shared by every gateway replica (`risk.backend: redis`).

A block sticks to what it blocks until a reviewer clears it, and a challenge to its account until it verifies
(engine.py, `BlockBook`). In one process the book is the whole truth. Behind a load balancer it is not: a block
that replica A set when an account's verdict crossed the threshold would not stand on replicas B and C, so once
the verdict dipped again the account could harvest through them, and a replica's restart forgot every block it
held. `SharedBlocks` keeps each replica's book a copy of one shared book: what a replica sets or lifts (a review
decision, a challenge passed by verifying) is published through Redis and applied by every other replica within
the publish round trip and a read wake-up (the shared risk board's machinery, gateway/shared_map.py), and a
replica that starts loads the blocks that stand. The request path still reads only the local book.

What travels with a block is what the refusal and its audit row need: the deciding rule, the rules matched,
the signals, the verdict and risk, and the block's or challenge's parameters. Shadow-mode blocks are not real
blocks and stay with the replica that recorded them.
"""

from __future__ import annotations

import logging
from typing import Any

import redis.asyncio as aioredis

from distillshield.config import RiskSettings
from distillshield.gateway.policy.engine import BlockBook, Decision, Effects, StandingBlock
from distillshield.gateway.policy.rules import BlockParams, ChallengeParams
from distillshield.gateway.shared_map import SharedMap, Value

log = logging.getLogger("distillshield.policy")


def encode(block: StandingBlock) -> Value:
    """A standing block as the JSON object the replicas exchange."""
    d = block.decision
    effects = {
        name: params.model_dump(mode="json")
        for name, params in (("block", d.effects.block), ("challenge", d.effects.challenge))
        if params is not None
    }
    return {
        "scope": block.scope,
        "subject": block.subject,
        "account_id": block.account_id,
        "ts": block.ts,
        "decision": {"action": d.action, "rule": d.rule, "rules": list(d.rules), "signals": d.signals,
                     "verdict": d.verdict, "risk": d.risk, "effects": effects},
    }  # fmt: skip


def decode(v: Value) -> StandingBlock:
    """The standing block of `encode`'s object."""
    d: dict[str, Any] = v["decision"]
    effects = d.get("effects") or {}
    decision = Decision(
        d["action"],
        d.get("rule"),
        dict(d.get("signals") or {}),
        effects=Effects(
            block=BlockParams.model_validate(effects["block"]) if "block" in effects else None,
            challenge=ChallengeParams.model_validate(effects["challenge"]) if "challenge" in effects else None,
        ),
        verdict=d.get("verdict"),
        risk=d.get("risk"),
        rules=tuple(d.get("rules") or ()),
    )
    return StandingBlock(v["scope"], v["subject"], v["account_id"], decision, float(v["ts"]))


def _key(v: Value) -> str:
    return f"{v['scope']}:{v['subject']}"


class SharedBlocks:
    """engine.BlockListener: publishes what this replica's book sets and lifts, and applies the others'."""

    def __init__(
        self,
        book: BlockBook,
        url: str,
        *,
        namespace: str = "distillshield",
        block_ms: int = 1000,
        client: aioredis.Redis | None = None,
    ) -> None:
        self.book = book
        self.shared = SharedMap(
            url,
            f"{namespace}:policy:blocks",
            f"{namespace}:policy:block-events",
            key_of=_key,
            apply=self._apply,
            snapshot=lambda: [encode(b) for b in self.book.all() if not b.decision.shadow],
            deleted=lambda v: bool(v.get("lifted")),
            what="the shared standing blocks (Redis)",
            log=log,
            block_ms=block_ms,
            client=client,
        )
        book.listener = self

    # -- engine.BlockListener ------------------------------------------------------------------------------

    def added(self, block: StandingBlock) -> None:
        self.shared.put(encode(block))

    def lifted(self, scope: str, subject: str) -> None:
        self.shared.put({"scope": scope, "subject": subject, "lifted": True})

    # -- from the other replicas -----------------------------------------------------------------------------

    def _apply(self, v: Value) -> None:
        if v.get("lifted"):
            self.book.lift(v["scope"], v["subject"], notify=False)
        else:
            self.book.add(decode(v), notify=False)

    # -- life cycle ----------------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.shared.start()

    async def stop(self) -> None:
        await self.shared.stop()

    async def wait_published(self, timeout_s: float = 5.0) -> None:
        await self.shared.wait_published(timeout_s)


def share_blocks(book: BlockBook, risk: RiskSettings, limits_redis_url: str) -> SharedBlocks | None:
    """Shared standing blocks when the risk board is shared (on the board's Redis), else None."""
    if risk.backend != "redis":
        return None
    return SharedBlocks(book, risk.redis_url or limits_redis_url, namespace=risk.namespace)
