"""Gateway overhead: latency and throughput added by DistillShield, side by side with baselines.

One run measures, against the same fast mock OpenAI-compatible upstream:

  direct        load generator -> mock upstream
  bare proxy    load generator -> minimal raw-ASGI pass-through proxy (uvicorn + one aiohttp session)
  distillshield load generator -> the gateway (http upstream, SQLite audit log, limits on but never hit)
  litellm       load generator -> LiteLLM proxy (when installed; see --litellm)

Every target, the mock and the load generator run as separate processes. Each cell (target x
concurrency x stream/non-stream) gets a warm-up, then a fixed measurement window; with --rounds > 1
the cells are interleaved round by round and the median of each figure is reported, which damps the
drift of a shared machine. Besides latency and throughput, each cell records the CPU time the target's
own processes spent per request (from /proc), which varies much less than req/s on a busy machine.

    .venv/bin/python benchmarks/overhead.py                    # full run (~5 s per cell, 3 rounds)
    .venv/bin/python benchmarks/overhead.py --quick            # smoke run
    .venv/bin/python benchmarks/overhead.py --json-out results.json --check

Internally the script re-runs itself with --role to become the mock, the bare proxy, the gateway or
the load generator.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_LITELLM = REPO / ".bench-venv" / "bin" / "litellm"
MODEL = "mock-model"
ADMIN_TOKEN = "bench-admin-token"
LITELLM_MASTER_KEY = "sk-bench-" + "0123456789abcdef" * 2
STREAM_CHUNKS = 16
# The targets for the gateway.
TARGET_ADDED_P50_MS = 0.5
TARGET_PCT_OF_BARE = 70.0

ASGIReceive = Callable[[], Awaitable[dict[str, Any]]]
ASGISend = Callable[[dict[str, Any]], Awaitable[None]]


# ------------------------------------------------------------------------------------------------
# The mock upstream: a raw ASGI app, so that it costs as little CPU as possible per request.
# ------------------------------------------------------------------------------------------------


def _mock_payloads() -> dict[str, Any]:
    import orjson

    created = int(time.time())
    words = [f"tok{i} " for i in range(STREAM_CHUNKS)]
    usage = {"prompt_tokens": 12, "completion_tokens": STREAM_CHUNKS, "total_tokens": 12 + STREAM_CHUNKS}
    completion = {
        "id": "chatcmpl-mock",
        "object": "chat.completion",
        "created": created,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "".join(words)},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": usage,
    }

    def chunk(delta: dict[str, Any], finish: str | None) -> bytes:
        body = {
            "id": "chatcmpl-mock",
            "object": "chat.completion.chunk",
            "created": created,
            "model": MODEL,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        return b"data: " + orjson.dumps(body) + b"\n\n"

    chunks = [chunk({"role": "assistant", "content": words[0]}, None)]
    chunks += [chunk({"content": w}, None) for w in words[1:-1]]
    chunks.append(chunk({"content": words[-1]}, "stop"))
    usage_chunk = {
        "id": "chatcmpl-mock",
        "object": "chat.completion.chunk",
        "created": created,
        "model": MODEL,
        "choices": [],
        "usage": usage,
    }
    models = {"object": "list", "data": [{"id": MODEL, "object": "model", "created": created, "owned_by": "m"}]}
    return {
        "completion": orjson.dumps(completion),
        "chunks": chunks,
        "usage_chunk": b"data: " + orjson.dumps(usage_chunk) + b"\n\n",
        "done": b"data: [DONE]\n\n",
        "models": orjson.dumps(models),
    }


async def _read_body(receive: ASGIReceive) -> bytes:
    parts = []
    while True:
        msg = await receive()
        parts.append(msg.get("body", b""))
        if not msg.get("more_body"):
            return b"".join(parts)


def make_mock_app() -> Callable[[dict[str, Any], ASGIReceive, ASGISend], Awaitable[None]]:
    """/v1/chat/completions (JSON or SSE) and /v1/models, with every response body prebuilt."""
    import orjson

    p = _mock_payloads()
    json_headers = [(b"content-type", b"application/json")]
    sse_headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]

    async def app(scope: dict[str, Any], receive: ASGIReceive, send: ASGISend) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path == "/v1/models":
            await send({"type": "http.response.start", "status": 200, "headers": json_headers})
            await send({"type": "http.response.body", "body": p["models"]})
            return
        if path != "/v1/chat/completions" or scope["method"] != "POST":
            await send({"type": "http.response.start", "status": 404, "headers": json_headers})
            await send({"type": "http.response.body", "body": b'{"error":{"message":"not found"}}'})
            return
        body = orjson.loads(await _read_body(receive))
        if not body.get("stream"):
            await send({"type": "http.response.start", "status": 200, "headers": json_headers})
            await send({"type": "http.response.body", "body": p["completion"]})
            return
        await send({"type": "http.response.start", "status": 200, "headers": sse_headers})
        # One body message per chunk, as a real model server flushes token by token.
        for c in p["chunks"]:
            await send({"type": "http.response.body", "body": c, "more_body": True})
        if (body.get("stream_options") or {}).get("include_usage"):
            await send({"type": "http.response.body", "body": p["usage_chunk"], "more_body": True})
        await send({"type": "http.response.body", "body": p["done"], "more_body": False})

    return app


# ------------------------------------------------------------------------------------------------
# The bare pass-through proxy: what any Python proxy on this stack costs at the least.
# ------------------------------------------------------------------------------------------------


def make_bare_proxy_app(upstream: str) -> Callable[[dict[str, Any], ASGIReceive, ASGISend], Awaitable[None]]:
    """Forward method, path and body to `upstream`; stream the answer back chunk by chunk. No features."""
    import aiohttp

    session: aiohttp.ClientSession | None = None

    async def app(scope: dict[str, Any], receive: ASGIReceive, send: ASGISend) -> None:
        nonlocal session
        if scope["type"] != "http":
            return
        if session is None:  # created lazily: it must live on the server's event loop
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=512, keepalive_timeout=30), auto_decompress=False
            )
        body = await _read_body(receive)
        async with session.request(
            scope["method"],
            upstream + scope["path"],
            data=body if body else None,
            headers={"content-type": "application/json"},
        ) as resp:
            headers = [(b"content-type", resp.headers.get("content-type", "application/json").encode())]
            if "content-length" in resp.headers:
                headers.append((b"content-length", resp.headers["content-length"].encode()))
            await send({"type": "http.response.start", "status": resp.status, "headers": headers})
            async for chunk in resp.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return app


def _serve_asgi(app: Any, port: int) -> None:
    import uvicorn

    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        log_level="warning",
        access_log=False,
        # No proxy in front: like the gateway (server.forwarded_allow_ips unset), trust no forwarded headers,
        # which also keeps uvicorn's ProxyHeadersMiddleware out of the request path.
        proxy_headers=False,
    )


def _serve_gateway(port: int, upstream: str, workdir: str, overrides: list[str] | None = None) -> None:
    from distillshield.cli.serve import run_server
    from distillshield.config import load_settings

    extra: dict[str, Any] = {}
    for item in overrides or ():
        k, _, v = item.partition("=")
        extra[k] = v

    huge = {"rpm": 10**9, "tpm": 10**12, "concurrent": 10**6, "tpd": 10**15}
    settings = load_settings(
        None,
        server__host="127.0.0.1",
        server__port=port,
        upstream__kind="http",
        upstream__http__base_url=upstream + "/v1",
        store__url=f"sqlite+aiosqlite:///{Path(workdir) / 'bench.db'}",
        admin__token=ADMIN_TOKEN,
        # Limits stay on (the limiter runs on every request) but are far above what the run can reach.
        limits__key=huge,
        limits__account=huge,
        limits__org=huge,
        **extra,
    )
    # The same entry point as `distillshield serve`: uvicorn, uvloop, httptools, one worker.
    run_server(settings, "127.0.0.1", port, "warning")


# ------------------------------------------------------------------------------------------------
# The load generator: a fixed number of workers on one aiohttp session, warm-up, then a timed window.
# ------------------------------------------------------------------------------------------------


def request_body(stream: bool) -> bytes:
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say hello in a few words."}],
        "max_tokens": 32,
    }
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return json.dumps(body).encode()


async def _load(url: str, key: str, concurrency: int, stream: bool, warmup: float, duration: float) -> dict:
    import aiohttp

    body = request_body(stream)
    headers = {"content-type": "application/json", "authorization": f"Bearer {key}"}
    latencies: list[float] = []
    errors: dict[str, int] = {}
    answered = [0]  # every response, warm-up included: the divisor for the target's CPU time
    connector = aiohttp.TCPConnector(limit=concurrency, keepalive_timeout=60)
    timeout = aiohttp.ClientTimeout(total=60)
    loop = asyncio.get_running_loop()
    t_start = loop.time()
    win_start, win_end = t_start + warmup, t_start + warmup + duration
    clock = time.perf_counter

    def err(kind: str) -> None:
        errors[kind] = errors.get(kind, 0) + 1

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            while loop.time() < win_end:
                t0 = clock()
                try:
                    async with session.post(url, data=body, headers=headers) as resp:
                        data = await resp.read()
                        status = resp.status
                except (aiohttp.ClientError, TimeoutError) as exc:
                    if win_start <= loop.time() <= win_end:
                        err(type(exc).__name__)
                    continue
                t1 = clock()
                answered[0] += 1
                now = loop.time()
                if not win_start <= now <= win_end:
                    continue  # warm-up, or finished after the window closed
                if status != 200:
                    err(f"http {status}")
                elif stream and not data.rstrip().endswith(b"data: [DONE]"):
                    err("stream without [DONE]")
                else:
                    latencies.append(t1 - t0)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    latencies.sort()
    n = len(latencies)

    def pct(q: float) -> float:
        return latencies[min(n - 1, max(0, round(q * n) - 1))] * 1000.0 if n else float("nan")

    return {
        "requests": n,
        "rps": n / duration,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "mean_ms": statistics.fmean(latencies) * 1000.0 if n else float("nan"),
        "errors": errors,
        "answered_total": answered[0],
    }


def _run_loadgen(args: argparse.Namespace) -> None:
    import uvloop

    result = uvloop.run(_load(args.url, args.key, args.concurrency, args.stream, args.warmup, args.duration))
    print(json.dumps(result))


# ------------------------------------------------------------------------------------------------
# Orchestration: start processes, run every cell, summarise.
# ------------------------------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    label: str
    base: str  # http://127.0.0.1:port
    proc: subprocess.Popen[bytes] | None = None
    key: str = "sk-unused"
    log: Path | None = None


@dataclass
class Cell:
    target: str
    stream: bool
    concurrency: int
    rounds: list[dict[str, Any]] = field(default_factory=list)

    def median(self, name: str) -> float:
        vals = [r[name] for r in self.rounds if r.get(name) is not None]
        return statistics.median(vals) if vals else float("nan")

    def summary(self) -> dict[str, Any]:
        errors: dict[str, int] = {}
        for r in self.rounds:
            for k, v in r["errors"].items():
                errors[k] = errors.get(k, 0) + v
        out = {
            "target": self.target,
            "stream": self.stream,
            "concurrency": self.concurrency,
            "rps": self.median("rps"),
            "p50_ms": self.median("p50_ms"),
            "p99_ms": self.median("p99_ms"),
            "cpu_us_per_req": self.median("cpu_us_per_req"),
            "other_load_cores": self.median("other_load_cores"),
            "requests": sum(r["requests"] for r in self.rounds),
            "errors": errors,
            "rounds": self.rounds,
        }
        return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http(method: str, url: str, body: dict | None = None, token: str | None = None, timeout: float = 10) -> Any:
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers=headers, method=method)
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - loopback only
        raw = resp.read()
    ctype = resp.headers.get("content-type", "")
    return json.loads(raw) if "json" in ctype else raw


def _spawn(argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    # Own session, so that a target's children (LiteLLM's) are stopped with it.
    with log.open("wb") as fh:
        return subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO, env=env, start_new_session=True)


def _self(role: str, *extra: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--role", role, *extra]


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
    except ProcessLookupError:
        pass


def _wait_ready(t: Target, path: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if t.proc is not None and t.proc.poll() is not None:
            tail = t.log.read_text(errors="replace")[-3000:] if t.log else ""
            raise RuntimeError(f"{t.label} exited with code {t.proc.returncode} while starting:\n{tail}")
        try:
            _http("GET", t.base + path, timeout=2)
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{t.label} did not answer {t.base}{path} within {timeout:g} s") from None
            time.sleep(0.2)


def _litellm_config(workdir: Path, mock: str) -> Path:
    cfg = workdir / "litellm.yaml"
    cfg.write_text(
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{MODEL}\n"
        f"      api_base: {mock}/v1\n"
        "      api_key: sk-mock\n"
        "litellm_settings:\n"
        "  telemetry: false\n"
        "  drop_params: true\n"
        # Recent LiteLLM refuses to start without a master key; with one, requests are authenticated
        # against it in memory (no database), which is also the fair comparison.
        "general_settings:\n"
        f"  master_key: {LITELLM_MASTER_KEY}\n",
        encoding="utf-8",
    )
    return cfg


def _smoke(t: Target) -> None:
    """One request of each kind, so a broken target fails loudly before the timed run."""
    for stream in (False, True):
        req = urllib.request.Request(
            t.base + "/v1/chat/completions",
            data=request_body(stream),
            headers={"content-type": "application/json", "authorization": f"Bearer {t.key}"},
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - loopback only
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"{t.label}: smoke request answered {exc.code}: {exc.read()[:300]!r}") from None
        if stream and not raw.rstrip().endswith(b"data: [DONE]"):
            raise RuntimeError(f"{t.label}: stream did not end with [DONE]: {raw[-300:]!r}")


def group_cpu_s(pgid: int) -> float | None:
    """CPU seconds (user + system) used so far by every live process in a process group (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return None
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        if int(fields[2]) == pgid:  # fields after the name: state, ppid, pgrp, ..., utime (11), stime (12)
            total += int(fields[11]) + int(fields[12])
    return total / tick


def _busy_cpu_s() -> float | None:
    """CPU seconds the whole machine has spent busy (not idle or waiting on I/O) since boot."""
    try:
        with open("/proc/stat", "rb") as fh:
            f = [int(x) for x in fh.readline().split()[1:9]]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = f
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class _OtherLoad:
    """How many cores processes outside this benchmark kept busy during a cell (shared machines).

    Machine busy time minus the benchmark's own: its target process groups and its load generators
    (waited-for children, so they show in RUSAGE_CHILDREN).
    """

    def __init__(self, pgids: list[int]) -> None:
        self.pgids = pgids
        self.t0 = time.monotonic()
        self.busy0 = _busy_cpu_s()
        self.ours0 = self._ours()

    def _ours(self) -> float | None:
        groups = [group_cpu_s(g) for g in self.pgids]
        if any(g is None for g in groups):
            return None
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        return sum(g for g in groups if g is not None) + ru.ru_utime + ru.ru_stime

    def cores(self) -> float | None:
        busy1, ours1 = _busy_cpu_s(), self._ours()
        if None in (self.busy0, busy1, self.ours0, ours1):
            return None
        assert self.busy0 is not None and busy1 is not None and self.ours0 is not None and ours1 is not None
        return max(0.0, (busy1 - self.busy0) - (ours1 - self.ours0)) / (time.monotonic() - self.t0)


def _audit_drain(gw: Target) -> dict[str, float]:
    """Audit rows still queued when the window closed, and how long writing them took.

    Rows are written off the request path, so a backlog at the end of a window is work the measured
    throughput did not pay for yet; draining it before the next cell keeps cells independent.
    """
    metrics = _http("GET", gw.base + "/metrics", token=ADMIN_TOKEN)
    text = metrics.decode() if isinstance(metrics, bytes) else str(metrics)
    backlog = next(
        (float(line.split()[-1]) for line in text.splitlines() if line.startswith("distillshield_audit_queue ")),
        float("nan"),
    )
    t0 = time.perf_counter()
    _http("POST", gw.base + "/admin/audit/flush", body={}, token=ADMIN_TOKEN, timeout=120)
    return {"audit_backlog_rows": backlog, "audit_drain_s": round(time.perf_counter() - t0, 3)}


def _loadgen(t: Target, concurrency: int, stream: bool, warmup: float, duration: float) -> dict[str, Any]:
    argv = _self(
        "loadgen",
        "--url",
        t.base + "/v1/chat/completions",
        "--key",
        t.key,
        "--concurrency",
        str(concurrency),
        "--warmup",
        str(warmup),
        "--duration",
        str(duration),
        *(["--stream"] if stream else []),
    )
    out = subprocess.run(argv, capture_output=True, check=False, timeout=warmup + duration + 120)
    if out.returncode != 0:
        raise RuntimeError(f"load generator failed on {t.label}: {out.stderr.decode(errors='replace')[-2000:]}")
    return json.loads(out.stdout)


def _added(cells: dict[tuple[str, bool, int], Cell], name: str, stream: bool) -> float | None:
    a, d = cells.get((name, stream, 1)), cells.get(("direct", stream, 1))
    return a.median("p50_ms") - d.median("p50_ms") if a and d else None


def _pct_of_bare(cells: dict[tuple[str, bool, int], Cell], name: str, stream: bool, conc: int) -> float | None:
    a, b = cells.get((name, stream, conc)), cells.get(("bare", stream, conc))
    return 100.0 * a.median("rps") / b.median("rps") if a and b and b.median("rps") > 0 else None


def _fmt(value: float | None, spec: str) -> str:
    # A cell with no finished request in its window (a very slow target) has no latency to show.
    return "–" if value is None or math.isnan(value) else spec.format(value)


def _print_report(
    cells: dict[tuple[str, bool, int], Cell], targets: list[Target], concs: list[int], summary: dict
) -> None:
    from rich.console import Console
    from rich.table import Table

    # Wide enough for the table even when the output is piped to a file.
    console = Console(width=None if sys.stdout.isatty() else 180)
    table = Table(
        title="Gateway overhead (median over rounds; latency = time to last byte)",
        caption="target CPU: user+system time of the target's processes (for direct: the mock) per answered "
        "request, warm-up included; for the gateway it includes writing the audit log. other load: cores kept "
        "busy by processes outside the benchmark during the cell (a shared machine's noise).",
    )
    for col, just in (
        ("target", "left"),
        ("mode", "left"),
        ("conc.", "right"),
        ("req/s", "right"),
        ("p50 ms", "right"),
        ("p99 ms", "right"),
        ("+p50 vs direct", "right"),
        ("% of bare req/s", "right"),
        ("target CPU µs/req", "right"),
        ("other load (cores)", "right"),
        ("errors", "right"),
    ):
        table.add_column(col, justify=just)
    for stream in (False, True):
        for conc in concs:
            direct = cells.get(("direct", stream, conc))
            for t in targets:
                c = cells.get((t.name, stream, conc))
                if c is None:
                    continue
                added = c.median("p50_ms") - direct.median("p50_ms") if direct and t.name != "direct" else None
                pct = _pct_of_bare(cells, t.name, stream, conc) if t.name not in ("direct", "bare") else None
                errs = sum(c.summary()["errors"].values())
                table.add_row(
                    t.label,
                    "stream" if stream else "non-stream",
                    str(conc),
                    _fmt(c.median("rps"), "{:,.0f}"),
                    _fmt(c.median("p50_ms"), "{:.2f}"),
                    _fmt(c.median("p99_ms"), "{:.2f}"),
                    _fmt(added, "{:+.2f} ms"),
                    _fmt(pct, "{:.0f}%"),
                    _fmt(c.median("cpu_us_per_req"), "{:,.0f}"),
                    _fmt(c.median("other_load_cores"), "{:.2f}"),
                    str(errs),
                )
            table.add_section()
    console.print(table)

    checks = Table(title="DistillShield targets")
    for col in ("check", "mode", "measured", "target", "met"):
        checks.add_column(col)
    for row in summary["checks"]:
        measured = "n/a" if row["value"] is None else f"{row['value']:.2f} {row['unit']}"
        met = {True: "[green]yes[/green]", False: "[red]NO[/red]", None: "n/a"}[row["met"]]
        checks.add_row(row["check"], row["mode"], measured, row["target"], met)
    console.print(checks)
    for note in summary["notes"]:
        console.print(f"[yellow]note:[/yellow] {note}")


def _summarise(
    cells: dict[tuple[str, bool, int], Cell], concs: list[int], notes: list[str], variants: list[str] | None = None
) -> dict[str, Any]:
    checks = []
    hi = max(concs)
    for stream in (False, True):
        mode = "stream" if stream else "non-stream"
        added = _added(cells, "distillshield", stream)
        checks.append(
            {
                "check": "added p50 latency at concurrency 1 (gateway - direct)",
                "mode": mode,
                "value": added,
                "unit": "ms",
                "target": f"<= {TARGET_ADDED_P50_MS} ms",
                "met": None if added is None else added <= TARGET_ADDED_P50_MS,
            }
        )
        pct = _pct_of_bare(cells, "distillshield", stream, hi)
        checks.append(
            {
                "check": f"throughput at concurrency {hi}, % of bare proxy",
                "mode": mode,
                "value": pct,
                "unit": "%",
                "target": f">= {TARGET_PCT_OF_BARE:g}%",
                "met": None if pct is None else pct >= TARGET_PCT_OF_BARE,
            }
        )
    comparisons = {}
    for name in ("bare", "distillshield", *(variants or ()), "litellm"):
        for stream in (False, True):
            mode = "stream" if stream else "non_stream"
            comparisons[f"{name}.{mode}.added_p50_ms_c1"] = _added(cells, name, stream)
            comparisons[f"{name}.{mode}.pct_of_bare_rps_c{hi}"] = _pct_of_bare(cells, name, stream, hi)
            for conc in concs:
                a, b = cells.get((name, stream, conc)), cells.get(("bare", stream, conc))
                if a and b and b.median("cpu_us_per_req") > 0:
                    ratio = a.median("cpu_us_per_req") / b.median("cpu_us_per_req")
                    comparisons[f"{name}.{mode}.cpu_per_req_vs_bare_c{conc}"] = ratio
    return {"checks": checks, "comparisons": comparisons, "notes": notes}


def _no_nan(value: Any) -> Any:
    """NaN (a cell without a finished request) as null, so the file is strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_nan(v) for v in value]
    return value


def orchestrate(args: argparse.Namespace) -> int:
    if args.quick:
        args.duration, args.warmup, args.rounds = 1.5, 0.5, 1
    concs = sorted(set(args.concurrency))
    notes: list[str] = []
    litellm = Path(args.litellm) if args.litellm else DEFAULT_LITELLM
    use_litellm = not args.no_litellm and litellm.exists()
    if args.no_litellm:
        notes.append("LiteLLM row skipped (--no-litellm)")
    elif not use_litellm:
        notes.append(
            f"LiteLLM row skipped: no litellm executable at {litellm} "
            "(python3 -m venv .bench-venv && .bench-venv/bin/pip install 'litellm[proxy]')"
        )

    load_before = os.getloadavg()  # before any of this benchmark's processes exist
    started: list[Target] = []
    with tempfile.TemporaryDirectory(prefix="ds-bench-") as tmp:
        work = Path(tmp)
        try:
            mock = Target("direct", "direct (mock upstream)", f"http://127.0.0.1:{free_port()}")
            mock.log = work / "mock.log"
            mock.proc = _spawn(_self("mock", "--port", mock.base.rsplit(":", 1)[1]), mock.log)
            started.append(mock)
            _wait_ready(mock, "/v1/models", 30)

            bare = Target("bare", "bare pass-through proxy", f"http://127.0.0.1:{free_port()}")
            bare.log = work / "bare.log"
            bare.proc = _spawn(_self("bare", "--port", bare.base.rsplit(":", 1)[1], "--upstream", mock.base), bare.log)
            started.append(bare)

            gw = Target("distillshield", "distillshield gateway", f"http://127.0.0.1:{free_port()}")
            gw.log = work / "gateway.log"
            gw_env = {k: v for k, v in os.environ.items() if not k.startswith("DISTILLSHIELD_")}
            gw.proc = _spawn(
                _self("gateway", "--port", gw.base.rsplit(":", 1)[1], "--upstream", mock.base, "--workdir", tmp),
                gw.log,
                env=gw_env,
            )
            started.append(gw)
            variants: list[Target] = []
            for spec in args.variant or ():
                vname, _, sets = spec.partition(":")
                v = Target(f"ds-{vname}", f"distillshield gateway ({vname})", f"http://127.0.0.1:{free_port()}")
                vdir = work / f"variant-{vname}"
                vdir.mkdir()
                v.log = work / f"gateway-{vname}.log"
                set_args = [a for kv in sets.split(",") if kv for a in ("--set", kv)]
                v.proc = _spawn(
                    _self("gateway", "--port", v.base.rsplit(":", 1)[1], "--upstream", mock.base, "--workdir",
                          str(vdir), *set_args),
                    v.log,
                    env=gw_env,
                )  # fmt: skip
                started.append(v)
                variants.append(v)

            ll: Target | None = None
            if use_litellm:
                ll = Target("litellm", "litellm proxy (1 worker)", f"http://127.0.0.1:{free_port()}")
                ll.key = LITELLM_MASTER_KEY
                ll.log = work / "litellm.log"
                env = {
                    **os.environ,
                    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                    "LITELLM_TELEMETRY": "False",
                    "LITELLM_LOG": "ERROR",
                    "NO_DOCS": "True",
                }
                env.pop("DATABASE_URL", None)
                cfg = _litellm_config(work, mock.base)
                ll.proc = _spawn(
                    [
                        str(litellm),
                        "--config",
                        str(cfg),
                        "--host",
                        "127.0.0.1",
                        "--port",
                        ll.base.rsplit(":", 1)[1],
                        "--num_workers",
                        "1",
                    ],
                    ll.log,
                    env=env,
                )
                started.append(ll)

            _wait_ready(bare, "/v1/models", 30)
            _wait_ready(gw, "/healthz", 120)
            for g in (gw, *variants):
                _wait_ready(g, "/healthz", 120)
                _http("POST", g.base + "/admin/accounts", {"id": "bench", "org_id": "bench-org"}, ADMIN_TOKEN)
                g.key = _http("POST", g.base + "/admin/keys", {"account_id": "bench"}, ADMIN_TOKEN)["key"]
            if ll is not None:
                try:
                    _wait_ready(ll, "/health/liveliness", 180)
                    _smoke(ll)
                except RuntimeError as exc:
                    notes.append(f"LiteLLM row skipped: {str(exc).splitlines()[0]}")
                    _stop(ll.proc)
                    started.remove(ll)
                    ll = None
            targets = [mock, bare, gw, *variants] + ([ll] if ll else [])
            for t in targets:
                _smoke(t)

            cells: dict[tuple[str, bool, int], Cell] = {}
            total = args.rounds * len(concs) * 2 * len(targets)
            done = 0
            for rnd in range(args.rounds):
                for stream in (False, True):
                    for conc in concs:
                        for t in targets:
                            done += 1
                            mode = "stream" if stream else "non-stream"
                            print(
                                f"[{done}/{total}] round {rnd + 1}: {t.label}, {mode}, concurrency {conc} ...",
                                end=" ",
                                flush=True,
                            )
                            pid = t.proc.pid if t.proc else None
                            cpu0 = group_cpu_s(pid) if pid else None
                            probe = _OtherLoad([p.proc.pid for p in started if p.proc])
                            r = _loadgen(t, conc, stream, args.warmup, args.duration)
                            if t is gw or t in variants:
                                r.update(_audit_drain(t))  # before the CPU reading: the audit log is its work
                            cpu1 = group_cpu_s(pid) if pid else None
                            r["cpu_us_per_req"] = (
                                (cpu1 - cpu0) / r["answered_total"] * 1e6
                                if cpu0 is not None and cpu1 is not None and r["answered_total"]
                                else None
                            )
                            r["other_load_cores"] = probe.cores()
                            cell = cells.setdefault((t.name, stream, conc), Cell(t.name, stream, conc))
                            cell.rounds.append(r)
                            other = r["other_load_cores"]
                            print(
                                f"{r['rps']:,.0f} req/s, p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms"
                                + ("" if other is None else f" (other processes: {other:.2f} cores)")
                            )
        finally:
            for t in reversed(started):
                _stop(t.proc)

    summary = _summarise(cells, concs, notes, [v.name for v in variants])
    _print_report(cells, targets, concs, summary)
    if args.json_out:
        payload = {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": {
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "python": platform.python_version(),
                "processor": platform.processor() or platform.machine(),
                "loadavg_before": load_before,
                "loadavg_after": os.getloadavg(),
            },
            "settings": {
                "duration_s": args.duration,
                "warmup_s": args.warmup,
                "rounds": args.rounds,
                "concurrency": concs,
                "stream_chunks": STREAM_CHUNKS,
                "litellm": str(litellm) if ll else None,
            },
            "targets": {t.name: t.label for t in targets},
            "cells": [c.summary() for c in cells.values()],
            "summary": summary,
        }
        Path(args.json_out).write_text(json.dumps(_no_nan(payload), indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json_out}")
    if args.check and any(c["met"] is False for c in summary["checks"]):
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--duration", type=float, default=5.0, help="measured seconds per cell (default 5)")
    ap.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds before each cell (default 1)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported (default 3)")
    ap.add_argument("--quick", action="store_true", help="short smoke run: 1.5 s cells, 1 round")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 64], help="concurrency levels (default: 1 64)")
    ap.add_argument("--litellm", help=f"path to the litellm executable (default: {DEFAULT_LITELLM} if present)")
    ap.add_argument("--no-litellm", action="store_true", help="skip the LiteLLM row")
    ap.add_argument("--json-out", help="write the results as JSON to this file")
    ap.add_argument("--check", action="store_true", help="exit 1 when a DistillShield target is missed")
    ap.add_argument(
        "--variant",
        action="append",
        metavar="NAME:KEY=VALUE[,KEY=VALUE]",
        help="also measure a gateway with these settings (load_settings keys), side by side; repeatable.\n"
        "e.g. --variant not-durable:audit__durable_answers=false",
    )
    ap.add_argument("--set", action="append", help=argparse.SUPPRESS)
    # Internal: the roles the script plays in its child processes.
    ap.add_argument("--role", choices=["mock", "bare", "gateway", "loadgen"], help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--upstream", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--key", default="sk-unused", help=argparse.SUPPRESS)
    ap.add_argument("--stream", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.role == "mock":
        _serve_asgi(make_mock_app(), args.port)
    elif args.role == "bare":
        _serve_asgi(make_bare_proxy_app(args.upstream), args.port)
    elif args.role == "gateway":
        _serve_gateway(args.port, args.upstream, args.workdir, args.set)
    elif args.role == "loadgen":
        args.concurrency = args.concurrency[0]
        _run_loadgen(args)
    else:
        return orchestrate(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
