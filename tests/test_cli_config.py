"""The CLI front door and the configuration: errors are one line with a non-zero exit, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from distillshield.cli import app
from distillshield.config import ConfigError, load_settings

runner = CliRunner()


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "distillshield", *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


def test_init_writes_a_valid_commented_config_and_shows_the_admin_token_once(tmp_path: Path) -> None:
    cfg = tmp_path / "d.yaml"
    r = runner.invoke(app, ["init", "--path", str(cfg)])
    assert r.exit_code == 0, r.output
    token = r.output.split("stored): ")[1].split()[0]
    text = cfg.read_text()
    assert token not in text and "# " in text
    s = load_settings(cfg)
    import hashlib

    assert s.admin.token_sha256 == hashlib.sha256(token.encode()).hexdigest()
    # the watermark secret's file beside the config: written by the gateway's first start, not by init
    wm_file = tmp_path / "distillshield-watermark.key"
    assert s.watermark.secret_file == str(wm_file) and s.watermark.keyed and not wm_file.exists()
    r = cli("-c", str(cfg), "watermark", "detect", "-", "--account", "a1")
    assert r.returncode != 0 and r.stderr.startswith("error: ") and "does not exist" in r.stderr, r.stderr
    assert runner.invoke(app, ["init", "--path", str(cfg)]).exit_code != 0  # no silent overwrite


@pytest.mark.parametrize(
    ("yaml_text", "needle"),
    [
        ("server:\n  port: abc\n", "server.port"),
        ("server:\n  prot: 80\n", "server.prot: unknown key"),
        ("limits:\n  account: {rpm: -5}\n", "limits.account.rpm"),
        ("store:\n  url: mysql://x\n", "store.url"),
        ("upstream:\n  kind: magic\n", "upstream.kind"),
        ("- just\n- a list\n", "must be a mapping"),
        ("server: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, yaml_text: str, needle: str) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml_text)
    with pytest.raises(ConfigError) as exc:
        load_settings(cfg)
    assert needle in str(exc.value) and str(cfg) in str(exc.value)
    r = cli("-c", str(cfg), "accounts", "list")
    assert r.returncode == 2 and r.stderr.startswith("error: ") and needle in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("server:\n  port: 9000\n")
    monkeypatch.setenv("DISTILLSHIELD_SERVER__PORT", "9100")
    assert load_settings(cfg).server.port == 9100
    monkeypatch.setenv("DISTILLSHIELD_SERVER__PORT", "nope")
    with pytest.raises(ConfigError, match="server.port"):
        load_settings(cfg)


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    r = cli("-c", str(tmp_path / "nope.yaml"), "keys", "list")
    assert r.returncode == 2 and "not found" in r.stderr and "Traceback" not in r.stderr


def test_accounts_and_keys_lifecycle_with_json_output(tmp_path: Path) -> None:
    cfg = tmp_path / "k.yaml"
    assert (
        runner.invoke(
            app, ["init", "--path", str(cfg), "--store-url", f"sqlite+aiosqlite:///{tmp_path / 'k.db'}"]
        ).exit_code
        == 0
    )
    r = runner.invoke(app, ["-c", str(cfg), "accounts", "create", "alice", "--org", "acme", "--tier", "pro"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["-c", str(cfg), "keys", "create", "--account", "alice", "--json"])
    created = json.loads(r.output)
    assert created["key"].startswith(f"ds-{created['id']}-")
    listed = json.loads(runner.invoke(app, ["-c", str(cfg), "keys", "list", "--json"]).output)
    assert [k["id"] for k in listed] == [created["id"]] and "key" not in listed[0] and "secret_hash" not in listed[0]
    shown = json.loads(runner.invoke(app, ["-c", str(cfg), "accounts", "show", "alice", "--json"]).output)
    assert shown["org_id"] == "acme" and shown["tier"] == "pro" and shown["usage"]["requests"] == 0
    # an account brought over from another system keeps its creation time (detection reads waves from it)
    r = runner.invoke(
        app, ["-c", str(cfg), "accounts", "create", "old", "--created-at", "2026-09-01T12:00:00Z", "--json"]
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["created_at"] == 1788264000.0
    r = runner.invoke(app, ["-c", str(cfg), "accounts", "create", "older", "--created-at", "1788264000", "--json"])
    assert json.loads(r.output)["created_at"] == 1788264000.0
    assert runner.invoke(app, ["-c", str(cfg), "keys", "revoke", created["id"]]).exit_code == 0
    listed = json.loads(runner.invoke(app, ["-c", str(cfg), "keys", "list", "--json"]).output)
    assert listed[0]["revoked_at"] is not None
    # errors: one line, exit 2
    for args, needle in [
        (["keys", "revoke", created["id"]], "already revoked"),
        (["keys", "create", "--account", "ghost"], "does not exist"),
        (["accounts", "create", "alice"], "already exists"),
        (["accounts", "create", "bob", "--tier", "platinum"], "unknown tier"),
        (["accounts", "create", "bob", "--created-at", "last tuesday"], "neither an ISO 8601 date/time nor Unix"),
        (["accounts", "create", "bob", "--created-at", "2999-01-01"], "is in the future"),
        (["accounts", "show", "ghost"], "does not exist"),
    ]:
        r = cli("-c", str(cfg), *args)
        assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)


def test_logs_verify_exit_codes_and_names_the_row(tmp_path: Path) -> None:
    import asyncio

    from distillshield.store import Store
    from distillshield.store.tables import audit_log
    from tests.test_audit_chain import row

    db = tmp_path / "v.db"
    cfg = tmp_path / "v.yaml"
    runner.invoke(app, ["init", "--path", str(cfg), "--store-url", f"sqlite+aiosqlite:///{db}"])

    async def fill(tamper: bool) -> None:
        s = Store(f"sqlite+aiosqlite:///{db}")
        await s.init()
        if tamper:
            async with s.engine.begin() as conn:
                await conn.execute(audit_log.update().where(audit_log.c.seq == 2).values(status=201))
        else:
            await s.append_audit([row(i) for i in range(3)])
        await s.close()

    asyncio.run(fill(False))
    r = cli("-c", str(cfg), "logs", "verify", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["ok"] is True
    asyncio.run(fill(True))
    r = cli("-c", str(cfg), "logs", "verify")
    assert r.returncode == 1 and "row 2" in r.stdout and "edited" in r.stdout


def test_every_command_has_help_with_an_example() -> None:
    commands = [
        ["init"],
        ["serve"],
        ["demo"],
        ["accounts", "create"],
        ["accounts", "list"],
        ["accounts", "show"],
        ["accounts", "suspend"],
        ["accounts", "activate"],
        ["keys", "create"],
        ["keys", "list"],
        ["keys", "revoke"],
        ["logs", "verify"],
        ["logs", "checkpoint"],
        ["logs", "keygen"],
        ["logs", "pubkey"],
        ["logs", "export"],
        ["logs", "import"],
    ]
    for cmd in commands:
        r = runner.invoke(app, [*cmd, "--help"], env={"COLUMNS": "200"})
        assert r.exit_code == 0 and "Example: distillshield" in r.output, cmd


def test_demo_once_serves_a_real_request(tmp_path: Path) -> None:
    port = __import__("tests.conftest", fromlist=["free_port"]).free_port()
    r = cli("demo", "--once", "--port", str(port), "--dir", str(tmp_path / "demo"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "checked: the gateway answered a real request" in r.stdout
    assert "curl -s" in r.stdout and "OpenAI(base_url=" in r.stdout
    assert cli("-c", str(tmp_path / "demo" / "distillshield.yaml"), "logs", "verify").returncode == 0
    eng = sa.create_engine(f"sqlite:///{tmp_path / 'demo' / 'demo.db'}")
    with eng.connect() as conn:
        served = "select endpoint, count(*) from audit_log where status = 200 group by endpoint order by endpoint"
        # the one checked request, and the demo key's creation (an administrative act, store/admin_log.py)
        assert conn.execute(sa.text(served)).all() == [("/v1/chat/completions", 1), ("admin/key_created", 1)]
    assert os.path.exists(tmp_path / "demo" / "admin-token")


def test_forwarded_headers_are_trusted_only_from_configured_proxies(tmp_path: Path) -> None:
    from distillshield.cli.serve import uvicorn_proxy_options, write_config

    cfg = tmp_path / "p.yaml"
    write_config(cfg, store_url=f"sqlite+aiosqlite:///{tmp_path / 'p.db'}")
    assert "forwarded_allow_ips: []" in cfg.read_text()
    s = load_settings(cfg)
    # The default: uvicorn's proxy-headers middleware is off (uvicorn would trust 127.0.0.1 on its own).
    assert s.server.forwarded_allow_ips == [] and uvicorn_proxy_options(s) == {
        "proxy_headers": False,
        "forwarded_allow_ips": None,
    }
    s = load_settings(cfg, server__forwarded_allow_ips="10.0.0.1, 10.1.0.0/16,::1")  # uvicorn's own format
    ips = ["10.0.0.1", "10.1.0.0/16", "::1"]
    assert uvicorn_proxy_options(s) == {"proxy_headers": True, "forwarded_allow_ips": ips}
    assert load_settings(cfg, server__forwarded_allow_ips=["*"]).server.forwarded_allow_ips == ["*"]


@pytest.mark.parametrize("value", [["10.0.0.1/8"], ["proxy.internal"], ["*", "10.0.0.1"], ["10.0.0.300"]])
def test_bad_forwarded_allow_ips_are_errors_not_silent_literals(tmp_path: Path, value: list[str]) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(json.dumps({"server": {"forwarded_allow_ips": value}}))  # JSON is YAML
    with pytest.raises(ConfigError, match="server.forwarded_allow_ips"):
        load_settings(cfg)


def test_forwarded_allow_ips_from_the_environment_as_uvicorn_writes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """It used to need JSON in the environment and crashed `serve` with a raw traceback otherwise."""
    monkeypatch.setenv("DISTILLSHIELD_SERVER__FORWARDED_ALLOW_IPS", "127.0.0.1, 10.0.0.0/8")
    assert load_settings().server.forwarded_allow_ips == ["127.0.0.1", "10.0.0.0/8"]
    monkeypatch.setenv("DISTILLSHIELD_SERVER__FORWARDED_ALLOW_IPS", '["::1"]')
    assert load_settings().server.forwarded_allow_ips == ["::1"]
    monkeypatch.setenv("DISTILLSHIELD_SERVER__FORWARDED_ALLOW_IPS", "not-an-ip")
    with pytest.raises(ConfigError, match="not an IP address"):
        load_settings()


def test_an_unknown_section_in_the_environment_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISTILLSHIELD_LIMTIS__BACKEND", "redis")
    with pytest.raises(ConfigError, match="DISTILLSHIELD_LIMTIS__BACKEND: unknown section 'limtis'"):
        load_settings()
    r = cli("accounts", "list")
    assert r.returncode == 2 and "unknown section 'limtis'" in r.stderr and "Traceback" not in r.stderr


def test_a_bad_environment_value_is_blamed_on_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("server:\n  port: 9000\n")
    monkeypatch.setenv("DISTILLSHIELD_SERVER__PORT", "nope")
    with pytest.raises(ConfigError) as exc:
        load_settings(cfg)
    assert "in the environment" in str(exc.value) and "DISTILLSHIELD_SERVER__PORT" in str(exc.value)
    assert str(cfg) not in str(exc.value)


def test_reading_a_log_that_is_not_there_is_an_error_not_an_empty_log(tmp_path: Path) -> None:
    """`logs verify` in a folder without the gateway's log used to create an empty SQLite file and report
    "intact: 0 rows" (exit 0); `evidence` wrote a bundle of 0 requests."""
    for args in (("logs", "verify"), ("logs", "export", "--out", "t.jsonl"), ("evidence", "acct-x", "--out", "b")):
        r = cli(*args, cwd=tmp_path)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert "does not exist" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "distillshield.db").exists()
