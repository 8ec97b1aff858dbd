"""Shared fixtures: a running gateway (real uvicorn on a free loopback port), stores, services.

Tests that need PostgreSQL or Redis skip with a message when the service is absent, unless
DISTILLSHIELD_REQUIRE_SERVICES=1 (set by CI), which turns the skip into a failure.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import redis.asyncio as aioredis
import uvicorn

from distillshield.cli.serve import uvicorn_proxy_options
from distillshield.config import Settings, load_settings
from distillshield.extensions import standard_extensions
from distillshield.gateway.app import build_app
from distillshield.gateway.wire import uvicorn_http_options
from distillshield.store.tables import is_admin_endpoint

os.environ.pop("DISTILLSHIELD_CONFIG", None)  # tests never read a user's config
os.environ["COLUMNS"] = "250"  # Rich wraps CLI output at the terminal width; keep lines whole in tests
ADMIN_TOKEN = "test-admin-token"
PG_URL = os.environ.get("DISTILLSHIELD_TEST_PG", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("DISTILLSHIELD_TEST_REDIS", "redis://127.0.0.1:6379/0")


def require_service(name: str, host: str, port: int) -> None:
    """Skip (or fail under CI) when a TCP service is not listening."""
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return
    except OSError as exc:
        msg = f"{name} is not reachable at {host}:{port} ({exc})"
        if os.environ.get("DISTILLSHIELD_REQUIRE_SERVICES") == "1":
            pytest.fail(f"{msg}; DISTILLSHIELD_REQUIRE_SERVICES=1 forbids skipping")
        pytest.skip(f"{msg}; start it to run this test")


def pg_autocommit(sql: str) -> None:
    """Run one statement on the test PostgreSQL outside a transaction (CREATE/DROP DATABASE)."""
    import sqlalchemy as sa

    from distillshield.store import Store

    async def run() -> None:
        engine = Store(PG_URL).engine
        try:
            async with engine.connect() as conn:
                await (await conn.execution_options(isolation_level="AUTOCOMMIT")).execute(sa.text(sql))
        finally:
            await engine.dispose()

    asyncio.run(run())


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A PostgreSQL database of the test's own, dropped afterwards (the shared one is used by tests that
    drop tables)."""
    import uuid

    require_service("PostgreSQL", "127.0.0.1", 5432)
    db = f"ds_test_{uuid.uuid4().hex[:8]}"
    pg_autocommit(f"CREATE DATABASE {db}")
    try:
        yield PG_URL.rsplit("/", 1)[0] + f"/{db}"
    finally:
        pg_autocommit(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store URL for tests that run on both back ends: SQLite in a temporary file, or a PostgreSQL
    database of the test's own (pg_database), which no other test can drop tables from while it runs."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    return request.getfixturevalue("pg_database")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RunningGateway:
    base: str
    app: Any
    server: uvicorn.Server
    thread: threading.Thread
    settings: Settings

    @property
    def state(self) -> Any:
        return self.app.state.ds

    def admin(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return httpx.request(
            method,
            f"{self.base}/admin{path}",
            headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
            timeout=30,
            **kw,
        )

    def create_key(self, account: str, org: str = "default", **account_fields: Any) -> str:
        r = self.admin("GET", f"/accounts/{account}")
        if r.status_code == 404:
            r = self.admin("POST", "/accounts", json={"id": account, "org_id": org, **account_fields})
            assert r.status_code == 201, r.text
        r = self.admin("POST", "/keys", json={"account_id": account})
        assert r.status_code == 201, r.text
        return r.json()["key"]

    def run(self, coro: Any, timeout: float = 60) -> Any:
        """Run a coroutine on the server's own event loop (to inspect in-process state)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self.server.servers[0].get_loop()

    def flush_audit(self) -> dict[str, Any]:
        r = self.admin("POST", "/audit/flush")
        assert r.status_code == 200, r.text
        return r.json()

    def request_rows(self) -> list[dict[str, Any]]:
        """The audit log's request rows in seq order, after a flush: the administrative acts the test made
        (creating its key, store/admin_log.py) left out."""
        self.flush_audit()

        return self.run(logged_requests(self.state.store))

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(60)


async def logged_requests(store: Any) -> list[dict[str, Any]]:
    """A store's audit rows that are requests, in seq order: administrative acts (creating a test's key,
    store/admin_log.py) left out."""
    return [r async for r in store.iter_audit() if not is_admin_endpoint(r["endpoint"])]


def start_gateway(settings: Settings, **components: Any) -> RunningGateway:
    app = build_app(settings, standard_extensions(), **components)
    port = settings.server.port
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            loop="asyncio",
            **uvicorn_http_options(app),  # as `distillshield serve`: httptools, invalid HTTP audited
            timeout_graceful_shutdown=10,
            **uvicorn_proxy_options(settings),  # as `distillshield serve` runs it
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("gateway failed to start")
        if time.monotonic() > deadline:
            raise RuntimeError("gateway did not start within 120 s")
        time.sleep(0.02)
    return RunningGateway(f"http://127.0.0.1:{port}", app, server, thread, settings)


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    tmp_path.mkdir(parents=True, exist_ok=True)
    base = {
        "store__url": f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}",
        "admin__token": ADMIN_TOKEN,
        "admin__console_login_rpm": 1000,  # tests log in often; test_console.py checks the real limit
        "server__port": free_port(),
    }
    base.update(overrides)
    return load_settings(None, **base)


@pytest.fixture(scope="session")
def local_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    """One gateway on the embedded model, shared by the SDK tests (loading the model once)."""
    gw = start_gateway(make_settings(tmp_path_factory.mktemp("local")))
    yield gw
    gw.stop()


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[Any]:
    """Start gateways with given settings overrides and components; all are stopped after the test."""
    started: list[RunningGateway] = []

    def factory(components: dict[str, Any] | None = None, **overrides: Any) -> RunningGateway:
        gw = start_gateway(make_settings(tmp_path / f"gw{len(started)}", **overrides), **(components or {}))
        started.append(gw)
        return gw

    yield factory
    for gw in started:
        gw.stop()


@pytest.fixture
def fake_gateway(gateway_factory: Any) -> RunningGateway:
    """A gateway on a fast in-process fake upstream (model name 'fake-model')."""
    from tests.fakes import FakeUpstream

    return gateway_factory({"upstream": FakeUpstream()})


@pytest.fixture
async def stream_key() -> AsyncIterator[str]:
    """A fresh audit stream key on the test Redis (skipped without one); it and its derived keys are deleted after."""
    url = urlsplit(REDIS_URL)
    require_service("Redis", url.hostname or "127.0.0.1", url.port or 6379)
    key = f"dstest:audit:{uuid.uuid4().hex[:10]}"
    yield key
    r = aioredis.from_url(REDIS_URL)
    derived = [k async for k in r.scan_iter(match=f"{key}:*")]  # observation stream, leases, status
    await r.delete(key, *derived)
    await r.aclose()


@pytest.fixture
async def namespace() -> AsyncIterator[str]:
    """A fresh Redis key namespace for the shared state of a fleet (`risk.namespace`: the risk board, the standing
    blocks), skipped without a Redis; every key under it is deleted after."""
    url = urlsplit(REDIS_URL)
    require_service("Redis", url.hostname or "127.0.0.1", url.port or 6379)
    ns = f"dstest-{uuid.uuid4().hex[:10]}"
    yield ns
    r = aioredis.from_url(REDIS_URL)
    keys = [k async for k in r.scan_iter(match=f"{ns}:*")]
    if keys:
        await r.delete(*keys)
    await r.aclose()


@pytest.fixture
def redis_replicas(gateway_factory: Any, namespace: str) -> tuple[RunningGateway, RunningGateway]:
    """Two gateway replicas on the fake upstream and one accounts store, sharing their risk board and standing
    blocks under `namespace` on the test Redis (`risk.backend: redis`)."""
    from tests.fakes import FakeUpstream

    settings = {"risk__backend": "redis", "risk__namespace": namespace, "limits__redis_url": REDIS_URL}
    gw1 = gateway_factory({"upstream": FakeUpstream()}, **settings)
    gw2 = gateway_factory({"upstream": FakeUpstream()}, store__url=gw1.settings.store.url, **settings)
    return gw1, gw2


async def until(cond: Callable[[], bool], timeout: float = 5.0) -> float:
    """Seconds until `cond()` holds, polled every 2 ms; fails after `timeout`."""
    t0 = time.perf_counter()
    while not cond():
        if time.perf_counter() - t0 > timeout:
            raise AssertionError(f"not within {timeout} s")
        await asyncio.sleep(0.002)
    return time.perf_counter() - t0
