"""Evidence bundles: everything a reviewer (or a court) needs about one account or cluster, in one
folder whose every file is listed with its sha256 in manifest.json.

    report.html      the human-readable report (charts embedded)
    evidence.json    the same content, machine-readable
    rows.jsonl       the audit-log rows cited, with their chain hashes (seq, prev_hash, hash)
    tree_proof.json  a signed checkpoint of the log and each cited row's inclusion proof (proofs.py),
                     when a signing key is configured
    timeline.png, volume.png, graph.png
    manifest.json    sha256 of every file above, the chain head at build time and the cited row range

The rows carry the audit log's hash chain: each row's hash is sha256(prev_hash || canonical(row)),
so `evidence --verify DIR` can show both that the bundle is unchanged (manifest) and that the cited
rows are still, byte for byte, rows of an intact log (`logs verify`) whose head is at or beyond
the recorded one. The signed checkpoint and inclusion proofs show, without the database, that every cited
row is in the log as the signing key's holder saw it.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distillshield.config import CheckpointSettings
from distillshield.evidence import charts
from distillshield.evidence.collect import (
    EvidenceError,
    Subject,
    cite,
    load_report,
    representative_prompts,
    resolve_subject,
    summarise,
    template_overlap,
)
from distillshield.evidence.html import render_html
from distillshield.evidence.proofs import PROOF_FILE, SignedTree, signed_tree
from distillshield.store import Store
from distillshield.store.chain import CHAINED_FIELDS
from distillshield.store.export import record_to_row
from distillshield.store.tables import audit_log
from distillshield.traffic import LineError, iter_jsonl

BUNDLE_VERSION = "1"
FILES = ("report.html", "evidence.json", "rows.jsonl", "timeline.png", "volume.png", "graph.png")

Progress = Callable[[str], None]


@dataclass
class Traffic:
    rows: list[dict[str, Any]]
    source: str  # "audit-log" or the traffic file
    chain_head: tuple[int, str] | None  # (seq, hash) when read from the audit log
    # The signed tree head and proofs (evidence/proofs.py), or the sentence saying why there are none.
    signed_tree: SignedTree | str | None = None


async def traffic_from_store(store: Store, accounts: list[str]) -> Traffic:
    """The subject's rows from the audit log (all columns, chain hashes included), and the chain head."""
    head = await store.chain_head()
    rows: list[dict[str, Any]] = []
    for i in range(0, len(accounts), 500):  # IN lists stay small on every back end
        q = audit_log.select().where(audit_log.c.account_id.in_(accounts[i : i + 500])).order_by(audit_log.c.seq)
        async with store.engine.connect() as conn:
            rows += [dict(r) for r in (await conn.execute(q)).mappings()]
    rows.sort(key=lambda r: r["seq"])
    return Traffic(rows, "audit-log", head)


async def chained_traffic(store: Store, checkpoints: CheckpointSettings, accounts: list[str]) -> Traffic:
    """The accounts' rows from the audit log with the signed tree head that proves them (`signed_tree`): what
    a bundle built from the gateway's own store cites (`distillshield evidence`, the console)."""
    traffic = await traffic_from_store(store, accounts)
    traffic.signed_tree = await signed_tree(store, checkpoints, [r["seq"] for r in traffic.rows])
    return traffic


def traffic_from_file(path: Path, accounts: list[str]) -> tuple[Traffic, list[LineError]]:
    """The subject's records from a traffic JSONL file (no chain: the proof section says so)."""
    if not path.is_file():
        raise EvidenceError(f"traffic file {path} does not exist or is not a file")
    want = set(accounts)
    errors: list[LineError] = []
    rows = []
    for rec in iter_jsonl(path, errors):
        if rec.account_id in want:
            row = record_to_row(rec)
            row["seq"] = None
            rows.append(row)
    rows.sort(key=lambda r: r["ts"])
    return Traffic(rows, str(path), None), errors


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _chain_row(r: dict[str, Any]) -> dict[str, Any]:
    return {**{k: r.get(k) for k in CHAINED_FIELDS}, "prev_hash": r["prev_hash"], "hash": r["hash"]}


def watermark_detector(cfg: Any) -> tuple[Any, Any, Any, float] | None:
    """The (scheme, keyring, tokenizer, threshold) `build_bundle` tests served outputs with, from the
    `watermark` settings; None without a secret. ValueError or FileNotFoundError when they cannot be set up.
    Loading the tokenizer takes a moment: call it off an event loop."""
    if not cfg.keyed:
        return None
    from distillshield.watermark.schemes import keyring_from_settings, scheme_from_settings
    from distillshield.watermark.tokenizer import default_tokenizer

    return scheme_from_settings(cfg), keyring_from_settings(cfg), default_tokenizer(), cfg.z_threshold


def watermark_section(
    subject: Subject, rows: list[dict[str, Any]], wm: Any | None, audit_result: dict[str, Any] | None
) -> dict[str, Any]:
    """Detection of the subject's own key in what we served it, plus an attached suspect-model audit.

    `wm` is a (scheme, keyring, tokenizer, threshold) tuple, or None when no secret is configured.
    """
    out: dict[str, Any] = {"served": [], "audit": audit_result}
    if wm is None:
        out["note"] = "no watermark secret configured: served outputs were not tested"
        return out
    scheme, keys, tokenizer, threshold = wm
    texts: dict[str, list[str]] = {}
    for r in rows:
        if r.get("response_text"):
            texts.setdefault(r["account_id"], []).append(r["response_text"])
    labels = [f"account:{a}" for a in subject.accounts if a in texts]
    if subject.kind == "cluster":
        labels.append(f"cluster:{subject.id}")
    for label in labels:
        scope, ident = label.split(":", 1)
        group = texts.get(ident, []) if scope == "account" else [t for ts in texts.values() for t in ts]
        seqs = [tokenizer.encode(t) for t in group]
        key = keys.key(label)
        pooled = scheme.detect(key, seqs, threshold)
        single = sum(1 for s in seqs if scheme.detect(key, s, threshold).detected)
        out["served"].append({**pooled.as_dict(), "responses": len(seqs), "responses_detected": single})
    out["scheme"] = scheme.name
    return out


def build_bundle(
    target: str,
    out_dir: Path,
    traffic: Traffic,
    *,
    report: dict[str, Any] | None = None,
    report_path: Path | None = None,
    wm: Any | None = None,
    audit_result: dict[str, Any] | None = None,
    max_prompts: int = 8,
    max_rows: int = 5000,
    store_url: str | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Write the bundle for `target` (account or cluster id) into `out_dir`; returns the manifest."""
    step = progress or (lambda _msg: None)
    subject = resolve_subject(target, report)
    rows = [r for r in traffic.rows if r["account_id"] in set(subject.accounts)]
    if not rows and not subject.findings:
        raise EvidenceError(f"no traffic and no findings for {target!r}: nothing to put in a bundle")
    out_dir.mkdir(parents=True, exist_ok=True)

    step("summarising traffic")
    summary = summarise(rows, subject.accounts)
    prompts = representative_prompts(rows, max_prompts)
    overlap = template_overlap(rows)
    risk = {f["account_id"]: float(f.get("risk") or 0.0) for f in subject.findings}

    step("drawing charts")
    charts.timeline(rows, out_dir / "timeline.png", f"{subject.kind} {target}: requests per hour")
    charts.volume(rows, out_dir / "volume.png", f"{subject.kind} {target}: tokens served per day")
    charts.cluster_graph(
        subject.accounts, summary["ips"], overlap, risk, out_dir / "graph.png", f"{subject.kind} {target}"
    )

    step("testing the watermark")
    watermark = watermark_section(subject, rows, wm, audit_result)

    step("writing the chain proof")
    chained = traffic.chain_head is not None
    cited_seqs = [p["seq"] for p in prompts]
    cited = rows if len(rows) <= max_rows else cite(rows, cited_seqs) + rows[: max_rows // 2] + rows[-max_rows // 2 :]
    cited = sorted({r["seq"]: r for r in cited}.values(), key=lambda r: r["seq"]) if chained else []
    with open(out_dir / "rows.jsonl", "w", encoding="utf-8") as fh:
        for r in cited:
            fh.write(json.dumps(_chain_row(r), ensure_ascii=False, sort_keys=True) + "\n")
    proof: dict[str, Any] = {"source": traffic.source, "chained": chained}
    if chained:
        assert traffic.chain_head is not None
        proof.update(
            chain_head={"seq": traffic.chain_head[0], "hash": traffic.chain_head[1]},
            row_range=[cited[0]["seq"], cited[-1]["seq"]] if cited else None,
            rows_cited=len(cited),
            rows_total=len(rows),
            store=store_url,
            how_to_verify="distillshield logs verify && distillshield evidence --verify <this folder>",
        )
    files = list(FILES)
    (out_dir / PROOF_FILE).unlink(missing_ok=True)  # never a stale one from an earlier build
    tree = traffic.signed_tree
    if chained and isinstance(tree, SignedTree):
        doc = tree.proof_document(cited)
        (out_dir / PROOF_FILE).write_text(json.dumps(doc, indent=1), encoding="utf-8")
        proof["signed_tree"] = tree.summary()
        files.append(PROOF_FILE)
    elif chained:
        proof["signed_tree"] = None
        proof["signed_tree_note"] = tree or "no signed tree head was looked for"
    else:
        proof["note"] = (
            "traffic read from a file, not the audit log: no hash-chain proof; build the bundle from the "
            "gateway's store to cite chained rows"
        )

    evidence = {
        "bundle_version": BUNDLE_VERSION,
        "created_at": time.time(),
        "subject": {"kind": subject.kind, "id": subject.id, "accounts": subject.accounts},
        "findings": {
            "accounts": subject.findings,
            "cluster": subject.cluster,
            "report": str(report_path) if report_path else None,
            "report_sha256": _sha256(report_path) if report_path else None,
        },
        "traffic": summary,
        "representative_prompts": prompts,
        "watermark": watermark,
        "chain_proof": proof,
    }
    (out_dir / "evidence.json").write_text(json.dumps(evidence, indent=2, default=str), encoding="utf-8")
    step("rendering the report")
    (out_dir / "report.html").write_text(render_html(evidence, out_dir), encoding="utf-8")

    manifest = {
        "bundle_version": BUNDLE_VERSION,
        "subject": evidence["subject"],
        "created_at": evidence["created_at"],
        "chain_proof": {k: v for k, v in proof.items() if k != "how_to_verify"},
        "files": {name: _sha256(out_dir / name) for name in files},
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return manifest


__all__ = [
    "EvidenceError",
    "Traffic",
    "build_bundle",
    "load_report",
    "traffic_from_file",
    "traffic_from_store",
]
