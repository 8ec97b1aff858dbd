"""The bundle's HTML report: one self-contained page (charts embedded as PNG data URIs)."""

from __future__ import annotations

import base64
import datetime as dt
import html
from pathlib import Path
from typing import Any

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;color:#222;
padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.15em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}td,th{border:1px solid #ddd;padding:3px 7px;
text-align:left;vertical-align:top}th{background:#f4f4f4}code,pre{font-size:.85em;background:#f7f7f7}
pre{white-space:pre-wrap;padding:.5em;max-height:14em;overflow:auto}.bad{color:#b00}.ok{color:#080}
.muted{color:#777;font-size:.85em}img{max-width:100%}
"""


def _e(v: Any) -> str:
    return html.escape("" if v is None else str(v))


def _ts(ts: float | None) -> str:
    return "-" if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _img(out_dir: Path, name: str, alt: str) -> str:
    data = base64.b64encode((out_dir / name).read_bytes()).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _p(d: dict[str, Any], key: str = "p_value", log_key: str = "log10_p") -> str:
    p = d.get(key)
    return f"{p:.3g}" if isinstance(p, (int, float)) and p > 0 else f"1e{d.get(log_key, 0):.0f}"


def render_html(ev: dict[str, Any], out_dir: Path) -> str:
    subj = ev["subject"]
    t = ev["traffic"]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>Evidence: {_e(subj['id'])}</title>"
             f"<style>{_CSS}</style></head><body>"]  # fmt: skip
    parts.append(f"<h1>Evidence bundle: {_e(subj['kind'])} <code>{_e(subj['id'])}</code></h1>")
    parts.append(
        f"<p>{len(subj['accounts'])} account(s), {t['requests']} requests from {_ts(t['first_ts'])} to "
        f"{_ts(t['last_ts'])}. Built {_ts(ev['created_at'])}. Every file of this folder is listed with its "
        "sha256 in <code>manifest.json</code>.</p>"
    )

    parts.append("<h2>Findings (detection signals)</h2>")
    findings = ev["findings"]
    rows = []
    for a in findings["accounts"]:
        reasons = "<br>".join(
            f"<b>{_e(r.get('signal'))}</b> {_e(r.get('score'))}: {_e(r.get('detail'))}" for r in a.get("reasons") or []
        )
        rows.append([_e(a["account_id"]), _e(a.get("verdict")), _e(a.get("risk")), _e(a.get("cluster_id")), reasons])
    if rows:
        parts.append(_table(["account", "verdict", "risk", "cluster", "signals (score: reason)"], rows))
    else:
        parts.append("<p class='muted'>No analyser report was given (--report): no signals to show.</p>")
    c = findings.get("cluster")
    if c:
        reasons = "<br>".join(f"<b>{_e(r.get('signal'))}</b> {_e(r.get('score'))}: {_e(r.get('detail'))}"
                              for r in c.get("reasons") or [])  # fmt: skip
        parts.append(
            f"<p>Cluster <code>{_e(c['cluster_id'])}</code>: {len(c['accounts'])} accounts, risk {_e(c.get('risk'))}."
            f"<br>{reasons}</p>"
        )
    if findings.get("report"):
        parts.append(
            f"<p class='muted'>Report {_e(findings['report'])}, sha256 <code>{_e(findings['report_sha256'])}</code></p>"
        )

    parts.append("<h2>Timeline and volume</h2>")
    parts.append(_img(out_dir, "timeline.png", "requests per hour"))
    parts.append(_img(out_dir, "volume.png", "tokens per day"))
    vol = []
    for acc, s in t["accounts"].items():
        if s is None:
            vol.append([_e(acc), "0", "", "", "", ""])
            continue
        vol.append([_e(acc), s["requests"], s["prompt_tokens"], s["completion_tokens"], _ts(s["first_ts"]),
                    _ts(s["last_ts"])])  # fmt: skip
    parts.append(_table(["account", "requests", "prompt tokens", "completion tokens", "first", "last"], vol[:200]))

    parts.append("<h2>Accounts, shared infrastructure and templates</h2>")
    parts.append(_img(out_dir, "graph.png", "cluster graph"))
    if t["shared_ips"]:
        parts.append(_table(["IP shared by several accounts", "accounts"],
                            [[_e(ip), _e(", ".join(a))] for ip, a in list(t["shared_ips"].items())[:50]]))  # fmt: skip
    if t["shared_user_agents"]:
        agents = list(t["shared_user_agents"].items())[:20]
        parts.append(_table(["user agent shared by several accounts", "accounts"],
                            [[_e(u), _e(", ".join(a))] for u, a in agents]))  # fmt: skip

    parts.append("<h2>Representative prompts</h2>")
    rp = [[p["count"], f"{100 * p['share']:.1f}%", _e(", ".join(p["accounts"][:10])), _e(p["seq"]),
           f"<pre>{_e(p['example'])}</pre>", f"<pre>{_e(p['example_response'])}</pre>"]
          for p in ev["representative_prompts"]]  # fmt: skip
    parts.append(_table(["requests", "share", "accounts", "audit row", "example prompt", "our answer"], rp)
                 if rp else "<p class='muted'>No prompts.</p>")  # fmt: skip

    parts.append("<h2>Watermark</h2>")
    wm = ev["watermark"]
    if wm.get("note"):
        parts.append(f"<p class='muted'>{_e(wm['note'])}</p>")
    if wm.get("served"):
        parts.append(
            "<p>Our served answers, tested under the key each was watermarked with (pooled, distinct "
            "(context, token) pairs once). A high z shows these outputs carry this key's mark, so a model "
            "trained on them can be traced back with <code>distillshield audit</code>.</p>"
        )
        parts.append(_table(
            ["key", "responses", "individually detected", "scored pairs", "z", "p-value"],
            [[_e(d["key"]), d["responses"], d["responses_detected"], d["scored"], f"{d['z']:.2f}", _p(d)]
             for d in wm["served"]],
        ))  # fmt: skip
    audit = wm.get("audit")
    if audit:
        verdict = audit.get("radioactive_for") or []
        parts.append(
            f"<p>Suspect-model audit of <code>{_e(audit.get('source'))}</code> ({_e(audit.get('samples'))} samples, "
            f"{_e(audit.get('keys_tested'))} keys, {_e(audit.get('correction'))} correction): "
            + (
                f"<b class='bad'>trained on outputs marked for {_e(', '.join(verdict))}</b>"
                if verdict
                else "no evidence"
            )
            + "</p>"
        )
        results = (audit.get("results") or [])[:10]
        parts.append(_table(["key", "scored pairs", "z", "p-value", "adjusted p"],
                            [[_e(r.get("key")), _e(r.get("scored")), f"{r.get('z', 0):.2f}", _p(r),
                              _p(r, "p_adjusted", "log10_p_adjusted")] for r in results]))  # fmt: skip

    parts.append("<h2>Audit-log proof</h2>")
    proof = ev["chain_proof"]
    if proof.get("chained"):
        head = proof["chain_head"]
        parts.append(
            f"<p>{proof['rows_cited']} of the subject's {proof['rows_total']} audit rows are cited in "
            f"<code>rows.jsonl</code> (rows {_e(proof['row_range'])}), each with its sha256 chain link. Chain head "
            f"when built: row {head['seq']}, hash <code>{_e(head['hash'])}</code>. Check with "
            f"<code>{_e(proof['how_to_verify'])}</code>: it fails if the bundle or any cited row was changed, or "
            "if the log no longer verifies.</p>"
        )
        tree = proof.get("signed_tree")
        if tree:
            parts.append(
                f"<p>Signed tree head: checkpoint of <code>{_e(tree['origin'])}</code> at size {tree['size']}, "
                f"root <code>{_e(tree['root'])}</code>, signed {_ts(tree['timestamp'])} by Ed25519 key "
                f"<code>{_e(tree['key_id'])}</code>. <code>tree_proof.json</code> holds the checkpoint and every "
                "cited row's Merkle inclusion proof: <code>distillshield evidence --verify &lt;folder&gt; --offline "
                "--pubkey KEY</code> checks them without the database.</p>"
            )
        else:
            parts.append(f"<p class='muted'>No signed tree head: {_e(proof.get('signed_tree_note'))}</p>")
    else:
        parts.append(f"<p class='bad'>{_e(proof.get('note'))}</p>")
    parts.append("</body></html>")
    return "\n".join(parts)
