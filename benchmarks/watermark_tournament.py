"""Tournament sampling (SynthID-style) on the embedded model: detection, false positives and diversity.

For each number of tournament rounds in --layers, on the embedded model (llama.cpp's default top-k 40 /
top-p 0.95 / min-p 0.05, context width 4, each completion under a random one of the benchmark's account
keys); plain sampling and Gumbel-max (h=4) beside it for diversity (docs/watermark.md has Gumbel's
detection figures):

  detection    completions of real user prompts at T = 1.0 and 0.7, cut to exactly 200 tokens (shorter
               ones are left out and counted), each tested under its own key: share detected (z >= 4 and
               exact p <= 3.2e-5: Detection.detected), three ways on the same texts: the unweighted count,
               entropy-weighted from the text alone (what `watermark detect` does with a bare text), and
               entropy-weighted with the prompt known (a leaked data set of prompt-answer pairs)
  false pos.   real unwatermarked text (human prompts, GPT-4 answers, book passages, programs) tested under
               each of --keys account keys, unweighted and entropy-weighted (text alone): share detected
  diversity    --diversity-prompts prompts, each sampled --samples times at T = 1.0 under ONE account key
               (what a customer who samples a prompt repeatedly gets): distinct-2 (distinct bigrams over
               all bigrams of the samples, per prompt) and self-BLEU (sacrebleu: each sample against the
               others; lower = more diverse), against plain sampling with the same seeds: per arm the
               mean per-prompt difference from plain sampling with a paired bootstrap 95% CI (prompts
               resampled), as a share of plain's mean

    .venv/bin/python benchmarks/watermark_tournament.py --json-out tournament.json
    .venv/bin/python benchmarks/watermark_tournament.py --layers 2 4 8 --prompts 20 --diversity-prompts 5
    .venv/bin/python benchmarks/watermark_tournament.py --layers 8 --prompts 0 --real-limit 0 --diversity-prompts 16
    .venv/bin/python benchmarks/watermark_tournament.py --layers 4 6 --prompts 50 --diversity-prompts 16 --no-gumbel
    .venv/bin/python benchmarks/watermark_tournament.py --offset 100 --layers 6 --prompts 150 --diversity-prompts 0 \
        --real-limit 0 --text-alone-only      # detection on prompts no earlier run used
    .venv/bin/python benchmarks/watermark_tournament.py --compare plain.json arm-a.json arm-b.json   # vs plain

Needs sacrebleu (`pip install .[bench]`). Results: docs/watermark.md, "Tournament sampling".
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from watermark_common import SECRET, account_ids, chat, load_llm, machine, paired_bootstrap, prompts, rng
from watermark_detection import real_corpora, upper95

from distillshield.watermark.attribution import score_keys
from distillshield.watermark.gumbel import GumbelWatermark
from distillshield.watermark.keys import KeyRing
from distillshield.watermark.tokenizer import default_tokenizer
from distillshield.watermark.tournament import TournamentWatermark
from distillshield.watermark.weights import ModelWeigher

L = 200


def distinct2(texts: list[str]) -> float:
    grams = [tuple(t.split()[i : i + 2]) for t in texts for i in range(max(len(t.split()) - 1, 0))]
    return len(set(grams)) / len(grams) if grams else float("nan")


def self_bleu(texts: list[str]) -> float:
    import sacrebleu

    scores = [sacrebleu.sentence_bleu(t, [o for j, o in enumerate(texts) if j != i]).score for i, t in enumerate(texts)]
    return float(np.mean(scores)) if scores else float("nan")


def compare(paths: list[str]) -> None:
    """Print (and return nothing else) each file's diversity arms against the first file's plain sampling,
    as a run holding both would: paired bootstrap over the same prompts."""
    runs = [json.loads(open(p, encoding="utf-8").read()) for p in paths]  # noqa: SIM115 - read once
    base = runs[0]["diversity"].get("plain")
    if base is None:
        raise SystemExit(f"{paths[0]} has no plain-sampling arm (it ran with --no-plain)")
    where = (runs[0].get("offset"), runs[0].get("prompts"), base["prompts"])
    for path, run in zip(paths, runs, strict=True):
        for name, arm in run["diversity"].items():
            if name == "plain" and run is runs[0]:
                continue
            if (run.get("offset"), run.get("prompts"), arm["prompts"]) != where:
                raise SystemExit(f"{path}: {name} ran on other prompts than {paths[0]}'s plain sampling")
            cells = []
            for metric in ("distinct2", "self_bleu"):
                rel, ci = paired_bootstrap(base["per_prompt"][metric], arm["per_prompt"][metric], relative=True)
                cells.append(
                    f"{metric} {arm[metric]:.3f} vs plain {100 * rel:+.1f}% ({100 * ci[0]:+.1f} to {100 * ci[1]:+.1f})"
                )
            print(f"{name}: " + "; ".join(cells))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--prompts", type=int, default=20, help="prompts per temperature for detection")
    ap.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 0.7])
    ap.add_argument("--keys", type=int, default=1000)
    ap.add_argument("--real-limit", type=int, default=100, help="texts per real corpus for false positives (0: skip)")
    ap.add_argument("--diversity-prompts", type=int, default=5)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--diversity-tokens", type=int, default=100)
    ap.add_argument("--no-gumbel", action="store_true", help="leave Gumbel-max out of the diversity arms")
    ap.add_argument(
        "--no-plain",
        action="store_true",
        help="diversity arms only, no plain-sampling baseline (for a run that only needs the arms' per-prompt figures)",
    )
    ap.add_argument("--context-width", type=int, default=4, help="the tournament's context width h")
    ap.add_argument(
        "--offset",
        type=int,
        default=0,
        help="skip the first N real prompts (a fresh sample of "
        "prompts for a confirmation run: detection and diversity take theirs after these)",
    )
    ap.add_argument(
        "--text-alone-only",
        action="store_true",
        help="detection: skip the prompt-known test (one model pass less per text)",
    )
    ap.add_argument(
        "--score-layers",
        type=int,
        default=None,
        help="detection: also test each text with only the first N rounds' bits (e.g. 8: a text marked in mode "
        "strong, 16 rounds, read by a detector configured for the default 8)",
    )
    ap.add_argument("--json-out", default=None)
    ap.add_argument(
        "--compare",
        nargs="+",
        metavar="JSON",
        default=None,
        help="no generation: each diversity arm of these --json-out files against the plain sampling "
        "of the first (runs on the same prompts, e.g. one with plain and others with --no-plain)",
    )
    args = ap.parse_args()
    if args.compare:
        compare(args.compare)
        return
    tok = default_tokenizer()
    ring = KeyRing(SECRET)
    accounts = account_ids(args.keys)
    keys = [ring.account(a) for a in accounts]
    llm = load_llm()
    weigher = ModelWeigher(threads=1)  # the embedded model again, scoring (logits of every position)
    ways: tuple[str, ...] = ("unweighted", "weighted, text alone", "weighted, prompt known")
    if args.text_alone_only:
        ways = ways[:2]
    if args.score_layers:
        ways += (f"weighted, text alone, first {args.score_layers} rounds",)
    ps = prompts(args.offset + args.prompts + args.diversity_prompts)[args.offset :]
    det_prompts, div_prompts = ps[: args.prompts], ps[args.prompts :]
    h = args.context_width
    schemes: dict[str, Any] = {
        f"tournament m={m}" + (f" h={h}" if h != 4 else ""): TournamentWatermark(h, layers=m) for m in args.layers
    }
    out: dict[str, Any] = {"machine": machine(), "L": L, "offset": args.offset, "prompts": args.prompts,
                           "detection": {}, "false_positives": {}, "diversity": {}}  # fmt: skip
    t0 = time.perf_counter()

    fewer = TournamentWatermark(h, layers=args.score_layers) if args.score_layers else None  # --score-layers
    weigh_s: list[float] = []
    for name, wm in schemes.items():
        for temp in args.temperatures:
            pick = rng(7)
            hits = dict.fromkeys(ways, 0)
            zs: dict[str, list[float]] = {w: [] for w in ways}
            n = short = 0
            for i, prompt in enumerate(det_prompts):
                key = ring.account(pick.choice(accounts))
                hook = wm.processor(key, temperature=temp, seed=2000 + i)
                text, _, _ = chat(llm, prompt, L + 40, temp, seed=2000 + i, hook=hook)
                ids = tok.encode(text)
                if len(ids) < L:
                    short += 1
                    continue
                ids = ids[:L]
                t_w = time.perf_counter()
                bare = weigher.weights(ids)
                weigh_s.append(time.perf_counter() - t_w)
                dets = {
                    ways[0]: wm.detect(key, ids),
                    ways[1]: score_keys(wm, ids, [key], weights=[bare])[0][0],
                }
                if not args.text_alone_only:
                    dets[ways[2]] = score_keys(wm, ids, [key], weights=[weigher.weights(ids, prompt)])[0][0]
                if fewer is not None:
                    dets[ways[-1]] = score_keys(fewer, ids, [key], weights=[bare])[0][0]
                n += 1
                for w, d in dets.items():
                    hits[w] += int(d.detected)
                    zs[w].append(d.z)
            out["detection"][f"{name} T={temp}"] = {
                w: {"detected": hits[w], "n": n, "rate": hits[w] / n if n else float("nan"),
                    "median_z": float(np.median(zs[w])) if zs[w] else float("nan")}
                for w in ways
            } | {"shorter_than_L": short}  # fmt: skip
            took = time.perf_counter() - t0
            line = ", ".join(f"{w} {hits[w]}/{n}" for w in ways)
            print(f"detection {name} T={temp}: {line} ({took:.0f}s)", file=sys.stderr, flush=True)
    if weigh_s:
        out["weights_seconds_per_text"] = {"median": float(np.median(weigh_s)), "tokens": L, "threads": 1}

    texts = [t for corpus in real_corpora(args.real_limit).values() for t in corpus] if args.real_limit else []
    ids = [x for x in (tok.encode(t) for t in texts) if len(x) >= 50]
    bare_weights = [weigher.weights(x) for x in ids]
    for name, wm in schemes.items() if ids else ():
        for way, weights in (("unweighted", None), ("weighted, text alone", bare_weights)):
            flagged = sum(
                d.detected
                for j, x in enumerate(ids)
                for d in score_keys(wm, x, keys, weights=None if weights is None else [weights[j]])[0]
            )
            tests = len(ids) * len(keys)
            out["false_positives"][f"{name}, {way}"] = {
                "detected": flagged, "tests": tests, "texts": len(ids), "keys": len(keys),
                "rate": flagged / tests, "upper95": upper95(flagged, tests),
            }  # fmt: skip
            print(f"false positives {name}, {way}: {flagged}/{tests}", file=sys.stderr, flush=True)

    div: dict[str, Callable[[Any], Any] | None] = {} if args.no_plain else {"plain": None}
    if not args.no_gumbel:
        div["gumbel h=4"] = GumbelWatermark(4)  # deterministic per key and context: the contrast
    div.update(schemes)
    key = ring.account(accounts[0])
    for name, wm in div.items():
        d2, sb = [], []
        for i, prompt in enumerate(div_prompts):
            samples = []
            for s in range(args.samples):
                hook = None if wm is None else wm.processor(key, temperature=1.0, seed=3000 + 31 * i + s)  # type: ignore[union-attr]
                samples.append(chat(llm, prompt, args.diversity_tokens, 1.0, seed=3000 + 31 * i + s, hook=hook)[0])
            d2.append(distinct2(samples))
            sb.append(self_bleu(samples))
        out["diversity"][name] = {"distinct2": float(np.mean(d2)), "self_bleu": float(np.mean(sb)),
                                  "prompts": len(div_prompts), "samples": args.samples,
                                  "per_prompt": {"distinct2": d2, "self_bleu": sb}}  # fmt: skip
        if name != "plain" and "plain" in out["diversity"]:
            base = out["diversity"]["plain"]["per_prompt"]
            for metric, values in (("distinct2", d2), ("self_bleu", sb)):
                rel, ci = paired_bootstrap(base[metric], values, relative=True)
                out["diversity"][name][f"{metric}_vs_plain"] = {"relative": rel, "ci95": ci}
        print(f"diversity {name}: distinct-2 {np.mean(d2):.3f} self-BLEU {np.mean(sb):.1f}", file=sys.stderr)

    out["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(out, indent=2))
    if args.json_out:
        with open(args.json_out, "w") as fh:
            json.dump(out, fh, indent=2)


if __name__ == "__main__":
    main()
