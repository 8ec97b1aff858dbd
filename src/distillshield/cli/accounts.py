"""`distillshield accounts create|list|show|suspend|activate|pin|pins|unpin`."""

from __future__ import annotations

from datetime import UTC, datetime

import typer
from rich.table import Table

from distillshield.cli.common import CliError, console, fmt_ts, id_column, print_json, settings, with_store
from distillshield.store import Store, admin_log
from distillshield.store.admin_log import Actor

app = typer.Typer(help="Accounts (each belongs to an org). Example: distillshield accounts list", no_args_is_help=True)


@app.command("create")
def create(
    account_id: str = typer.Argument(..., help="account id, 1-64 characters"),
    org: str = typer.Option("default", "--org", help="org id (created when missing)"),
    name: str = typer.Option("", help="display name"),
    tier: str = typer.Option("standard", help="free, standard, pro or enterprise"),
    verification: str = typer.Option("none", help="none, email, phone, id or business"),
    created_at: str = typer.Option(
        None,
        "--created-at",
        help="when the account was created, for one brought over from another system: ISO 8601 (UTC unless it "
        "names a zone) or Unix seconds; default now",
    ),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Create an account.

    Example: distillshield accounts create alice --org acme --tier pro --created-at 2026-09-01T12:00:00Z
    """
    created = None if created_at is None else _when(created_at)

    async def go(store: Store):
        return await store.create_account(
            account_id, org, name=name, tier=tier, verification=verification, created_at=created
        )

    acct = with_store(go)
    if as_json:
        print_json(acct.__dict__)
    else:
        console.print(f"created account [bold]{acct.id}[/bold] in org {acct.org_id} (tier {acct.tier})")


def _when(text: str) -> float:
    """Unix seconds from `--created-at`: a number, or an ISO 8601 date/time (UTC unless it names a zone). Whether
    the time is acceptable (not in the future) is the store's rule: `database.check_created_at`."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise CliError(f"--created-at: {text!r} is neither an ISO 8601 date/time nor Unix seconds") from None
    return (dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)).timestamp()


@app.command("list")
def list_(
    org: str = typer.Option(None, "--org", help="only this org"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """List accounts.

    Example: distillshield accounts list --org acme --json
    """
    accts = with_store(lambda store: store.list_accounts(org))
    if as_json:
        print_json([a.__dict__ for a in accts])
        return
    t = Table(id_column("account", (a.id for a in accts)), id_column("org", (a.org_id for a in accts)), "tier",
              "verification", "status", "created (UTC)")  # fmt: skip
    for a in accts:
        t.add_row(a.id, a.org_id, a.tier, a.verification, a.status, fmt_ts(a.created_at))
    console.print(t)


@app.command("show")
def show(
    account_id: str = typer.Argument(...),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
    admin_token: str = typer.Option(
        None, "--admin-token", envvar="DISTILLSHIELD_ADMIN_TOKEN",
        help="admin token of the running gateway, to show its detection verdict (default: admin.token)",
    ),
) -> None:  # fmt: skip
    """Show one account: its keys, its usage from the audit log, the countermeasures pinned on it by hand, and
    the running gateway's detection verdict (risk, verdict, cluster, reasons) when the gateway is reachable.

    Example: distillshield accounts show alice
    """

    async def go(store: Store):
        acct = await store.get_account(account_id)
        if acct is None:
            raise CliError(f"account '{account_id}' does not exist")
        from distillshield.store.pins import PinStore

        pins = await PinStore(store).for_account(account_id)
        return acct, await store.list_keys(account_id), await store.account_usage(account_id), pins

    acct, keys, usage, pinned = with_store(go)
    detection, why = _detection(account_id, admin_token)
    if as_json:
        print_json({**acct.__dict__, "keys": [k.public() for k in keys], "usage": usage, "detection": detection,
                    "pins": [p.as_dict() for p in pinned]})  # fmt: skip
        return
    console.print(
        f"[bold]{acct.id}[/bold]  org={acct.org_id} tier={acct.tier} verification={acct.verification} "
        f"status={acct.status} created={fmt_ts(acct.created_at)}"
    )
    console.print(
        f"usage: {usage['requests']} requests, {usage['prompt_tokens']} prompt + "
        f"{usage['completion_tokens']} completion tokens, last {fmt_ts(usage['last_request_ts'])}"
    )
    t = Table(id_column("key", (k.id for k in keys)), "name", "created (UTC)", "revoked (UTC)")
    for k in keys:
        t.add_row(k.id, k.name, fmt_ts(k.created_at), fmt_ts(k.revoked_at))
    console.print(t)
    for p in pinned:
        until = f"until {fmt_ts(p.expires_at)}" if p.expires_at else "until lifted"
        note = f" ({p.note})" if p.note else ""
        console.print(f"pinned {p.ref}: {p.action} {p.params} by {p.actor}, {until}{note}", markup=False)
    if detection is None:
        console.print(f"detection: not available ({why})")
    else:
        colour = {"extraction": "red", "suspicious": "yellow"}.get(detection["verdict"], "green")
        console.print(f"detection: risk {detection['risk']:.2f} [{colour}]{detection['verdict']}[/{colour}]"
                      f" cluster {detection.get('cluster_id') or '-'}")  # fmt: skip
        for r in detection.get("reasons", [])[:5]:
            console.print(f"  [{r['signal']}] {r['detail']}", markup=False)


def _detection(account_id: str, token: str | None) -> tuple[dict | None, str]:
    """The running gateway's detection verdict for the account (admin API), or None and why not."""
    import json
    import urllib.error
    import urllib.request

    s = settings()
    token = token or s.admin.token
    if not token:
        return None, "pass --admin-token or set DISTILLSHIELD_ADMIN_TOKEN to read it from the running gateway"
    url = f"http://{s.server.host}:{s.server.port}/admin/accounts/{account_id}"
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310 - the configured gateway
            found = json.loads(resp.read()).get("detection")
    except urllib.error.HTTPError as exc:
        return None, f"the gateway at {url} answered {exc.code}"
    except OSError as exc:
        return None, f"no gateway reachable at {s.server.host}:{s.server.port} ({exc.__class__.__name__})"
    return found, "" if found else "the gateway has not scored this account yet"


def _set_status(account_id: str, status: str) -> None:
    with_store(lambda store: admin_log.set_account_status(store, account_id, status, Actor.cli()))
    console.print(f"account {account_id} is now {status} (a running gateway notices within auth.cache_ttl_s)")


@app.command("suspend")
def suspend(account_id: str = typer.Argument(...)) -> None:
    """Suspend an account: its keys get 403.

    Example: distillshield accounts suspend mallory
    """
    _set_status(account_id, "suspended")


@app.command("activate")
def activate(account_id: str = typer.Argument(...)) -> None:
    """Re-activate a suspended account.

    Example: distillshield accounts activate mallory
    """
    _set_status(account_id, "active")


@app.command("pin")
def pin(
    account_id: str = typer.Argument(..., help="the account"),
    action: str = typer.Argument(..., help="throttle, degrade or watermark"),
    params: str = typer.Option(
        "{}", "--params", help="the action's params as JSON, as a policy rule takes them, e.g. '{\"factor\": 0.25}'"
    ),
    note: str = typer.Option("", "--note", help="why (kept with the pin and in the audit log)"),
    expires: str = typer.Option(None, "--expires", help="lift it by itself after this long: 90m, 24h, 7d"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Pin a countermeasure on an account by hand: throttle, degrade or watermark it whatever detection says,
    until lifted (`accounts unpin`) or expired. Merged with the policy's own decisions, the stricter value
    winning; a running gateway applies it within policy.review_poll_s. Recorded in the audit log.

    Example: distillshield accounts pin mallory throttle --params '{"factor": 0.1}' --expires 24h --note "case 42"
    """
    import json
    import time

    from distillshield.gateway.policy.rules import PolicyError, pin_params
    from distillshield.simulate.scenario import parse_duration
    from distillshield.store.pins import PinStore

    try:
        raw = json.loads(params)
    except json.JSONDecodeError as exc:
        raise CliError(f"--params is not JSON: {exc.msg} at character {exc.pos}") from None
    if not isinstance(raw, dict):
        raise CliError("--params must be a JSON object, e.g. '{\"factor\": 0.25}'")
    try:
        parsed = pin_params(action, raw)
    except PolicyError as exc:
        raise CliError(str(exc)) from None
    expires_at = None
    if expires is not None:
        try:
            span = parse_duration(expires)
        except ValueError as exc:
            raise CliError(f"--expires: {exc}") from None
        if span <= 0:
            raise CliError("--expires must be longer than zero")
        expires_at = time.time() + span
    found = with_store(lambda store: PinStore(store).pin(
        account_id, action, parsed.model_dump(mode="json"), actor=Actor.cli(), note=note, expires_at=expires_at
    ))  # fmt: skip
    if as_json:
        print_json(found.as_dict())
        return
    until = f" until {fmt_ts(found.expires_at)}" if found.expires_at else " until lifted"
    console.print(f"pinned {found.ref} ({action} {json.dumps(found.params)}) on {account_id}{until}; "
                  "a running gateway applies it within policy.review_poll_s", markup=False)  # fmt: skip


@app.command("pins")
def pins(
    account_id: str = typer.Argument(..., help="the account"),
    show_all: bool = typer.Option(False, "--all", help="lifted and expired pins too"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """List the countermeasures pinned on an account by hand.

    Example: distillshield accounts pins mallory --all --json
    """
    from distillshield.store.pins import PinStore

    found = with_store(lambda store: PinStore(store).for_account(account_id, include_past=show_all))
    if as_json:
        print_json([p.as_dict() for p in found])
        return
    t = Table(id_column("pin", (p.ref for p in found)), "action", "params", "by", "note", "since (UTC)",
              "until (UTC)", "state")  # fmt: skip
    for p in found:
        state = "active" if p.active() else (f"lifted by {p.lifted_by}" if p.lifted_at else "expired")
        t.add_row(p.ref, p.action, str(p.params), p.actor, p.note, fmt_ts(p.created_at),
                  fmt_ts(p.expires_at) if p.expires_at else "-", state)  # fmt: skip
    console.print(t)


@app.command("unpin")
def unpin(pin_ref: str = typer.Argument(..., help="the pin: its id or pin:<id> (accounts pins lists them)")) -> None:
    """Lift a pinned countermeasure; a running gateway stops it within policy.review_poll_s.

    Example: distillshield accounts unpin pin:12
    """
    from distillshield.store.pins import PinStore

    text = pin_ref.removeprefix("pin:")
    if not text.isdigit():
        raise CliError(f"'{pin_ref}' is not a pin; give its id or pin:<id> (distillshield accounts pins ACCOUNT)")
    lifted = with_store(lambda store: PinStore(store).lift(int(text), actor=Actor.cli()))
    console.print(f"lifted {lifted.ref} ({lifted.action}) on {lifted.account_id}")
