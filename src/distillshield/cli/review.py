"""`distillshield review list|show|decide`: the review queue of flagged accounts and clusters."""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from distillshield.cli.common import CliError, console, fmt_ts, id_column, print_json, with_store
from distillshield.store import Store
from distillshield.store.admin_log import Actor
from distillshield.store.review import DECISIONS, ReviewStore

app = typer.Typer(
    help="The review queue: accounts and clusters detection flagged, with their evidence. "
    "Example: distillshield review list --status open",
    no_args_is_help=True,
)


@app.command("list")
def list_(
    status: str = typer.Option(None, help="open, escalated, confirmed, cleared or allowlisted"),
    kind: str = typer.Option(None, help="account, cluster or org"),
    limit: int = typer.Option(200, help="at most this many items"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """List review items, open ones first, riskiest first.

    Example: distillshield review list --status open --kind cluster
    """
    items = with_store(lambda store: ReviewStore(store).list_items(status, kind, limit))
    if as_json:
        print_json([i.as_dict() for i in items])
        return
    t = Table(
        id_column("id", (str(i.id) for i in items)), id_column("item", (i.ref for i in items)), "status", "verdict",
        "risk", id_column("cluster", (i.cluster_id for i in items)), "top reasons", "updated (UTC)",
    )  # fmt: skip
    for i in items:
        t.add_row(
            str(i.id),
            i.ref,
            i.status,
            i.verdict or "-",
            f"{i.risk:.2f}" if i.risk is not None else "-",
            i.cluster_id or "-",
            _reasons(i.evidence),
            fmt_ts(i.updated_at),
        )
    console.print(t)
    if not items:
        console.print("the queue is empty" + (f" (status {status})" if status else ""))


@app.command("show")
def show(
    ref: str = typer.Argument(..., help="item id, or account:ID, cluster:ID, org:ID, or a bare account id"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Show one item: its evidence, the decisions on it, and its accounts' latest requests.

    Example: distillshield review show cluster:c3
    """

    async def go(store: Store) -> dict[str, Any]:
        rs = ReviewStore(store)
        item = await rs.get(ref)
        if item is None:
            raise CliError(f"review item '{ref}' does not exist; `distillshield review list` shows the queue")
        members = [item.subject] if item.kind == "account" else list((item.evidence or {}).get("members") or [])
        return {
            "item": item.as_dict(),
            "decisions": [d.as_dict() for d in await rs.decisions(item.id)],
            "recent_requests": await rs.recent_requests(members, 10),
        }

    out = with_store(go)
    if as_json:
        print_json(out)
        return
    item = out["item"]
    risk = f"{item['risk']:.3f}" if item["risk"] is not None else "-"
    console.print(
        f"[bold]{item['ref']}[/bold] (id {item['id']})  status={item['status']} verdict={item['verdict'] or '-'} "
        f"risk={risk} cluster={item['cluster_id'] or '-'} opened={fmt_ts(item['created_at'])}"
    )
    ev = item["evidence"] or {}
    if ev.get("members"):
        console.print(f"members ({len(ev['members'])}, {ev.get('flagged', '?')} flagged): {', '.join(ev['members'])}")
    for r in ev.get("reasons") or []:
        who = f" [{r['account_id']}]" if r.get("account_id") else ""
        console.print(f"  {r.get('signal')}: {float(r.get('score') or 0):.2f}{who}  {r.get('detail', '')}")
    if out["decisions"]:
        t = Table("decided (UTC)", "decision", "scope", "reviewer", "verdict then", "note")
        for d in out["decisions"]:
            t.add_row(fmt_ts(d["ts"]), d["decision"], d["scope"], d["reviewer"] or "-", d["verdict"] or "-", d["note"])
        console.print(t)
    if out["recent_requests"]:
        t = Table("time (UTC)", "account", "endpoint", "status", "decision", "request")
        for r in out["recent_requests"]:
            t.add_row(
                fmt_ts(r["ts"]), r["account_id"], r["endpoint"], str(r["status"]), r["decision"] or "-",
                (r["request"] or "")[:80],
            )  # fmt: skip
        console.print(t)


@app.command("decide")
def decide(
    ref: str = typer.Argument(..., help="item id, or account:ID, cluster:ID, org:ID, or a bare account id"),
    decision: str = typer.Argument(..., help="confirm, clear, allowlist or escalate"),
    note: str = typer.Option("", help="why (kept with the decision)"),
    reviewer: str = typer.Option("", help="who decided"),
    org: bool = typer.Option(False, "--org", help="allowlist the account's whole org"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Decide on an item: confirm (the policy keeps acting, the default policy blocks), clear (lift every
    action), allowlist (never act on it again), escalate (leave it under review for a senior reviewer; the
    policy treats it as open). A cluster decision applies to each member. A running
    gateway applies it within policy.review_poll_s (through POST /admin/review/REF/decide: at once).

    Example: distillshield review decide account:alice clear --note "eval run, known customer"
    """
    if decision not in DECISIONS:
        raise CliError(f"unknown decision '{decision}'; choose one of {', '.join(DECISIONS)}")
    result = with_store(
        lambda store: ReviewStore(store).decide(ref, decision, actor=Actor.cli(), reviewer=reviewer, note=note, org=org)
    )
    if as_json:
        print_json(result.as_dict())
        return
    applied = ", ".join(result.orgs) if result.orgs else ", ".join(result.accounts) or "-"
    console.print(f"{result.item.ref} is now [bold]{result.status}[/bold] (applies to: {applied})")


def _reasons(evidence: dict[str, Any] | None) -> str:
    reasons = (evidence or {}).get("reasons") or []
    return ", ".join(f"{r.get('signal')} {float(r.get('score') or 0):.2f}" for r in reasons[:3]) or "-"
