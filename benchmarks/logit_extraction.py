"""Logit extraction against the embedded model, through the gateway (issue 12, docs/policy.md).

The attack of "Stealing Part of a Production Language Model" (Carlini et al., ICML 2024), run on loopback
with the official OpenAI SDK against a gateway serving the embedded model (SmolLM2-135M-Instruct: hidden
size 576, vocabulary 49,152): for each of P prompts, bias a reference token and blocks of 19 other
tokens by +100 with `logit_bias`, ask for one output token and the top 20 logprobs; the biased tokens are
then the top 20, and their logprob differences are logit differences. The (P x T) matrix of differences
has rank at most the hidden size; the largest drop in its singular values says where. The plan, the
reading of the answers and the recovery are the simulator's logit_extraction persona's
(simulate/personas/attack/logit_extraction.py); this script sends them with the SDK, one query at a time.

Each configuration is one gateway process with the embedded model and these `logits` settings:

    open      logit_bias_with_logprobs=allow, max_top_logprobs=20   (no defence)
    default   the shipped settings: the combination is refused, top_logprobs lowered to 5
    noisy     as open, plus logprob_noise (keyed Gaussian noise on every returned logprob)

and reports the queries the attack spent, what it recovered (the estimated hidden size and the ratio of
the singular values around it), and, for the default settings, whether honest logprob users (top-5
logprobs, no logit_bias, temperature 0) got exactly the answers the undefended gateway gave.

    .venv/bin/python benchmarks/logit_extraction.py                         # 640 prompts x 640 tokens
    .venv/bin/python benchmarks/logit_extraction.py --prompts 100 --tokens 100 --configs open   # quick look
    .venv/bin/python benchmarks/logit_extraction.py --json-out logit.json --plot spectrum.png

Only loopback: the gateway is started here, on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from distillshield.simulate.personas.attack.logit_extraction import (
    AttackPlan,
    LogitReadout,
    attack_prompts,
    recover,
)

ADMIN = "bench-admin-token"
HIDDEN = 576  # SmolLM2-135M's hidden size (its config), what the attack should find
TOP = 20
CONFIGS: dict[str, dict[str, Any]] = {
    "open": {"logit_bias_with_logprobs": "allow", "max_top_logprobs": 20},
    "default": {},
    "noisy": {"logit_bias_with_logprobs": "allow", "max_top_logprobs": 20, "logprob_noise": 0.05},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _http(method: str, url: str, body: dict[str, Any] | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"authorization": f"Bearer {ADMIN}", "content-type": "application/json"}
    req = urllib.request.Request(url, method=method, data=data, headers=headers)
    with urllib.request.urlopen(req, timeout=60) as resp:  # noqa: S310 - loopback only
        return json.loads(resp.read() or b"null")


class Gateway:
    """`distillshield serve` on the embedded model with the given `logits` settings, in its own process."""

    def __init__(self, work: Path, logits: dict[str, Any]) -> None:
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "DISTILLSHIELD_ADMIN__TOKEN": ADMIN,
               "DISTILLSHIELD_STORE__URL": f"sqlite+aiosqlite:///{work / 'gateway.db'}",
               "DISTILLSHIELD_POLICY__ENABLED": "false", "DISTILLSHIELD_DETECTION__ENABLED": "false"}  # fmt: skip
        huge = json.dumps({"rpm": 10**9, "tpm": 10**12, "concurrent": 10**6, "tpd": 10**15})
        for scope in ("key", "account", "org"):
            env[f"DISTILLSHIELD_LIMITS__{scope.upper()}"] = huge
        for k, v in logits.items():
            env[f"DISTILLSHIELD_LOGITS__{k.upper()}"] = str(v)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "distillshield", "serve", "--port", str(self.port), "--log-level", "warning"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{self.base}/readyz", timeout=2) as r:  # noqa: S310 - loopback only
                    if r.status == 200:
                        break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"error: the gateway did not start (exit {self.proc.poll()})")
            time.sleep(0.3)

    def key(self, account: str) -> str:
        _http("POST", f"{self.base}/admin/accounts", {"id": account})
        return str(_http("POST", f"{self.base}/admin/keys", {"account_id": account})["key"])

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def attack(client: Any, model: str, n_prompts: int, n_tokens: int, top: int) -> tuple[LogitReadout, float]:
    """Sends the attack's plan (distillshield's, the simulator persona's) with the official SDK, stopping at
    the first query that cannot be read (refused, or fewer logprobs than the block); returns the readout
    and the seconds it took."""
    import openai

    plan = AttackPlan.make(n_prompts, n_tokens, top_logprobs=top)
    readout = LogitReadout()
    per_prompt, t0 = len(plan.blocks), time.perf_counter()
    for i, query in enumerate(plan.queries()):
        try:
            r = client.chat.completions.create(model=model, **query)
        except openai.APIStatusError as exc:
            readout.observe(query, exc.status_code, {"error": exc.body}, str(exc)[:200])
            break
        readout.observe(query, 200, r.model_dump(), None)
        if readout.errors:
            break
        if (i + 1) % (50 * per_prompt) == 0:
            print(f"  {(i + 1) // per_prompt}/{n_prompts} prompts, {readout.queries} queries, "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)  # fmt: skip
    return readout, time.perf_counter() - t0


def recovered(readout: LogitReadout) -> dict[str, Any]:
    """What the attack recovered (distillshield's `recover`), with the singular values at the true size."""
    rec = recover(readout.matrix())
    s = rec.singular_values
    return {"estimate": rec.estimate, "drop_decades": rec.drop_decades, "matrix": list(rec.shape),
            "s_at_hidden": [float(s[HIDDEN - 1]), float(s[HIDDEN])] if len(s) > HIDDEN else None,
            "ratio_at_hidden": rec.ratio_at(HIDDEN), "singular_values": [float(x) for x in s]}  # fmt: skip


def honest(client: Any, model: str, n: int = 30) -> list[list[tuple[str, float]]]:
    out = []
    for p in attack_prompts(n):
        r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Q: " + p}],
                                           max_tokens=2, temperature=0, logprobs=True, top_logprobs=5)  # fmt: skip
        out.append([(a.token, a.logprob) for e in r.choices[0].logprobs.content for a in e.top_logprobs])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--prompts", type=int, default=640, help="prompts (rows; more than the hidden size)")
    ap.add_argument("--tokens", type=int, default=640, help="tokens read per prompt (columns)")
    ap.add_argument("--configs", default="open,default,noisy", help="comma-separated: " + ", ".join(CONFIGS))
    ap.add_argument("--json-out", type=Path)
    ap.add_argument("--plot", type=Path, help="write the singular-value spectra as a PNG chart")
    a = ap.parse_args(argv)
    import openai

    names = [c.strip() for c in a.configs.split(",") if c.strip()]
    bad = [c for c in names if c not in CONFIGS]
    if bad:
        print(f"error: unknown configuration {bad[0]!r}; choose from {', '.join(CONFIGS)}", file=sys.stderr)
        return 2
    results: dict[str, Any] = {}
    answers: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            work = Path(tmp) / name
            work.mkdir()
            gw = Gateway(work, CONFIGS[name])
            try:
                client = openai.OpenAI(base_url=f"{gw.base}/v1", api_key=gw.key("thief"), max_retries=0)
                model = client.models.list().data[0].id
                print(f"{name}: attacking ({a.prompts} prompts x {a.tokens} tokens) ...", flush=True)
                readout, seconds = attack(client, model, a.prompts, a.tokens, TOP)
                res: dict[str, Any] = {"settings": CONFIGS[name], "queries": readout.queries,
                                       "seconds": round(seconds, 1), "refused": readout.first_error}  # fmt: skip
                if readout.first_error is None:
                    try:
                        res.update(recovered(readout))
                    except ValueError as exc:  # the answers do not make a matrix (docstring of `matrix`)
                        res["refused"] = f"nothing recovered: {exc}"
                evaluator = openai.OpenAI(base_url=f"{gw.base}/v1", api_key=gw.key("eval"), max_retries=0)
                answers[name] = honest(evaluator, model)
                results[name] = res
            finally:
                gw.stop()
    for name, res in results.items():
        line = f"{name:8s} queries {res['queries']:6d}  {res['seconds']:7.1f} s  "
        if res["refused"]:
            line += f"attack failed: {res['refused']}"
        else:
            ratio = res["ratio_at_hidden"] or 0.0
            line += (f"estimated hidden size {res['estimate']} (true {HIDDEN}); largest drop "
                     f"{res['drop_decades']} decades; s[{HIDDEN}]/s[{HIDDEN + 1}] = {ratio:.3g}")  # fmt: skip
        print(line)
    if "open" in answers:
        for name in answers:
            if name != "open":
                same = answers[name] == answers["open"]
                results[name]["honest_answers_unchanged"] = same
                print(f"{name:8s} honest top-5 logprob answers identical to the undefended gateway's: {same}")
    if a.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        for name, res in results.items():
            if res.get("singular_values"):
                ax.semilogy(res["singular_values"], label=f"{name}: estimate {res['estimate']}")
        ax.axvline(HIDDEN, color="grey", ls="--", lw=1, label=f"hidden size {HIDDEN}")
        ax.set_xlabel("index")
        ax.set_ylabel("singular value")
        ax.set_title("Logit-difference matrix recovered through the gateway")
        ax.legend()
        fig.tight_layout()
        fig.savefig(a.plot, dpi=120)
        print(f"wrote {a.plot}")
    if a.json_out:
        slim = {k: {kk: vv for kk, vv in v.items() if kk != "singular_values"} for k, v in results.items()}
        a.json_out.write_text(json.dumps(slim, indent=2))
        print(f"wrote {a.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
