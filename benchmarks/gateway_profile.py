"""Where a gateway's CPU goes under load: py-spy samples of one gateway process, summarised by function.

Starts the overhead benchmark's mock upstream and one gateway (the same roles as benchmarks/overhead.py, so
the same settings: limits on but far above the load, SQLite log, plus any --set), creates a key, drives it
with overhead.py's load generator at --concurrency for --duration seconds while `py-spy record` samples the
gateway, then prints the share of samples per function: inclusive (the function or anything it called) and
self (the function's own code; for uvloop's C event loop that is `Runner.run`). The raw samples are kept
(--raw) for a flame graph (flamegraph.pl, speedscope).

Needs py-spy (`.venv/bin/pip install py-spy`; it reads another process's memory: root, or ptrace allowed).

    .venv/bin/python benchmarks/gateway_profile.py
    .venv/bin/python benchmarks/gateway_profile.py --stream --set audit__sink=redis --set risk__backend=redis \\
        --set limits__backend=redis --set detection__enabled=false --set audit__stream_key=bench:audit:profile
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from overhead import ADMIN_TOKEN, _http, free_port

HERE = Path(__file__).resolve().parent


def frame_name(frame: str) -> str:
    """'func (path/file.py:123)' -> 'func (file.py)': one entry per function, whatever its line."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0].rsplit('/', 1)[-1]})" if where else name


def summarise(raw: Path, top: int) -> dict[str, object]:
    """Inclusive and self shares of samples per function, from py-spy's raw (collapsed-stack) output."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        names = [frame_name(f) for f in stack.split(";")]
        total += n
        for name in set(names):
            inclusive[name] += n
        own[names[-1]] += n
    if total == 0:
        raise SystemExit(f"py-spy wrote no samples to {raw}")
    return {
        "samples": total,
        "inclusive": [(k, round(100 * v / total, 1)) for k, v in inclusive.most_common(top)],
        "self": [(k, round(100 * v / total, 1)) for k, v in own.most_common(top)],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--duration", type=float, default=12.0, help="seconds sampled under load (default 12)")
    ap.add_argument("--stream", action="store_true", help="streamed requests")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="gateway setting (repeatable)")
    ap.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--raw", default=None, help="keep py-spy's raw samples here")
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        raise SystemExit("py-spy is not installed: .venv/bin/pip install py-spy")
    me = [sys.executable, str(HERE / "overhead.py")]
    with tempfile.TemporaryDirectory(prefix="ds-profile-") as tmp:
        mport, gport = free_port(), free_port()
        upstream, base = f"http://127.0.0.1:{mport}", f"http://127.0.0.1:{gport}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("DISTILLSHIELD_")}
        sets = [a for kv in args.set for a in ("--set", kv)]
        procs = [
            subprocess.Popen([*me, "--role", "mock", "--port", str(mport)], start_new_session=True),
            subprocess.Popen(
                [*me, "--role", "gateway", "--port", str(gport), "--upstream", upstream, "--workdir", tmp, *sets],
                env=env,
                start_new_session=True,
            ),  # fmt: skip
        ]
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    _http("GET", base + "/healthz")
                    break
                except Exception:  # noqa: BLE001 - not listening yet
                    if time.monotonic() > deadline or procs[1].poll() is not None:
                        raise SystemExit("the gateway did not start (see its output above)") from None
                    time.sleep(0.5)
            _http("POST", base + "/admin/accounts", {"id": "bench", "org_id": "bench-org"}, ADMIN_TOKEN)
            key = _http("POST", base + "/admin/keys", {"account_id": "bench"}, ADMIN_TOKEN)["key"]
            raw = Path(args.raw) if args.raw else Path(tmp) / "samples.txt"
            sampler = subprocess.Popen([spy, "record", "-p", str(procs[1].pid), "-r", str(args.rate), "-d",
                                        str(round(args.duration)), "-f", "raw", "-o", str(raw), "--nonblocking"],
                                       stdout=subprocess.DEVNULL)  # fmt: skip
            load = subprocess.run(
                [*me, "--role", "loadgen", "--url", base + "/v1/chat/completions", "--key", key, "--concurrency",
                 str(args.concurrency), "--warmup", "1", "--duration", str(args.duration - 1),
                 *(["--stream"] if args.stream else [])],
                capture_output=True, check=False,
            )  # fmt: skip
            sampler.wait(timeout=args.duration + 60)
            if load.returncode != 0:
                raise SystemExit(f"the load generator failed: {load.stderr.decode(errors='replace')[-500:]}")
            result = {"load": json.loads(load.stdout), "settings": args.set, "stream": args.stream,
                      **summarise(raw, args.top)}  # fmt: skip
        finally:
            for p in procs:
                p.terminate()
                p.wait(timeout=30)
    print(f"{result['load']['rps']:.0f} req/s at concurrency {args.concurrency} under the sampler; "
          f"{result['samples']} samples")  # fmt: skip
    for kind in ("inclusive", "self"):
        print(f"--- {kind}")
        for name, share in result[kind]:  # type: ignore[attr-defined]
            print(f"{share:5.1f}%  {name}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
