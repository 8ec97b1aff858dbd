"""The audit log's hash chain on SQLite and PostgreSQL: tampering is detected and located."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa

from distillshield.store import Store
from distillshield.store.tables import audit_log


def row(i: int, account: str = "acct") -> dict:
    return {
        "ts": 1_700_000_000.0 + i,
        "request_id": uuid.uuid4().hex,
        "account_id": account,
        "org_id": "org",
        "key_id": "k1",
        "ip": "127.0.0.1",
        "user_agent": "test",
        "endpoint": "/v1/chat/completions",
        "model": "m",
        "stream": False,
        "status": 200,
        "latency_ms": 1.5 + i,
        "request": f'{{"messages": [{{"role": "user", "content": "q{i}"}}]}}',
        "response_text": f"answer {i}",
        "finish_reason": "stop",
        "prompt_tokens": 3,
        "completion_tokens": 2,
        "decision": None,
        "error": None,
    }


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    s = Store(store_url)
    await s.init()
    await s.append_audit([row(i) for i in range(10)])
    yield s
    await s.close()


async def test_intact_chain_verifies(store: Store) -> None:
    report = await store.verify_chain()
    assert report.ok and report.rows == 10 and report.head_seq == 10


async def test_edited_row_is_named(store: Store) -> None:
    async with store.engine.begin() as conn:
        await conn.execute(audit_log.update().where(audit_log.c.seq == 4).values(response_text="forged"))
    report = await store.verify_chain()
    assert not report.ok and report.first_bad_seq == 4 and "edited" in report.problem
    assert report.rows == 3


async def test_deleted_row_is_named(store: Store) -> None:
    async with store.engine.begin() as conn:
        await conn.execute(audit_log.delete().where(audit_log.c.seq == 6))
    report = await store.verify_chain()
    assert not report.ok and report.first_bad_seq == 6 and "missing" in report.problem


async def test_deleted_tail_is_detected_against_the_head(store: Store) -> None:
    async with store.engine.begin() as conn:
        await conn.execute(audit_log.delete().where(audit_log.c.seq >= 9))
    report = await store.verify_chain()
    assert not report.ok and report.first_bad_seq == 9


async def test_reordered_rows_are_named(store: Store) -> None:
    # swap the contents of rows 3 and 7 (keeping their seq numbers and hashes)
    async with store.engine.begin() as conn:
        cols = [c for c in audit_log.c if c.name not in ("seq", "prev_hash", "hash")]
        r3 = (await conn.execute(sa.select(*cols).where(audit_log.c.seq == 3))).mappings().one()
        r7 = (await conn.execute(sa.select(*cols).where(audit_log.c.seq == 7))).mappings().one()
        await conn.execute(audit_log.update().where(audit_log.c.seq == 3).values(**r7))
        await conn.execute(audit_log.update().where(audit_log.c.seq == 7).values(**r3))
    report = await store.verify_chain()
    assert not report.ok and report.first_bad_seq == 3


async def test_swapped_sequence_numbers_are_named(store: Store) -> None:
    async with store.engine.begin() as conn:
        await conn.execute(audit_log.update().where(audit_log.c.seq == 5).values(seq=-5))
        await conn.execute(audit_log.update().where(audit_log.c.seq == 6).values(seq=5))
        await conn.execute(audit_log.update().where(audit_log.c.seq == -5).values(seq=6))
    report = await store.verify_chain()
    assert not report.ok and report.first_bad_seq == 5 and "link" in report.problem


async def test_concurrent_writers_extend_one_chain(store: Store) -> None:
    other = Store(store.url)  # a second replica's connection pool
    try:
        await asyncio.gather(
            *[
                (store if i % 2 else other).append_audit([row(100 + i * 10 + j, f"w{i}") for j in range(10)])
                for i in range(8)
            ]
        )
    finally:
        await other.close()
    report = await store.verify_chain()
    assert report.ok and report.rows == 90, report.problem


async def test_floats_and_unicode_survive_the_round_trip(store: Store) -> None:
    r = row(50)
    r.update(ts=time.time(), latency_ms=0.1 + 0.2, response_text="日本語 ✓ \u0000 emoji 🎉")
    await store.append_audit([r])
    assert (await store.verify_chain()).ok


async def test_client_controlled_strings_that_do_not_fit_are_stored_truncated(store: Store) -> None:
    r = row(60)
    r.update(model="m" * 500, ip="1." * 100, user_agent="ua\x00" * 1000)
    await store.append_audit([r])
    assert (await store.verify_chain()).ok
    last = [x async for x in store.iter_audit(start_seq=11)][0]
    assert last["model"] == "m" * 200 and "\x00" not in last["user_agent"]


async def test_audit_writer_survives_a_row_the_database_refuses(store: Store) -> None:
    from distillshield.store.writer import AuditWriter

    writer = AuditWriter(store, batch_size=8, flush_interval_s=0.01)
    await writer.start()
    bad = row(70)
    bad["status"] = 10**12  # out of INTEGER range on PostgreSQL; SQLite stores it
    for i in range(3):
        writer.submit(row(71 + i))
    writer.submit(bad)
    writer.submit(row(75))
    await writer.stop()
    rows = [x async for x in store.iter_audit(start_seq=11)]
    # PostgreSQL refuses the row: it is isolated and dropped (and logged), the others are kept
    assert len(rows) == (5 if store.is_sqlite else 4)
    assert [x["response_text"] for x in rows if x["status"] == 200] == [
        "answer 71",
        "answer 72",
        "answer 73",
        "answer 75",
    ]
    assert (await store.verify_chain()).ok
