"""Run the fleet topology of docs/fleet.md as local processes: N gateway replicas, audit workers, a detector
worker and its extraction shards, all on one config (PostgreSQL and Redis as the config names them).

    python deploy/fleet.py -c deploy/fleet.yaml --gateways 3 --base-port 8787 --extract-shards 2

Each process is `python -m distillshield -c CONFIG ...` exactly as you would start it by hand (the commands are
printed). The launcher waits until every gateway's /readyz answers 200, prints `fleet ready`, and on SIGTERM or
SIGINT stops the gateways (each drains its requests into the stream), then the workers, and exits 0 when every
process stopped cleanly. A process that dies on its own stops the whole fleet with exit status 1. Logs:
--log-dir (one file per process).
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def _cmd(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "distillshield", "-c", str(config), *args]


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310 - loopback
            return resp.status == 200
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-c", "--config", type=Path, required=True, help="the fleet's config (see deploy/fleet.yaml)")
    ap.add_argument("--gateways", type=int, default=3)
    ap.add_argument("--base-port", type=int, default=8787, help="gateway i listens on base-port + i")
    ap.add_argument("--ports", help="the gateways' ports, comma-separated (instead of --gateways/--base-port)")
    ap.add_argument("--audit-workers", type=int, default=1)
    ap.add_argument("--detect-workers", type=int, default=1, choices=[0, 1], help="one per deployment (docs/fleet.md)")
    ap.add_argument("--extract-shards", type=int, default=2, help="`worker extract` shards (0: the detector extracts)")
    ap.add_argument("--log-dir", type=Path, default=Path("fleet-logs"))
    ap.add_argument("--ready-timeout-s", type=float, default=120.0)
    a = ap.parse_args(argv)
    a.log_dir.mkdir(parents=True, exist_ok=True)

    procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(name: str, cmd: list[str]) -> None:
        print(f"{name}: {' '.join(cmd)}", flush=True)
        log = (a.log_dir / f"{name}.log").open("wb")
        procs.append((name, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)))

    for i in range(a.audit_workers):
        start(f"audit-{i + 1}", _cmd(a.config, "worker", "audit", "--name", f"audit-{i + 1}"))
    n = a.extract_shards if a.detect_workers else 0
    for i in range(n):
        start(f"extract-{i}", _cmd(a.config, "worker", "extract", "--shard", str(i), "--shards", str(n),
                                   "--name", f"extract-{i}"))  # fmt: skip
    for i in range(a.detect_workers):
        start(f"detect-{i + 1}", _cmd(a.config, "worker", "detect", "--name", f"detect-{i + 1}", "--shards", str(n)))
    ports = [int(x) for x in a.ports.split(",")] if a.ports else [a.base_port + i for i in range(a.gateways)]
    for i, port in enumerate(ports):
        start(f"gateway-{i + 1}", _cmd(a.config, "serve", "--port", str(port), "--log-level", "warning"))

    stopping = False

    def on_signal(_sig: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    deadline = time.monotonic() + a.ready_timeout_s
    pending = set(ports)
    status = 0
    while pending and not stopping:
        pending = {p for p in pending if not _ready(f"http://127.0.0.1:{p}/readyz")}
        dead = [(n, p) for n, p in procs if p.poll() is not None]
        if dead or time.monotonic() > deadline:
            print(f"fleet failed to start: {dead or f'gateways on {sorted(pending)} not ready'}", flush=True)
            stopping, status = True, 1
            break
        time.sleep(0.2)
    if not stopping:
        print(f"fleet ready: gateways on {', '.join(f'http://127.0.0.1:{p}' for p in ports)}", flush=True)
    while not stopping:
        dead = [(n, p.returncode) for n, p in procs if p.poll() is not None]
        if dead:
            print(f"stopped on its own: {dead}; stopping the fleet", flush=True)
            stopping, status = True, 1
        time.sleep(0.2)

    # Gateways first (their last rows go to the stream), then the workers (they stop after their current read):
    # the extraction shards before the detector, which folds what they published last.
    for kind in ("gateway", "extract", "detect", "audit"):
        group = [(n, p) for n, p in procs if n.startswith(kind) and p.poll() is None]
        for _n, p in group:
            p.send_signal(signal.SIGTERM)
        for n, p in group:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                print(f"{n} did not stop within 60 s; killed", flush=True)
                status = 1
    bad = [(n, p.returncode) for n, p in procs if p.returncode not in (0, -signal.SIGTERM)]
    if bad:
        print(f"exit statuses: {bad}", flush=True)
        status = 1
    print("fleet stopped", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
