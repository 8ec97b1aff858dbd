"""Generate the watermark benchmarks' corpora with the embedded model (resumable).

    .venv/bin/python benchmarks/watermark_corpus.py                 # all corpora (2-5 h on 2 shared cores)
    .venv/bin/python benchmarks/watermark_corpus.py --n 40          # at most 40 prompts per corpus
    .venv/bin/python benchmarks/watermark_corpus.py --corpora kgw,tournament --n 60   # attribution's texts

Corpora (JSONL in BENCH_DIR, one completion per line with prompt, text, tokens, seconds):
  kgw.jsonl          140 prompts, max 400 tokens for the first 100 (attribution) and 200 after: KGW
                     gamma=0.25 delta=2 h=1, each under a random one of 1,000 account keys
  plain.jsonl        100 x max 200 tokens: no watermark
  plain-b.jsonl      the same with other sampler seeds: how far two unwatermarked corpora differ (quality's control)
  attacker.jsonl     100 x max 200 tokens: KGW under the one key of "acct-attacker" (radioactivity teacher)
  gumbel.jsonl       60 x max 200 tokens: Gumbel-max h=4, each under a random account key
  strong.jsonl       30 x max 200 tokens: KGW with the strong delta=4, each under a random account key
  kgw3.jsonl         100 x max 200 tokens: KGW with delta=3, each under a random account key
  tournament.jsonl   100 x max 400 tokens: tournament sampling h=4 m=8, each under a random account key
  kgw-t0.7.jsonl, tournament-t0.7.jsonl   the same at temperature 0.7 (attribution at T=0.7)
  gumbel-400.jsonl   100 x max 400 tokens: Gumbel-max h=4 (attribution at 400 tokens)
  tournament-h8.jsonl  100 x max 400 tokens: the default tournament, h=8 m=8, each under a random account key
  student-plain.jsonl, student-attacker.jsonl   200 x max 200 tokens: no watermark, and the default tournament
                     under the one key of "acct-attacker" (the transformer student's teacher data,
                     watermark_radioactivity.py --student transformer)
Every completion: T=1.0 unless named, llama.cpp's default top-k 40 / top-p 0.95 / min-p 0.05. The prompts
are the same list for every corpus (prompt i is the i-th of watermark_common.prompts).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from watermark_common import (
    ATTACKER,
    SCHEMES,
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

from distillshield.watermark.keys import KeyRing


@dataclass(frozen=True)
class Corpus:
    prompts: int
    max_tokens: int  # after the first `n_long` prompts, which get 400
    n_long: int
    pick_seed: int  # of the random account per prompt
    scheme: str | None = None  # a key of SCHEMES; None: unwatermarked
    delta: float | None = None  # kgw: the bias (None: the scheme's 2.0)
    temperature: float = 1.0
    account: str | None = None  # one fixed account for every prompt
    seed_offset: int = 0  # of the sampler's seed per prompt (1000 + offset + i)


# small enough for 2 shared cores (~110k tokens for the first six)
CORPORA = {
    "kgw": Corpus(140, 200, 100, 2, "kgw"),
    "plain": Corpus(100, 200, 0, 1),
    "plain-b": Corpus(100, 200, 0, 1, seed_offset=50_000),  # plain again with other seeds: the noise floor
    "attacker": Corpus(100, 200, 0, 4, "kgw", account=ATTACKER),
    "gumbel": Corpus(60, 200, 0, 3, "gumbel"),
    "strong": Corpus(30, 200, 0, 5, "kgw", delta=4.0),
    "kgw3": Corpus(100, 200, 0, 6, "kgw", delta=3.0),
    "tournament": Corpus(100, 400, 100, 7, "tournament"),
    "kgw-t0.7": Corpus(100, 400, 100, 8, "kgw", temperature=0.7),
    "tournament-t0.7": Corpus(100, 400, 100, 9, "tournament", temperature=0.7),
    "gumbel-400": Corpus(100, 400, 100, 10, "gumbel"),
    "tournament-h8": Corpus(100, 400, 100, 11, "tournament-h8"),
    "student-plain": Corpus(200, 200, 0, 1),
    "student-attacker": Corpus(200, 200, 0, 4, "tournament-h8", account=ATTACKER),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=None, help="at most this many prompts per corpus")
    ap.add_argument("--corpora", default=",".join(CORPORA))
    args = ap.parse_args()
    names = args.corpora.split(",")
    if unknown := [c for c in names if c not in CORPORA]:
        ap.error(f"unknown corpora {', '.join(unknown)}; choose from {', '.join(CORPORA)}")
    keys = KeyRing(SECRET)
    accounts = account_ids()
    ps = prompts(max(CORPORA[c].prompts for c in names))
    llm = load_llm()
    out = bench_dir()
    for corpus in names:
        spec = CORPORA[corpus]
        path = out / f"{corpus}.jsonl"
        done = {r["i"] for r in read_jsonl(path)}
        pick = rng(spec.pick_seed)
        n_prompts = min(spec.prompts, args.n or spec.prompts)
        for i, prompt in enumerate(ps[:n_prompts]):
            account = spec.account or pick.choice(accounts)
            if i in done:
                continue
            hook = None
            if spec.scheme is not None:
                # kgw reads delta (None: its own); the sampling schemes read the temperature
                hook = SCHEMES[spec.scheme].processor(keys.account(account), delta=spec.delta,
                                                      temperature=spec.temperature)  # fmt: skip
            max_tokens = 400 if i < spec.n_long else spec.max_tokens
            text, n, dt = chat(llm, prompt, max_tokens, spec.temperature, seed=1000 + spec.seed_offset + i, hook=hook)
            append_jsonl(
                path,
                {
                    "i": i,
                    "corpus": corpus,
                    "account": None if spec.scheme is None else account,
                    "prompt": prompt,
                    "text": text,
                    "tokens": n,
                    "seconds": round(dt, 3),
                    "temperature": spec.temperature,
                },
            )
            print(f"{corpus} {i + 1}/{n_prompts} {n} tokens {n / dt:.0f} tok/s", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
