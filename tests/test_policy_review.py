"""The review queue's store on SQLite and PostgreSQL: flag, re-open, decide, expand cluster decisions."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from distillshield.store import Store
from distillshield.store.admin_log import Actor, AdminLog
from distillshield.store.database import StoreError
from distillshield.store.review import Flag, ReviewStore

OPERATOR = Actor("cli:tester", "cli")


@pytest.fixture
async def review(store_url: str) -> AsyncIterator[ReviewStore]:
    store = Store(store_url)
    await store.init()
    try:
        yield ReviewStore(store)
    finally:
        await store.close()


async def test_flag_decide_and_reopen(review: ReviewStore) -> None:
    run = uuid.uuid4().hex[:8]
    a, b, c = f"a-{run}", f"b-{run}", f"c-{run}"
    await review.store.create_account(a, f"org-{run}")
    opened = await review.flag(
        [
            Flag("account", a, "suspicious", 0.6, f"cl-{run}", {"reasons": [{"signal": "cot", "score": 0.7}]}),
            Flag("cluster", f"cl-{run}", "extraction", 0.9, f"cl-{run}", {"members": [a, b, c]}),
        ]
    )
    assert {i.ref for i in opened} == {f"account:{a}", f"cluster:{f'cl-{run}'}"}
    assert await review.flag([Flag("account", a, "suspicious", 0.65)]) == []  # an update, not a new item
    item = await review.get(a)
    assert item is not None and item.status == "open" and item.risk == 0.65

    result = await review.decide(f"cluster:cl-{run}", "clear", reviewer="ana", note="batch job", actor=OPERATOR)
    assert result.accounts == [a, b, c] and result.status == "cleared" and result.cluster_id == f"cl-{run}"
    assert {(await review.get(x)).status for x in (a, b, c)} == {"cleared"}  # type: ignore[union-attr]
    decisions = await review.decisions(result.item.id)
    assert [(d.decision, d.reviewer, d.members) for d in decisions] == [("clear", "ana", [a, b, c])]

    # the verdict a clear was made on (a member gets its cluster's) does not re-open it; a worse one does
    assert await review.flag([Flag("account", b, "extraction", 0.95)]) == []
    d = f"d-{run}"
    await review.flag([Flag("account", d, "suspicious", 0.55)])
    await review.decide(d, "clear", actor=OPERATOR)
    assert await review.flag([Flag("account", d, "suspicious", 0.7)]) == []
    assert [i.ref for i in await review.flag([Flag("account", d, "extraction", 0.95)])] == [f"account:{d}"]

    org = await review.decide(a, "allowlist", org=True, actor=OPERATOR)
    assert org.orgs == [f"org-{run}"] and (await review.get(f"org:org-{run}")).status == "allowlisted"  # type: ignore[union-attr]
    changed = {i.ref for i in await review.changed_since(result.item.updated_at)}
    assert {f"account:{b}", f"org:org-{run}"} <= changed
    assert any(i.ref == f"account:{d}" for i in await review.list_items(status="open"))


async def test_escalate_leaves_the_item_under_review_for_a_senior_reviewer(review: ReviewStore) -> None:
    run = uuid.uuid4().hex[:8]
    a, b = f"a-{run}", f"b-{run}"
    await review.flag([Flag("cluster", f"cl-{run}", "extraction", 0.9, f"cl-{run}", {"members": [a, b]})])
    result = await review.decide(f"cluster:cl-{run}", "escalate", reviewer="junior", note="not sure", actor=OPERATOR)
    assert result.status == "escalated" and result.accounts == [a, b]
    assert {(await review.get(x)).status for x in (a, b)} == {"escalated"}  # type: ignore[union-attr]
    assert [d.decision for d in await review.decisions(result.item.id)] == ["escalate"]
    listed = {i.ref for i in await review.list_items(status="escalated")}
    assert {f"cluster:cl-{run}", f"account:{a}", f"account:{b}"} <= listed
    assert await review.flag([Flag("account", a, "extraction", 0.95)]) == []  # still under review, not re-opened
    senior = await review.decide(a, "confirm", reviewer="senior", actor=OPERATOR)
    assert senior.status == "confirmed" and (await review.get(a)).status == "confirmed"  # type: ignore[union-attr]


async def test_every_decision_is_a_row_of_the_hash_chained_audit_log(review: ReviewStore) -> None:
    import sqlalchemy as sa

    from distillshield.store.tables import audit_log

    run = uuid.uuid4().hex[:8]
    a, b = f"a-{run}", f"b-{run}"
    await review.flag([Flag("cluster", f"cl-{run}", "extraction", 0.9, f"cl-{run}", {"members": [a, b]})])
    console = Actor("console", "console", "5e55100f", "10.0.0.7")
    await review.decide(f"cluster:cl-{run}", "confirm", reviewer="ana", note="same template", actor=console)
    with pytest.raises(StoreError, match="does not exist"):  # refused: nothing decided, nothing recorded
        await review.decide(f"account:nobody-{run}", "clear", actor=OPERATOR)
    await review.decide(a, "clear", actor=OPERATOR)
    acts, total = await AdminLog(review.store).page(50)
    assert total == 2 and [x.action for x in acts] == ["review_decision", "review_decision"]
    cleared, confirmed = acts  # newest first
    who = (confirmed.actor, confirmed.via, confirmed.session, confirmed.ip)
    assert who == ("ana", "console", "5e55100f", "10.0.0.7")
    assert confirmed.subject == f"cluster:cl-{run}"
    assert confirmed.detail is not None and confirmed.detail["members"] == [a, b]
    assert (confirmed.detail["decision"], confirmed.detail["note"], confirmed.detail["scope"]) == (
        "confirm", "same template", "cluster",
    )  # fmt: skip
    assert (cleared.actor, cleared.via, cleared.subject) == ("cli:tester", "cli", f"account:{a}")
    assert (await review.store.verify_chain()).ok
    # the rows are the chain's: changing what a decision says afterwards breaks it at that row
    async with review.store.engine.begin() as conn:
        edited = confirmed.detail | {"decision": "clear"}
        body = {"actor": "ana", "via": "console", "session": "5e55100f", "subject": confirmed.subject, "detail": edited}
        await conn.execute(
            sa.update(audit_log).where(audit_log.c.seq == confirmed.seq).values(request=orjson.dumps(body).decode())
        )
    report = await review.store.verify_chain()
    assert not report.ok and report.first_bad_seq == confirmed.seq


async def test_unknown_items_and_decisions_are_clear_errors(review: ReviewStore) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        await review.decide("account:nobody-" + uuid.uuid4().hex, "clear", actor=OPERATOR)
    with pytest.raises(StoreError, match="unknown decision 'ban'"):
        await review.decide("1", "ban", actor=OPERATOR)
    with pytest.raises(StoreError, match="unknown status"):
        await review.list_items(status="pending")


async def test_upkeep_logs_a_store_outage_once_and_its_end(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # The policy's upkeep ticks every review_poll_s; with the store away it used to log a traceback each tick.
    import logging

    from distillshield.config import PolicySettings
    from distillshield.gateway.policy.stage import PolicyStage
    from distillshield.gateway.risk import LocalRiskBoard
    from distillshield.store.pins import PinStore

    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'review.db'}")
    await store.init()
    stage = PolicyStage(PolicySettings(), LocalRiskBoard())
    stage.review = ReviewStore(store)
    stage.pins = PinStore(store)
    real = stage.review.changed_since
    down = True

    async def changed_since(since: float) -> list:
        if down:
            raise ConnectionRefusedError("connection refused\nsecond line")
        return await real(since)

    stage.review.changed_since = changed_since  # type: ignore[method-assign]
    caplog.set_level(logging.INFO, logger="distillshield")
    try:
        for _ in range(5):
            await stage.upkeep_once()
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and "ConnectionRefusedError: connection refused" in errors[0].getMessage()
        assert errors[0].exc_info is None and "second line" not in errors[0].getMessage()
        down = False
        await stage.upkeep_once()
        await stage.upkeep_once()
        recovered = [r for r in caplog.records if "recovered after 5 failed attempts" in r.getMessage()]
        assert len(recovered) == 1
    finally:
        await store.close()
