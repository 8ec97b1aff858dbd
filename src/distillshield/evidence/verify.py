"""Checking a bundle: its files against the manifest, its rows against their own hashes, its signed tree
head and inclusion proofs (no database needed), and (with the store) the rows against an intact audit log."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from distillshield.evidence.collect import EvidenceError
from distillshield.evidence.proofs import PROOF_FILE, check_tree_proof
from distillshield.store import Store
from distillshield.store.chain import link
from distillshield.store.checkpoint import Verifier
from distillshield.store.tables import audit_log


@dataclass
class BundleCheck:
    ok: bool = True
    checks: list[dict[str, Any]] = field(default_factory=list)

    def add(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append({"check": name, "ok": ok, "detail": detail})
        self.ok = self.ok and ok

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "checks": self.checks}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_manifest(bundle: Path) -> dict[str, Any]:
    path = bundle / "manifest.json"
    if not path.is_file():
        raise EvidenceError(f"{bundle} is not an evidence bundle: manifest.json is missing")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise EvidenceError(f"{path} is not valid JSON: {exc}") from None


def check_files(bundle: Path, manifest: dict[str, Any], result: BundleCheck) -> None:
    bad = []
    for name, digest in manifest.get("files", {}).items():
        p = bundle / name
        if not p.is_file():
            bad.append(f"{name} is missing")
        elif _sha256(p) != digest:
            bad.append(f"{name} was changed (sha256 differs)")
    result.add("manifest", not bad, "; ".join(bad) or f"{len(manifest.get('files', {}))} files match their sha256")


def cited_rows(bundle: Path) -> list[dict[str, Any]]:
    path = bundle / "rows.jsonl"
    if not path.is_file():
        return []
    return [json.loads(ln) for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


def check_rows(rows: list[dict[str, Any]], result: BundleCheck) -> None:
    """Each cited row still hashes to its recorded link (its content is what was logged)."""
    bad = [r["seq"] for r in rows if link(r["prev_hash"], r) != r["hash"]]
    result.add(
        "row hashes",
        not bad,
        f"rows {bad[:10]} do not match their hashes" if bad else f"{len(rows)} cited rows hash to their chain links",
    )


async def check_against_store(
    store: Store, manifest: dict[str, Any], rows: list[dict[str, Any]], result: BundleCheck
) -> None:
    """The log is intact, every cited row is in it unchanged, and the recorded head is still in it."""
    report = await store.verify_chain()
    result.add(
        "audit log",
        report.ok,
        f"intact: {report.rows} rows, head {report.head_seq}"
        if report.ok
        else f"BROKEN at row {report.first_bad_seq}: {report.problem}",
    )
    seqs = [r["seq"] for r in rows]
    stored: dict[int, dict[str, Any]] = {}
    for i in range(0, len(seqs), 500):
        q = audit_log.select().where(audit_log.c.seq.in_(seqs[i : i + 500]))
        async with store.engine.connect() as conn:
            stored.update({int(r["seq"]): dict(r) for r in (await conn.execute(q)).mappings()})
    missing = [s for s in seqs if s not in stored]
    # Same recorded hash, and the stored content still hashes to it (an edit that left the hash column alone).
    changed = [
        r["seq"]
        for r in rows
        if r["seq"] in stored
        and (
            stored[r["seq"]]["hash"] != r["hash"] or link(stored[r["seq"]]["prev_hash"], stored[r["seq"]]) != r["hash"]
        )
    ]
    detail = []
    if missing:
        detail.append(f"rows {missing[:10]} are no longer in the log")
    if changed:
        detail.append(f"rows {changed[:10]} differ from the log")
    result.add("cited rows in log", not (missing or changed), "; ".join(detail) or f"{len(rows)} rows found unchanged")
    head = (manifest.get("chain_proof") or {}).get("chain_head")
    if head:
        q = sa.select(audit_log.c.hash).where(audit_log.c.seq == head["seq"])
        async with store.engine.connect() as conn:
            got = (await conn.execute(q)).scalar()
        result.add(
            "chain head",
            got == head["hash"],
            f"row {head['seq']} still has the recorded head hash"
            if got == head["hash"]
            else f"row {head['seq']} no longer has the head hash recorded in the bundle",
        )


def check_signed_tree(
    bundle: Path, manifest: dict[str, Any], rows: list[dict[str, Any]], pinned: Verifier | None, result: BundleCheck
) -> None:
    """The checkpoint's signature and every cited row's inclusion proof; with `pinned`, a bundle without
    them fails (the caller asked for a signed proof)."""
    if PROOF_FILE not in manifest.get("files", {}):
        note = (manifest.get("chain_proof") or {}).get("signed_tree_note") or "the bundle has no signed tree head"
        if pinned is not None:
            result.add("signed tree head", False, f"--pubkey given, but {note}")
        else:
            result.add("signed tree head", True, f"none: {note}")
        return
    try:
        doc = json.loads((bundle / PROOF_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        result.add("signed tree head", False, f"{PROOF_FILE} cannot be read: {exc}")
        return
    if not isinstance(doc, dict):
        result.add("signed tree head", False, f"{PROOF_FILE} is not a JSON object")
        return
    for name, ok, detail in check_tree_proof(doc, rows, pinned):
        result.add(name, ok, detail)


async def verify_bundle(bundle: Path, store: Store | None, pubkey: Verifier | None = None) -> BundleCheck:
    """Every check; the store's are skipped (and said so) when `store` is None. `pubkey`: the key the
    signed tree head must carry (else the one embedded in the bundle is used, and said so)."""
    result = BundleCheck()
    manifest = read_manifest(bundle)
    check_files(bundle, manifest, result)
    rows = cited_rows(bundle)
    chained = (manifest.get("chain_proof") or {}).get("chained")
    if not chained:
        result.add("chain proof", False, "the bundle was built from a traffic file: it has no hash-chain proof")
        return result
    check_rows(rows, result)
    check_signed_tree(bundle, manifest, rows, pubkey, result)
    if store is not None:
        await check_against_store(store, manifest, rows, result)
    return result
