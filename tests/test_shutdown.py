"""SIGTERM drains: every request the gateway answered is in the audit log after a graceful stop."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import httpx

from distillshield.cli.serve import write_config
from distillshield.store import Store
from tests.conftest import free_port
from tests.fakes import MockOpenAIServer


async def test_sigterm_loses_no_accepted_request(tmp_path) -> None:
    up = MockOpenAIServer(free_port(), delay=0.3).start()
    port = free_port()
    db = tmp_path / "drain.db"
    cfg = tmp_path / "distillshield.yaml"
    token = write_config(
        cfg, store_url=f"sqlite+aiosqlite:///{db}", port=port, upstream_kind="http", upstream_url=up.base_url
    )
    env = {**os.environ, "DISTILLSHIELD_AUDIT__FLUSH_INTERVAL_MS": "3000"}  # rows wait in the queue
    proc = subprocess.Popen(
        [sys.executable, "-m", "distillshield", "-c", str(cfg), "serve", "--log-level", "warning"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        admin = {"authorization": f"Bearer {token}"}
        assert httpx.post(f"{base}/admin/accounts", json={"id": "drain"}, headers=admin).status_code == 201
        key = httpx.post(f"{base}/admin/keys", json={"account_id": "drain"}, headers=admin).json()["key"]

        async def one(client: httpx.AsyncClient, i: int) -> int | None:
            try:
                r = await client.post(
                    f"{base}/v1/chat/completions",
                    headers={"authorization": f"Bearer {key}"},
                    json={"model": "mock-model", "messages": [{"role": "user", "content": f"r{i}"}]},
                )
                return r.status_code
            except httpx.TransportError:
                return None  # refused: the server had stopped accepting

        async with httpx.AsyncClient(timeout=30) as client:
            tasks = [asyncio.create_task(one(client, i)) for i in range(30)]
            await asyncio.sleep(0.15)  # requests are in flight at the upstream now
            proc.send_signal(signal.SIGTERM)
            results = await asyncio.gather(*tasks)
        out, _ = proc.communicate(timeout=60)
        # uvicorn re-raises SIGTERM after its graceful shutdown, so the exit status is -SIGTERM
        assert proc.returncode in (0, -signal.SIGTERM), out.decode()
    finally:
        if proc.poll() is None:
            proc.kill()
        up.stop()
    answered = [r for r in results if r is not None]
    assert answered.count(200) >= 1
    store = Store(f"sqlite+aiosqlite:///{db}")
    try:
        rows = [r async for r in store.iter_audit()]
        report = await store.verify_chain()
    finally:
        await store.close()
    logged = {r["request"] for r in rows if r["account_id"] == "drain"}
    assert len(logged) == len(answered)
    assert report.ok


async def test_streams_cut_at_the_graceful_timeout_end_with_an_error_event_and_are_audited(gateway_factory) -> None:
    import threading

    from tests.fakes import FakeUpstream

    gw = gateway_factory({"upstream": FakeUpstream(words=400, chunk_delay=0.05)})
    key = gw.create_key("cut")
    calls = {
        "openai": ("/v1/chat/completions", {"authorization": f"Bearer {key}"}),
        "anthropic": ("/v1/messages", {"x-api-key": key}),
    }
    lines: dict[str, list[str]] = {name: [] for name in calls}

    def client(name: str) -> None:
        path, headers = calls[name]
        messages = [{"role": "user", "content": name}]
        body = {"model": "fake-model", "stream": True, "max_tokens": 400, "messages": messages}
        try:
            with httpx.stream("POST", f"{gw.base}{path}", headers=headers, json=body, timeout=30) as r:
                for line in r.iter_lines():
                    lines[name].append(line)
        except httpx.TransportError:
            pass  # what a bare cut would look like: the assertions below then fail

    threads = [threading.Thread(target=client, args=(name,)) for name in calls]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while min(len(v) for v in lines.values()) < 6 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    gw.server.config.timeout_graceful_shutdown = 1  # both streams have ~20 s to go: shutdown cuts them
    gw.stop()
    for t in threads:
        t.join(20)
    assert any('"code":"server_shutdown"' in ln for ln in lines["openai"]), lines["openai"][-3:]
    tail = [ln for ln in lines["anthropic"] if ln][-2:]  # the stream's last event
    assert tail[0] == "event: error" and "shut down before the stream finished" in tail[1], tail
    store = Store(gw.settings.store.url)
    try:
        rows = [r async for r in store.iter_audit() if r["account_id"] == "cut"]
    finally:
        await store.close()
    assert sorted(r["endpoint"] for r in rows) == ["/v1/chat/completions", "/v1/messages"]
    assert all(r["status"] == 503 and "shut down before the stream finished" in r["error"] for r in rows)
    assert all(r["completion_tokens"] > 0 for r in rows)  # what was streamed is counted
