"""Watermark overhead on the embedded model: what the logits hook adds to generation time.

Two measurements, both on SmolLM2-135M (llama.cpp, 2 threads):
  1. in-run share: the hook times itself (perf_counter around each call) while the model generates,
     so hook time / generation time is measured under the same machine load;
  2. A/B: the same prompts and seeds generated without and with the hook, interleaved round by round
     (a shared machine drifts), comparing seconds per generated token (medians).

    .venv/bin/python benchmarks/watermark_overhead.py              # 12 prompts x 128 tokens x 3 rounds
    .venv/bin/python benchmarks/watermark_overhead.py --json-out overhead.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import numpy as np
from watermark_common import SECRET, chat, load_llm, machine, prompts

from distillshield.watermark.gumbel import GumbelWatermark
from distillshield.watermark.keys import KeyRing
from distillshield.watermark.kgw import GreenListWatermark
from distillshield.watermark.tournament import TournamentWatermark


class Timed:
    """Wraps a hook and accumulates the seconds spent inside it."""

    def __init__(self, hook: Any) -> None:
        self.hook = hook
        self.seconds = 0.0
        self.calls = 0

    def __call__(self, ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        t = time.perf_counter()
        out = self.hook(ids, scores)
        self.seconds += time.perf_counter() - t
        self.calls += 1
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=12)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()
    ring = KeyRing(SECRET)
    schemes = {
        "kgw": lambda k: GreenListWatermark(0.25, 2.0, 1).processor(k),
        "gumbel": lambda k: GumbelWatermark(4).processor(k, temperature=1.0),
        "tournament": lambda k: TournamentWatermark(4).processor(k, temperature=1.0),
        "tournament-h8": lambda k: TournamentWatermark(8).processor(k, temperature=1.0),  # the default since 12-05
    }
    llm = load_llm()
    ps = prompts(args.prompts)
    chat(llm, "warm up", 8, 1.0, 0)
    per_token: dict[str, list[float]] = {"none": [], **{k: [] for k in schemes}}
    hook_share: dict[str, list[float]] = {k: [] for k in schemes}
    hook_us: dict[str, list[float]] = {k: [] for k in schemes}
    for rnd in range(args.rounds):
        for i, p in enumerate(ps):
            arms = ("none", *schemes)
            # Interleaved: each prompt runs all arms back to back, in an order that rotates so no arm is
            # always first. reset() drops llama.cpp's prompt cache, so every arm pays the same prompt
            # processing (otherwise the arms after the first reuse the cached prompt and look faster).
            for arm in arms[(i + rnd) % len(arms) :] + arms[: (i + rnd) % len(arms)]:
                hook = Timed(schemes[arm](ring.account(f"acct-{i:04d}"))) if arm != "none" else None
                llm.reset()
                _, n, dt = chat(llm, p, args.tokens, 1.0, seed=rnd * 1000 + i, hook=hook)
                if n:
                    per_token[arm].append(dt / n)
                if hook is not None and hook.calls:
                    hook_share[arm].append(hook.seconds / dt)
                    hook_us[arm].append(1e6 * hook.seconds / hook.calls)
        print(f"round {rnd + 1}/{args.rounds} done", flush=True)
    base = statistics.median(per_token["none"])
    result: dict[str, Any] = {
        "machine": machine(),
        "prompts": len(ps),
        "max_tokens": args.tokens,
        "rounds": args.rounds,
        "ms_per_token_median": {k: round(1e3 * statistics.median(v), 3) for k, v in per_token.items()},
        "ab_overhead_pct": {k: round(100 * (statistics.median(per_token[k]) / base - 1), 2) for k in schemes},
        "hook_us_per_token_median": {k: round(statistics.median(v), 1) for k, v in hook_us.items()},
        "hook_share_of_generation_pct": {k: round(100 * statistics.median(v), 2) for k, v in hook_share.items()},
    }
    print(json.dumps(result, indent=2))
    if args.json_out:
        with open(args.json_out, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
