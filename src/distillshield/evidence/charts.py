"""The bundle's pictures (matplotlib, PNG): request timeline, token volume, and the cluster graph."""

from __future__ import annotations

import datetime as dt
import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from distillshield.evidence.collect import EvidenceError

_TOP = 8  # accounts drawn individually; the rest are summed as "others"


def _plt() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise EvidenceError("evidence bundles need matplotlib for their charts: pip install matplotlib") from None
    matplotlib.use("Agg")  # files only, never a display
    import matplotlib.pyplot as plt

    return plt


def _series_accounts(rows: list[dict[str, Any]]) -> list[str]:
    counts = Counter(r["account_id"] for r in rows)
    return [a for a, _ in counts.most_common(_TOP)]


def _label(account: str, top: list[str]) -> str:
    return account if account in top else "others"


def timeline(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Requests per hour, one line per account (the top 8 by volume, the rest summed)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 3.4), dpi=110)
    if rows:
        top = _series_accounts(rows)
        buckets: dict[str, Counter[int]] = defaultdict(Counter)
        for r in rows:
            buckets[_label(r["account_id"], top)][int(r["ts"] // 3600)] += 1
        lo = min(int(r["ts"] // 3600) for r in rows)
        hi = max(int(r["ts"] // 3600) for r in rows)
        hours = list(range(lo, hi + 1))
        xs = [dt.datetime.fromtimestamp(h * 3600, dt.UTC) for h in hours]
        for name in [*top, "others"]:
            if name in buckets:
                ax.plot(xs, [buckets[name].get(h, 0) for h in hours], marker=".", linewidth=1, label=name)
        ax.legend(fontsize=7, ncol=3, loc="upper left")
        fig.autofmt_xdate()
    ax.set_ylabel("requests / hour")
    ax.set_ylim(bottom=0)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def volume(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Tokens served per UTC day, stacked by account (completion tokens: what a distiller harvests)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 3.4), dpi=110)
    if rows:
        top = _series_accounts(rows)
        per: dict[str, Counter[int]] = defaultdict(Counter)
        for r in rows:
            per[_label(r["account_id"], top)][int(r["ts"] // 86400)] += r.get("completion_tokens") or 0
        days = sorted({d for c in per.values() for d in c})
        xs = [dt.datetime.fromtimestamp(d * 86400, dt.UTC).strftime("%Y-%m-%d") for d in days]
        bottom = [0] * len(days)
        for name in [*top, "others"]:
            if name in per:
                vals = [per[name].get(d, 0) for d in days]
                ax.bar(xs, vals, bottom=bottom, label=name)
                bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
        ax.legend(fontsize=7, ncol=3, loc="upper left")
        plt.setp(ax.get_xticklabels(), rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("completion tokens / day")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def cluster_graph(
    accounts: list[str],
    ips: dict[str, list[str]],
    overlap: dict[tuple[str, str], float],
    risk: dict[str, float],
    path: Path,
    title: str,
) -> None:
    """Accounts (circles, coloured by risk) on a ring, the IPs they used (squares) inside it, and
    dashed account-account edges where their prompt templates overlap (Jaccard >= 0.2)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 7.5), dpi=110)
    shown = accounts[:60]
    n = max(1, len(shown))
    pos = {a: (math.cos(2 * math.pi * i / n), math.sin(2 * math.pi * i / n)) for i, a in enumerate(shown)}
    used = sorted(((ip, [a for a in accs if a in pos]) for ip, accs in ips.items()), key=lambda x: -len(x[1]))
    used = [(ip, accs) for ip, accs in used if accs][:30]
    for ip, accs in used:
        x = sum(pos[a][0] for a in accs) / len(accs) * 0.55
        y = sum(pos[a][1] for a in accs) / len(accs) * 0.55
        for a in accs:
            ax.plot([x, pos[a][0]], [y, pos[a][1]], color="#999999", linewidth=0.6, zorder=1)
        shared = len(accs) > 1
        ax.scatter([x], [y], marker="s", s=60 if shared else 25, color="#d62728" if shared else "#bbbbbb", zorder=2)
        if shared:
            ax.annotate(ip, (x, y), fontsize=6, ha="center", va="bottom", xytext=(0, 4), textcoords="offset points")
    strong = sorted(((w, a, b) for (a, b), w in overlap.items() if a in pos and b in pos and w >= 0.2), reverse=True)
    for w, a, b in strong[:60]:  # the strongest pairs only: a dense hydra would be a solid disc
        ax.plot([pos[a][0], pos[b][0]], [pos[a][1], pos[b][1]], "--", color="#1f77b4", linewidth=0.3 + w, alpha=0.3)
    cmap = plt.get_cmap("RdYlGn_r")
    for a, (x, y) in pos.items():
        ax.scatter([x], [y], s=160, color=cmap(risk.get(a, 0.0)), edgecolors="black", zorder=3)
        ax.annotate(a, (x, y), fontsize=6, ha="center", va="top", xytext=(0, -8), textcoords="offset points")
    notes = []
    if len(accounts) > len(shown):
        notes.append(f"{len(accounts) - len(shown)} more accounts not drawn")
    if strong:
        notes.append(
            f"{len(strong)} account pairs share prompt templates (Jaccard >= 0.2), {min(60, len(strong))} drawn"
        )
    ax.text(0, -1.28, "; ".join(notes), ha="center", fontsize=8)
    ax.set_title(title + "\ncircles: accounts (colour = risk); squares: IPs (red = shared); dashed: shared templates",
                 fontsize=9)  # fmt: skip
    ax.set_xlim(-1.35, 1.35)
    ax.set_ylim(-1.35, 1.35)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
