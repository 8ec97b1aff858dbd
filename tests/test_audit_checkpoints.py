"""Signed checkpoints of the audit log's Merkle tree: the tamper matrix (on SQLite and PostgreSQL), the
gateway's periodic checkpoints, the CLI, and evidence bundles whose rows carry inclusion proofs."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from distillshield.cli import app
from distillshield.store import Store
from distillshield.store.chain import GENESIS, link
from distillshield.store.checkpoint import (
    Checkpointer,
    CheckpointError,
    Signer,
    generate_key_file,
    load_key_file,
    read_notes,
    split_notes,
)
from distillshield.store.tables import audit_log, chain_head
from distillshield.store.transparency import TreeReport, open_checkpoints, verify_log
from distillshield.store.writer import AuditWriter
from tests.test_audit_chain import row

runner = CliRunner()
ORIGIN = "test.example/audit"
CONTENT = [c for c in audit_log.c if c.name not in ("seq", "prev_hash", "hash")]


# -- the tamper matrix --------------------------------------------------------------------------------


@pytest.fixture
async def signed(store_url: str, tmp_path: Path) -> AsyncIterator[tuple[Store, Checkpointer]]:
    """25 rows with checkpoints at sizes 10, 20 and 25."""
    s = Store(store_url)
    await s.init()
    cp = Checkpointer(Signer(ORIGIN, generate_key_file(tmp_path / "k.key")), tmp_path / "cp.txt")
    for lo, hi in ((0, 10), (10, 20), (20, 25)):
        await s.append_audit([row(i) for i in range(lo, hi)])
        assert await cp.checkpoint(s) is not None
    yield s, cp
    await s.close()


async def check(store: Store, cp: Checkpointer) -> TreeReport:
    assert cp.file is not None
    return await verify_log(store, open_checkpoints(read_notes(cp.file), cp.signer.verifier))


async def request_id(store: Store, seq: int) -> str:
    async with store.engine.connect() as conn:
        return (await conn.execute(sa.select(audit_log.c.request_id).where(audit_log.c.seq == seq))).scalar_one()


async def rechain(store: Store) -> None:
    """What an attacker with the database does after a change: renumber and relink every row with the public
    `link`, and move the head, so the hash chain verifies again."""
    async with store.engine.begin() as conn:
        rows = [dict(r) for r in (await conn.execute(audit_log.select().order_by(audit_log.c.seq))).mappings()]
        await conn.execute(audit_log.delete())
        prev = GENESIS
        for i, r in enumerate(rows, 1):
            r.update(seq=i, prev_hash=prev)
            r["hash"] = prev = link(prev, r)
        if rows:
            await conn.execute(audit_log.insert(), rows)
        await conn.execute(chain_head.update().where(chain_head.c.id == 1).values(seq=len(rows), hash=prev))


async def test_an_untampered_log_verifies_against_every_checkpoint(signed: tuple[Store, Checkpointer]) -> None:
    store, cp = signed
    report = await check(store, cp)
    assert report.ok and report.checkpoints == 3 and report.rows == 25 and report.latest is not None
    assert report.latest.size == 25 and report.latest.root == (await store.tree_head())[1]


async def test_an_edited_row_is_named(signed: tuple[Store, Checkpointer]) -> None:
    store, cp = signed
    async with store.engine.begin() as conn:
        await conn.execute(audit_log.update().where(audit_log.c.seq == 14).values(response_text="forged"))
    report = await check(store, cp)
    assert not report.ok and report.first_bad_seq == 14 and report.bad_range == (11, 20)
    assert report.first_bad_request_id == await request_id(store, 14) and "row 14 was edited" in report.problem


async def test_a_deleted_row_is_named(signed: tuple[Store, Checkpointer]) -> None:
    store, cp = signed
    async with store.engine.begin() as conn:
        await conn.execute(audit_log.delete().where(audit_log.c.seq == 14))
    report = await check(store, cp)
    assert not report.ok and report.first_bad_seq == 14 and "row 14 is missing" in report.problem


async def test_reordered_rows_are_named(signed: tuple[Store, Checkpointer]) -> None:
    store, cp = signed
    async with store.engine.begin() as conn:  # swap the contents of rows 14 and 17
        r14 = (await conn.execute(sa.select(*CONTENT).where(audit_log.c.seq == 14))).mappings().one()
        r17 = (await conn.execute(sa.select(*CONTENT).where(audit_log.c.seq == 17))).mappings().one()
        await conn.execute(audit_log.update().where(audit_log.c.seq == 14).values(**r17))
        await conn.execute(audit_log.update().where(audit_log.c.seq == 17).values(**r14))
    report = await check(store, cp)
    assert not report.ok and report.first_bad_seq == 14 and report.bad_range == (11, 20)


async def test_a_truncated_tail_with_the_head_moved_back_is_detected(signed: tuple[Store, Checkpointer]) -> None:
    store, cp = signed
    async with store.engine.begin() as conn:
        h20 = (await conn.execute(sa.select(audit_log.c.hash).where(audit_log.c.seq == 20))).scalar_one()
        await conn.execute(audit_log.delete().where(audit_log.c.seq > 20))
        await conn.execute(chain_head.update().where(chain_head.c.id == 1).values(seq=20, hash=h20))
    assert (await store.verify_chain()).ok  # the chain alone cannot tell
    report = await check(store, cp)
    assert not report.ok and report.first_bad_seq == 21 and report.bad_range == (21, 25)
    assert "truncated" in report.problem and report.checkpoints == 2


@pytest.mark.parametrize("change", ["edit", "delete"])
async def test_history_rewritten_with_a_recomputed_chain_is_located(
    signed: tuple[Store, Checkpointer], change: str
) -> None:
    store, cp = signed
    first_of_interval = await request_id(store, 11)
    async with store.engine.begin() as conn:
        if change == "edit":
            await conn.execute(audit_log.update().where(audit_log.c.seq == 14).values(status=403))
        else:
            await conn.execute(audit_log.delete().where(audit_log.c.seq == 14))
    await rechain(store)
    assert (await store.verify_chain()).ok  # the chain alone says "intact"
    report = await check(store, cp)
    assert not report.ok and report.bad_range == (11, 20) and report.checkpoints == 1
    assert "rewritten" in report.problem and report.first_bad_request_id == first_of_interval
    assert f"row 11 is request {first_of_interval}" in report.problem


async def test_later_appends_extend_the_stored_tree_and_still_verify(signed: tuple[Store, Checkpointer]) -> None:
    store, cp = signed
    await store.append_audit([row(i) for i in range(25, 31)])
    report = await check(store, cp)
    assert report.ok and report.rows == 31 and "rows 26-31 are not covered" in report.notes[0]
    assert await cp.checkpoint(store) is not None
    assert (await check(store, cp)).checkpoints == 4


async def test_a_forged_checkpoint_fails_its_signature(signed: tuple[Store, Checkpointer]) -> None:
    store, cp = signed
    assert cp.file is not None
    notes = read_notes(cp.file)
    forged = notes[1].replace("\n20\n", "\n19\n", 1)  # claim a smaller tree under the old signature
    assert forged != notes[1]
    with pytest.raises(CheckpointError, match="checkpoint 2 of .*claims size 19.*bad signature"):
        open_checkpoints([notes[0], forged, notes[2]], cp.signer.verifier, "cp.txt")


async def test_checkpoints_signed_by_a_replaced_key_are_refused(
    signed: tuple[Store, Checkpointer], tmp_path: Path
) -> None:
    store, cp = signed
    await rechain(store)
    mallory = Checkpointer(Signer(ORIGIN, generate_key_file(tmp_path / "mallory.key")), tmp_path / "m.txt")
    assert await mallory.checkpoint(store) is not None
    with pytest.raises(CheckpointError, match=r"not signed by the expected key .* \(a replaced signing key\?\)"):
        open_checkpoints(read_notes(tmp_path / "m.txt"), cp.signer.verifier)


async def test_the_tree_row_catches_up_over_rows_written_before_it_existed(tmp_path: Path) -> None:
    s = Store(f"sqlite+aiosqlite:///{tmp_path / 'old.db'}")
    await s.init()
    await s.append_audit([row(i) for i in range(7)])
    head = await s.tree_head()
    async with s.engine.begin() as conn:  # as a log written by a version without the tree
        await conn.execute(sa.text("UPDATE audit_tree SET size = 0, frontier = ''"))
    assert await s.tree_head() == head
    await s.append_audit([row(i) for i in range(7, 9)])  # the SQLite writer thread catches up too
    cp = Checkpointer(Signer(ORIGIN, generate_key_file(tmp_path / "k.key")), tmp_path / "cp.txt")
    assert await cp.checkpoint(s) is not None
    report = await check(s, cp)
    await s.close()
    assert report.ok and report.rows == 9 and report.checkpoints == 1


# -- the gateway's writer -----------------------------------------------------------------------------


async def test_the_audit_writer_signs_every_n_rows_and_on_stop(tmp_path: Path) -> None:
    s = Store(f"sqlite+aiosqlite:///{tmp_path / 'w.db'}")
    await s.init()
    received = tmp_path / "received.txt"
    command = f"{sys.executable} -c \"import sys; open(sys.argv[1], 'a').write(sys.stdin.read() + chr(10))\" {received}"
    cp = Checkpointer(Signer(ORIGIN, generate_key_file(tmp_path / "k.key")), tmp_path / "cp.txt", command)
    writer = AuditWriter(s, batch_size=5, flush_interval_s=0.001, checkpointer=cp, checkpoint_every_rows=10)
    await writer.start()
    for i in range(25):
        writer.submit(row(i))
        if i % 5 == 4:
            await writer.flush()
    await writer.stop()
    sizes = [c.size for c in open_checkpoints(read_notes(tmp_path / "cp.txt"), cp.signer.verifier)]
    assert sizes == [10, 20, 25]
    assert split_notes(received.read_text()) == read_notes(tmp_path / "cp.txt")  # the command got each one
    assert (await check(s, cp)).ok
    await s.close()


async def test_the_audit_writer_signs_on_a_timer_and_survives_a_failing_command(tmp_path: Path) -> None:
    s = Store(f"sqlite+aiosqlite:///{tmp_path / 't.db'}")
    await s.init()
    cp = Checkpointer(Signer(ORIGIN, generate_key_file(tmp_path / "k.key")), tmp_path / "cp.txt", "false")
    writer = AuditWriter(
        s, flush_interval_s=0.001, checkpointer=cp, checkpoint_every_rows=1000, checkpoint_every_s=0.05
    )
    await writer.start()
    writer.submit(row(0))
    await writer.flush()
    for _ in range(100):
        if writer.failed_checkpoints:
            break
        await asyncio.sleep(0.02)
    writer.submit(row(1))  # the writer goes on after a failed checkpoint
    await writer.stop()
    await s.close()
    assert writer.failed_checkpoints >= 1 and writer.written == 2
    assert read_notes(tmp_path / "cp.txt")  # the file got the note before the command failed


def test_a_gateway_with_a_key_writes_checkpoints_that_verify(gateway_factory, tmp_path: Path) -> None:
    from tests.fakes import FakeUpstream

    key_file, cp_file = tmp_path / "gw.key", tmp_path / "gw-checkpoints.txt"
    gw = gateway_factory(
        {"upstream": FakeUpstream()},
        checkpoints__key_file=str(key_file),
        checkpoints__file=str(cp_file),
        checkpoints__every_rows=2,
    )
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600  # created on start, private
    key = gw.create_key("cp-user")
    for i in range(5):
        r = httpx.post(
            f"{gw.base}/v1/chat/completions",
            headers={"authorization": f"Bearer {key}"},
            json={"model": "fake-model", "messages": [{"role": "user", "content": f"q{i}"}]},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        gw.flush_audit()
    gw.stop()
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(f"store:\n  url: {gw.settings.store.url}\ncheckpoints:\n  key_file: {key_file}\n")
    v = runner.invoke(app, ["-c", str(cfg), "logs", "verify", "--checkpoint", str(cp_file), "--json"])
    assert v.exit_code == 0, v.output
    out = json.loads(v.stdout)
    # the log: the key's creation (an administrative act) and the 5 requests; the last checkpoint signs all 6
    assert out["ok"] and out["checkpoints"]["latest_checkpoint"]["size"] == 6 and out["checkpoints"]["checkpoints"] >= 2


# -- the CLI ------------------------------------------------------------------------------------------


@pytest.fixture
def cli_log(tmp_path: Path) -> Path:
    """A config with a key file (not yet created) and a store of 12 rows; returns the config."""
    db = tmp_path / "c.db"

    async def fill() -> None:
        s = Store(f"sqlite+aiosqlite:///{db}")
        await s.init()
        await s.append_audit([row(i) for i in range(12)])
        await s.close()

    asyncio.run(fill())
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"store:\n  url: sqlite+aiosqlite:///{db}\ncheckpoints:\n  key_file: {tmp_path / 'c.key'}\n"
        f"  file: {tmp_path / 'c.txt'}\n  origin: {ORIGIN}\n"
    )
    return cfg


def cli(cfg: Path, *args: str):
    return runner.invoke(app, ["-c", str(cfg), *args])


def test_cli_keygen_pubkey_checkpoint_and_verify(cli_log: Path, tmp_path: Path) -> None:
    r = cli(cli_log, "logs", "keygen")
    assert r.exit_code == 0 and stat.S_IMODE(os.stat(tmp_path / "c.key").st_mode) == 0o600
    assert cli(cli_log, "logs", "keygen").exit_code != 0  # never overwrites a key
    vkey = cli(cli_log, "logs", "pubkey").stdout.strip()
    assert vkey.startswith(ORIGIN + "+") and vkey in r.output
    assert "BEGIN PUBLIC KEY" in cli(cli_log, "logs", "pubkey", "--pem").stdout
    c = cli(cli_log, "logs", "checkpoint", "--json")
    assert c.exit_code == 0, c.output
    assert json.loads(c.stdout)["size"] == 12 and (tmp_path / "c.txt").read_text().startswith(ORIGIN + "\n12\n")
    (tmp_path / "pub.txt").write_text(vkey + "\n")
    v = cli(cli_log, "logs", "verify", "--checkpoint", str(tmp_path / "c.txt"), "--pubkey", str(tmp_path / "pub.txt"))
    assert v.exit_code == 0 and "intact: 12 rows" in v.stdout and "1 signed checkpoints agree" in v.stdout
    assert cli(cli_log, "logs", "verify").exit_code == 0  # the chain check alone, as before


def test_cli_names_the_tampering_in_one_line_and_exits_1(cli_log: Path, tmp_path: Path) -> None:
    assert cli(cli_log, "logs", "checkpoint").exit_code == 0  # creates the key on first use
    cp_file = str(tmp_path / "c.txt")
    vkey = cli(cli_log, "logs", "pubkey").stdout.strip()
    with sa.create_engine(f"sqlite:///{tmp_path / 'c.db'}").begin() as conn:
        conn.execute(audit_log.update().where(audit_log.c.seq == 5).values(response_text="forged"))
    v = cli(cli_log, "logs", "verify", "--checkpoint", cp_file)
    assert v.exit_code == 1 and v.stdout.startswith("TAMPERED") and "row 5 was edited" in v.stdout
    assert len(v.stdout.strip().splitlines()) == 1
    # forge: a checkpoint with a changed root under the old signature
    text = (tmp_path / "c.txt").read_text()
    lines = text.split("\n")
    lines[2] = "A" * 43 + "="
    (tmp_path / "forged.txt").write_text("\n".join(lines))
    v = cli(cli_log, "logs", "verify", "--checkpoint", str(tmp_path / "forged.txt"), "--json")
    assert v.exit_code == 1 and "bad signature" in json.loads(v.stdout)["checkpoints"]["problem"]
    # replace the key: the attacker's own key and checkpoint, checked against the pinned public key
    (tmp_path / "c.key").unlink()
    (tmp_path / "c.txt").unlink()
    assert cli(cli_log, "logs", "checkpoint").exit_code == 0
    v = cli(cli_log, "logs", "verify", "--checkpoint", cp_file, "--pubkey", vkey)
    assert v.exit_code == 1 and "replaced signing key" in v.stdout


def test_cli_errors_are_one_line(cli_log: Path, tmp_path: Path) -> None:
    r = cli(cli_log, "logs", "verify", "--checkpoint", str(tmp_path / "nope.txt"))
    assert r.exit_code != 0 and "nope.txt does not exist" in str(r.exception)
    (tmp_path / "c.txt").write_text("")
    r = cli(cli_log, "logs", "verify", "--checkpoint", str(tmp_path / "c.txt"))
    assert r.exit_code != 0 and "c.key does not exist; pass --pubkey" in str(r.exception)
    assert cli(cli_log, "logs", "checkpoint").exit_code == 0
    r = cli(cli_log, "logs", "verify", "--checkpoint", str(tmp_path / "c.txt"), "--pubkey", "garbage+1+2")
    assert r.exit_code != 0 and "--pubkey" in str(r.exception)
    cfg = tmp_path / "nokey.yaml"
    cfg.write_text(cli_log.read_text().split("checkpoints:")[0])
    r = cli(cfg, "logs", "checkpoint")
    assert r.exit_code != 0 and "checkpoints.key_file" in str(r.exception)


# -- evidence bundles ---------------------------------------------------------------------------------


def evidence_setup(tmp_path: Path, with_key: bool = True) -> Path:
    from tests.test_evidence import _row

    db = tmp_path / "ev.db"

    async def fill() -> None:
        s = Store(f"sqlite+aiosqlite:///{db}")
        await s.init()
        await s.append_audit([_row(i, ["a-1", "b-2"][i % 2], "203.0.113.9", f"prompt {i}") for i in range(30)])
        await s.close()

    asyncio.run(fill())
    cfg = tmp_path / "ev.yaml"
    text = f"store:\n  url: sqlite+aiosqlite:///{db}\n"
    if with_key:
        text += f"checkpoints:\n  key_file: {tmp_path / 'ev.key'}\n  file: {tmp_path / 'ev.txt'}\n"
    cfg.write_text(text)
    return cfg


def refresh_manifest(bundle: Path) -> None:
    """What a forger does after changing a file: recompute the manifest's sha256s."""
    import hashlib

    m = json.loads((bundle / "manifest.json").read_text())
    m["files"] = {n: hashlib.sha256((bundle / n).read_bytes()).hexdigest() for n in m["files"]}
    (bundle / "manifest.json").write_text(json.dumps(m))


def test_a_bundle_carries_a_signed_head_and_proofs_that_verify_offline(tmp_path: Path) -> None:
    cfg = evidence_setup(tmp_path)
    out = tmp_path / "b"
    r = cli(cfg, "evidence", "a-1", "--out", str(out), "--no-watermark")
    assert r.exit_code == 0, r.output
    assert "signed now for this bundle" in r.output  # no checkpoint covered the rows yet
    proof = json.loads((out / "tree_proof.json").read_text())
    assert proof["tree_size"] == 30 and len(proof["proofs"]) == 15
    assert [p["leaf_index"] for p in proof["proofs"]] == list(range(0, 30, 2))
    assert "tree_proof.json" in json.loads((out / "manifest.json").read_text())["files"]
    vkey = cli(cfg, "logs", "pubkey").stdout.strip()
    v = cli(cfg, "evidence", "--verify", str(out), "--offline", "--pubkey", vkey, "--json")
    assert v.exit_code == 0, v.output
    checks = {c["check"]: c for c in json.loads(v.stdout)["checks"]}
    assert checks["signed tree head"]["ok"] and "given key" in checks["signed tree head"]["detail"]
    assert checks["inclusion proofs"]["ok"] and "15 cited rows" in checks["inclusion proofs"]["detail"]
    again = cli(cfg, "evidence", "b-2", "--out", str(tmp_path / "b2"), "--no-watermark", "--json")
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["chain_proof"]["signed_tree"]["written_for_this_bundle"] is False  # reused


def test_an_altered_row_or_proof_fails_offline_even_with_a_refreshed_manifest(tmp_path: Path) -> None:
    cfg = evidence_setup(tmp_path)
    out = tmp_path / "b"
    assert cli(cfg, "evidence", "a-1", "--out", str(out), "--no-watermark").exit_code == 0
    vkey = cli(cfg, "logs", "pubkey").stdout.strip()
    rows_text = (out / "rows.jsonl").read_text()
    proof_text = (out / "tree_proof.json").read_text()

    # a row changed, its chain hash recomputed with the public link, the manifest refreshed
    rows = [json.loads(x) for x in rows_text.splitlines()]
    rows[2]["response_text"] = "something else"
    rows[2]["hash"] = link(rows[2]["prev_hash"], rows[2])
    (out / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    refresh_manifest(out)
    v = cli(cfg, "evidence", "--verify", str(out), "--offline", "--pubkey", vkey, "--json")
    failed = {c["check"]: c["detail"] for c in json.loads(v.stdout)["checks"] if not c["ok"]}
    assert v.exit_code == 1 and set(failed) == {"inclusion proofs"}
    assert f"rows [{rows[2]['seq']}]" in failed["inclusion proofs"]

    # the rows restored, one proof hash altered
    (out / "rows.jsonl").write_text(rows_text)
    doc = json.loads(proof_text)
    h = doc["proofs"][0]["inclusion_proof"][0]
    doc["proofs"][0]["inclusion_proof"][0] = ("0" if h[0] != "0" else "1") + h[1:]
    (out / "tree_proof.json").write_text(json.dumps(doc))
    refresh_manifest(out)
    v = cli(cfg, "evidence", "--verify", str(out), "--offline", "--pubkey", vkey, "--json")
    failed = {c["check"]: c["detail"] for c in json.loads(v.stdout)["checks"] if not c["ok"]}
    assert v.exit_code == 1 and set(failed) == {"inclusion proofs"}

    # a checkpoint re-signed by another key (embedded in the bundle): only a pinned key catches it
    mallory = Signer("distillshield/audit-log", generate_key_file(tmp_path / "m.key"))
    doc = json.loads(proof_text)
    cp = Signer("distillshield/audit-log", load_key_file(tmp_path / "ev.key")).verifier.open(doc["checkpoint"])
    doc["checkpoint"], doc["public_key"] = mallory.sign(cp), mallory.verifier.encode()
    (out / "tree_proof.json").write_text(json.dumps(doc))
    refresh_manifest(out)
    assert cli(cfg, "evidence", "--verify", str(out), "--offline").exit_code == 0  # self-consistent
    v = cli(cfg, "evidence", "--verify", str(out), "--offline", "--pubkey", vkey, "--json")
    failed = {c["check"] for c in json.loads(v.stdout)["checks"] if not c["ok"]}
    assert v.exit_code == 1 and "signing key" in failed


def test_a_bundle_without_a_key_says_it_has_no_signed_head(tmp_path: Path) -> None:
    cfg = evidence_setup(tmp_path, with_key=False)
    out = tmp_path / "b"
    r = cli(cfg, "evidence", "a-1", "--out", str(out), "--no-watermark")
    assert r.exit_code == 0 and "no signed tree head" in r.output
    assert not (out / "tree_proof.json").exists()
    assert cli(cfg, "evidence", "--verify", str(out), "--offline").exit_code == 0  # the chain proof as before
    vkey = f"{ORIGIN}+00000000+" + "A" * 44
    v = cli(cfg, "evidence", "--verify", str(out), "--offline", "--pubkey", vkey)
    assert v.exit_code != 0
