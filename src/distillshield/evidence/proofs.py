"""The signed part of an evidence bundle: a checkpoint (signed tree head) of the audit log that covers the
cited rows, and each row's RFC 9162 inclusion proof against it (tree_proof.json).

With it a bundle stands on its own: `evidence --verify --offline` checks the checkpoint's signature and
that every cited row, byte for byte, is the leaf at its index of the signed tree, with no database.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distillshield.config import CheckpointSettings, ConfigError
from distillshield.evidence.collect import EvidenceError
from distillshield.store import Store
from distillshield.store.chain import canonical
from distillshield.store.checkpoint import (
    Checkpoint,
    Checkpointer,
    CheckpointError,
    Verifier,
    read_notes,
    signer_from_settings,
)
from distillshield.store.merkle import MerkleLevels, leaf_hash, verify_inclusion
from distillshield.store.transparency import tree_for_proofs

PROOF_FILE = "tree_proof.json"
PROOF_FORMAT = "distillshield-tree-proof/1"
LEAF_RULE = (
    "RFC 9162 Merkle tree; leaf i = the i-th audit row in seq order; leaf hash = SHA-256(0x00 || canonical row), "
    "the canonical row being the chained fields as sorted-key compact JSON, batch_id and account_created_at only "
    "when not null "
    "(the bytes the hash chain hashes)"
)


@dataclass
class SignedTree:
    """A checkpoint over the log, the tree it signs, and where the subject's rows sit in it."""

    note: str
    checkpoint: Checkpoint
    verifier: Verifier
    levels: MerkleLevels
    index_of: dict[int, int]  # seq -> leaf index
    written_now: bool

    def proof_document(self, rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
        """tree_proof.json for these (cited) rows."""
        size = self.checkpoint.size
        proofs = []
        for r in rows:
            i = self.index_of[r["seq"]]
            path = [h.hex() for h in self.levels.inclusion_proof(i, size)]
            proofs.append({"seq": r["seq"], "leaf_index": i, "inclusion_proof": path})
        return {
            "format": PROOF_FORMAT,
            "leaf": LEAF_RULE,
            "checkpoint": self.note,
            "public_key": self.verifier.encode(),
            "tree_size": size,
            "root": self.checkpoint.root.hex(),
            "proofs": proofs,
        }

    def summary(self) -> dict[str, Any]:
        key = self.verifier.key_id
        return {**self.checkpoint.as_dict(), "key_id": key, "written_for_this_bundle": self.written_now}


async def signed_tree(store: Store, cfg: CheckpointSettings, seqs: list[int]) -> SignedTree | str:
    """The latest signed checkpoint that covers `seqs` (one is signed now when none does) with the tree to
    prove them from; or, when no signing key is configured, the sentence that says the bundle has none."""
    if cfg.key_file is None:
        return (
            "no signing key is configured (checkpoints.key_file): this bundle has no signed tree head, its rows "
            "are proven by the hash chain and the live audit log only"
        )
    if not seqs:
        return "no audit rows are cited: nothing to prove against a signed tree head"
    try:
        signer = signer_from_settings(cfg)
    except ConfigError as exc:
        raise EvidenceError(str(exc)) from None
    assert signer is not None
    need = max(seqs)  # rows 1..need must be in the tree (leaf i is row i + 1 in an intact log)
    best: tuple[Checkpoint, str] | None = None
    path = Path(cfg.file) if cfg.file else None
    if path is not None and path.is_file():
        try:
            for note in read_notes(path):
                cp = signer.verifier.open(note)
                if cp.size >= need and (best is None or cp.size > best[0].size):
                    best = (cp, note)
        except CheckpointError as exc:
            raise EvidenceError(
                f"the checkpoint file {path} does not verify ({exc}); run distillshield logs verify --checkpoint {path}"
            ) from None
    written_now = best is None
    if best is None:
        checkpointer = Checkpointer.from_settings(cfg)
        assert checkpointer is not None
        try:
            signed = await checkpointer.checkpoint(store, force=True)
        except CheckpointError as exc:
            raise EvidenceError(f"cannot write a checkpoint for the bundle: {exc}") from None
        assert signed is not None
        best = (signed.checkpoint, signed.note)
    cp, note = best
    levels, index_of = await tree_for_proofs(store, cp.size, seqs)
    if levels.size < cp.size or levels.root(cp.size) != cp.root or len(index_of) < len(set(seqs)):
        raise EvidenceError(
            f"the audit log no longer matches its signed checkpoint of size {cp.size}: run distillshield logs "
            "verify --checkpoint to see where"
        )
    return SignedTree(note, cp, signer.verifier, levels, index_of, written_now)


def check_tree_proof(
    doc: dict[str, Any], rows: list[dict[str, Any]], pinned: Verifier | None
) -> list[tuple[str, bool, str]]:
    """The checks of tree_proof.json against the cited rows: (name, ok, detail) each. No database."""
    out: list[tuple[str, bool, str]] = []
    try:
        embedded = Verifier.parse(str(doc.get("public_key", "")))
    except CheckpointError as exc:
        return [("signed tree head", False, f"the bundle's public key is unusable: {exc}")]
    verifier = pinned or embedded
    if pinned is not None and pinned.encode() != embedded.encode():
        out.append(("signing key", False, f"the bundle names key {embedded.key_id}, not the given key {pinned.key_id}"))
    try:
        cp = verifier.open(str(doc.get("checkpoint", "")))
    except CheckpointError as exc:
        out.append(("signed tree head", False, str(exc)))
        return out
    whose = "the given key" if pinned is not None else "the key embedded in the bundle (pin it with --pubkey)"
    out.append(
        ("signed tree head", True, f"checkpoint of size {cp.size} signed by {whose} {verifier.key_id} ({cp.origin})")
    )
    proofs = {p.get("seq"): p for p in doc.get("proofs", []) if isinstance(p, dict)}
    missing, bad = [], []
    for r in rows:
        p = proofs.get(r["seq"])
        if p is None:
            missing.append(r["seq"])
            continue
        try:
            path = [bytes.fromhex(h) for h in p["inclusion_proof"]]
            index = int(p["leaf_index"])
        except (KeyError, TypeError, ValueError):
            bad.append(r["seq"])
            continue
        if not verify_inclusion(index, cp.size, leaf_hash(canonical(r)), path, cp.root):
            bad.append(r["seq"])
    detail = []
    if missing:
        detail.append(f"rows {missing[:10]} have no inclusion proof")
    if bad:
        detail.append(f"rows {bad[:10]} are not in the signed tree as cited (row or proof altered)")
    out.append(
        (
            "inclusion proofs",
            not (missing or bad),
            "; ".join(detail) or f"{len(rows)} cited rows are leaves of the signed tree of size {cp.size}",
        )
    )
    return out
