"""Imported indicators in the gateway's store (the same SQLite file or PostgreSQL database, its own table).

An import keeps the latest version of each indicator id (STIX versioning: the larger `modified` wins), so
importing a producer's re-export updates its indicators, an older copy arriving later changes nothing, and a
revocation (`revoked: true` on a newer version) sticks. Expired and revoked indicators stay in the table for
the record; the matcher loads only the active ones.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from distillshield.intel.indicators import Indicator
from distillshield.store.database import Store
from distillshield.store.tables import intel_indicators, intel_pulls


@dataclass
class ImportResult:
    added: int = 0
    updated: int = 0
    revoked: int = 0  # of the added or updated ones, how many are revocations
    unchanged: int = 0  # the same version was already here
    older: int = 0  # a newer version was already here
    unsupported: int = 0  # kept, but nothing in their pattern can be matched per request

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class IntelStore:
    """Indicators and TAXII pull positions over the Store's engine (SQLAlchemy Core, SQLite or PostgreSQL)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def add(self, indicators: list[Indicator], source: str, unsupported: int = 0) -> ImportResult:
        """Keep each indicator unless a version as new or newer is already stored."""
        res = ImportResult(unsupported=unsupported)
        now = time.time()
        async with self.store.engine.begin() as conn:
            ids = [i.id for i in indicators]
            held: dict[str, float] = {}
            for chunk in range(0, len(ids), 500):
                q = sa.select(intel_indicators.c.id, intel_indicators.c.modified).where(
                    intel_indicators.c.id.in_(ids[chunk : chunk + 500])
                )
                held.update({r.id: r.modified for r in await conn.execute(q)})
            for ind in indicators:
                row = {
                    "modified": ind.modified,
                    "producer": ind.producer[:200],
                    "revoked": ind.revoked,
                    "valid_until": ind.valid_until,
                    "source": source[:500],
                    "data": ind.as_dict(),
                    "imported_at": now,
                }
                prior = held.get(ind.id)
                if prior is None:
                    await conn.execute(intel_indicators.insert().values(id=ind.id, **row))
                    res.added += 1
                elif ind.modified > prior:
                    await conn.execute(intel_indicators.update().where(intel_indicators.c.id == ind.id).values(**row))
                    res.updated += 1
                else:
                    if ind.modified == prior:
                        res.unchanged += 1
                    else:
                        res.older += 1
                    continue
                held[ind.id] = ind.modified
                res.revoked += ind.revoked
        return res

    async def all(self) -> list[Indicator]:
        async with self.store.engine.connect() as conn:
            rows = await conn.execute(sa.select(intel_indicators.c.data).order_by(intel_indicators.c.id))
            return [Indicator.from_dict(r.data) for r in rows]

    async def active(self, now: float | None = None) -> list[Indicator]:
        """Indicators neither revoked nor expired at `now`."""
        now = time.time() if now is None else now
        q = sa.select(intel_indicators.c.data).where(
            intel_indicators.c.revoked.is_(False),
            sa.or_(intel_indicators.c.valid_until.is_(None), intel_indicators.c.valid_until > now),
        )
        async with self.store.engine.connect() as conn:
            return [i for i in (Indicator.from_dict(r.data) for r in await conn.execute(q)) if i.active(now)]

    async def version(self) -> tuple[int, float]:
        """(rows, last import time): changes whenever an import changed something."""
        q = sa.select(sa.func.count(), sa.func.max(intel_indicators.c.imported_at))
        async with self.store.engine.connect() as conn:
            n, last = (await conn.execute(q)).one()
        return int(n), float(last or 0.0)

    async def pulled(self, collection: str) -> str | None:
        """Where the last pull of `collection` ended (an added_after timestamp), None before the first."""
        q = sa.select(intel_pulls.c.added_after).where(intel_pulls.c.collection == collection)
        async with self.store.engine.connect() as conn:
            return (await conn.execute(q)).scalar()

    async def set_pulled(self, collection: str, added_after: str | None) -> None:
        values: dict[str, Any] = {"added_after": added_after, "pulled_at": time.time()}
        async with self.store.engine.begin() as conn:
            done = await conn.execute(
                intel_pulls.update().where(intel_pulls.c.collection == collection).values(**values)
            )
            if not done.rowcount:
                await conn.execute(intel_pulls.insert().values(collection=collection, **values))


async def import_bundle(store: Store, data: str | bytes | dict[str, Any], source: str) -> ImportResult:
    """Validate a STIX 2.1 bundle and keep its indicators (BundleError when it is not valid)."""
    from distillshield.intel.indicators import read_bundle

    indicators, unsupported = read_bundle(data)
    return await IntelStore(store).add(indicators, source, unsupported)


async def load_matcher(store: Store, now: float | None = None) -> Any:
    """An IntelMatcher of the store's active indicators (None when there are none)."""
    from distillshield.intel.matcher import IntelMatcher

    now = time.time() if now is None else now
    active = await IntelStore(store).active(now)
    return IntelMatcher(active, now) if active else None
