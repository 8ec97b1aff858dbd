"""Generate the watermark benchmarks' corpora with the embedded model (resumable).

    .venv/bin/python benchmarks/watermark_corpus.py                 # all corpora (1-3 h on 2 shared cores)
    .venv/bin/python benchmarks/watermark_corpus.py --n 40          # at most 40 prompts per corpus

Corpora (JSONL in BENCH_DIR, one completion per line with prompt, text, tokens, seconds):
  kgw.jsonl          140 prompts, max 400 tokens for the first 100 (attribution) and 200 after: KGW
                     gamma=0.25 delta=2 h=1, each under a random one of 1,000 account keys
  plain.jsonl        100 x max 200 tokens: no watermark
  attacker.jsonl     100 x max 200 tokens: KGW under the one key of "acct-attacker" (radioactivity teacher)
  gumbel.jsonl       60 x max 200 tokens: Gumbel-max h=4, each under a random account key
  strong.jsonl       30 x max 200 tokens: KGW with the strong delta=4, each under a random account key
  kgw3.jsonl         100 x max 200 tokens: KGW with delta=3, each under a random account key
Every completion: T=1.0, llama.cpp's default top-k 40 / top-p 0.95 / min-p 0.05.
"""

from __future__ import annotations

import argparse
import sys

from watermark_common import (
    ATTACKER,
    SECRET,
    account_ids,
    append_jsonl,
    bench_dir,
    chat,
    load_llm,
    prompts,
    read_jsonl,
    rng,
)

from distillshield.watermark.gumbel import GumbelWatermark
from distillshield.watermark.keys import KeyRing
from distillshield.watermark.kgw import GreenListWatermark

TEMPERATURE = 1.0
# (prompts, max tokens, prompts at 400 tokens): small enough for 2 shared cores (~110k tokens in all)
CORPORA = {
    "kgw": (140, 200, 100),
    "plain": (100, 200, 0),
    "attacker": (100, 200, 0),
    "gumbel": (60, 200, 0),
    "strong": (30, 200, 0),
    "kgw3": (100, 200, 0),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=None, help="at most this many prompts per corpus")
    ap.add_argument("--corpora", default=",".join(CORPORA))
    args = ap.parse_args()
    keys = KeyRing(SECRET)
    kgw = GreenListWatermark(0.25, 2.0, 1)
    gumbel = GumbelWatermark(4)
    accounts = account_ids()
    ps = prompts(max(c[0] for c in CORPORA.values()))
    llm = load_llm()
    out = bench_dir()
    for corpus in args.corpora.split(","):
        path = out / f"{corpus}.jsonl"
        done = {r["i"] for r in read_jsonl(path)}
        pick = rng({"plain": 1, "kgw": 2, "gumbel": 3, "attacker": 4, "strong": 5, "kgw3": 6}[corpus])
        n_prompts, short, n_long = CORPORA[corpus]
        n_prompts = min(n_prompts, args.n or n_prompts)
        for i, prompt in enumerate(ps[:n_prompts]):
            account = ATTACKER if corpus == "attacker" else pick.choice(accounts)
            if i in done:
                continue
            key = keys.account(account)
            hook = None
            if corpus in ("kgw", "attacker"):
                hook = kgw.processor(key)
            elif corpus == "strong":
                hook = kgw.processor(key, delta=4.0)
            elif corpus == "kgw3":
                hook = kgw.processor(key, delta=3.0)
            elif corpus == "gumbel":
                hook = gumbel.processor(key, temperature=TEMPERATURE)
            max_tokens = 400 if i < n_long else short
            text, n, dt = chat(llm, prompt, max_tokens, TEMPERATURE, seed=1000 + i, hook=hook)
            append_jsonl(
                path,
                {
                    "i": i,
                    "corpus": corpus,
                    "account": None if corpus == "plain" else account,
                    "prompt": prompt,
                    "text": text,
                    "tokens": n,
                    "seconds": round(dt, 3),
                },
            )
            print(f"{corpus} {i + 1}/{n_prompts} {n} tokens {n / dt:.0f} tok/s", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
