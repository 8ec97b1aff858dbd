"""Reliability soak (issue 10's targets): fuzzed requests, a fault matrix under load, and a tamper matrix, all
against real gateway processes (`python -m distillshield -c CFG serve`).

  fuzz     N random requests to /v1/chat/completions, /v1/completions and /v1/messages: valid bodies and bodies
           with wrong types, missing, extra, huge or deeply nested values, bodies of the wrong endpoint, broken
           JSON or UTF-8, bad or missing credentials and headers, malformed HTTP. Checks: no 5xx, and every
           answer that carries an x-request-id (it reached the API) has exactly one audit row; answers without
           one are counted by request class (those never reach the API, so no row is written).
  faults   per fault, 32 clients (--clients) send for --pre-s seconds, through the fault (--fault-s) and its
           recovery (--post-s): the store (PostgreSQL behind a TCP proxy) cut, Redis (the limiter) cut, the model
           server down or hanging, SIGTERM and SIGKILL (the gateway restarted at once), SIGKILL during a store
           outage, the spool on a full disk (a 64 KiB tmpfs). Records the statuses clients saw, whether every
           200 a client received whole is in the log exactly once (by a unique marker in each prompt), the time
           from the end of the fault to the first 200 and until /readyz is back to normal (every check true,
           spool empty).
  tamper   a 5,000-row log with a signed checkpoint every 1,000 rows, tampered in each way (edit, delete,
           reorder, truncate, head moved back, re-chain, checkpoint forged, key replaced), then checked with
           `distillshield logs verify` (the chain alone) and `logs verify --checkpoint --pubkey`.

    .venv/bin/python benchmarks/reliability_soak.py --fuzz 100000 --faults --tamper --json-out soak.json

Needs PostgreSQL (--pg-url; a scratch database is created and dropped) and, for the Redis fault, Redis (--redis-url,
db 12 by default, flushed before and after). The disk-full fault mounts a tmpfs (root); without it, it falls back
to audit.spool_max_mb: 1, a size bound standing in for a full disk, and says so.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # benchmarks._faults, and the fuzz bodies of tests/test_fuzz_api.py

import aiohttp  # noqa: E402
import orjson  # noqa: E402
import sqlalchemy as sa  # noqa: E402
import yaml  # noqa: E402

from benchmarks._faults import MODELS, TcpProxy, free_port, start_upstream  # noqa: E402
from distillshield.cli.serve import write_config  # noqa: E402
from distillshield.store import Store  # noqa: E402

MARKER = re.compile(r"soak-[a-z0-9]+-\d+")
HIGH = {"rpm": 10**8, "tpm": 10**12, "concurrent": 10**6, "tpd": None}


# -- a gateway on PostgreSQL, with its store, limiter and model server behind cuttable proxies ------------------


class Stack:
    """One scratch database, one mock model server, proxies in front of PostgreSQL, the model server and (when
    asked) Redis, and the gateway process that uses them."""

    def __init__(self, work: Path, args: argparse.Namespace, *, redis: bool = False,
                 spool_dir: Path | None = None, spool_max_mb: int | None = None) -> None:  # fmt: skip
        self.work = work
        self.args = args
        work.mkdir(parents=True, exist_ok=True)
        self.db = f"ds_soak_{uuid.uuid4().hex[:8]}"
        self.pg = TcpProxy(args.pg_port)
        base = args.pg_url.rsplit("/", 1)[0]
        self.url = base.replace(f"127.0.0.1:{args.pg_port}", f"127.0.0.1:{self.pg.port}") + f"/{self.db}"
        self.direct_url = f"{base}/{self.db}"
        self.up_port = free_port()
        self.up_proc = start_upstream(self.up_port)
        self.up = TcpProxy(self.up_port)
        self.redis = TcpProxy(args.redis_port) if redis else None
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.cfg = work / "distillshield.yaml"
        self.token = write_config(self.cfg, store_url=self.url, port=self.port, upstream_kind="http",
                                  upstream_url=f"http://127.0.0.1:{self.up.port}/v1")  # fmt: skip
        c = yaml.safe_load(self.cfg.read_text())
        c["limits"].update(key=dict(HIGH), account=dict(HIGH))  # the soak measures faults, not limits
        if self.redis is not None:
            c["limits"].update(backend="redis", redis_url=f"redis://127.0.0.1:{self.redis.port}/{args.redis_db}")
        c["upstream"]["http"].update(models=list(MODELS), connect_timeout_s=2, read_timeout_s=args.read_timeout_s)
        c["server"]["graceful_timeout_s"] = 10
        c["policy"]["mode"] = "shadow"  # detection and policy run and are audited; nothing refused on their account
        c["audit"]["spool_dir"] = self.cfg_spool = str(spool_dir or work / "spool")
        if spool_max_mb is not None:
            c["audit"]["spool_max_mb"] = spool_max_mb
        self.cfg.write_text(yaml.safe_dump(c, sort_keys=False))
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.key = ""

    async def create_db(self) -> None:
        engine = Store(self.args.pg_url).engine
        async with engine.connect() as conn:
            c = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await c.execute(sa.text(f"CREATE DATABASE {self.db}"))
        await engine.dispose()

    def start(self) -> None:
        self.starts += 1
        log = open(self.work / f"gateway-{self.starts}.log", "wb")  # noqa: SIM115 - the process owns it
        self.proc = subprocess.Popen([sys.executable, "-m", "distillshield", "-c", str(self.cfg), "serve",
                                      "--log-level", "warning"], stdout=log, stderr=subprocess.STDOUT)  # fmt: skip

    async def wait_up(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as s:
            while time.monotonic() < deadline:
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with s.get(f"{self.base}/healthz") as r:
                        if r.status == 200:
                            return
                await asyncio.sleep(0.05)
        raise RuntimeError(f"the gateway did not start; see {self.work}/gateway-{self.starts}.log")

    async def up_with_key(self) -> None:
        await self.create_db()
        self.start()
        await self.wait_up()
        admin = {"authorization": f"Bearer {self.token}"}
        async with aiohttp.ClientSession(base_url=self.base, headers=admin) as s:
            async with s.post("/admin/accounts", json={"id": "soak"}) as r:
                assert r.status == 201, await r.text()
            async with s.post("/admin/keys", json={"account_id": "soak"}) as r:
                self.key = (await r.json())["key"]

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait_exit(self, timeout: float = 60) -> int | None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return self.proc.poll()

    async def ready(self, session: aiohttp.ClientSession) -> dict[str, Any] | None:
        """/readyz's body when the gateway is back to normal (ready, every check true, no spooled batches)."""
        try:
            async with session.get(f"{self.base}/readyz", timeout=aiohttp.ClientTimeout(total=2)) as r:
                body = await r.json()
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
            return None
        normal = r.status == 200 and all(body["checks"].values()) and not body.get("audit_spool_batches")
        return body if normal else None

    async def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            if await self.wait_exit(60) is None:
                self.proc.kill()
                self.proc.wait()

    async def audit_rows(self) -> list[tuple[str, str | None, int]]:
        store = Store(self.direct_url)
        try:
            async with store.engine.connect() as conn:
                res = await conn.execute(sa.text("SELECT request_id, request, status FROM audit_log ORDER BY seq"))
                rows = [(r[0], r[1], int(r[2])) for r in res]
            self.chain_ok = (await store.verify_chain()).ok
        finally:
            await store.close()
        return rows

    def log_errors(self) -> list[str]:
        """Lines of the gateway's logs that report an error (tracebacks, unhandled exceptions)."""
        out = []
        for f in sorted(self.work.glob("gateway-*.log")):
            for line in f.read_text(errors="replace").splitlines():
                if re.search(r"\bERROR\b|Traceback|unhandled", line):
                    out.append(f"{f.name}: {line}")
        return out

    async def close(self) -> None:
        await self.stop()
        self.up_proc.terminate()
        self.up_proc.wait()
        for proxy in (self.pg, self.up, self.redis):
            if proxy is not None:
                proxy.cut()
        engine = Store(self.args.pg_url).engine
        async with engine.connect() as conn:
            c = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await c.execute(sa.text(f"DROP DATABASE IF EXISTS {self.db} WITH (FORCE)"))
        await engine.dispose()


# -- load: clients sending well-formed requests with a unique marker each -------------------------------------


@dataclass
class Sent:
    marker: str
    t0: float
    t1: float
    status: int | None  # None: the connection failed (refused, reset) or timed out
    whole: bool  # a 200 whose body arrived complete (a stream to its last event)
    stream: bool = False
    error: str = ""


def soak_request(rng: random.Random, marker: str) -> tuple[str, dict[str, Any]]:
    """A well-formed request of one of five kinds, its prompt carrying `marker`."""
    text = f"{marker} what is the capital of France?"
    kind = rng.random()
    msgs = [{"role": "user", "content": text}]
    if kind < 0.55:
        return "/v1/chat/completions", {"model": "mock-model", "messages": msgs, "max_tokens": 16}
    if kind < 0.70:
        return "/v1/chat/completions", {"model": "mock-model", "messages": msgs, "max_tokens": 16, "stream": True,
                                        "stream_options": {"include_usage": True}}  # fmt: skip
    if kind < 0.80:
        return "/v1/completions", {"model": "mock-model", "prompt": text, "max_tokens": 16}
    return "/v1/messages", {"model": "mock-model", "messages": msgs, "max_tokens": 16, "stream": kind >= 0.9}


class Load:
    """`clients` closed-loop clients sending until `stop` is set."""

    def __init__(self, stack: Stack, tag: str, clients: int, seed: int) -> None:
        self.stack, self.tag, self.clients = stack, tag, clients
        self.rng = random.Random(seed)
        self.sent: list[Sent] = []
        self.n = 0
        self.stop = asyncio.Event()

    async def _client(self, session: aiohttp.ClientSession) -> None:
        headers = {"authorization": f"Bearer {self.stack.key}", "x-api-key": self.stack.key}
        while not self.stop.is_set():
            self.n += 1
            marker = f"soak-{self.tag}-{self.n}"
            path, body = soak_request(self.rng, marker)
            t0 = time.monotonic()
            try:
                async with session.post(f"{self.stack.base}{path}", data=orjson.dumps(body), headers=headers) as r:
                    raw = await r.read()
                    whole = r.status == 200 and (
                        (b"[DONE]" in raw or b"message_stop" in raw) if body.get("stream") else b'"error"' not in raw
                    )
                    self.sent.append(Sent(marker, t0, time.monotonic(), r.status, whole, bool(body.get("stream"))))
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                self.sent.append(
                    Sent(marker, t0, time.monotonic(), None, False, bool(body.get("stream")), type(exc).__name__)
                )
                await asyncio.sleep(0.05)  # a gateway that is down: do not spin

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=30)
        conn = aiohttp.TCPConnector(limit=self.clients)
        async with aiohttp.ClientSession(timeout=timeout, connector=conn) as session:
            await asyncio.gather(*[self._client(session) for _ in range(self.clients)])


@dataclass
class Fault:
    name: str
    what: str
    inject: Callable[[Stack], Awaitable[None]]
    recover: Callable[[Stack], Awaitable[None]]
    stack_opts: dict[str, Any] = field(default_factory=dict)
    note: str = ""


async def _restart_after(stack: Stack, sig: int) -> None:
    stack.signal(sig)
    await stack.wait_exit(60)
    stack.start()


def fault_list(args: argparse.Namespace, work: Path) -> list[Fault]:
    async def nothing(_s: Stack) -> None:
        pass

    async def cut_pg(s: Stack) -> None:
        s.pg.cut()

    async def restore_pg(s: Stack) -> None:
        s.pg.restore()

    async def cut_redis(s: Stack) -> None:
        assert s.redis is not None
        s.redis.cut()

    async def restore_redis(s: Stack) -> None:
        assert s.redis is not None
        s.redis.restore()

    async def cut_up(s: Stack) -> None:
        s.up.cut()

    async def hang_up(s: Stack) -> None:
        s.up.hang()

    async def restore_up(s: Stack) -> None:
        s.up.restore()

    async def sigterm(s: Stack) -> None:
        s.signal(signal.SIGTERM)

    async def sigkill(s: Stack) -> None:
        s.signal(signal.SIGKILL)

    async def restart(s: Stack) -> None:
        await s.wait_exit(60)
        s.start()

    async def kill_in_outage(s: Stack) -> None:
        s.pg.cut()
        await asyncio.sleep(args.fault_s)
        s.signal(signal.SIGKILL)

    async def restore_and_restart(s: Stack) -> None:
        await s.wait_exit(60)
        s.pg.restore()
        s.start()

    spool = work / "tmpfs-spool"
    spool.mkdir(parents=True, exist_ok=True)
    mounted = mount_tmpfs(spool)
    if mounted:
        subprocess.run(["umount", str(spool)], capture_output=True)  # mounted again when the fault runs
    full = (
        Fault("spool disk full", "store cut, spool on a 64 KiB tmpfs", cut_pg, restore_pg, {"spool_dir": spool},
              "spool_dir on `mount -t tmpfs -o size=64k`")
        if mounted else
        Fault("spool disk full", "store cut, spool bounded to 1 MiB", cut_pg, restore_pg, {"spool_max_mb": 1},
              "no tmpfs (not root?): audit.spool_max_mb: 1 stands in for a full disk (the size bound)")
    )  # fmt: skip
    return [
        Fault("none", "baseline, no fault", nothing, nothing),
        Fault("store down", "PostgreSQL proxy cut (every connection dropped)", cut_pg, restore_pg),
        Fault("redis down", "Redis proxy cut (limits.backend: redis)", cut_redis, restore_redis, {"redis": True}),
        Fault("upstream down", "model server proxy cut", cut_up, restore_up),
        Fault(
            "upstream hanging",
            f"model server accepts, never answers (read_timeout_s {args.read_timeout_s:g})",
            hang_up,
            restore_up,
        ),  # fmt: skip
        Fault("SIGTERM", "SIGTERM under load, restarted once it exits", sigterm, restart),
        Fault("SIGKILL", "SIGKILL under load (database up), restarted at once", sigkill, restart),
        Fault(
            "SIGKILL in store outage",
            "store cut, SIGKILL after the outage time, store back, restarted",
            kill_in_outage,
            restore_and_restart,
        ),  # fmt: skip
        full,
    ]


def mount_tmpfs(where: Path) -> bool:
    return subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)],
                          capture_output=True).returncode == 0  # fmt: skip


async def run_fault(f: Fault, args: argparse.Namespace, work: Path, tick: Callable[[str], None]) -> dict[str, Any]:
    if "spool_dir" in f.stack_opts:
        mount_tmpfs(f.stack_opts["spool_dir"])
    stack = Stack(work / re.sub(r"\W+", "-", f.name.lower()), args, **f.stack_opts)
    try:
        await stack.up_with_key()
        if stack.redis is not None:
            import redis.asyncio as aioredis

            r = aioredis.Redis.from_url(f"redis://127.0.0.1:{args.redis_port}/{args.redis_db}")
            await r.flushdb()
            await r.aclose()
        load = Load(stack, re.sub(r"\W+", "", f.name.lower()) or "x", args.clients, args.seed)
        runner = asyncio.create_task(load.run())
        tick(f"{f.name}: load")
        await asyncio.sleep(args.pre_s)
        t_fault = time.monotonic()
        tick(f"{f.name}: fault")
        await f.inject(stack)
        if f.inject.__name__ not in ("sigterm", "sigkill", "kill_in_outage"):
            await asyncio.sleep(args.fault_s)
        await f.recover(stack)
        t_end = time.monotonic()
        tick(f"{f.name}: recovery")
        t_normal = None
        async with aiohttp.ClientSession() as s:
            deadline = t_end + args.recover_timeout_s
            while time.monotonic() < deadline:
                if await stack.ready(s) is not None:
                    t_normal = time.monotonic()
                    break
                await asyncio.sleep(0.05)
        rest = args.post_s - (time.monotonic() - t_end)
        if rest > 0:
            await asyncio.sleep(rest)
        load.stop.set()
        await runner
        # Rows still in the spool when the load stops are not lost: wait (no load) for it to drain first.
        t_stop, t_drained, backlog = time.monotonic(), None, 0
        async with aiohttp.ClientSession() as s:
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError, ValueError):
                async with s.get(f"{stack.base}/readyz") as r:
                    backlog = int((await r.json()).get("audit_spool_batches") or 0)
            while time.monotonic() < t_stop + args.drain_timeout_s:
                if await stack.ready(s) is not None:
                    t_drained = time.monotonic()
                    break
                await asyncio.sleep(0.1)
        await stack.stop()  # SIGTERM: drains the audit queue
        rows = await stack.audit_rows()
        out = summarize(f, stack, load.sent, rows, t_fault, t_end, t_normal)
        out["spool_batches_at_load_end"] = backlog
        out["drained_after_load_s"] = round(t_drained - t_stop, 2) if t_drained is not None else None
        out["spool_files_left"] = sum(1 for p in Path(stack.cfg_spool).glob("*") if p.is_file())
        return out
    finally:
        await stack.close()
        if "spool_dir" in f.stack_opts:
            subprocess.run(["umount", str(f.stack_opts["spool_dir"])], capture_output=True)


def summarize(f: Fault, stack: Stack, sent: list[Sent], rows: list[tuple[str, str | None, int]],
              t_fault: float, t_end: float, t_normal: float | None) -> dict[str, Any]:  # fmt: skip
    logged: Counter[str] = Counter()
    logged_status: dict[str, int] = {}
    for _rid, req, status in rows:
        m = MARKER.search(req or "")
        if m:
            logged[m.group()] += 1
            logged_status[m.group()] = status

    def label(s: Sent) -> str:
        return str(s.status) if s.status is not None else "conn error"

    during = Counter(label(s) for s in sent if s.t1 >= t_fault and s.t0 <= t_end)
    total = Counter(label(s) for s in sent)
    ok = [s for s in sent if s.whole]
    cut_200 = [s for s in sent if s.status == 200 and not s.whole]
    lost = [s.marker for s in ok if logged[s.marker] == 0]
    lost_streams = sum(1 for s in ok if logged[s.marker] == 0 and s.stream)
    twice = [m for m, n in logged.items() if n > 1]
    wrong = [s.marker for s in ok if logged[s.marker] == 1 and logged_status[s.marker] != 200]
    after = [s.t1 for s in sent if s.status == 200 and s.t0 >= t_end]
    first_200 = round(min(after) - t_end, 3) if after else None
    return {
        "fault": f.name, "what": f.what, "note": f.note, "requests": len(sent), "statuses": dict(total),
        "during_fault": dict(during), "served_200": len(ok), "cut_200_streams": len(cut_200),
        "lost_rows": len(lost), "lost_streams": lost_streams, "lost_markers": lost[:20], "duplicate_rows": len(twice),
        "row_status_mismatch": len(wrong), "rows": len(rows), "chain_ok": stack.chain_ok,
        "fault_s": round(t_end - t_fault, 3), "first_200_after_s": first_200,
        "normal_after_s": round(t_normal - t_end, 3) if t_normal is not None else None,
        "gateway_error_lines": stack.log_errors()[:20],
    }  # fmt: skip


# -- fuzz ------------------------------------------------------------------------------------------------------


@dataclass
class FuzzCase:
    kind: str  # the request class, e.g. "wrong-type" or "raw:bad-content-length"
    path: str
    body: bytes
    headers: dict[str, str]
    raw: bytes | None = None  # sent as is over a new connection (malformed HTTP)


def _delete(body: Any, place: tuple[Any, ...]) -> Any:
    body = orjson.loads(orjson.dumps(body))
    node = body
    for k in place[:-1]:
        node = node[k]
    del node[place[-1]]
    return body


def random_json(rng: random.Random, depth: int = 0) -> Any:
    r = rng.random()
    if depth > 3 or r < 0.5:
        return rng.choice([None, True, False, rng.randint(-(2**40), 2**40), rng.uniform(-1e9, 1e9),
                           "".join(chr(rng.randint(1, 0x2FFF)) for _ in range(rng.randint(0, 12)))])  # fmt: skip
    if r < 0.75:
        return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {f"k{rng.randint(0, 99)}": random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))}


HUGE_TOKENS = [b"1" + b"0" * 400, b"1e999", b"-1e999", b"NaN", b"Infinity", b"18446744073709551616",
               b"-9223372036854775809", b"1.0e-400", b"0.000000000000000000000000000001"]  # fmt: skip


def fuzz_case(rng: random.Random, key: str) -> FuzzCase:
    from tests.test_fuzz_api import SWEEP_BODIES, WRONG, _places, _replaced

    path, valid = rng.choice(list(SWEEP_BODIES.items()))
    body: Any = {**copy.deepcopy(valid), "stream": rng.random() < 0.3}
    auth = {"authorization": f"Bearer {key}"} if path != "/v1/messages" or rng.random() < 0.5 else {"x-api-key": key}
    headers = {"content-type": "application/json", **auth}
    r = rng.random()
    if r < 0.12:
        kind = "valid"
    elif r < 0.42:
        kind = "wrong-type"
        for _ in range(rng.randint(1, 3)):
            value = rng.choice(WRONG) if rng.random() < 0.6 else random_json(rng)
            body = _replaced(body, rng.choice(_places(body)), value)
    elif r < 0.52:
        kind = "missing"
        for _ in range(rng.randint(1, 2)):
            if places := _places(body):
                body = _delete(body, rng.choice(places))
    elif r < 0.57:
        kind = "extra"
        body[f"x_{rng.randint(0, 999)}"] = random_json(rng)
        if isinstance(body.get("messages"), list) and body["messages"]:
            body["messages"][0]["extra"] = random_json(rng)
    elif r < 0.60:
        kind = "other-endpoint-body"
        body = {**copy.deepcopy(rng.choice(list(SWEEP_BODIES.values()))), "stream": rng.random() < 0.3}
    elif r < 0.68:
        kind, raw = huge(rng, body)
        return FuzzCase(kind, path, raw, headers)
    elif r < 0.80:
        kind, raw = bad_json(rng, body)
        return FuzzCase(kind, path, raw, headers)
    elif r < 0.92:
        kind, headers = bad_headers(rng, key, headers)
    elif r < 0.99:
        return raw_http(rng, path, body, key)
    else:
        kind = "model-name"
        body["model"] = rng.choice(["", "x" * 300, "fake-model ", "FAKE-MODEL", "mock-model\u0000", "../etc"])
    return FuzzCase(kind, path, orjson.dumps(body), headers)


def huge(rng: random.Random, body: dict[str, Any]) -> tuple[str, bytes]:
    r = rng.random()
    if r < 0.25:
        place = rng.choice(_places_of(body))
        raw = orjson.dumps(_replace_at(body, place, "__HUGE__"))
        return "huge-number", raw.replace(b'"__HUGE__"', rng.choice(HUGE_TOKENS))
    if r < 0.45:
        n = rng.choice([65, 66, 200, 1000, 5000, 100_000])
        nested = b"[" * n + b"]" * n if rng.random() < 0.5 else b'{"a":' * n + b"1" + b"}" * n
        raw = orjson.dumps(_replace_at(body, rng.choice(_places_of(body)), "__HUGE__"))
        return f"nested-{n}", raw.replace(b'"__HUGE__"', nested)
    if r < 0.6:
        text = rng.choice(["x", "é", "\U0001f600", "\u0000", " "]) * rng.choice([10_000, 100_000, 300_000])
        return "long-string", orjson.dumps(_replace_at(body, rng.choice(_places_of(body)), text))
    if r < 0.75:
        n = rng.choice([1000, 20_000])
        msgs = [{"role": rng.choice(["user", "assistant"]), "content": "hi"} for _ in range(n)]
        return "many-messages", orjson.dumps({**body, "messages": msgs})
    if r < 0.85:
        return "many-keys", orjson.dumps({**body, **{f"k{i}": i for i in range(rng.choice([1000, 30_000]))}})
    if r < 0.97:
        field_ = rng.choice(["max_tokens", "n", "top_logprobs", "logprobs", "top_k", "temperature"])
        return "extreme-value", orjson.dumps({**body, field_: rng.choice([2**62, -(2**62), 0, -1, 1e308, -1e-308])})
    return "oversize-body", orjson.dumps({**body, "pad": "x" * (1 << 20)})  # over server.max_body_bytes: 413


def _places_of(body: Any) -> list[tuple[Any, ...]]:
    from tests.test_fuzz_api import _places

    return _places(body) or [("model",)]


def _replace_at(body: Any, place: tuple[Any, ...], value: Any) -> Any:
    from tests.test_fuzz_api import _replaced

    return _replaced(body, place, value)


def bad_json(rng: random.Random, body: dict[str, Any]) -> tuple[str, bytes]:
    good = orjson.dumps(body)
    choices: list[tuple[str, bytes]] = [
        ("empty", b""), ("truncated", good[: rng.randint(1, max(1, len(good) - 1))]), ("trailing", good + b"}x"),
        ("invalid-utf8", good.replace(b'"hi"', b'"h\xff\xfei"', 1) if b'"hi"' in good else b"\xff" + good),
        ("array", b"[" + good + b"]"), ("string", b'"hello"'), ("number", b"42"), ("null", b"null"),
        ("bom", b"\xef\xbb\xbf" + good), ("lone-surrogate", good.replace(b'"hi"', b'"\\ud800"', 1)),
        ("nul-char", good.replace(b'"hi"', b'"h\\u0000i"', 1)), ("duplicate-keys", b'{"model": 1, ' + good[1:]),
        ("single-quotes", good.replace(b'"', b"'")), ("comment", b"/* c */" + good),
        ("utf16", good.decode().encode("utf-16")),
        ("whitespace", b" \n\t " + good + b" \n"), ("nan", good.replace(b"0.5", b"NaN", 1)),
    ]  # fmt: skip
    name, raw = rng.choice(choices)
    return f"bad-json:{name}", raw


def bad_headers(rng: random.Random, key: str, headers: dict[str, str]) -> tuple[str, dict[str, str]]:
    ct = {"content-type": "application/json"}
    choices: list[tuple[str, dict[str, str]]] = [
        ("no-auth", ct), ("wrong-key", {**ct, "authorization": "Bearer ds-kdeadbeef-0000"}),
        ("empty-bearer", {**ct, "authorization": "Bearer "}),
        ("basic-auth", {**ct, "authorization": "Basic dXNlcjpwYXNz"}),
        ("key-plus-junk", {**ct, "authorization": f"Bearer {key}x"}),
        ("lowercase-scheme", {**ct, "authorization": f"bearer {key}"}),
        ("conflicting-keys", {**ct, "authorization": "Bearer nope", "x-api-key": key}),
        ("huge-auth", {**ct, "authorization": "Bearer " + "a" * 16_000}),
        ("text-plain", {**headers, "content-type": "text/plain"}),
        ("no-content-type", {k: v for k, v in headers.items() if k != "content-type"}),
        ("bogus-gzip", {**headers, "content-encoding": "gzip"}),
        ("charset-latin1", {**headers, "content-type": "application/json; charset=latin-1"}),
        ("forwarded-for", {**headers, "x-forwarded-for": "1.2.3.4, not-an-ip, ::1"}),
        ("many-headers", {**headers, **{f"x-h{i}": "v" * 50 for i in range(80)}}),
        ("anthropic-version", {**headers, "anthropic-version": "1999-01-01", "anthropic-beta": "x" * 500}),
    ]  # fmt: skip
    name, h = rng.choice(choices)
    return f"bad-header:{name}", h


def raw_http(rng: random.Random, path: str, body: Any, key: str) -> FuzzCase:
    good = orjson.dumps(body)
    head = f"POST {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\ncontent-type: application/json\r\n"
    choices: list[tuple[str, bytes]] = [
        ("content-length-abc", f"{head}content-length: abc\r\n\r\n".encode() + good),
        ("content-length-negative", f"{head}content-length: -5\r\n\r\n".encode() + good),
        ("two-content-lengths", f"{head}content-length: {len(good)}\r\ncontent-length: 3\r\n\r\n".encode() + good),
        ("bad-chunk-size", f"{head}transfer-encoding: chunked\r\n\r\nzz\r\n".encode() + good + b"\r\n0\r\n\r\n"),
        ("chunked", f"{head}transfer-encoding: chunked\r\n\r\n{len(good):x}\r\n".encode() + good + b"\r\n0\r\n\r\n"),
        ("header-no-colon", f"{head}this is not a header\r\ncontent-length: {len(good)}\r\n\r\n".encode() + good),
        ("bad-request-line", b"POST  /v1/chat/completions HTTP/9.9\r\n\r\n"),
        ("non-ascii-header",
         f"{head}content-length: {len(good)}\r\nx-name: ".encode() + b"\xff\xfe\x00\r\n\r\n" + good),
        ("http10-no-length", f"POST {path} HTTP/1.0\r\nauthorization: Bearer {key}\r\n\r\n".encode() + good),
    ]  # fmt: skip
    name, raw = rng.choice(choices)
    return FuzzCase(f"raw:{name}", path, b"", {}, raw)


@dataclass
class FuzzResult:
    kind: str
    path: str
    status: int | None
    rid: str | None
    sample: bytes = b""


async def send_raw(base_port: int, raw: bytes) -> tuple[int | None, str | None]:
    reader, writer = await asyncio.open_connection("127.0.0.1", base_port)
    try:
        writer.write(raw)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
        return None, None
    finally:
        writer.close()
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    rid = next((ln.split(":", 1)[1].strip() for ln in lines[1:] if ln.lower().startswith("x-request-id:")), None)
    return status, rid


async def run_fuzz(n: int, args: argparse.Namespace, work: Path, progress: Callable[[int], None]) -> dict[str, Any]:
    stack = Stack(work / "fuzz", args)
    results: list[FuzzResult] = []
    try:
        await stack.up_with_key()
        rng = random.Random(args.seed)
        queue: asyncio.Queue[FuzzCase | None] = asyncio.Queue(maxsize=4 * args.clients)
        t0 = time.monotonic()

        async def producer() -> None:
            for _ in range(n):
                await queue.put(fuzz_case(rng, stack.key))
            for _ in range(args.clients):
                await queue.put(None)

        async def client(session: aiohttp.ClientSession) -> None:
            while (case := await queue.get()) is not None:
                if case.raw is not None:
                    status, rid = await send_raw(stack.port, case.raw)
                    results.append(FuzzResult(case.kind, case.path, status, rid))
                else:
                    try:
                        async with session.post(f"{stack.base}{case.path}", data=case.body, headers=case.headers,
                                                skip_auto_headers=["content-type"]) as r:  # fmt: skip
                            await r.read()
                            results.append(FuzzResult(case.kind, case.path, r.status, r.headers.get("x-request-id"),
                                                      case.body[:2000] if r.status >= 500 else b""))  # fmt: skip
                    except (aiohttp.ClientError, OSError, TimeoutError):
                        results.append(FuzzResult(case.kind, case.path, None, None, case.body[:2000]))
                progress(1)

        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=args.clients)) as s:
            await asyncio.gather(producer(), *[client(s) for _ in range(args.clients)])
        elapsed = time.monotonic() - t0
        await stack.stop()
        rows = await stack.audit_rows()
    finally:
        await stack.close()
    logged = Counter(rid for rid, _req, _status in rows)
    answered = [r for r in results if r.rid is not None]
    missing = [r for r in answered if logged[r.rid] == 0]
    seen = {r.rid for r in answered}
    not_reaching: dict[str, Counter[str]] = defaultdict(Counter)
    for r in results:
        if r.rid is None:
            not_reaching[r.kind][str(r.status) if r.status is not None else "no answer"] += 1
    five = [r for r in results if r.status is not None and r.status >= 500]
    return {
        "requests": n, "seconds": round(elapsed, 1), "req_per_s": round(n / elapsed, 1),
        "statuses": dict(Counter(str(r.status) if r.status is not None else "no answer" for r in results)),
        "kinds": dict(Counter(r.kind.split(":")[0] for r in results)),
        "server_errors": len(five),
        "server_error_samples": [{"kind": r.kind, "path": r.path, "status": r.status, "body": r.sample.decode(
            "utf-8", "replace")[:500]} for r in five[:10]],  # fmt: skip
        "reached_api": len(answered), "audit_rows": len(rows), "missing_rows": len(missing),
        "missing_samples": [{"kind": r.kind, "path": r.path, "status": r.status} for r in missing[:10]],
        "duplicate_rows": sum(1 for c in logged.values() if c > 1),
        "rows_without_answer": sum(1 for rid in logged if rid not in seen),
        "rows_without_answer_samples": [
            {"status": st, "request": (req or "")[:200]} for rid, req, st in rows if rid not in seen
        ][:10], "chain_ok": stack.chain_ok,
        "not_reaching_api": {k: dict(v) for k, v in sorted(not_reaching.items())},
        "gateway_error_lines": stack.log_errors()[:20],
    }  # fmt: skip


# -- tamper ----------------------------------------------------------------------------------------------------

ORIGIN = "distillshield/audit-log"
TAMPER_ROWS, TAMPER_EVERY = 5000, 1000


async def build_log(where: Path) -> None:
    from distillshield.store.checkpoint import Checkpointer, Signer, generate_key_file
    from tests.test_audit_chain import row

    store = Store(f"sqlite+aiosqlite:///{where / 'audit.db'}")
    await store.init()
    cp = Checkpointer(Signer(ORIGIN, generate_key_file(where / "checkpoint.key")), where / "checkpoints.txt")
    for lo in range(0, TAMPER_ROWS, TAMPER_EVERY):
        await store.append_audit([row(i) for i in range(lo, lo + TAMPER_EVERY)])
        await cp.checkpoint(store)
    await store.close()


async def tamper(kind: str, where: Path) -> tuple[int | None, tuple[int, int] | None]:
    """Tamper with the log copy in `where`; returns the row the check should name, or the rows it should bound."""
    from distillshield.store.checkpoint import Checkpointer, Signer, generate_key_file
    from distillshield.store.tables import audit_log, chain_head
    from tests.test_audit_checkpoints import CONTENT, rechain

    store = Store(f"sqlite+aiosqlite:///{where / 'audit.db'}")
    seq = 2500
    expect: tuple[int | None, tuple[int, int] | None] = (seq, None)
    async with store.engine.begin() as conn:
        if kind in ("edit", "re-chain after edit"):
            await conn.execute(audit_log.update().where(audit_log.c.seq == seq).values(response_text="forged"))
        elif kind in ("delete", "re-chain after delete"):
            await conn.execute(audit_log.delete().where(audit_log.c.seq == seq))
        elif kind == "reorder":
            a = (await conn.execute(sa.select(*CONTENT).where(audit_log.c.seq == seq))).mappings().one()
            b = (await conn.execute(sa.select(*CONTENT).where(audit_log.c.seq == seq + 100))).mappings().one()
            await conn.execute(audit_log.update().where(audit_log.c.seq == seq).values(**b))
            await conn.execute(audit_log.update().where(audit_log.c.seq == seq + 100).values(**a))
        elif kind in ("truncate", "truncate, head moved back"):
            expect = (4501, None)
            if kind != "truncate":
                h = (await conn.execute(sa.select(audit_log.c.hash).where(audit_log.c.seq == 4500))).scalar_one()
                await conn.execute(chain_head.update().where(chain_head.c.id == 1).values(seq=4500, hash=h))
            await conn.execute(audit_log.delete().where(audit_log.c.seq > 4500))
        elif kind == "head moved back, rows kept":
            h = (await conn.execute(sa.select(audit_log.c.hash).where(audit_log.c.seq == 4000))).scalar_one()
            await conn.execute(chain_head.update().where(chain_head.c.id == 1).values(seq=4000, hash=h))
            expect = (4001, None)
        elif kind == "checkpoint forged":
            notes = (where / "checkpoints.txt").read_text()
            (where / "checkpoints.txt").write_text(notes.replace("\n3000\n", "\n2999\n", 1))
            expect = (None, None)
    if kind.startswith("re-chain"):
        await rechain(store)
        expect = (None, (2001, 3000))
    if kind == "key replaced":
        await conn_edit_and_rechain(store, seq)
        (where / "checkpoints.txt").unlink()
        cp = Checkpointer(Signer(ORIGIN, generate_key_file(where / "mallory.key")), where / "checkpoints.txt")
        await cp.checkpoint(store)
        expect = (None, None)
    await store.close()
    return expect


async def conn_edit_and_rechain(store: Store, seq: int) -> None:
    from distillshield.store.tables import audit_log
    from tests.test_audit_checkpoints import rechain

    async with store.engine.begin() as conn:
        await conn.execute(audit_log.update().where(audit_log.c.seq == seq).values(status=403))
    await rechain(store)


TAMPERS = ["edit", "delete", "reorder", "truncate", "truncate, head moved back",
    "head moved back, rows kept", "re-chain after edit",
           "re-chain after delete", "checkpoint forged", "key replaced"]  # fmt: skip


def cli(cfg: Path, *argv: str) -> tuple[int, dict[str, Any]]:
    p = subprocess.run([sys.executable, "-m", "distillshield", "-c", str(cfg), "logs", "verify", *argv, "--json"],
                       capture_output=True, text=True)  # fmt: skip
    try:
        return p.returncode, json.loads(p.stdout)
    except ValueError:
        return p.returncode, {"ok": False, "problem": (p.stdout + p.stderr).strip()[-500:]}


async def run_tamper(work: Path, tick: Callable[[str], None]) -> list[dict[str, Any]]:
    base = work / "tamper-base"
    base.mkdir(parents=True)
    await build_log(base)
    from distillshield.store.checkpoint import Signer, load_key_file

    pinned = Signer(ORIGIN, load_key_file(base / "checkpoint.key")).verifier
    (base / "checkpoint.pub").write_text(pinned.encode() + "\n")
    out = []
    for kind in ["none (intact)", *TAMPERS]:
        tick(f"tamper: {kind}")
        where = work / ("tamper-" + re.sub(r"\W+", "-", kind))
        shutil.copytree(base, where)
        cfg = where / "distillshield.yaml"
        write_config(
            cfg,
            store_url=f"sqlite+aiosqlite:///{where / 'audit.db'}",
            upstream_kind="http",
            key_file=str(where / "checkpoint.key"),
            checkpoint_file=str(where / "checkpoints.txt"),
        )
        expect = (None, None) if kind.startswith("none") else await tamper(kind, where)
        chain_rc, chain = cli(cfg)
        rc, rep = cli(cfg, "--checkpoint", str(where / "checkpoints.txt"), "--pubkey", str(base / "checkpoint.pub"))
        tree = rep.get("checkpoints") or {}
        problem = tree.get("problem") or rep.get("problem") or (rep.get("chain") or {}).get("problem") or ""
        first, bad_range = tree.get("first_bad_seq"), tree.get("bad_range")
        want_seq, want_range = expect
        if kind.startswith("none"):
            located = rc == 0
        elif want_seq is not None:
            located = want_seq in (first, chain.get("first_bad_seq"))  # by the tree, or by the chain
        elif want_range is not None:
            located = bad_range == list(want_range)
        else:  # a checkpoint: named by number or key
            located = "checkpoint" in problem and ("bad signature" in problem or "expected key" in problem)
        out.append({
            "tamper": kind,
            "chain_alone": "intact" if chain.get("ok") else f"TAMPERED (row {chain.get('first_bad_seq')})",
            "exit": rc, "detected": rc == 1 if not kind.startswith("none") else rc == 0,
            "expected_row": want_seq, "expected_range": list(want_range) if want_range else None,
            "named_row": first, "named_range": bad_range, "located": located, "message": problem,
        })  # fmt: skip
    return out


# -- report ----------------------------------------------------------------------------------------------------


def fmt_counts(c: dict[str, int]) -> str:
    return ", ".join(f"{k}×{v}" for k, v in sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))


def report(results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console()
    if fz := results.get("fuzz"):
        t = Table(title=f"Fuzz: {fz['requests']} requests in {fz['seconds']} s ({fz['req_per_s']} req/s)")
        for col in ("statuses", "5xx", "reached API", "audit rows", "missing rows", "duplicates", "chain"):
            t.add_column(col)
        t.add_row(fmt_counts(fz["statuses"]), str(fz["server_errors"]), str(fz["reached_api"]),
                  str(fz["audit_rows"]), str(fz["missing_rows"]), str(fz["duplicate_rows"]),
                  "ok" if fz["chain_ok"] else "BROKEN")  # fmt: skip
        con.print(t)
        if fz["not_reaching_api"]:
            t = Table(title="Requests answered without reaching the API (no x-request-id, no audit row)")
            t.add_column("request class")
            t.add_column("answers")
            for k, v in fz["not_reaching_api"].items():
                t.add_row(k, fmt_counts(v))
            con.print(t)
    if fl := results.get("faults"):
        t = Table(title="Fault matrix")
        for col in ("fault", "requests", "during the fault", "200 served", "rows lost", "dup", "first 200 after",
                    "normal after"):  # fmt: skip
            t.add_column(col)
        for r in fl:
            secs = [r["first_200_after_s"], r["normal_after_s"]]
            t.add_row(r["fault"], str(r["requests"]), fmt_counts(r["during_fault"]), str(r["served_200"]),
                      str(r["lost_rows"]), str(r["duplicate_rows"]),
                      *[f"{s:.2f} s" if s is not None else "never" for s in secs])  # fmt: skip
        con.print(t)
    if tm := results.get("tamper"):
        t = Table(title="Tamper matrix (logs verify --checkpoint --pubkey)")
        for col in ("tampering", "chain alone", "detected", "located", "message"):
            t.add_column(col, overflow="fold")
        for r in tm:
            t.add_row(r["tamper"], r["chain_alone"], "yes" if r["detected"] else "NO", "yes" if r["located"] else "NO",
                      r["message"][:160])  # fmt: skip
        con.print(t)


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fuzz", type=int, default=0, metavar="N", help="send N fuzzed requests")
    ap.add_argument("--faults", action="store_true", help="run the fault matrix")
    ap.add_argument("--only", action="append", default=[], help="with --faults: only faults whose name has this")
    ap.add_argument("--tamper", action="store_true", help="run the tamper matrix")
    ap.add_argument("--clients", type=int, default=32, help="concurrent clients")
    ap.add_argument("--pre-s", type=float, default=2.0, help="load before each fault")
    ap.add_argument("--fault-s", type=float, default=4.0, help="how long each fault lasts")
    ap.add_argument("--post-s", type=float, default=6.0, help="load after each fault ends")
    ap.add_argument("--recover-timeout-s", type=float, default=15.0, help="wait this long for /readyz to be normal")
    ap.add_argument("--drain-timeout-s", type=float, default=180.0, help="after the load: wait for the spool to drain")
    ap.add_argument("--read-timeout-s", type=float, default=2.0, help="the gateway's upstream read timeout")
    pg = os.environ.get("DISTILLSHIELD_TEST_PG", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
    ap.add_argument("--pg-url", default=pg, help="an existing database; a scratch one is created beside it")
    ap.add_argument("--pg-port", type=int, default=5432)
    ap.add_argument("--redis-port", type=int, default=6379)
    ap.add_argument("--redis-db", type=int, default=12, help="flushed before and after the Redis fault")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json-out", type=Path)
    ap.add_argument("--keep", action="store_true", help="keep the work directory (gateway logs)")
    args = ap.parse_args()
    if not (args.fuzz or args.faults or args.tamper):
        ap.error("choose at least one of --fuzz N, --faults, --tamper")

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    work = Path(tempfile.mkdtemp(prefix="ds-soak-"))
    results: dict[str, Any] = {"command": " ".join(["benchmarks/reliability_soak.py", *sys.argv[1:]]),
                               "clients": args.clients, "cpus": os.cpu_count()}  # fmt: skip
    faults = [f for f in fault_list(args, work) if not args.only or any(o.lower() in f.name.lower() for o in args.only)]
    try:
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()) as bar:
            if args.fuzz:
                task = bar.add_task("fuzz", total=args.fuzz)
                results["fuzz"] = await run_fuzz(args.fuzz, args, work, lambda k: bar.advance(task, k))
            if args.faults:
                task = bar.add_task("faults", total=len(faults))
                results["faults"] = []
                for f in faults:
                    results["faults"].append(await run_fault(f, args, work, lambda d: bar.update(task, description=d)))
                    bar.advance(task)
            if args.tamper:
                task = bar.add_task("tamper", total=len(TAMPERS) + 1)

                def tick(d: str) -> None:
                    bar.update(task, description=d)
                    bar.advance(task)

                results["tamper"] = await run_tamper(work, tick)
    finally:
        if args.redis_port and args.faults:
            import redis.asyncio as aioredis

            r = aioredis.Redis.from_url(f"redis://127.0.0.1:{args.redis_port}/{args.redis_db}")
            with contextlib.suppress(Exception):
                await r.flushdb()
            await r.aclose()
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    report(results)
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json_out}")
    bad = (results.get("fuzz", {}).get("server_errors", 0) or results.get("fuzz", {}).get("missing_rows", 0)
           or any(r["lost_rows"] or r["duplicate_rows"] for r in results.get("faults", []))
           or any(not (r["detected"] and r["located"]) for r in results.get("tamper", [])))  # fmt: skip
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
