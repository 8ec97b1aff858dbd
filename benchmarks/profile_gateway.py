"""Where a gateway's CPU goes under load: py-spy samples one gateway process while overhead.py's load generator
drives it, and the stacks are summed per function (share of all samples in which the function is on the stack,
and where the sample was taken).

The gateway, the mock upstream and the load generator are overhead.py's (the same processes and settings as its
gateway rows); `--set KEY=VALUE` changes the gateway's settings as overhead.py's `--variant` does. The default is
a fleet replica (docs/fleet.md): audit rows to a Redis stream, the risk board and the rate limits on Redis, no
detection in the process.

    .venv/bin/pip install '.[profile]'          # py-spy
    .venv/bin/python benchmarks/profile_gateway.py --seconds 20 --concurrency 64
    .venv/bin/python benchmarks/profile_gateway.py --stream --set limits__backend=memory

py-spy needs permission to read the gateway's memory (root, or ptrace allowed for the user). Sampling slows the
gateway down (the req/s printed is not a throughput figure); the shares are what to read.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import overhead as ov  # noqa: E402

FLEET = [
    "audit__sink=redis",
    "risk__backend=redis",
    "limits__backend=redis",
    "detection__enabled=false",
]
# The stages of the request path a reader looks for first (inclusive shares).
STAGES = {
    "request path (Gateway.handle)": "Gateway.handle (gateway/pipeline.py)",
    "authentication": "Authenticator.authenticate (gateway/auth.py)",
    "rate limits: reserve": "reserve (gateway/limits/",
    "rate limits: settle and release": "finish (gateway/limits/",
    "upstream call": "HttpUpstream.complete (gateway/upstream/http.py)",
    "upstream stream": "HttpUpstream.stream_batches (gateway/upstream/http.py)",
    "policy stage": "PolicyStage.apply (gateway/policy/",
    "audit writer (batches to the sink)": "AuditWriter._run (store/writer.py)",
    "response sent (Starlette Response)": "Response.__call__ (starlette/responses.py)",
    "uvicorn send": "RequestResponseCycle.send (uvicorn/protocols/http/httptools_impl.py)",
}


def fold(raw: Path) -> tuple[int, Counter[str], Counter[str]]:
    """py-spy's raw (collapsed) stacks -> total samples, inclusive and self samples per function."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        own[frames[-1]] += n
        for f in set(frames):
            inclusive[f] += n
    return total, inclusive, own


def stage_shares(total: int, inclusive: Counter[str]) -> dict[str, float]:
    out = {}
    for label, needle in STAGES.items():
        n = max((c for f, c in inclusive.items() if needle in f), default=0)
        out[label] = round(100 * n / total, 1) if total else 0.0
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20.0, help="profiled seconds under load")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--stream", action="store_true", help="streamed completions")
    ap.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    ap.add_argument("--set", action="append", default=[], help="gateway setting KEY=VALUE (repeatable)")
    ap.add_argument("--top", type=int, default=25, help="functions listed by own samples")
    ap.add_argument("--py-spy", default=shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"))
    ap.add_argument("--json-out", type=Path)
    a = ap.parse_args()
    if not Path(a.py_spy).exists():
        print(f"py-spy not found at {a.py_spy}: .venv/bin/pip install '.[profile]'", file=sys.stderr)
        return 2
    settings = [*FLEET, f"audit__stream_key=dsprofile:{uuid.uuid4().hex[:8]}", *a.set]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTILLSHIELD_")}
    with tempfile.TemporaryDirectory(prefix="ds-profile-") as tmp:
        work = Path(tmp)
        mock = ov.Target("direct", "mock", f"http://127.0.0.1:{ov.free_port()}")
        gw = ov.Target("gateway", "gateway", f"http://127.0.0.1:{ov.free_port()}")
        mock.proc = ov._spawn(ov._self("mock", "--port", mock.base.rsplit(":", 1)[1]), work / "mock.log")
        sets = [x for kv in settings for x in ("--set", kv)]
        gw.proc = ov._spawn(
            ov._self("gateway", "--port", gw.base.rsplit(":", 1)[1], "--upstream", mock.base, "--workdir", tmp, *sets),
            work / "gateway.log",
            env=env,
        )
        try:
            ov._wait_ready(mock, "/v1/models", 30)
            ov._wait_ready(gw, "/healthz", 120)
            ov._http("POST", gw.base + "/admin/accounts", {"id": "bench", "org_id": "bench-org"}, ov.ADMIN_TOKEN)
            gw.key = ov._http("POST", gw.base + "/admin/keys", {"account_id": "bench"}, ov.ADMIN_TOKEN)["key"]
            raw = work / "stacks.txt"
            spy = subprocess.Popen(
                [a.py_spy, "record", "-p", str(gw.proc.pid), "-d", str(int(a.seconds)), "-r", str(a.rate), "-f", "raw",
                 "-o", str(raw), "--nonblocking"],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )  # fmt: skip
            load = ov._loadgen(gw, a.concurrency, a.stream, 1.0, max(1.0, a.seconds - 2))
            _, err = spy.communicate(timeout=a.seconds + 60)
            if spy.returncode != 0 or not raw.exists():
                print(f"py-spy failed: {err.decode(errors='replace').strip()[-500:]}", file=sys.stderr)
                return 1
            total, inclusive, own = fold(raw)
        finally:
            ov._stop(gw.proc)
            ov._stop(mock.proc)
    stages = stage_shares(total, inclusive)
    top = [(f, round(100 * n / total, 1)) for f, n in own.most_common(a.top)] if total else []
    mode = "stream" if a.stream else "non-stream"
    print(f"gateway ({', '.join(settings)}), {mode}, concurrency {a.concurrency}: {total} samples; "
          f"{load.get('rps', 0):.0f} req/s while sampled, errors {load.get('errors')}")  # fmt: skip
    print("\nshare of samples with the stage on the stack:")
    for label, pct in stages.items():
        print(f"  {pct:5.1f}%  {label}")
    print("\nwhere the samples were taken (own time):")
    for f, pct in top:
        print(f"  {pct:5.1f}%  {f}")
    if a.json_out:
        out = {"settings": settings, "mode": mode, "concurrency": a.concurrency, "samples": total, "load": load,
               "stages": stages, "own": top}  # fmt: skip
        a.json_out.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
