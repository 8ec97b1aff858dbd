"""Leakage and honest impact of the policy: the simulator's live mode, same seed, without and with policy.

    .venv/bin/python benchmarks/policy_leakage.py [--scenario smoke] [--seed 1] [--speed 1440] [--every 30]

One run: the scenario's traffic is generated once (one seed) and replayed by the simulator's live
mode (`distillshield.simulate.live.replay`: real accounts and keys through the admin API, real
concurrency, at `--speed` simulated seconds per real second) into two gateways in turn, both on a fast
fake upstream that answers like a reasoning model (a <think> block, then the answer; logprobs when
asked):

- "without policy": policy.enabled false; the same risk reports are loaded, nothing acts on them;
- "with policy": the shipped default policy, enforce mode.

Detection is batch analysis, periodic: every `--every` simulated minutes the analyser's streaming
engine (what `distillshield analyze` runs, with the shipped default model unless --model is given;
`--train` trains one with `distillshield train` on the same scenario with seed + 1000, no adversarial
rounds, instead) reports on all traffic so far, and the report is loaded
through POST /admin/risk before the next window is replayed. Online detection is off in both
gateways: it timestamps requests with the gateway's clock, so under time compression every account
looks like a burst and its timing features (trained on simulated time) do not apply.

From each gateway's audit log (the decision column) and the simulator's labels (account -> persona):

- leakage: attacker responses served in full (status 200 and no degrade decision) per campaign;
- honest impact: honest requests altered (degrade), throttled (a throttle decision, or a 429 under
  one), challenged or blocked, over all honest requests. Watermarked honest requests are counted apart
  (the watermark changes no response shape); no watermark secret is configured here.

Time is compressed (a simulated day in about a minute at --speed 1440), so rate limits would bind on
every account alike: both gateways run with limits off, and the throttle action, which scales limits,
cannot show its effect here (see docs/policy.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator
from importlib import resources
from pathlib import Path
from typing import Any

import orjson

from distillshield.config import load_settings
from distillshield.detect.scoring import DEFAULT_ARTEFACT
from distillshield.gateway.upstream.base import ChunkBatch, GenRequest, batches_of

ADMIN = "bench-admin-token"
CAMPAIGNS = ("bulk_harvester", "cot_harvester", "hydra")
UNLIMITED = {"rpm": None, "tpm": None, "concurrent": None, "tpd": None}


class ReasoningModel:
    """A fast upstream that answers like a reasoning model: <think>...</think> then the answer, cut at
    max_tokens (one token per word), logprobs when asked. Deterministic per request."""

    name = "bench-reasoning"

    def __init__(self) -> None:
        self.reasoning = ("First I restate the problem. Then I work through it step by step. " * 3).split()
        self.answer = "So the final answer is the one derived above, with a short explanation.".split()

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def ready(self) -> bool:
        return True

    def models(self) -> list[str]:
        return []  # any model name is served (the simulator's model names pass through)

    def _words(self, req: GenRequest) -> list[str]:
        words = ["<think>", *self.reasoning, "</think>", *self.answer]
        return words[: max(1, req.max_tokens)]

    def _usage(self, req: GenRequest, n: int) -> dict[str, int]:
        p = max(1, len(req.prompt_text) // 4)
        return {"prompt_tokens": p, "completion_tokens": n, "total_tokens": p + n}

    async def complete(self, req: GenRequest) -> dict[str, Any]:
        words = self._words(req)
        text = " ".join(words)
        lp = {"content": [{"token": w, "logprob": -0.5, "bytes": None, "top_logprobs": []} for w in words[:5]]}
        want_lp = bool(req.body.get("logprobs"))
        if req.api == "chat":
            choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text},
                                      "logprobs": lp if want_lp else None, "finish_reason": "stop"}  # fmt: skip
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "logprobs": lp if want_lp else None, "finish_reason": "stop"}
            obj = "text_completion"
        return {"id": "b", "object": obj, "created": 0, "model": req.model, "choices": [choice],
                "usage": self._usage(req, len(words))}  # fmt: skip

    def stream_batches(self, req: GenRequest) -> AsyncGenerator[ChunkBatch, None]:
        return batches_of(self.stream(req))

    async def stream(self, req: GenRequest) -> AsyncIterator[dict[str, Any]]:
        words = self._words(req)
        base = {"id": "b", "object": "chat.completion.chunk", "created": 0, "model": req.model}
        for i in range(0, len(words), 4):
            piece = " ".join(words[i : i + 4]) + " "
            c = {"index": 0, "delta": {"content": piece}} if req.api == "chat" else {"index": 0, "text": piece}
            yield {**base, "choices": [{**c, "finish_reason": None}]}
        last = {"index": 0, "delta": {}} if req.api == "chat" else {"index": 0, "text": ""}
        yield {**base, "choices": [{**last, "finish_reason": "stop"}]}
        yield {**base, "choices": [], "usage": self._usage(req, len(words))}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Gateway:
    """A gateway (uvicorn in a thread) on the fake reasoning upstream."""

    def __init__(self, workdir: Path, policy: bool) -> None:
        import uvicorn

        from distillshield.extensions import standard_extensions
        from distillshield.gateway.app import build_app

        self.port = free_port()
        self.settings = load_settings(
            None,
            store__url=f"sqlite+aiosqlite:///{workdir / 'gateway.db'}",
            admin__token=ADMIN,
            server__port=self.port,
            limits__key=UNLIMITED,
            limits__account=UNLIMITED,
            policy__enabled=policy,
            policy__review_poll_s=1.0,
            detection__enabled=False,  # batch reports drive the risk board (see the module docstring)
        )
        self.app = build_app(self.settings, standard_extensions(), upstream=ReasoningModel())
        cfg = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="error", loop="asyncio")
        self.server = uvicorn.Server(cfg)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the benchmark gateway did not start")
            time.sleep(0.05)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rows(self) -> list[dict[str, Any]]:
        state = self.app.state.ds
        loop = self.server.servers[0].get_loop()

        async def go() -> list[dict[str, Any]]:
            await state.audit.flush()
            return [r async for r in state.store.iter_audit()]

        return asyncio.run_coroutine_threadsafe(go(), loop).result(120)

    def load_report(self, report: dict[str, Any]) -> None:
        import urllib.request

        req = urllib.request.Request(
            f"{self.base}/admin/risk",
            data=orjson.dumps(report),
            headers={"authorization": f"Bearer {ADMIN}", "content-type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=60) as resp:  # noqa: S310 - loopback only
            assert resp.status == 200

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(60)


def train_model(workdir: Path, scenario: str, seed: int) -> Path:
    """A detection model trained on the same scenario with another seed (encoder none: fast)."""
    traffic, model = workdir / f"train-{seed}.jsonl", workdir / f"model-{seed}.json"
    if model.exists():
        return model
    cli = [sys.executable, "-m", "distillshield"]
    subprocess.run([*cli, "simulate", "--scenario", scenario, "--seed", str(seed), "--out", str(traffic)],
                   check=True, capture_output=True)  # fmt: skip
    subprocess.run([*cli, "train", str(traffic), "--out", str(model), "--rounds", "0", "--encoder", "none"],
                   check=True, capture_output=True)  # fmt: skip
    return model


def decision_of(row: dict[str, Any]) -> dict[str, Any]:
    d = row.get("decision") or ""
    if d.startswith("{"):
        return orjson.loads(d)
    if d.startswith("refuse:"):
        return {"action": "allow", "refuse": d[7:]}
    return {"action": "allow"}


def measure(
    rows: list[dict[str, Any]], persona_of: dict[str, str], kind_of: dict[str, str], flagged: set[str]
) -> dict[str, Any]:
    """Leakage per campaign and honest impact, from one gateway's audit log. `flagged`: accounts some
    detection report flagged; honest impact on the others is the policy's own collateral."""
    full: Counter[str] = Counter()
    sent: Counter[str] = Counter()
    first_stop: dict[str, float] = {}
    first_ts: dict[str, float] = {}
    honest = Counter[str]()
    honest_by_persona: Counter[str] = Counter()
    collateral = 0
    for r in rows:
        acct = r.get("account_id")
        if acct not in kind_of:
            continue
        d = decision_of(r)
        enforced = not d.get("shadow")
        action = d.get("action", "allow") if enforced else "allow"
        persona = persona_of[acct]
        if kind_of[acct] == "attack":
            sent[persona] += 1
            first_ts.setdefault(persona, r["ts"])
            if r["status"] == 200 and action not in ("degrade",):
                full[persona] += 1
            elif persona not in first_stop:
                first_stop[persona] = r["ts"]
        else:
            honest["requests"] += 1
            if action in ("degrade", "throttle", "challenge", "block"):
                honest[action] += 1
                honest_by_persona[persona] += 1
                collateral += acct not in flagged
            elif action == "watermark":
                honest["watermark (invisible)"] += 1
    affected = sum(honest[a] for a in ("degrade", "throttle", "challenge", "block"))
    return {
        "attack_requests": dict(sent),
        "served_in_full": dict(full),
        "seconds_to_first_stop": {p: round(first_stop[p] - first_ts[p], 1) for p in first_stop},
        "honest": dict(honest),
        "honest_affected": affected,
        "honest_affected_by_persona": dict(honest_by_persona),
        "honest_affected_never_flagged": collateral,
        "honest_affected_share": affected / honest["requests"] if honest["requests"] else 0.0,
    }


def batch_reports(records: list[dict[str, Any]], model_path: Path, every_s: float) -> list[tuple[float, dict]]:
    """Periodic batch detection: (window end, analyser report over all traffic up to it) per window.

    One streaming detection engine (the one `distillshield analyze` uses) is fed window by window, and
    the report is taken at each window's end: what an hourly (here: every `every_s` simulated seconds)
    `distillshield analyze` of the traffic so far would report. Labels are stripped first.
    """
    from distillshield.detect.analyze import build_report, extract, replay
    from distillshield.detect.corpus import LineErrors
    from distillshield.detect.engine import Engine
    from distillshield.detect.scoring import DetectionModel
    from distillshield.traffic import TrafficRecord

    model = DetectionModel.load(model_path)
    clean = [TrafficRecord.model_validate({k: v for k, v in r.items() if k not in ("label", "label_meta", "sim")})
             for r in records]  # fmt: skip
    obs = extract(clean, model)
    obs.sort(key=lambda o: o.ts)
    engine = Engine(model.members(False), None)
    out, i = [], 0
    t = records[0]["ts"]
    while i < len(obs):
        t += every_s
        window = []
        while i < len(obs) and obs[i].ts < t:
            window.append(obs[i])
            i += 1
        if window:
            replay(window, engine)
        out.append((t, build_report(engine, LineErrors(), {"source": "benchmark"})))
    return out


def main() -> None:
    from distillshield.simulate import engine, scenario
    from distillshield.simulate.live import LiveOptions, replay

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", default="smoke")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--speed", type=float, default=1440.0, help="simulated seconds per real second")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--every", type=float, default=30.0, help="batch detection every N simulated minutes")
    ap.add_argument("--model", type=Path, help="detection model (default: the shipped one)")
    ap.add_argument("--train", action="store_true", help="train a model on the scenario with seed + 1000 instead")
    ap.add_argument("--workdir", type=Path, help="where databases and traffic go (default: a temp dir)")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="policy-leakage-"))
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if args.train:
        model = train_model(workdir, args.scenario, args.seed + 1000)
    else:
        model = args.model or Path(str(resources.files("distillshield.detect") / "data" / DEFAULT_ARTEFACT))
    sc, seed = scenario.load(args.scenario, args.seed)
    records = list(engine.iter_records(sc, seed))
    persona_of: dict[str, str] = {}
    kind_of: dict[str, str] = {}
    for rec in records:
        kind, _, persona = (rec.get("label") or "benign:unknown").partition(":")
        persona_of.setdefault(rec["account_id"], persona)
        if kind == "attack" or rec["account_id"] not in kind_of:
            kind_of[rec["account_id"]] = kind  # an account that ever attacks counts as an attacker
    print(f"scenario {sc.name} seed {seed}: {len(records)} requests, {len(kind_of)} accounts; model {model}")
    reports = batch_reports(records, model, args.every * 60)
    last = reports[-1][1]["summary"]["verdicts"]
    flagged = {a["account_id"] for _, rep in reports for a in rep["accounts"] if a["verdict"] != "benign"}
    false_flags = sorted(a for a in flagged if kind_of.get(a) != "attack")
    n_honest = sum(k != "attack" for k in kind_of.values())
    print(f"batch detection every {args.every:g} simulated min: {len(reports)} reports; at the end {last}; "
          f"honest accounts flagged at some point: {len(false_flags)} of {n_honest}")  # fmt: skip

    results: dict[str, Any] = {}
    for arm, policy in (("without policy", False), ("with policy", True)):
        armdir = workdir / arm.replace(" ", "-")
        armdir.mkdir(exist_ok=True)
        for old in armdir.glob("gateway.db*"):  # a re-run with the same --workdir starts from an empty log
            old.unlink()
        gw = Gateway(armdir, policy)
        sent, by_status = 0, Counter[str]()
        t_arm = time.perf_counter()
        try:
            i = 0
            with open(armdir / "served.jsonl", "wb") as fh:
                for end, report in reports:
                    window = []
                    while i < len(records) and records[i]["ts"] < end:
                        window.append(records[i])
                        i += 1
                    if window:
                        opts = LiveOptions(gw.base, ADMIN, concurrency=args.concurrency, speed=args.speed)
                        stats = asyncio.run(replay(iter(window), opts, fh))
                        sent += stats.sent
                        by_status.update(stats.by_status)
                    gw.load_report(report)  # the analysis of everything up to `end` reaches the gateway
            time.sleep(1.0)  # the last responses reach the audit queue
            rows = gw.rows()
        finally:
            gw.stop()
        m = measure(rows, persona_of, kind_of, flagged)
        # real seconds on the gateway's clock -> simulated minutes
        m["simulated_minutes_to_first_stop"] = {
            p: round(v * args.speed / 60, 1) for p, v in m.pop("seconds_to_first_stop").items()
        }
        m["live"] = {"sent": sent, "by_status": dict(by_status), "elapsed_s": round(time.perf_counter() - t_arm, 1)}
        results[arm] = m
        print(f"{arm}: sent {sent} in {m['live']['elapsed_s']:.0f} s, by status {dict(by_status)}")

    table = []
    personas = sorted({p for a, p in persona_of.items() if kind_of[a] == "attack"})
    for p in personas:
        off = results["without policy"]["served_in_full"].get(p, 0)
        on = results["with policy"]["served_in_full"].get(p, 0)
        ratio = (off / on) if on else float("inf")
        table.append({"campaign": p, "without": off, "with": on, "reduction": ratio,
                      "target_met": ratio >= 10 if p in CAMPAIGNS else None})  # fmt: skip
    print(f"\n{'campaign':22s} {'full, without':>14s} {'full, with':>11s} {'reduction':>10s}")
    for t in table:
        red = "inf" if t["reduction"] == float("inf") else f"{t['reduction']:.1f}x"
        mark = {True: " (target met)", False: " (target NOT met)", None: ""}[t["target_met"]]
        print(f"{t['campaign']:22s} {t['without']:14d} {t['with']:11d} {red:>10s}{mark}")
    h = results["with policy"]
    print(f"\nhonest requests: {h['honest'].get('requests', 0)}; affected with policy: {h['honest_affected']} "
          f"({100 * h['honest_affected_share']:.3f}%; target <= 0.1%): {h['honest']}")  # fmt: skip
    print(f"  by persona: {h['honest_affected_by_persona']}; on accounts detection never flagged "
          f"(the policy's own collateral): {h['honest_affected_never_flagged']}")  # fmt: skip
    results["detection"] = {
        "final_verdicts": last,
        "honest_accounts_flagged": len(false_flags),
        "honest_accounts_flagged_by_persona": dict(Counter(persona_of[a] for a in false_flags)),
    }
    results["table"] = table
    results["run"] = {
        "scenario": sc.name, "seed": seed, "speed": args.speed, "concurrency": args.concurrency,
        "detection": f"batch every {args.every:g} simulated min", "model": str(model),
        "elapsed_s": round(time.time() - t0, 1), "cpus": os.cpu_count(), "python": platform.python_version(),
    }  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=lambda v: "inf" if v == float("inf") else v))


if __name__ == "__main__":
    main()
