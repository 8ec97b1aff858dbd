"""One risk board for every gateway replica, on the Redis the limiter already uses.

Reads stay local: each replica keeps a `LocalRiskBoard` as its copy and the policy looks verdicts up there
on every request, as with the in-process board. Writes (online detection's verdicts, a report loaded through
the admin API, a review decision) apply to the local copy at once and are published by a background task:
one MULTI/EXEC that sets the accounts in a hash (`<ns>:risk:board`, the board's current state) and appends
them to a stream (`<ns>:risk:events`, capped). Every replica reads the stream (XREAD BLOCK) and applies each
entry in stream order, its own included, so all copies converge on the stream's order even when two replicas
write the same account at once; the staleness of a copy is the publish round trip plus the read wake-up,
milliseconds on a LAN (benchmarks/risk_propagation.py measures it).

A replica starting up (or reconnecting after an outage) loads the hash, then follows the stream from the id
it saw before the load. While Redis is unreachable, reads go on from the local copy, writes queue (coalesced
per account: only an account's latest verdict matters) and are published when it is back; the outage is
logged once. A Redis that lost its data (restart without persistence, flush) is noticed by the stream's last
id going backwards: each replica then republishes its copy, so the shared state is rebuilt.

Redis Streams rather than pub/sub: a reader that was away resumes from its last id instead of missing
what was said meanwhile, and the hash gives a newcomer the whole board without replaying history. The
machinery is gateway/shared_map.py's `SharedMap`, which the shared standing blocks use too.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import redis.asyncio as aioredis

from distillshield.contracts import AccountRisk
from distillshield.gateway.risk.local import LocalRiskBoard
from distillshield.gateway.shared_map import SharedMap, Value

log = logging.getLogger("distillshield.risk")


class RedisRiskBoard:
    """contracts.RiskBoard shared through Redis; reads are local dictionary lookups."""

    def __init__(
        self,
        url: str,
        *,
        namespace: str = "distillshield",
        block_ms: int = 1000,
        client: aioredis.Redis | None = None,
    ) -> None:
        self.local = LocalRiskBoard()
        self.url = url
        self.shared = SharedMap(
            url,
            f"{namespace}:risk:board",
            f"{namespace}:risk:events",
            key_of=lambda d: str(d.get("account_id")),
            apply=self._apply,
            snapshot=lambda: [r.as_dict() for r in self.local.all()],
            what="the shared risk board (Redis)",
            log=log,
            block_ms=block_ms,
            client=client,
        )

    @property
    def board_key(self) -> str:
        return self.shared.hash_key

    @property
    def events_key(self) -> str:
        return self.shared.events_key

    # -- reads: the local copy ---------------------------------------------------------------------------

    def get(self, account_id: str) -> AccountRisk | None:
        return self.local.get(account_id)

    def cluster_members(self, cluster_id: str) -> set[str]:
        return self.local.cluster_members(cluster_id)

    def cluster_size(self, cluster_id: str) -> int:
        return self.local.cluster_size(cluster_id)

    def all(self) -> list[AccountRisk]:
        return self.local.all()

    @property
    def unsent(self) -> int:
        """Verdicts written here and not yet in Redis (an outage holds them)."""
        return self.shared.unsent

    @property
    def published(self) -> int:
        return self.shared.published

    @property
    def received(self) -> int:
        return self.shared.received

    # -- writes: local at once, published in the background ----------------------------------------------

    def update(self, risk: AccountRisk) -> None:
        self.local.update(risk)  # validates (ValueError) before anything is queued
        self.shared.put(risk.as_dict())

    def update_many(self, risks: Iterable[AccountRisk], *, keep_stronger_reports: bool = False) -> int:
        n = 0
        for r in risks:
            if keep_stronger_reports and self.local.outranked(r):
                continue
            self.update(r)
            n += 1
        return n

    def _apply(self, d: Value) -> None:
        self.local.update(AccountRisk.from_dict(d))

    # -- life cycle --------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the shared board (when Redis answers; otherwise the reader keeps trying) and start following
        it and publishing to it."""
        await self.shared.start()

    async def stop(self, flush_timeout_s: float = 2.0) -> None:
        """Publish what is still unsent (bounded wait), then stop."""
        await self.shared.stop(flush_timeout_s)

    async def wait_published(self, timeout_s: float = 5.0) -> None:
        """Until everything written here is in Redis (tests, admin)."""
        await self.shared.wait_published(timeout_s)
