"""The console's watermark lookup: which accounts' keys mark some leaked text?

The analyst pastes a text or uploads a file of outputs (JSONL, one text per line in any shape
`watermark.texts.read_texts` reads, or a plain text file). Each text (or all of them pooled) is tested
under every candidate key with `watermark.attribution.attribute`, the function behind
`distillshield watermark detect --attribute`: the same scheme, key ring, tokenizer and threshold as the
configured gateway, Holm-corrected over the keys tested. The candidates are every account in the store
and every cluster on the risk board (cluster-scoped keys, `watermark.key_scope: cluster`).
"""

from __future__ import annotations

import asyncio
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.exceptions import HTTPException
from starlette.requests import Request

from distillshield.watermark.attribution import attribute
from distillshield.watermark.keys import key_label
from distillshield.watermark.schemes import keyring_from_settings, scheme_from_settings
from distillshield.watermark.texts import Text, TextsError, read_texts
from distillshield.watermark.tokenizer import default_tokenizer

if TYPE_CHECKING:
    from distillshield.gateway.app import AppState

MAX_UPLOAD_BYTES = 2 * 1024 * 1024  # the whole form, pasted text and file together
MAX_TEXTS = 500  # texts tested per lookup
# Texts (1 when pooled) x keys tested in one lookup: about 0.1 ms each for a 200-token text, so at most a
# couple of minutes in one request; bigger lookups belong to `distillshield watermark detect --attribute`.
MAX_KEY_TESTS = 1_000_000
ALPHA = 0.001  # family-wise error rate for naming an account (the CLI's default)
CORRECTION = "holm"
TOP = 5  # candidates shown per text


class LookupRefused(ValueError):
    """The input cannot be tested; the message says why and is shown to the analyst."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Upload:
    fields: dict[str, str]
    filename: str
    content: bytes


async def read_multipart(request: Any, limit: int = MAX_UPLOAD_BYTES) -> Upload:
    """The multipart (or urlencoded) form with at most one file, read up to `limit` bytes; LookupRefused
    413 when larger. The body is buffered under the limit first (a chunked upload names no length), then
    parsed by Starlette's form parser (python-multipart) from that buffer."""
    declared = request.headers.get("content-length", "")
    too_big = LookupRefused(
        f"the upload is larger than {limit // (1024 * 1024)} MiB: split the file and look up each part", 413
    )
    if declared.isdigit() and int(declared) > limit:
        raise too_big
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_big
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        raise LookupRefused("send the form as multipart/form-data (the page's form does)", 415)

    async def replay() -> dict[str, Any]:
        return {"type": "http.request", "body": bytes(body), "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=1, max_fields=16, max_part_size=limit)
    except HTTPException as exc:  # Starlette's message names the problem (too many files, a malformed part)
        raise LookupRefused(f"the form could not be read: {exc.detail}") from None
    fields: dict[str, str] = {}
    filename, content = "", b""
    try:
        for name, value in form.multi_items():
            if isinstance(value, str):
                fields[name] = value
            else:
                data = await value.read()
                if data:
                    filename, content = value.filename or "", data
    finally:
        await form.close()
    return Upload(fields, filename, content)


def texts_of(upload: Upload) -> list[Text]:
    """The texts to test: the pasted one, then the file's. Errors name the file and line."""
    out: list[Text] = []
    pasted = upload.fields.get("text", "")
    if pasted.strip():
        out.append(Text("pasted text", pasted))
    if upload.content:
        name = _safe_name(upload.filename)
        try:
            upload.content.decode("utf-8")
        except UnicodeDecodeError:
            raise LookupRefused(f"{name} is not UTF-8 text") from None
        with tempfile.TemporaryDirectory(prefix="ds-console-wm-") as tmp:
            path = Path(tmp) / name
            path.write_bytes(upload.content)
            try:
                found = read_texts(path)
            except TextsError as exc:
                raise LookupRefused(str(exc).replace(str(path), name)) from None
        if not found:
            raise LookupRefused(f"{name} holds no text to test")
        out += found
    if not out:
        raise LookupRefused("paste a text or choose a file of outputs to look up")
    empty = [t.id for t in out if not t.text.strip()]
    if empty:
        raise LookupRefused(f"empty text: {', '.join(empty[:5])}")
    if len(out) > MAX_TEXTS:
        raise LookupRefused(f"{len(out)} texts: at most {MAX_TEXTS} per lookup (or tick 'pool')", 413)
    return out


def _safe_name(filename: str) -> str:
    base = Path(filename.replace("\\", "/")).name
    base = re.sub(r"[^A-Za-z0-9._-]", "_", base)[:100].lstrip(".")
    return base or "upload.txt"


async def candidates(state: AppState) -> list[tuple[str, str]]:
    """(scope, id) of every key to test: each account in the store, each cluster on the risk board."""
    accounts = [a.id for a in await state.store.list_accounts()]
    clusters = sorted({r.cluster_id for r in state.risk.all() if r.cluster_id})
    return [("account", a) for a in accounts] + [("cluster", c) for c in clusters]


async def lookup(state: AppState, texts: list[Text], pool: bool) -> dict[str, Any]:
    """Attribute each text (or all pooled) to the candidate keys. The work (tokenising, scoring every key)
    runs in a worker thread so the gateway keeps serving."""
    cfg = state.settings.watermark
    try:
        ring = keyring_from_settings(cfg)
        scheme = scheme_from_settings(cfg)
    except ValueError as exc:
        raise LookupRefused(str(exc), 409) from None
    cands = await candidates(state)
    if not cands:
        raise LookupRefused("no candidate keys: the store has no accounts and the risk board no clusters", 409)
    units = 1 if pool else len(texts)
    if units * len(cands) > MAX_KEY_TESTS:
        raise LookupRefused(
            f"{units} texts x {len(cands)} keys is more than one lookup tests ({MAX_KEY_TESTS:,} key tests): "
            "tick 'pool', split the file, or run `distillshield watermark detect --attribute`",
            413,
        )
    labels = [key_label(scope, ident) for scope, ident in cands]
    subject = {lbl: {"scope": scope, "id": ident} for lbl, (scope, ident) in zip(labels, cands, strict=True)}

    def work() -> tuple[list[dict[str, Any]], str]:
        tok = default_tokenizer()
        keys = [ring.key(lbl) for lbl in labels]
        units = [("all texts, pooled", [t.text for t in texts])] if pool else [(t.id, [t.text]) for t in texts]
        out = []
        for ident, group in units:
            ids = [tok.encode(t) for t in group]
            a = attribute(scheme, ids, keys, correction=CORRECTION, alpha=ALPHA, threshold=cfg.z_threshold)
            named = {c.label for c in a.attributed}
            top = [
                {**c.as_dict(), **subject[c.label], "attributed": c.label in named}
                for c in a.ranked[: max(TOP, len(named))]
            ]
            out.append(
                {
                    "id": ident,
                    "tokens": a.tokens,
                    "scored": a.scored,
                    "attributed": [subject[c.label] | {"key": c.label} for c in a.attributed],
                    "top": top,
                }
            )
        return out, tok.name

    try:
        results, tokenizer = await asyncio.to_thread(work)
    except (FileNotFoundError, ValueError) as exc:
        raise LookupRefused(f"cannot test the texts: {exc}", 409) from None
    return {
        "results": results,
        "scheme": scheme.name,
        "threshold": cfg.z_threshold,
        "tokenizer": tokenizer,
        "keys_tested": len(labels),
        "accounts_tested": sum(1 for s, _ in cands if s == "account"),
        "clusters_tested": sum(1 for s, _ in cands if s == "cluster"),
        "alpha": ALPHA,
        "correction": CORRECTION,
        "pooled": pool,
        "texts": len(texts),
    }


def fmt_p(p: float, log10_p: float) -> str:
    """A p-value that stays readable below the float range (as the CLI prints it)."""
    return f"{p:.3g}" if p > 0 else f"1e{log10_p:.0f}"


AUDIT_TOP = 20  # attributed keys named in a lookup's analyst_actions row


def audit_detail(upload: Upload, found: dict[str, Any]) -> dict[str, Any]:
    """What a lookup's analyst_actions row records: its size (texts, bytes, the file's name, keys tested)
    and the keys it attributed texts to ('account:ID' or 'cluster:ID', most often named first). Not the
    texts themselves."""
    named: dict[str, int] = {}
    for r in found["results"]:
        for a in r["attributed"]:
            ref = f"{a['scope']}:{a['id']}"
            named[ref] = named.get(ref, 0) + 1
    ranked = sorted(named, key=lambda k: (-named[k], k))
    return {
        "texts": found["texts"],
        "bytes": len(upload.fields.get("text", "").encode()) + len(upload.content),
        "file": _safe_name(upload.filename) if upload.content else None,
        "pooled": found["pooled"],
        "keys_tested": found["keys_tested"],
        "attributed": ranked[:AUDIT_TOP],
        "attributed_total": len(ranked),
    }
