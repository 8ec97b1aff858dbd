"""The policy stage's cost per request, in microseconds, against a baseline measured in the same run.

    .venv/bin/python benchmarks/policy_latency.py [--n 50000] [--e2e 400] [--json out.json]

Micro: `PolicyEngine.decide` and the whole `PolicyStage.apply` (decision, audit JSON, request caps,
throttled scopes, watermark, transform set-up) under the shipped default policy for the cases that
matter: an honest account with no verdict (the fast path nearly all traffic takes), flagged accounts
that run through the rules, a member of a blocked cluster, an allowlisted account. Transforms: one whole
chat response with a <think> block, and one 120-chunk stream, per request. The baseline is the same
harness calling a function that does the risk-board lookup and nothing else.

End to end (--e2e N): two gateways on the fake upstream in this process, policy on and off, N
sequential requests each (interleaved, so both see the same machine load); median and p90 latency.
The budget is 50 µs per request for the policy in the hot path.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `tests.fakes` for the fake upstream

from distillshield.config import LimitSet, PolicySettings  # noqa: E402
from distillshield.contracts import AccountRisk  # noqa: E402
from distillshield.gateway.limits import Scope  # noqa: E402
from distillshield.gateway.policy import PolicyError, PolicyRefusal, PolicyStage  # noqa: E402
from distillshield.gateway.risk import LocalRiskBoard  # noqa: E402
from distillshield.gateway.transforms import ResponseTransform  # noqa: E402
from distillshield.gateway.upstream.base import GenRequest  # noqa: E402
from distillshield.store.database import Account, ApiKey, KeyContext, Org  # noqa: E402


def ctx(account: str, verification: str = "none", org: str = "o") -> KeyContext:
    key = ApiKey("k" + account, account, "", "00", "00", 0.0, None)
    return KeyContext(key, Account(account, org, account, 0.0, "standard", verification, "active"), Org(org, org, 0.0))


def per_call_us(fn: Callable[[], Any], n: int, repeats: int = 5) -> float:
    """Median over `repeats` of the mean time per call, in µs."""
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        for _ in range(n):
            fn()
        runs.append((time.perf_counter_ns() - t0) / n / 1000.0)
    return statistics.median(runs)


def micro(n: int) -> dict[str, float]:
    board = LocalRiskBoard()
    stage = PolicyStage(PolicySettings(), board)
    engine = stage.engine
    scopes = (
        Scope("key", "k", LimitSet(rpm=600, tpm=200_000, concurrent=32)),
        Scope("account", "a", LimitSet(rpm=1200, tpm=400_000, concurrent=64, tpd=20_000_000)),
        Scope("org", "o", LimitSet()),
    )
    board.update(AccountRisk("sus-cot", 0.6, "suspicious", None, {"cot": 0.8, "templates": 0.4}))
    board.update(AccountRisk("ext-verified", 0.85, "extraction", "c-small", {"templates": 0.9}))
    board.update(AccountRisk("hydra-1", 0.95, "extraction", "c-big", {"templates": 0.95}))
    for i in range(2, 10):
        board.update(AccountRisk(f"hydra-{i}", 0.5, "suspicious", "c-big", {}))
    cases = {
        "honest, a cluster block standing": ctx("honest"),
        "suspicious (watermark)": ctx("sus-cot"),
        "extraction, verified (watermark+degrade+throttle)": ctx("ext-verified", "business"),
        "member of a blocked cluster": ctx("hydra-5"),
    }

    def lookup_only() -> Any:
        return board.get("honest")

    out: dict[str, float] = {"baseline: risk-board lookup only": per_call_us(lookup_only, n)}
    honest = ctx("honest")
    out["decide: honest, nothing standing (the fast path)"] = per_call_us(
        lambda: engine.decide(honest, board.get("honest")), n
    )
    try:  # sets a standing cluster block: from here on every account's decision checks it
        stage.apply(ctx("hydra-1"), _gen(), scopes, {})
    except PolicyRefusal:
        pass
    for name, c in cases.items():
        aid = c.account.id
        out[f"decide: {name}"] = per_call_us(lambda c=c, aid=aid: engine.decide(c, board.get(aid)), n)

    # The first request after detection republishes a verdict misses the memo and runs the rules.
    ext = ctx("ext-verified", "business")
    fresh = [AccountRisk("ext-verified", 0.85, "extraction", "c-small", {"templates": 0.9}) for _ in range(1000)]
    it = iter(())

    def cold() -> Any:
        nonlocal it
        r = next(it, None)
        if r is None:
            it = iter(fresh)
            r = next(it)
        return engine.decide(ext, r)

    out["decide: extraction, verified, new verdict (rules run)"] = per_call_us(cold, n)

    def apply(c: KeyContext) -> Callable[[], Any]:
        def go() -> Any:
            try:
                return stage.apply(c, _gen(), scopes, {})
            except PolicyRefusal:
                return None

        return go

    gen_cost = per_call_us(_gen, n)
    for name, c in cases.items():
        out[f"apply (whole stage): {name}"] = per_call_us(apply(c), n) - gen_cost
    resp = _response()
    out["transform: whole chat response (1 KB, <think>)"] = per_call_us(
        lambda: ResponseTransform("chat").whole(resp), max(1000, n // 10)
    )
    chunks = _chunks()

    def stream() -> None:
        tf = ResponseTransform("chat")
        for ch in chunks:
            tf.chunk(ch)
        tf.tail()

    out["transform: 120-chunk stream, whole request"] = per_call_us(stream, max(200, n // 100))
    return out


def _gen() -> GenRequest:
    body = {"model": "m", "messages": [{"role": "user", "content": "q"}], "max_tokens": 512, "logprobs": True}
    return GenRequest("chat", body, "m", False, 512, "user: q")


def _response() -> dict[str, Any]:
    text = "<think>" + "Let me reason about this carefully. " * 14 + "</think>\n\n" + "The answer is 42. " * 25
    msg = {"role": "assistant", "content": text, "reasoning_content": "why " * 20}
    return {"id": "c", "object": "chat.completion", "choices": [{"index": 0, "message": msg, "finish_reason": "stop"}]}


def _chunks() -> list[dict[str, Any]]:
    words = ["<thi", "nk>", *(["step "] * 40), "</th", "ink>", *(["answer "] * 76)]
    out = [
        {
            "id": "x",
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {"content": w}, "finish_reason": None}],
        }
        for w in words
    ]
    out.append(
        {"id": "x", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    )
    return out


def e2e(n: int) -> dict[str, Any]:
    """Median/p90 request latency through a running gateway, policy on vs off, interleaved."""
    import tempfile

    import httpx

    from tests.conftest import make_settings, start_gateway
    from tests.fakes import FakeUpstream

    tmp = Path(tempfile.mkdtemp(prefix="policy-bench-"))
    unlimited = {"rpm": None, "tpm": None, "concurrent": None, "tpd": None}
    common = {"limits__account": unlimited, "limits__key": unlimited, "detection__enabled": False}
    on = start_gateway(make_settings(tmp / "on", **common), upstream=FakeUpstream())
    off = start_gateway(make_settings(tmp / "off", policy__enabled=False, **common), upstream=FakeUpstream())
    try:
        keys = {"on": on.create_key("bench"), "off": off.create_key("bench")}
        flagged = on.create_key("flagged", verification="business")
        on.state.risk.update(AccountRisk("flagged", 0.9, "extraction", None, {"cot": 0.9}))
        body = {"model": "fake-model", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}
        lat: dict[str, list[float]] = {"policy off": [], "policy on, honest": [], "policy on, extraction (degrade)": []}
        targets = [("policy off", off, keys["off"]), ("policy on, honest", on, keys["on"]),
                   ("policy on, extraction (degrade)", on, flagged)]  # fmt: skip
        with httpx.Client(timeout=30) as client:
            for i in range(n + 50):
                for name, g, key in targets:
                    t0 = time.perf_counter()
                    r = client.post(
                        f"{g.base}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}
                    )
                    dt = (time.perf_counter() - t0) * 1000
                    assert r.status_code == 200, r.text
                    if i >= 50:  # warm-up
                        lat[name].append(dt)
        return {
            name: {"median_ms": round(statistics.median(v), 3), "p90_ms": round(sorted(v)[int(len(v) * 0.9)], 3)}
            for name, v in lat.items()
        }
    finally:
        on.stop()
        off.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50_000, help="calls per micro-benchmark repeat")
    ap.add_argument("--e2e", type=int, default=400, help="requests per gateway (0: skip)")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()
    try:
        res: dict[str, Any] = {"micro_us": micro(args.n)}
    except PolicyError as exc:
        sys.exit(f"error: {exc}")
    base = res["micro_us"]["baseline: risk-board lookup only"]
    print(f"{'case':60s} {'µs/request':>10s} {'minus baseline':>15s}")
    for name, us in res["micro_us"].items():
        print(f"{name:60s} {us:10.2f} {us - base:15.2f}")
    if args.e2e:
        res["e2e_ms"] = e2e(args.e2e)
        print(f"\nend to end, {args.e2e} sequential requests each, fake upstream:")
        for name, v in res["e2e_ms"].items():
            print(f"  {name:32s} median {v['median_ms']:.3f} ms   p90 {v['p90_ms']:.3f} ms")
    res["machine"] = {
        "python": platform.python_version(),
        "cpus": __import__("os").cpu_count(),
        "platform": platform.platform(),
    }
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
