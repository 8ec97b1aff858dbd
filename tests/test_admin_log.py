"""Administrative acts are rows of the hash-chained audit log (store/admin_log.py): from the admin API, the
CLI and (tests/test_console_*.py, test_policy_review.py) the console and the review queue. They are not
traffic, and an act whose row cannot be written is a 503 that says so, never a silent success."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError
from typer.testing import CliRunner

from distillshield.cli import app
from distillshield.store.export import row_to_record
from distillshield.store.tables import is_admin_endpoint
from tests.conftest import RunningGateway
from tests.console_helpers import admin_acts


def test_admin_api_acts_are_chained_audit_rows_with_who_and_what(fake_gateway: RunningGateway) -> None:
    gw = fake_gateway
    key = gw.create_key("ops-alice", "acme")  # creates the account and a key: one key_created act
    key_id = key.split("-")[1]
    assert gw.admin("POST", "/accounts/ops-alice/suspend").status_code == 200
    assert gw.admin("POST", "/accounts/ops-alice/activate").status_code == 200
    assert gw.admin("POST", "/accounts/ops-alice/limits", json={"rpm": 7}).status_code == 200
    assert gw.admin("DELETE", f"/keys/{key_id}").status_code == 200
    assert gw.admin("POST", "/policy/reload", json={"mode": "shadow"}).status_code == 200
    # refused acts change nothing and record nothing
    assert gw.admin("DELETE", f"/keys/{key_id}").status_code == 409
    assert gw.admin("POST", "/accounts/nobody/suspend").status_code == 404

    acts = admin_acts(gw)
    assert [(a["action"], a["subject"]) for a in acts] == [
        ("key_created", key_id),
        ("account_status", "ops-alice"),
        ("account_status", "ops-alice"),
        ("account_limits", "ops-alice"),
        ("key_revoked", key_id),
        ("policy_reload", gw.state.policy.policy.source),
    ]
    assert {(a["actor"], a["via"], a["ip"]) for a in acts} == {("admin-api", "admin-api", "127.0.0.1")}
    assert [a["detail"] for a in acts[:5]] == [
        {"account_id": "ops-alice", "name": ""},
        {"status": "suspended"},
        {"status": "active"},
        {"limits": {"rpm": 7}},
        {"account_id": "ops-alice", "name": ""},
    ]
    assert acts[5]["detail"]["mode"] == "shadow"
    assert (gw.run(gw.state.store.verify_chain())).ok

    rows = _admin_rows(gw)
    secret = key.split("-", 2)[2]
    assert all(secret not in repr(r) for r in rows)  # never the key itself
    # not traffic: no account, so export, analysis and detection (which read rows with one) skip them
    assert all(r["account_id"] is None and row_to_record(r) is None for r in rows)
    assert gw.request_rows() == []


def test_an_act_whose_row_cannot_be_written_is_a_503_that_says_so(
    fake_gateway: RunningGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    gw = fake_gateway
    gw.create_key("ops-bob", "acme")
    store = gw.state.store

    async def store_away(*_a: Any, **_k: Any) -> int:
        raise OperationalError("INSERT INTO audit_log", {}, ConnectionRefusedError("the database is away"))

    monkeypatch.setattr(store, "append_audit", store_away)
    r = gw.admin("POST", "/accounts/ops-bob/suspend")
    assert r.status_code == 503 and r.headers["retry-after"] == "5"
    detail = r.json()["detail"]
    assert "audit log could not record this account status" in detail and "took effect" in detail
    monkeypatch.undo()
    # the suspension itself was made (and the answer said so): the account's key is refused now
    assert gw.run(store.get_account("ops-bob")).status == "suspended"
    assert [a["action"] for a in admin_acts(gw)] == ["key_created"]


def test_cli_acts_are_recorded_as_the_operator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USER", "oncall-7")
    monkeypatch.setenv("LOGNAME", "oncall-7")
    runner = CliRunner()
    cfg = tmp_path / "a.yaml"
    init = ["init", "--path", str(cfg), "--store-url", f"sqlite+aiosqlite:///{tmp_path / 'a.db'}"]
    assert runner.invoke(app, init).exit_code == 0

    def cli(*args: str) -> Any:
        r = runner.invoke(app, ["-c", str(cfg), *args])
        assert r.exit_code == 0, r.output
        return r

    cli("accounts", "create", "carol", "--org", "acme")
    created = json.loads(cli("keys", "create", "--account", "carol", "--json").output)
    cli("accounts", "suspend", "carol")
    cli("keys", "revoke", created["id"])
    verified = json.loads(cli("logs", "verify", "--json").output)
    assert verified["ok"] and verified["rows"] == 3

    import asyncio

    from distillshield.store import Store
    from distillshield.store.admin_log import AdminLog

    async def read() -> list[dict[str, Any]]:
        store = Store(f"sqlite+aiosqlite:///{tmp_path / 'a.db'}")
        try:
            rows, _ = await AdminLog(store).page(10)
            return [a.as_dict() for a in reversed(rows)]
        finally:
            await store.close()

    acts = asyncio.run(read())
    assert [(a["action"], a["subject"], a["actor"], a["via"]) for a in acts] == [
        ("key_created", created["id"], "cli:oncall-7", "cli"),
        ("account_status", "carol", "cli:oncall-7", "cli"),
        ("key_revoked", created["id"], "cli:oncall-7", "cli"),
    ]


def _admin_rows(gw: RunningGateway) -> list[dict[str, Any]]:
    gw.flush_audit()

    async def read() -> list[dict[str, Any]]:
        return [r async for r in gw.state.store.iter_audit() if is_admin_endpoint(r["endpoint"])]

    return gw.run(read())
