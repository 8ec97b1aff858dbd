"""Many replicas, one brain (issue 11), on a real Redis and PostgreSQL: the audit event stream and the audit
worker (rows reach the log exactly once whatever is redelivered, entries of a dead worker are claimed by
another, a worker or a gateway killed with SIGKILL mid-load loses and duplicates nothing), and the loopback topology of
three gateways, an audit worker and a detector worker, whose verdicts on a hydra campaign sent round-robin
over the replicas are those of one process seeing the same traffic. Each test uses its own stream key."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import redis.asyncio as aioredis

from distillshield.contracts import Backlog
from distillshield.store import Store
from distillshield.workers.audit import AuditWorker
from distillshield.workers.stream import AUDIT_GROUP, DETECT_GROUP, AuditStream
from tests.conftest import REDIS_URL, logged_requests
from tests.fakes import FakeUpstream
from tests.test_audit_spool import logged_prompts, row

_url = urlsplit(REDIS_URL)


async def _until(cond: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not await cond():
        assert time.monotonic() < deadline, "not within the time limit"
        await asyncio.sleep(0.05)


async def test_rows_reach_the_log_once_however_often_they_are_delivered(tmp_path: Path, stream_key: str) -> None:
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'log.db'}")
    await store.init()
    stream = AuditStream(REDIS_URL, stream_key)
    rows = [row(i) for i in range(50)]
    await stream.append_audit(rows[:30])
    await stream.append_audit(rows[20:])  # rows 20-29 appended twice (a gateway replaying its spool)
    await store.append_audit([rows[5]])  # and one already in the log (a worker died after its commit)
    await stream.ensure_group(AUDIT_GROUP)
    dead = await stream.read(AUDIT_GROUP, "dead-worker", 10, 100)  # a worker takes ten entries and dies before its XACK
    assert len(dead) == 10
    worker = AuditWorker(store, stream, "w1", batch=7, block_ms=100, claim_idle_ms=300)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        await _until(lambda: _done(stream))
    finally:
        stop.set()
        await task
    got = await logged_requests(store)
    assert sorted(r["request_id"] for r in got) == sorted(r["request_id"] for r in rows)  # each exactly once
    assert (await store.verify_chain()).ok and await stream.backlog(AUDIT_GROUP) == 0
    assert await stream._redis.xlen(stream_key) == 0  # trimmed: the only group acknowledged everything
    await stream.close()
    await store.close()


async def test_the_stream_reports_each_group_s_backlog_and_none_when_redis_is_away(stream_key: str) -> None:
    stream = AuditStream(REDIS_URL, stream_key)
    try:
        assert await stream.backlogs() == {}  # nothing published yet
        await stream.ensure_group(AUDIT_GROUP)
        await stream.ensure_group(DETECT_GROUP)
        await stream.append_audit([row(i) for i in range(12)])
        taken = await stream.read(AUDIT_GROUP, "w1", 5, 100)
        await stream.ack(AUDIT_GROUP, [eid for eid, _r in taken[:3]])
        await asyncio.sleep(0.4)
        # audit writers: 2 delivered and pending + 7 not delivered; detectors: all 12 waiting, for 0.4 s or more
        got = await stream.backlogs()
        assert got is not None and {g: b.rows for g, b in got.items()} == {AUDIT_GROUP: 9, DETECT_GROUP: 12}
        assert all(b.oldest_s is not None and 0.4 <= b.oldest_s < 30 for b in got.values()), got
        assert await stream.backlog(AUDIT_GROUP) == 9
        rest = await stream.read(AUDIT_GROUP, "w1", 100, 100)
        await stream.ack(AUDIT_GROUP, [eid for eid, _r in taken[3:] + rest])
        got = await stream.backlogs()
        assert got is not None and got[AUDIT_GROUP] == Backlog(0, None) and got[DETECT_GROUP].rows == 12
    finally:
        await stream.close()
    away = AuditStream("redis://127.0.0.1:1/0", stream_key)
    try:
        assert await away.backlogs() is None
    finally:
        await away.close()


async def _done(stream: AuditStream) -> bool:
    return await stream.backlog(AUDIT_GROUP) == 0


def _worker(cfg: Path, env: dict[str, str], name: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "distillshield", "-c", str(cfg), "worker", "audit", "--name", name,
         "--claim-idle-s", "1", "--batch", "50"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip


async def test_a_worker_killed_mid_load_loses_and_duplicates_nothing(
    tmp_path: Path, stream_key: str, pg_database: str, gateway_factory: Any
) -> None:
    from distillshield.cli.serve import write_config

    settings = {"store__url": pg_database, "audit__sink": "redis", "audit__stream_key": stream_key,
                "limits__redis_url": REDIS_URL}  # fmt: skip
    gw1 = gateway_factory({"upstream": FakeUpstream()}, **settings)
    gw2 = gateway_factory({"upstream": FakeUpstream()}, **settings)
    cfg = tmp_path / "worker.yaml"
    write_config(cfg, store_url=pg_database)
    env = {**os.environ, "DISTILLSHIELD_AUDIT__SINK": "redis", "DISTILLSHIELD_AUDIT__STREAM_KEY": stream_key,
           "DISTILLSHIELD_LIMITS__REDIS_URL": REDIS_URL}  # fmt: skip
    first = _worker(cfg, env, "audit-1")
    second: subprocess.Popen[bytes] | None = None
    key = gw1.create_key("fleet-1")
    answered: list[str] = []
    stop = asyncio.Event()
    try:

        async def client(c: int) -> None:
            i = 0
            async with httpx.AsyncClient(timeout=30) as http:
                while not stop.is_set():
                    q = f"c{c}-{i}"
                    gw = (gw1, gw2)[i % 2]  # round-robin over the replicas
                    i += 1
                    body = {"model": "fake-model", "messages": [{"role": "user", "content": q}]}
                    r = await http.post(f"{gw.base}/v1/chat/completions", json=body,
                                        headers={"authorization": f"Bearer {key}"})  # fmt: skip
                    if r.status_code == 200:
                        answered.append(q)

        tasks = [asyncio.create_task(client(c)) for c in range(6)]
        await asyncio.sleep(2.5)
        first.send_signal(signal.SIGKILL)  # mid-load: whatever it read and did not acknowledge stays pending
        first.communicate(timeout=30)
        await asyncio.sleep(1.0)
        second = _worker(cfg, env, "audit-2")  # another worker claims the dead one's entries
        await asyncio.sleep(2.0)
        stop.set()
        await asyncio.gather(*tasks)
        stream = AuditStream(REDIS_URL, stream_key)
        await _until(lambda: _done(stream), timeout=60)
        await stream.close()
    finally:
        stop.set()
        for p in (first, second):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
                out = p.communicate(timeout=30)[0].decode()
                assert p.returncode == 0, out
    assert len(answered) >= 50
    contents = await logged_prompts(pg_database, "fleet-1")
    assert len(contents) == len(set(contents))  # no duplicates
    assert set(answered) <= set(contents)  # every answered request, from both replicas


def _settings_env(settings: dict[str, str]) -> dict[str, str]:
    return {**os.environ, **{f"DISTILLSHIELD_{k.upper()}": v for k, v in settings.items() if k != "store__url"}}


async def test_three_replicas_and_the_workers_reach_the_verdicts_of_one_process(
    tmp_path: Path, stream_key: str, pg_database: str, gateway_factory: Any
) -> None:
    from distillshield.cli.analyze import DEMO_SCENARIO
    from distillshield.cli.serve import write_config
    from distillshield.detect.online import DetectionExtension
    from distillshield.gateway.risk import LocalRiskBoard
    from distillshield.gateway.risk.redis import RedisRiskBoard
    from distillshield.simulate import engine, scenario
    from distillshield.workers.stream import DETECT_GROUP

    ns = stream_key.replace(":", "-")
    fleet = {"audit__sink": "redis", "audit__stream_key": stream_key, "limits__redis_url": REDIS_URL,
             "risk__backend": "redis", "risk__namespace": ns}  # fmt: skip
    # Gateways: no detection of their own (the worker's), policy in shadow (the traffic is the same either way).
    gws = [
        gateway_factory(
            {"upstream": FakeUpstream()},
            store__url=pg_database,
            detection__enabled="false",
            policy__mode="shadow",
            **fleet,
        )  # fmt: skip
        for _ in range(3)
    ]
    cfg = tmp_path / "worker.yaml"
    write_config(cfg, store_url=pg_database)
    env = _settings_env(fleet)
    procs = [_worker(cfg, env, "audit-1")]
    procs.append(subprocess.Popen([sys.executable, "-m", "distillshield", "-c", str(cfg), "worker", "detect",
                                   "--name", "detect-1"], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT))  # fmt: skip
    sc = scenario.build(DEMO_SCENARIO, "the demo scenario", 3)
    records = [r for _, r in zip(range(300), engine.iter_records(sc, 3), strict=False)]
    keys = {a: gws[0].create_key(a) for a in sorted({r["account_id"] for r in records})}
    try:
        sem = asyncio.Semaphore(4)

        async def send(http: httpx.AsyncClient, i: int, rec: dict[str, Any]) -> int:
            body = {**rec["request"], "model": "fake-model", "max_tokens": 8, "stream": False}
            headers = {"authorization": f"Bearer {keys[rec['account_id']]}", "user-agent": rec.get("user_agent") or ""}
            async with sem:
                r = await http.post(f"{gws[i % 3].base}{rec['endpoint']}", json=body, headers=headers)
            return r.status_code

        async with httpx.AsyncClient(timeout=30) as http:
            statuses = await asyncio.gather(*[send(http, i, r) for i, r in enumerate(records)])
        assert statuses.count(200) == len(records), statuses
        stream = AuditStream(REDIS_URL, stream_key)
        await _until(lambda: _done(stream), timeout=60)

        async def detected() -> bool:
            return await stream.backlog(DETECT_GROUP) == 0

        await _until(detected, timeout=60)
        await stream.close()
        shared = RedisRiskBoard(REDIS_URL, namespace=ns)
        await shared.start()
        try:
            # the worker rescores everyone once the stream is idle; wait until the board holds every account
            # and stops changing
            last: dict[str, tuple[str, str | None]] = {}
            stable_since = time.monotonic()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                now = {r.account_id: (r.verdict, r.cluster_id) for r in shared.all()}
                if now != last:
                    last, stable_since = now, time.monotonic()
                elif len(now) == len(keys) and time.monotonic() - stable_since > 4.0:
                    break
                await asyncio.sleep(0.2)
        finally:
            await shared.stop(flush_timeout_s=0.1)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
            out = p.communicate(timeout=60)[0].decode()
            assert p.returncode == 0, out

    # The same traffic through one process: the audit rows, in the log's order, into one online engine.
    store = Store(pg_database)
    try:
        rows = await logged_requests(store)
        assert (await store.verify_chain()).ok
    finally:
        await store.close()
    assert len(rows) == len(records) and len({r["request_id"] for r in rows}) == len(rows)
    one = DetectionExtension(interval_s=3600)
    board = LocalRiskBoard()
    await one.start_detached(None, board)
    await _until(lambda: _loaded(one), timeout=120)
    for r in rows:
        one.observe(r)
    await one.flush()
    await one.stop()
    reference = {r.account_id: (r.verdict, r.cluster_id) for r in board.all()}

    def flagged(v: dict[str, tuple[str, str | None]]) -> set[str]:
        return {a for a, (verdict, _c) in v.items() if verdict != "benign"}

    def clusters(v: dict[str, tuple[str, str | None]]) -> set[frozenset[str]]:
        groups: dict[str, set[str]] = {}
        for a, (_verdict, c) in v.items():
            if c:
                groups.setdefault(c, set()).add(a)
        return {frozenset(g) for g in groups.values()}

    assert flagged(reference), reference  # the campaign is found at all (the comparison is not vacuous)
    assert flagged(last) == flagged(reference)
    assert clusters(last) == clusters(reference)
    assert {a: v for a, (v, _c) in last.items()} == {a: v for a, (v, _c) in reference.items()}


async def _loaded(ext: Any) -> bool:
    return ext.engine is not None and ext.replayed is not None


REPO = Path(__file__).resolve().parent.parent


def test_the_compose_file_runs_real_commands_on_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """deploy/compose.yaml cannot be started here (no container runtime): check what can be checked without
    one. Every service's command is a `distillshield` command that exists, and the config and environment the
    containers get load as settings (a misspelt key would stop the container at start)."""
    import yaml
    from typer.testing import CliRunner

    from distillshield.cli import app
    from distillshield.config import load_settings

    compose = yaml.safe_load((REPO / "deploy" / "compose.yaml").read_text())
    ds = {name: svc for name, svc in compose["services"].items() if "build" in svc}
    assert sorted(ds) == [
        "gateway-1", "gateway-2", "gateway-3", "worker-audit", "worker-detect", "worker-extract-0", "worker-extract-1"
    ]  # fmt: skip
    runner = CliRunner()
    for name, svc in ds.items():
        result = runner.invoke(app, [*svc["command"], "--help"])
        assert result.exit_code == 0, (name, result.output)
    for key, value in ds["gateway-1"]["environment"].items():
        monkeypatch.setenv(key, str(value).replace("${MODEL_URL:?set MODEL_URL}", "http://model:8000/v1")
                           .replace("${ADMIN_TOKEN_SHA256:-}", "0" * 64)
                           .replace("${WATERMARK_SECRET:?set WATERMARK_SECRET (openssl rand -hex 32)}", "ab" * 32)
                           )  # fmt: skip
    s = load_settings(str(REPO / "deploy" / "fleet.yaml"))
    # every container derives its watermark keys from the one secret in the environment, not a file of its own
    assert s.watermark.secret is not None and s.watermark.secret.get_secret_value() == "ab" * 32
    assert (s.audit.sink, s.risk.backend, s.limits.backend, s.detection.enabled) == ("redis", "redis", "redis", False)
    assert s.store.url.startswith("postgresql+asyncpg://") and s.upstream.http.base_url == "http://model:8000/v1"


async def test_the_local_topology_serves_shares_verdicts_and_stops_cleanly(
    tmp_path: Path, stream_key: str, pg_database: str
) -> None:
    """deploy/fleet.py: three gateway processes, an audit worker and a detector worker on PostgreSQL and Redis.
    Requests round-robin over the replicas are all in the log once; a report loaded on replica 1 makes
    replica 3 challenge the account within 1 s; SIGTERM stops everything with exit status 0."""
    import shutil

    import yaml

    from distillshield.gateway.admin import admin_token_digest
    from tests.conftest import free_port
    from tests.fakes import MockOpenAIServer

    up = MockOpenAIServer(free_port()).start()
    cfg = yaml.safe_load((REPO / "deploy" / "fleet.yaml").read_text())
    token = "dsadmin-" + uuid.uuid4().hex
    cfg["admin"]["token_sha256"] = admin_token_digest(token)
    cfg["store"]["url"] = pg_database
    cfg["upstream"]["http"]["base_url"] = up.base_url
    cfg["limits"]["redis_url"] = REDIS_URL
    cfg["audit"]["stream_key"] = stream_key
    cfg["risk"]["namespace"] = stream_key.replace(":", "-")
    secret = tmp_path / "watermark.secret"
    cfg["watermark"]["secret_file"] = str(secret)
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(cfg))
    ports = [free_port() for _ in range(3)]
    fleet = subprocess.Popen(
        [sys.executable, str(REPO / "deploy" / "fleet.py"), "-c", str(path), "--ports", ",".join(map(str, ports)),
         "--log-dir", str(tmp_path / "logs")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    out: list[str] = []
    try:
        assert fleet.stdout is not None
        for line in fleet.stdout:
            out.append(line)
            if line.startswith(("fleet ready", "fleet failed")):
                break
        assert out and out[-1].startswith("fleet ready"), "".join(out)
        admin = {"authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(timeout=30) as http:
            g = [f"http://127.0.0.1:{p}" for p in ports]
            assert (await http.post(f"{g[0]}/admin/accounts", json={"id": "fleet-a"}, headers=admin)).status_code == 201
            key = (await http.post(f"{g[0]}/admin/keys", json={"account_id": "fleet-a"}, headers=admin)).json()["key"]
            auth = {"authorization": f"Bearer {key}"}
            sent = []
            for i in range(60):
                body = {"model": "mock-model", "messages": [{"role": "user", "content": f"q{i}"}]}
                r = await http.post(f"{g[i % 3]}/v1/chat/completions", json=body, headers=auth)
                assert r.status_code == 200, r.text
                sent.append(f"q{i}")
            report = {"accounts": [{"account_id": "fleet-a", "risk": 0.97, "verdict": "extraction"}]}
            assert (await http.post(f"{g[0]}/admin/risk", json=report, headers=admin)).status_code == 200
            t0 = time.perf_counter()
            while True:
                body = {"model": "mock-model", "messages": [{"role": "user", "content": "again"}]}
                r = await http.post(f"{g[2]}/v1/chat/completions", json=body, headers=auth)
                if r.status_code == 403:
                    break
                assert r.status_code == 200, r.text
                sent.append("again")  # served before the verdict arrived: logged like any answered request
                assert time.perf_counter() - t0 < 1.0, "replica 3 did not apply replica 1's verdict within 1 s"
                await asyncio.sleep(0.01)
        stream = AuditStream(REDIS_URL, stream_key)
        await _until(lambda: _done(stream), timeout=60)
        await stream.close()
    finally:
        fleet.send_signal(signal.SIGTERM)
        rest = fleet.communicate(timeout=120)[0]
        up.stop()
    assert fleet.returncode == 0, "".join(out) + rest
    assert "fleet stopped" in rest
    contents = await logged_prompts(pg_database, "fleet-a")
    assert sorted(contents) == sorted(sent)  # each answered one exactly once (the challenged requests are 403s)
    # the replicas share one watermark secret: the first gateway created the file, the others read it
    assert secret.stat().st_mode & 0o777 == 0o600 and len(secret.read_text().strip()) == 64
    assert not list(tmp_path.glob(".watermark.secret.*.tmp"))  # no temporary file of a racing replica left behind
    shutil.rmtree(tmp_path / "logs", ignore_errors=True)


async def test_a_gateway_whose_redis_is_away_spools_and_replays_into_the_stream(
    tmp_path: Path, stream_key: str, caplog: pytest.LogCaptureFixture
) -> None:
    """audit.sink: redis with Redis unreachable: answers wait for the local spool (durable), the outage is
    logged once, and the spooled rows reach the stream, in order, when Redis is back."""
    import logging

    from benchmarks._faults import TcpProxy
    from distillshield.store.spool import Spool
    from distillshield.store.writer import AuditWriter

    caplog.set_level(logging.INFO, logger="distillshield")
    proxy = TcpProxy(_url.port or 6379, _url.hostname or "127.0.0.1")
    via_proxy = f"redis://127.0.0.1:{proxy.port}/{_url.path.lstrip('/') or '0'}"
    stream = AuditStream(via_proxy, stream_key)
    writer = AuditWriter(stream, batch_size=8, flush_interval_s=0.01, spool=Spool(tmp_path / "spool"))
    await writer.start()
    rows = [row(i) for i in range(40)]
    try:
        for a in [writer.submit(r) for r in rows[:10]]:
            assert a is not None
            await asyncio.wait_for(a, 5)
        proxy.cut()
        acks = [writer.submit(r) for r in rows[10:30]]
        await asyncio.wait_for(asyncio.gather(*acks), 10)  # durable in the spool while Redis is away
        assert writer.store_down and writer.spool_pending > 0 and writer.accepting
        proxy.restore()
        acks = [writer.submit(r) for r in rows[30:]]
        await asyncio.wait_for(asyncio.gather(*acks), 20)
        deadline = time.monotonic() + 20
        while writer.spool_pending and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert writer.spool_pending == 0 and not writer.store_down
    finally:
        await writer.stop()
        await stream.close()
        proxy.cut()
    direct = AuditStream(REDIS_URL, stream_key)
    await direct.ensure_group(AUDIT_GROUP)
    got = await direct.read(AUDIT_GROUP, "check", 1000, 100)
    await direct.close()
    ids = [r["request_id"] for _e, r in got]
    assert ids == [r["request_id"] for r in rows]  # every row once, in the order served
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert 1 <= len(errors) <= 2, errors  # the outage is logged (by the writer, and the drain once), not per retry


async def test_a_gateway_killed_mid_load_loses_and_duplicates_nothing(
    tmp_path: Path, stream_key: str, pg_database: str
) -> None:
    """Two gateway processes and an audit worker on the fleet config: SIGKILL one gateway under load. Every
    request that got a 200 from either (the killed one included, up to its last answer) is in the log exactly
    once, and the hash chain verifies: an answer is sent only once its row is in the stream."""
    import yaml

    from distillshield.gateway.admin import admin_token_digest
    from tests.conftest import free_port
    from tests.fakes import MockOpenAIServer

    up = MockOpenAIServer(free_port()).start()
    cfg = yaml.safe_load((REPO / "deploy" / "fleet.yaml").read_text())
    token = "dsadmin-" + uuid.uuid4().hex
    cfg["admin"]["token_sha256"] = admin_token_digest(token)
    cfg["store"]["url"] = pg_database
    cfg["upstream"]["http"]["base_url"] = up.base_url
    cfg["limits"]["redis_url"] = REDIS_URL
    cfg["limits"]["key"] = cfg["limits"]["account"] = {"rpm": 100_000, "tpm": 100_000_000, "concurrent": 64}
    cfg["audit"]["stream_key"] = stream_key
    cfg["risk"]["namespace"] = stream_key.replace(":", "-")
    secret = tmp_path / "watermark.secret"
    cfg["watermark"]["secret_file"] = str(secret)
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(cfg))
    ports = [free_port() for _ in range(2)]

    def start(*args: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "distillshield", "-c", str(path), *args],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip

    worker = start("worker", "audit", "--name", "audit-1")
    gws = [start("serve", "--port", str(p), "--log-level", "warning") for p in ports]
    base = [f"http://127.0.0.1:{p}" for p in ports]
    answered: list[str] = []
    others: list[int] = []
    stop = asyncio.Event()
    killed = asyncio.Event()
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            for b in base:
                await _until(lambda b=b: _ready(http, b), timeout=60)
            admin = {"authorization": f"Bearer {token}"}
            made = await http.post(f"{base[0]}/admin/accounts", json={"id": "fleet-k"}, headers=admin)
            assert made.status_code == 201, made.text
            key = (await http.post(f"{base[0]}/admin/keys", json={"account_id": "fleet-k"}, headers=admin)).json()
            key = key["key"]

            async def client(c: int) -> None:
                i = 0
                while not stop.is_set():
                    q = f"k{c}-{i}"
                    target = base[i % 2] if not killed.is_set() else base[1]
                    i += 1
                    body = {"model": "mock-model", "messages": [{"role": "user", "content": q}]}
                    try:
                        r = await http.post(f"{target}/v1/chat/completions", json=body,
                                            headers={"authorization": f"Bearer {key}"})  # fmt: skip
                    except httpx.TransportError:
                        continue  # the killed replica: the client retries elsewhere, as a load balancer would
                    if r.status_code == 200:
                        answered.append(q)
                    else:
                        others.append(r.status_code)

            tasks = [asyncio.create_task(client(c)) for c in range(6)]
            await asyncio.sleep(2.5)
            before = len(answered)
            gws[0].send_signal(signal.SIGKILL)
            gws[0].communicate(timeout=30)
            killed.set()
            await asyncio.sleep(2.0)
            stop.set()
            await asyncio.gather(*tasks)
        stream = AuditStream(REDIS_URL, stream_key)
        await _until(lambda: _done(stream), timeout=60)
        await stream.close()
    finally:
        stop.set()
        up.stop()
        ends = []
        for p in (gws[1], worker):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
            ends.append((p.communicate(timeout=60)[0].decode(), p.returncode))
    for out, code in ends:
        assert code in (0, -signal.SIGTERM), out  # the survivors stop cleanly (uvicorn re-raises SIGTERM)
    assert before >= 20 and len(answered) > before, others[:5]  # load ran on both, then on the survivor
    contents = await logged_prompts(pg_database, "fleet-k")
    assert len(contents) == len(set(contents))  # no duplicates
    assert set(answered) <= set(contents)  # every answered request, the killed replica's included
    store = Store(pg_database)
    try:
        assert (await store.verify_chain()).ok
    finally:
        await store.close()


async def _ready(http: httpx.AsyncClient, base: str) -> bool:
    try:
        return (await http.get(f"{base}/readyz")).status_code == 200
    except httpx.TransportError:
        return False


async def test_the_console_overview_shows_each_groups_backlog_and_lag(
    stream_key: str, pg_database: str, gateway_factory: Any
) -> None:
    from tests.console_helpers import login

    stream = AuditStream(REDIS_URL, stream_key)
    try:
        await stream.ensure_group(AUDIT_GROUP)  # a group with no worker reading: everything waits
        gw = gateway_factory({"upstream": FakeUpstream()}, store__url=pg_database, audit__sink="redis",
                             audit__stream_key=stream_key)  # fmt: skip
        key = gw.create_key("lagging")
        body = {"model": "fake-model", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}
        for _ in range(3):
            r = await asyncio.to_thread(httpx.post, f"{gw.base}/v1/chat/completions", json=body,
                                        headers={"authorization": f"Bearer {key}"})  # fmt: skip
            assert r.status_code == 200
        await asyncio.to_thread(gw.flush_audit)
        await asyncio.sleep(0.5)
        client, _ = await asyncio.to_thread(login, gw)
        page = (await asyncio.to_thread(client.get, "/console/")).text
        waiting = int(page.split('id="backlog-audit-writers">')[1].split("<")[0])
        assert waiting >= 3, page
        lag = page.split('id="lag-audit-writers">')[1].split("<")[0]
        assert lag.startswith("oldest waiting ") and float(lag.split()[2]) >= 0.5, lag
    finally:
        await stream.close()


async def test_one_detector_lease_at_a_time_and_a_dead_holders_lapses(stream_key: str) -> None:
    from distillshield.workers.stream import Lease

    stream = AuditStream(REDIS_URL, stream_key)
    a, b = Lease(stream, "detector", "detect-a", 600), Lease(stream, "detector", "detect-b", 600)
    never = asyncio.Event()

    async def renew_a() -> None:  # what a live worker does
        while True:
            await asyncio.sleep(0.2)
            await a.hold()

    try:
        assert await a.acquire(never) is None
        renewing = asyncio.create_task(renew_a())
        t0 = time.monotonic()
        assert await b.acquire(never) == a.token  # held and renewed: refused after one lease period
        assert time.monotonic() - t0 >= 0.6
        # B waits while A renews, and gets it once A lets go.
        waiting = asyncio.create_task(b.acquire(never))
        await asyncio.sleep(0.3)
        renewing.cancel()
        await a.release()
        assert await waiting is None
        assert await a.hold() == b.token  # A has lost it: a worker in that state stops
        # B is killed (no release, no renewal): its lease lapses and A takes over.
        await asyncio.sleep(0.7)
        assert await a.acquire(never) is None
    finally:
        await a.release()
        await b.release()
        await stream.close()


async def test_a_detector_lease_waits_for_redis_without_a_traceback(
    stream_key: str, caplog: pytest.LogCaptureFixture
) -> None:
    from distillshield.workers.stream import Lease

    dead = AuditStream("redis://127.0.0.1:1/0", stream_key)  # nothing listens on port 1
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(2.5, stop.set)
    with caplog.at_level("WARNING"):
        assert await Lease(dead, "detector", "detect-a", 600).acquire(stop) is None  # stopped, not crashed
    said = [r for r in caplog.records if "taking the lease" in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in caplog.records]  # once per outage, though retried
    await dead.close()


async def test_a_second_detector_worker_refuses_to_start_while_the_first_runs(tmp_path: Path, stream_key: str) -> None:
    """`worker detect` twice on one stream: detection is not sharded, so the second exits with one line."""
    from distillshield.cli.serve import write_config

    cfg = tmp_path / "worker.yaml"
    write_config(cfg, store_url=f"sqlite+aiosqlite:///{tmp_path / 'log.db'}")
    env = _settings_env({"audit__sink": "redis", "audit__stream_key": stream_key, "limits__redis_url": REDIS_URL,
                         "risk__backend": "redis", "risk__namespace": f"dstest:{uuid.uuid4().hex[:8]}"})  # fmt: skip

    def start(name: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "distillshield", "-c", str(cfg), "worker", "detect", "--name",
                                 name, "--lease-s", "1"], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)  # fmt: skip

    r = aioredis.from_url(REDIS_URL)
    first = start("detect-1")
    try:

        async def held() -> bool:
            return bool(await r.get(f"{stream_key}:detector"))

        await _until(held, timeout=60)
        second = start("detect-2")
        out, _ = second.communicate(timeout=60)
        text = out.decode()
        assert second.returncode == 2, text
        assert "another detector worker (detect-1/" in text and "one detection engine per deployment" in text
        assert "Traceback" not in text
        assert first.poll() is None  # the first one runs on
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=60)
        assert first.returncode == 0
        assert not await r.get(f"{stream_key}:detector")  # given back at a clean stop
        # A worker under the first one's name, started after it stopped, takes the lease at once.
        again = start("detect-1")
        await _until(held, timeout=60)
        again.send_signal(signal.SIGTERM)
        again.communicate(timeout=60)
        assert again.returncode == 0
    finally:
        if first.poll() is None:
            first.kill()
        await r.delete(f"{stream_key}:detector")
        await r.aclose()
