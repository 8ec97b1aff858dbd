"""The evaluator's outputs: the metrics JSON and a self-contained HTML report.

The HTML has no external assets: charts are matplotlib PNGs embedded as base64 data URIs, so the file
can be mailed or attached to an issue. Every chart and table names its split. Text from the data
(persona, cluster and account names) is HTML-escaped: traffic files are input, not trusted markup.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from distillshield.evaluate.metrics import ScoredAccount, split_groups

SPLIT_COLOURS = {
    "dev": "#1f77b4",
    "heldout": "#d62728",
    "fresh": "#2ca02c",
    "fresh2": "#9467bd",
    "fresh3": "#ff7f0e",
    "fresh4": "#8c564b",
    "all": "#555555",
}


# ---------------------------------------------------------------- formatting (shared with the CLI)


def pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f}%"


def num(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def duration(seconds: float | None) -> str:
    """Simulated time, human sized: 45s, 12.5m, 3.2h, 2.1d."""
    if seconds is None:
        return "–"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def rate_text(r: dict[str, Any], ci: bool = True) -> str:
    """`12.5% (5/40, 95% CI 5.5–26.1%)`."""
    if r.get("rate") is None:
        return "–"
    text = f"{pct(r['rate'])} ({r['k']}/{r['n']}"
    if ci and r.get("ci95"):
        text += f", 95% CI {pct(r['ci95'][0])}–{pct(r['ci95'][1])}"
    return text + ")"


# ---------------------------------------------------------------- JSON


def write_json(metrics: dict[str, Any], path: str | Path) -> None:
    Path(path).write_bytes(orjson.dumps(metrics, option=orjson.OPT_INDENT_2) + b"\n")


# ---------------------------------------------------------------- charts


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(width: float, height: float, cols: int = 1) -> tuple[Any, Any]:
    # The object API (Figure, not pyplot) keeps no global state and needs no GUI backend: Agg renders it.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    axes = fig.subplots(1, cols)
    return fig, axes


def roc_chart(metrics: dict[str, Any]) -> str | None:
    """ROC curves of every split, linear and log-FPR side by side; None when no split has both classes."""
    curves = [(name, s) for name, s in metrics["splits"].items() if s["roc_curve"]]
    if not curves:
        return None
    fig, (lin, log) = _figure(11, 4.4, cols=2)
    for name, s in curves:
        auc = s["roc_auc"]["value"]
        label = f"{name} (AUC {auc:.3f}, {s['accounts']['benign']} benign / {s['accounts']['attack']} attack)"
        fpr, tpr = np.asarray(s["roc_curve"]["fpr"]), np.asarray(s["roc_curve"]["tpr"])
        # Straight lines between corners: a sloped segment is a tie, whose accounts are flagged together.
        style = {"color": SPLIT_COLOURS.get(name), "ls": "--" if name == "all" else "-", "label": label}
        lin.plot(fpr, tpr, **style)
        # Log axis cannot show FPR 0; floor it just left of the smallest target so the zero-FP TPR shows.
        log.plot(np.maximum(fpr, 1e-4), tpr, **style)
    lin.plot([0, 1], [0, 1], ":", color="#999999", label="chance")
    lin.set(xlabel="benign false-positive rate", ylabel="attack true-positive rate", title="ROC (accounts)",
            xlim=(0, 1), ylim=(0, 1.02))  # fmt: skip
    log.set_xscale("log")
    for target in (0.001, 0.01):
        log.axvline(target, ls="--", color="#999999", lw=0.8)
    log.set(xlabel="benign false-positive rate (log; 0 drawn at 1e-4)", ylabel="attack true-positive rate",
            title="ROC, low-FPR region", xlim=(1e-4, 1), ylim=(0, 1.02))  # fmt: skip
    lin.legend(loc="lower right", fontsize=7)
    return _png(fig)


def _bins(values: np.ndarray) -> np.ndarray | int:
    if values.size == 0:
        return 25
    lo, hi = float(values.min()), float(values.max())
    if lo > 0 and hi / lo > 50:  # spans orders of magnitude: log-spaced bins keep the small delays visible
        return np.geomspace(lo, hi * 1.0001, 25)
    return 25


def delay_chart(scored: Sequence[ScoredAccount]) -> str | None:
    """Histograms of detection delay (requests and simulated hours) of flagged attack accounts, per split."""
    groups = split_groups(scored)
    series = []
    for name, accs in groups.items():
        req = np.array([a.delay_requests for a in accs if a.truth.kind == "attack" and a.delay_requests is not None])
        sec = np.array([a.delay_seconds for a in accs if a.truth.kind == "attack" and a.delay_seconds is not None])
        if req.size:
            series.append((name, req, sec))
    if not series:
        return None
    fig, (ax_r, ax_s) = _figure(11, 3.8, cols=2)
    all_req = np.concatenate([s[1] for s in series])
    all_hours = np.concatenate([s[2] for s in series]) / 3600
    # One set of bins per chart, so the splits' histograms are comparable bar for bar.
    req_bins = _bins(all_req)
    hour_bins = _bins(all_hours)
    for name, req, sec in series:
        colour = SPLIT_COLOURS.get(name)
        ax_r.hist(req, bins=req_bins, histtype="step", lw=1.5, color=colour, label=f"{name} (n={req.size})")
        if sec.size:
            ax_s.hist(sec / 3600, bins=hour_bins, histtype="step", lw=1.5, color=colour, label=f"{name} (n={sec.size})")
    for ax, bins in ((ax_r, req_bins), (ax_s, hour_bins)):
        if not isinstance(bins, int):
            ax.set_xscale("log")  # _bins chose log-spaced bins: the values span orders of magnitude
    ax_r.set(xlabel="requests up to the first flag", ylabel="attack accounts", title="Detection delay (requests)")
    ax_s.set(xlabel="simulated hours from first request to first flag", ylabel="attack accounts",
             title="Detection delay (simulated time)")  # fmt: skip
    ax_r.legend(fontsize=8)
    ax_s.legend(fontsize=8)
    return _png(fig)


def leakage_chart(metrics: dict[str, Any]) -> str | None:
    """Share of each attack persona's served responses that were served before it was stopped, per split."""
    rows = [(name, r) for name, s in metrics["splits"].items() if name != "all"
            for r in s["attack_personas"] if r["leaked_share"] is not None]  # fmt: skip
    if not rows:
        rows = [("all", r) for r in metrics["splits"]["all"]["attack_personas"] if r["leaked_share"] is not None]
    if not rows:
        return None
    fig, ax = _figure(8, 0.35 * len(rows) + 1.2)
    labels = [f"{r['persona']} [{name}]" for name, r in rows]
    ax.barh(range(len(rows)), [r["leaked_share"] for _, r in rows],
            color=[SPLIT_COLOURS.get(name, "#555555") for name, _ in rows])  # fmt: skip
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set(xlim=(0, 1), xlabel="leaked share (served before stop / served)", title="Leakage by attack persona")
    return _png(fig)


# ---------------------------------------------------------------- HTML


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], caption: str) -> str:
    if not rows:
        return f"<p class=empty>{_e(caption)}: none.</p>"
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><caption>{_e(caption)}</caption><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(b64: str | None, alt: str) -> str:
    if b64 is None:
        return f"<p class=empty>{_e(alt)}: nothing to plot.</p>"
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{b64}">'


def summary_rows(metrics: dict[str, Any], ci: bool = True) -> list[list[str]]:
    """One row per split under SUMMARY_HEADERS; `ci` adds 95% intervals to the rates."""
    rows = []
    for name, s in metrics["splits"].items():
        tprs = {r["fpr_target"]: r for r in s["tpr_at_fpr"]}
        d = s["delay"]
        leak = s["leakage"]
        rows.append([
            name, s["accounts"]["benign"], s["accounts"]["attack"],
            num(s["roc_auc"]["value"]) if s["roc_auc"]["value"] is not None else f"null ({s['roc_auc']['note']})",
            pct(tprs[0.001]["tpr"]), pct(tprs[0.01]["tpr"]),
            rate_text(s["benign_fpr"], ci), rate_text(s["attack_tpr"], ci),
            rate_text(s["clusters_detected"], ci=False),
            f"{num(d['requests']['median'], 0)} req / {duration(d['seconds']['median'])}"
            if d["requests"] else "not available" if not d["available"] else "–",
            f"{leak['leaked']} of {leak['exposure']} ({pct(leak['leaked_share'])})"
            if leak["available"] else "not available",
        ])  # fmt: skip
    return rows


SUMMARY_HEADERS = ["split", "benign", "attack", "ROC-AUC", "TPR@FPR 0.1%", "TPR@FPR 1%", "benign FPR",
                   "attack TPR", "clusters detected", "median delay", "leakage"]  # fmt: skip

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
table{border-collapse:collapse;margin:0.6em 0 1.4em;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:left}th{background:#f3f3f3}
caption{text-align:left;font-weight:600;padding:4px 0}
.rule{background:#fff8e1;border-left:4px solid #f0b400;padding:0.6em 1em}
.warn{color:#8a4b00}.empty{color:#777}img{max-width:100%}
h2{border-bottom:1px solid #ddd;padding-bottom:3px;margin-top:1.8em}
"""


def render_html(metrics: dict[str, Any], scored: Sequence[ScoredAccount]) -> str:
    """The whole report as one HTML document."""
    det = metrics["detector"]
    data = metrics["data"]
    source = "built-in volume baseline" if det["source"] == "baseline" else f"report {det['report']}"
    parts = [
        "<!doctype html><html><head><meta charset=utf-8><title>DistillShield evaluation</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>DistillShield evaluation</h1>",
        f"<p>Traffic <code>{_e(metrics['traffic'])}</code> scored from the {_e(source)}; flagged = verdict in "
        f"{_e(', '.join(metrics['flagged_verdicts']))}. Generated "
        f"{_e(dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC'))}.</p>",
        f"<p class=rule><b>Hold-out rule.</b> {_e(metrics['holdout_rule'])}</p>",
    ]
    if det["source"] == "baseline":
        parts.append(f"<p>Baseline: suspicious from {det['suspicious_at']} requests, extraction from "
                     f"{det['extraction_at']}; calibration: {_e(det['calibration'])} "
                     f"({det['calibration_accounts']} accounts).</p>")  # fmt: skip
    parts.append(_table(["records", "bad lines", "accounts", "labelled", "unlabelled", "no split",
                         "missing from report", "leakage counts"],
                        [[data["records"], data["bad_lines"], data["accounts"], data["labelled_accounts"],
                          data["unlabelled_accounts"], data["accounts_without_split"], data["missing_from_report"],
                          data["leakage_basis"]]], "Data"))  # fmt: skip
    if metrics["warnings"]:
        parts.append("<ul class=warn>" + "".join(f"<li>{_e(w)}</li>" for w in metrics["warnings"]) + "</ul>")

    parts.append("<h2>Summary by split</h2>")
    parts.append(_table(SUMMARY_HEADERS, summary_rows(metrics), "Every figure on the split named in its row"))
    parts.append("<h2>ROC curves</h2>")
    parts.append(_img(roc_chart(metrics), "ROC curves by split"))
    parts.append(_table(["split", "FPR target", "TPR", "achieved FPR", "risk threshold", "note"],
                        [[r["split"], pct(r["fpr_target"]), pct(r["tpr"]), pct(r["achieved_fpr"], 2),
                          num(r["threshold"], 4), r["note"] or ""]
                         for s in metrics["splits"].values() for r in s["tpr_at_fpr"]],
                        "TPR at benign FPR (thresholds on risk; ties flagged together)"))  # fmt: skip
    parts.append("<h2>Detection delay</h2>")
    parts.append(_img(delay_chart(scored), "Detection delay histograms by split"))
    for s in metrics["splits"].values():
        if s["delay"]["note"]:
            parts.append(f"<p class=warn>[{_e(s['split'])}] {_e(s['delay']['note'])}</p>")
    parts.append("<h2>Leakage</h2>")
    parts.append(f"<p>Counted: {_e(data['leakage_basis'])} of attack accounts up to and including the request "
                 "at which the account was first flagged or, earlier, its analyser cluster stopped it: only on a "
                 "flag of its own ground-truth campaign, and never before both accounts could have been linked "
                 "to the cluster (docs/evaluation.md, 'Leakage, exactly').</p>")  # fmt: skip
    parts.append(_img(leakage_chart(metrics), "Leakage by attack persona"))

    for name, s in metrics["splits"].items():
        parts.append(f"<h2>Split: {_e(name)}</h2>")
        parts.append(_table(["split", "honest persona", "FPR", "stopped via cluster"],
                            [[r["split"], r["persona"], rate_text(r), r["stopped_via_cluster"]]
                             for r in s["honest_personas"]], f"Benign FPR per honest persona [{name}]"))  # fmt: skip
        parts.append(_table(["split", "attack persona", "TPR", "median delay (req)", "median delay (time)",
                             "leaked", "served", "leaked share"],
                            [[r["split"], r["persona"], rate_text(r), num(r["median_delay_requests"], 0),
                              duration(r["median_delay_seconds"]), _opt(r["leaked"]), r["exposure"],
                              pct(r["leaked_share"])] for r in s["attack_personas"]],
                            f"TPR per attack persona [{name}]"))  # fmt: skip
        parts.append(_table(["split", "cluster", "personas", "accounts flagged", "detected",
                             "first detection after", "first flagged (strongest reason)", "stopped accounts",
                             "via cluster", "leaked", "served", "leaked share"],
                            [[r["split"], r["cluster_id"], ", ".join(r["personas"]), rate_text(r, ci=False),
                              "yes" if r["detected"] else "no", duration(r["first_detection_delay_seconds"]),
                              _first_flagged(r["first_flagged"]), r["stopped_accounts"], r["stopped_via_cluster"],
                              _opt(r["leaked"]), r["exposure"], pct(r["leaked_share"])]
                             for r in s["clusters"]], f"Per ground-truth cluster [{name}]"))  # fmt: skip
    if data["bad_line_examples"]:
        parts.append("<h2>Skipped traffic lines</h2><ul>" +
                     "".join(f"<li>{_e(x)}</li>" for x in data["bad_line_examples"]) + "</ul>")  # fmt: skip
    parts.append("</body></html>")
    return "\n".join(parts)


def _opt(x: Any) -> Any:
    return "not available" if x is None else x


def _first_flagged(first: dict[str, Any] | None) -> str:
    """'acct_1 (cot 0.95)': the cluster's own first flagged member and the report's strongest reason."""
    if first is None:
        return "–"
    reason = first["reason"]
    if reason is None:
        return str(first["account_id"])
    score = "" if reason["score"] is None else f" {reason['score']:.2f}"
    return f"{first['account_id']} ({reason['signal']}{score})"


def write_html(metrics: dict[str, Any], scored: Sequence[ScoredAccount], path: str | Path) -> None:
    Path(path).write_text(render_html(metrics, scored), encoding="utf-8")


__all__ = ["duration", "num", "pct", "rate_text", "render_html", "summary_rows", "write_html", "write_json"]
