"""`distillshield keys create|list|revoke`."""

from __future__ import annotations

import typer
from rich.table import Table

from distillshield.cli.common import console, fmt_ts, id_column, print_json, with_store
from distillshield.store import Store
from distillshield.store.admin_log import Actor, record_key_change
from distillshield.store.database import ApiKey

app = typer.Typer(help="API keys. Example: distillshield keys create --account alice", no_args_is_help=True)


@app.command("create")
def create(
    account: str = typer.Option(..., "--account", "-a", help="the account the key belongs to"),
    name: str = typer.Option("", help="a label for the key"),
    as_json: bool = typer.Option(False, "--json", help="print JSON (includes the key)"),
) -> None:
    """Create a key. It is printed once; only a salted hash is stored.

    Example: distillshield keys create --account alice --name "ci pipeline"
    """

    async def go(store: Store) -> tuple[ApiKey, str]:
        key, plaintext = await store.create_key(account, name)
        await record_key_change(store, "key_created", key, Actor.cli())
        return key, plaintext

    key, plaintext = with_store(go)
    if as_json:
        print_json({**key.public(), "key": plaintext})
    else:
        console.print(f"key id {key.id} for account {key.account_id}")
        console.print(f"[bold yellow]{plaintext}[/bold yellow]  (shown once: store it now)")


@app.command("list")
def list_(
    account: str = typer.Option(None, "--account", "-a", help="only this account's keys"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """List keys (ids and metadata; never secrets).

    Example: distillshield keys list --account alice
    """
    keys = with_store(lambda store: store.list_keys(account))
    if as_json:
        print_json([k.public() for k in keys])
        return
    t = Table(id_column("key", (k.id for k in keys)), id_column("account", (k.account_id for k in keys)), "name",
              "created (UTC)", "revoked (UTC)")  # fmt: skip
    for k in keys:
        t.add_row(k.id, k.account_id, k.name, fmt_ts(k.created_at), fmt_ts(k.revoked_at))
    console.print(t)


@app.command("revoke")
def revoke(key_id: str = typer.Argument(..., help="key id, e.g. k3fa9b1c2d4e5")) -> None:
    """Revoke a key. Through the admin API revocation is immediate; from the CLI a running gateway
    notices within auth.cache_ttl_s.

    Example: distillshield keys revoke k3fa9b1c2d4e5
    """

    async def go(store: Store) -> ApiKey:
        key = await store.revoke_key(key_id)
        await record_key_change(store, "key_revoked", key, Actor.cli())
        return key

    key = with_store(go)
    console.print(f"revoked key {key.id} of account {key.account_id}")
