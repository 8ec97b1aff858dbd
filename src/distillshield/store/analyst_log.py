"""What analysts saw or looked up in the console: one `analyst_actions` row per act.

Review decisions are recorded in `review_decisions` (store/review.py), with the reviewer's name. The
console's other acts that expose data are recorded here, the same way: who (the reviewer name given, else
"console", the admin credential everyone shares, and a fingerprint of the console session), what (the
action, its subject and a small JSON detail), when. The row is written before the result is sent: a
failed write refuses the act.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from distillshield.store.database import Store
from distillshield.store.tables import analyst_actions

ACTIONS = ("reveal_prompts", "watermark_lookup")


@dataclass(frozen=True)
class AnalystAction:
    id: int
    ts: float
    actor: str
    session: str
    action: str
    subject: str | None
    detail: dict[str, Any] | None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class AnalystLog:
    """Rows of `analyst_actions` over the Store's engine (SQLite or PostgreSQL)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def record(
        self,
        action: str,
        *,
        actor: str,
        session: str = "",
        subject: str | None = None,
        detail: dict[str, Any] | None = None,
        now: float | None = None,
    ) -> int:
        """Write one row; returns its id."""
        if action not in ACTIONS:
            raise ValueError(f"unknown analyst action '{action}'; one of {', '.join(ACTIONS)}")
        values = {
            "ts": now if now is not None else time.time(),
            "actor": actor[:64],
            "session": session[:32],
            "action": action,
            "subject": subject[:64] if subject is not None else None,
            "detail": detail,
        }
        async with self.store.engine.begin() as conn:
            res = await conn.execute(analyst_actions.insert().values(**values))
        return int(res.inserted_primary_key[0])

    async def page(self, limit: int, offset: int = 0) -> tuple[list[AnalystAction], int]:
        """Newest first: `limit` rows from `offset`, and how many there are in all."""
        c = analyst_actions.c
        q = analyst_actions.select().order_by(sa.desc(c.id)).limit(limit).offset(offset)
        async with self.store.engine.connect() as conn:
            total = (await conn.execute(sa.select(sa.func.count()).select_from(analyst_actions))).scalar_one()
            rows = [AnalystAction(**r) for r in (await conn.execute(q)).mappings()]
        return rows, int(total)
