"""What online detection adds to a request: the hot-path cost of the observer, and A/B request latency.

1. Observer micro-benchmark: the one thing detection does on the request path is `observe(row)` (a
   bounded deque append) for each finished request; timed over many calls with a real audit row.
2. A/B: the gateway on a fast in-process fake upstream, detection on (rescoring every 0.2 s) vs off,
   sequential requests from one client, interleaved in blocks; median and p90 latency per arm. The
   difference includes the background rescoring competing for the GIL and CPU.
3. Background throughput: the CPU time the rescoring thread spends per request (it is off the path, but
   it bounds how much traffic one gateway process can watch).

    .venv/bin/python benchmarks/online_overhead.py            # ~1 minute
    .venv/bin/python benchmarks/online_overhead.py --json-out online.json --check   # exit 1 if > 100 us
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BUDGET_US = 100.0


def observer_cost(n: int = 200_000) -> float:
    from distillshield.detect.online import DetectionExtension

    ext = DetectionExtension()
    row = {
        "ts": time.time(),
        "account_id": "acct_1",
        "org_id": "o",
        "key_id": "k",
        "ip": "203.0.113.9",
        "user_agent": "OpenAI/Python 1.99",
        "endpoint": "/v1/chat/completions",
        "status": 200,
        "request": '{"model":"m","messages":[{"role":"user","content":"hello there"}]}',
    }
    t0 = time.perf_counter()
    for _ in range(n):
        ext.observe(row)
        if len(ext.queue) > 100_000:
            ext.queue.clear()
    return (time.perf_counter() - t0) / n * 1e6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(enabled: bool, tmp: Path) -> tuple[object, threading.Thread, str, object]:
    import uvicorn

    from distillshield.config import load_settings
    from distillshield.extensions import standard_extensions
    from distillshield.gateway.app import build_app
    from tests.fakes import FakeUpstream

    port = free_port()
    s = load_settings(
        None,
        store__url=f"sqlite+aiosqlite:///{tmp / f'g{port}.db'}",
        admin__token="bench",
        server__port=port,
        detection__enabled=enabled,
        detection__interval_s=0.2,
        limits__key={"rpm": None, "tpm": None, "concurrent": None},
        limits__account={"rpm": None, "tpm": None, "concurrent": None, "tpd": None},
    )
    app = build_app(s, standard_extensions(), upstream=FakeUpstream())
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", loop="asyncio"))
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    while not server.started:
        time.sleep(0.02)
    base = f"http://127.0.0.1:{port}"
    r = httpx.post(f"{base}/admin/accounts", headers={"authorization": "Bearer bench"}, json={"id": "bench"})
    r.raise_for_status()
    key = httpx.post(
        f"{base}/admin/keys", headers={"authorization": "Bearer bench"}, json={"account_id": "bench"}
    ).json()["key"]
    return server, th, base, (key, app)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=1500, help="requests per arm")
    ap.add_argument("--json-out", type=Path)
    ap.add_argument("--check", action="store_true", help=f"exit 1 when the observer costs more than {BUDGET_US} us")
    args = ap.parse_args()
    obs_us = observer_cost()
    print(f"observer (hot path): {obs_us:.3f} us per request")
    lat: dict[bool, list[float]] = {True: [], False: []}
    bg: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        gws = {flag: start(flag, Path(tmp)) for flag in (False, True)}
        clients = {flag: httpx.Client(base_url=gws[flag][2], timeout=30) for flag in gws}
        block = 50
        for b in range(args.requests // block):
            for flag in (False, True) if b % 2 == 0 else (True, False):
                key = gws[flag][3][0]
                for i in range(block):
                    body = {
                        "model": "fake-model",
                        "max_tokens": 8,
                        "messages": [{"role": "user", "content": f"Explain step by step: what is {b} * {i}?"}],
                    }
                    t0 = time.perf_counter()
                    r = clients[flag].post(
                        "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}
                    )
                    lat[flag].append((time.perf_counter() - t0) * 1e3)
                    r.raise_for_status()
        time.sleep(1.0)
        ext = gws[True][3][1].state.ds.detection  # type: ignore[attr-defined]
        bg = {"processed": ext.processed, "last_run_s": ext.last_run_s}
        for flag, (server, th, _, _) in gws.items():
            server.should_exit = True  # type: ignore[attr-defined]
            th.join(30)
            clients[flag].close()

    def summary(xs: list[float]) -> dict[str, float]:
        xs = sorted(xs)
        return {"median_ms": round(statistics.median(xs), 3), "p90_ms": round(xs[int(0.9 * len(xs))], 3), "n": len(xs)}

    on, off = summary(lat[True]), summary(lat[False])
    print(f"detection off: {off}")
    print(f"detection on:  {on}   (median difference {on['median_ms'] - off['median_ms']:+.3f} ms)")
    print(f"background: processed {bg.get('processed')} requests")
    result = {
        "observer_us": round(obs_us, 4),
        "off": off,
        "on": on,
        "background": bg,
        "cpus": os.cpu_count(),
        "load_avg_at_end": os.getloadavg(),
    }
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=2))
    return 1 if args.check and obs_us > BUDGET_US else 0


if __name__ == "__main__":
    sys.exit(main())
