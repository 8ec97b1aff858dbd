"""How much evidence each round of the default tournament carries, and what weighting the rounds would buy.

The default detector (watermark/tournament.py) counts the 1-bits of all m rounds alike: SynthID's mean
score. But the rounds are not alike. Round 1 is a knock-out between two draws from the model's own
distribution; each later round is played between winners of the round before, whose distribution is
already tilted and more concentrated, so two draws more often pick the same token and the round has less
to choose. SynthID's paper therefore also describes a weighted mean score, with more weight on early
rounds. This benchmark measures it on the embedded model before anyone builds it:

  generate   default-tournament answers (h=8, 8 rounds, each under a random one of the benchmark's account
             keys) to --dev prompts and to --eval prompts at --temperature; token ids and the entropy
             weights of `watermark detect` (text alone) are kept in the benchmark directory
  analyse    the entropy-weighted share of 1-bits per round on the dev answers; round weights from it
             (their excess over 1/2, scaled to integers 1..4, so the exact null stays small); then on
             every set, answers cut to exactly 200 tokens: detected (z >= 4 and exact p <= 3.2e-5, as
             Detection.detected) with the rounds counted alike (the shipped test: the same decisions as
             `watermark detect`) and with the round weights, and the median z of each

    .venv/bin/python benchmarks/watermark_layers.py --dev 0:60 --eval 350:450 --temperature 0.7
    .venv/bin/python benchmarks/watermark_layers.py --analyse-only --dev 0:60 --eval 350:450 --temperature 0.7

Nothing here changes the product: the weights are a measurement for deciding whether to build the weighted
test. Results: docs/watermark.md, "Weighting the tournament's rounds: measured".
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
from watermark_common import SECRET, account_ids, bench_dir, chat, load_llm, machine, prompts, rng

from distillshield.watermark.keys import KeyRing, prf32
from distillshield.watermark.stats import normal_log10_sf
from distillshield.watermark.tokenizer import default_tokenizer
from distillshield.watermark.tournament import TournamentWatermark
from distillshield.watermark.weights import ModelWeigher, WeightedNull, weighted_pairs

H, M, L = 8, 8, 200


def span(text: str) -> tuple[int, int]:
    lo, _, hi = text.partition(":")
    if not (lo.isdigit() and hi.isdigit() and int(lo) < int(hi)):
        raise SystemExit(f"a prompt range is FIRST:END, e.g. 0:60; got {text!r}")
    return int(lo), int(hi)


def texts_file(lo: int, hi: int, temperature: float) -> Path:
    return bench_dir() / f"layers-{lo}-{hi}-T{temperature:g}.json"


def generate(lo: int, hi: int, temperature: float) -> None:
    tok = default_tokenizer()
    ring = KeyRing(SECRET)
    accounts = account_ids(1000)
    llm = load_llm()
    weigher = ModelWeigher(threads=1)
    wm = TournamentWatermark(H, layers=M)
    pick = rng(11)
    rows = []
    for i, prompt in enumerate(prompts(hi)[lo:hi]):
        account = pick.choice(accounts)
        hook = wm.processor(ring.account(account), temperature=temperature, seed=5000 + lo + i)
        text, _, _ = chat(llm, prompt, L + 40, temperature, seed=5000 + lo + i, hook=hook)
        ids = tok.encode(text)
        if len(ids) <= H:
            continue
        rows.append({"i": lo + i, "account": account, "ids": [int(x) for x in ids],
                     "w": [float(x) for x in weigher.weights(ids)]})  # fmt: skip
        print(f"prompt {lo + i}: {len(ids)} tokens", file=sys.stderr, flush=True)
    texts_file(lo, hi, temperature).write_text(json.dumps({"temperature": temperature, "rows": rows}))


def round_bits(ring: KeyRing, row: dict[str, Any], cut: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(bits (pairs, M): each scored pair's g-bit per round, round 1 first; the pairs' entropy weight levels)."""
    ids = np.asarray(row["ids"][:cut], np.int64)
    w = np.asarray(row["w"][:cut], np.float64)
    contexts, tokens, levels, _ = weighted_pairs([ids], [w], H)
    values = prf32(ring.account(row["account"]), contexts, tokens).astype(np.uint32)
    # The tournament plays round l on bit l (tournament.tournament: layer 0 first).
    return np.stack([(values >> np.uint32(r)) & np.uint32(1) for r in range(M)], axis=1).astype(np.int64), levels


def ones_rate(ring: KeyRing, rows: list[dict[str, Any]]) -> list[float]:
    """Per round, the share of 1-bits among the scored pairs, weighted by the pairs' entropy levels."""
    num, den = np.zeros(M), 0.0
    for r in rows:
        bits, levels = round_bits(ring, r)
        num += (bits * levels[:, None]).sum(axis=0)
        den += float(levels.sum())
    return (num / den).tolist() if den else [math.nan] * M


def detection(ring: KeyRing, rows: list[dict[str, Any]], round_weights: list[int]) -> dict[str, Any]:
    """Answers of at least L tokens, cut to L: S = sum over pairs and rounds of level * round weight * bit,
    against its exact null (each bit a fair coin without the key)."""
    hits, zs = 0, []
    threshold = normal_log10_sf(4.0)  # Detection.detected's: the exact p at most the normal tail at z = 4
    for r in rows:
        if len(r["ids"]) < L:
            continue
        bits, levels = round_bits(ring, r, L)
        weights = (levels[:, None] * np.asarray(round_weights, np.int64)[None, :]).ravel()
        s = int((bits.ravel() * weights).sum())
        null = WeightedNull(weights, 1, 0.5)
        z = null.z(s)
        zs.append(z)
        hits += int(z >= 4.0 and null.log10_sf(s) <= threshold)
    n = len(zs)
    return {"detected": hits, "n": n, "rate": hits / n if n else math.nan,
            "median_z": float(np.median(zs)) if zs else math.nan}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dev", default="0:60", help="prompts the round weights are measured on (FIRST:END)")
    ap.add_argument("--eval", nargs="*", default=["350:450"], help="prompt ranges to test both ways (FIRST:END)")
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--analyse-only", action="store_true", help="use the texts kept by an earlier run")
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()
    sets = [span(args.dev), *(span(e) for e in args.eval)]
    for lo, hi in sets:
        if not texts_file(lo, hi, args.temperature).exists():
            if args.analyse_only:
                raise SystemExit(
                    f"no texts for prompts {lo}:{hi} at T={args.temperature:g}: run without --analyse-only"
                )
            generate(lo, hi, args.temperature)
    ring = KeyRing(SECRET)
    loaded = {f"{lo}:{hi}": json.loads(texts_file(lo, hi, args.temperature).read_text())["rows"] for lo, hi in sets}
    dev = loaded[args.dev]
    rates = ones_rate(ring, dev)
    excess = [max(r - 0.5, 0.0) for r in rates]
    top = max(excess) or 1.0
    round_weights = [max(1, round(4 * e / top)) for e in excess]
    out: dict[str, Any] = {
        "machine": machine(),
        "temperature": args.temperature,
        "dev": {"prompts": args.dev, "answers": len(dev), "ones_rate_per_round": [round(r, 4) for r in rates]},
        "round_weights": round_weights,
        "detection": {},
    }
    print(f"dev {args.dev}: {len(dev)} answers; 1-bit share per round {[round(r, 4) for r in rates]}")
    print(f"round weights {round_weights}")
    for name, rows in loaded.items():
        alike, weighted = detection(ring, rows, [1] * M), detection(ring, rows, round_weights)
        out["detection"][name] = {"rounds alike (shipped)": alike, "rounds weighted": weighted,
                                  "ones_rate_per_round": [round(r, 4) for r in ones_rate(ring, rows)]}  # fmt: skip
        print(f"prompts {name}{' (dev)' if name == args.dev else ''}: rounds alike {alike['detected']}/{alike['n']} "
              f"(median z {alike['median_z']:.2f}); weighted {weighted['detected']}/{weighted['n']} "
              f"(median z {weighted['median_z']:.2f})")  # fmt: skip
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
