"""Quality cost of each watermark scheme on the embedded model.

perplexity  each corpus's completions (watermark_corpus.py) scored by the *unwatermarked* model,
            conditioned on their prompt (chat template applied), on their first --ppl-tokens tokens
            (so that 400-token corpora compare with 200-token ones): median per-text perplexity and
            token-weighted perplexity. Higher = the watermark pushed the text away from what the
            model itself prefers. Against `plain` (the same prompts and seeds, no watermark): the
            mean per-prompt difference in log-perplexity with a paired bootstrap 95% CI; a CI that
            holds 0 means no difference this sample can see. With `plain-b` (unwatermarked, other
            seeds: the control) also against it and against the mean of the two.
task        a small closed-book QA task: "What is the capital of X?" for 60 countries, answered
            twice each (seeds) at T=1.0 and once at T=0.2 (the embedded model's chat default),
            with no watermark, KGW (delta 2 and the strong delta 4) and Gumbel; accuracy = the
            answer names the capital. A one-word answer lies inside the opening that the Gumbel
            and tournament samplers leave unmarked (the answer's first h tokens), so at h=8 (the
            default) this task cannot see the watermark at all: hence
lists       the same capitals asked four countries at a time ("Country: Capital", one per line; 15
            lists, --seeds answers each at T=1.0 and T=0.7): item accuracy, and the accuracy of the
            items whose capital starts after the answer's first 8 tokens (the default's marked part),
            each against the unwatermarked arm with a paired bootstrap 95% CI over (list, seed).

  .venv/bin/python benchmarks/watermark_quality.py [--ppl-texts 100] [--json-out quality.json]
  .venv/bin/python benchmarks/watermark_quality.py --parts ppl --corpora plain,tournament
  .venv/bin/python benchmarks/watermark_quality.py --parts task,lists --seeds 4 --arms "tournament h=8 m=8 (default)"
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from typing import Any

import numpy as np
from watermark_common import SECRET, bench_dir, chat, load_llm, machine, paired_bootstrap, read_jsonl

from distillshield.watermark.gumbel import GumbelWatermark
from distillshield.watermark.keys import KeyRing
from distillshield.watermark.kgw import GreenListWatermark
from distillshield.watermark.tournament import TournamentWatermark

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Portugal": "Lisbon",
    "United Kingdom": "London", "Ireland": "Dublin", "Netherlands": "Amsterdam", "Belgium": "Brussels",
    "Austria": "Vienna", "Switzerland": "Bern", "Poland": "Warsaw", "Czech Republic": "Prague",
    "Hungary": "Budapest", "Greece": "Athens", "Sweden": "Stockholm", "Norway": "Oslo", "Denmark": "Copenhagen",
    "Finland": "Helsinki", "Russia": "Moscow", "Ukraine": "Kyiv|Kiev", "Turkey": "Ankara", "Egypt": "Cairo",
    "Kenya": "Nairobi", "Nigeria": "Abuja", "South Africa": "Pretoria|Cape Town", "Morocco": "Rabat",
    "Ethiopia": "Addis Ababa", "Ghana": "Accra", "Japan": "Tokyo", "China": "Beijing", "India": "New Delhi|Delhi",
    "South Korea": "Seoul", "Thailand": "Bangkok", "Vietnam": "Hanoi", "Indonesia": "Jakarta",
    "Philippines": "Manila", "Malaysia": "Kuala Lumpur", "Pakistan": "Islamabad", "Iran": "Tehran",
    "Iraq": "Baghdad", "Saudi Arabia": "Riyadh", "Israel": "Jerusalem", "United States": "Washington",
    "Canada": "Ottawa", "Mexico": "Mexico City", "Brazil": "Brasilia|Brasília", "Argentina": "Buenos Aires",
    "Chile": "Santiago", "Peru": "Lima", "Colombia": "Bogota|Bogotá", "Venezuela": "Caracas", "Cuba": "Havana",
    "Australia": "Canberra", "New Zealand": "Wellington", "Afghanistan": "Kabul", "Nepal": "Kathmandu",
    "Bangladesh": "Dhaka", "Sri Lanka": "Colombo|Sri Jayawardenepura Kotte", "Iceland": "Reykjavik|Reykjavík",
}  # fmt: skip


PPL_CORPORA = ("plain", "plain-b", "kgw", "attacker", "kgw3", "gumbel", "strong", "tournament", "tournament-h8")


def perplexities(llm: Any, rows: list[dict[str, Any]], max_tokens: int) -> list[tuple[int, float, int]]:
    """(prompt index, mean NLL, tokens) of each completion's first `max_tokens` tokens (0: all) given its prompt,
    under the unwatermarked model."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    fmt = Jinja2ChatFormatter(
        llm.metadata["tokenizer.chat_template"],
        eos_token=llm._model.token_get_text(llm.token_eos()),
        bos_token=llm._model.token_get_text(llm.token_bos()),
    )
    out = []
    for r in rows:
        prompt = fmt(messages=[{"role": "user", "content": r["prompt"]}]).prompt
        p_ids = llm.tokenize(prompt.encode(), add_bos=False, special=True)
        c_ids = llm.tokenize(r["text"].encode(), add_bos=False, special=False)
        c_ids = c_ids[:max_tokens] if max_tokens > 0 else c_ids
        if not c_ids or len(p_ids) + len(c_ids) > llm.n_ctx():
            continue
        llm.reset()
        llm.eval(p_ids + c_ids)
        logits = np.asarray(llm.scores[len(p_ids) - 1 : len(p_ids) + len(c_ids) - 1], dtype=np.float64)
        m = logits.max(axis=1, keepdims=True)
        logz = (m + np.log(np.exp(logits - m).sum(axis=1, keepdims=True)))[:, 0]
        nll = float(np.mean(logz - logits[np.arange(len(c_ids)), c_ids]))
        out.append((r["i"], nll, len(c_ids)))
    return out


def paired_difference(a: dict[int, float], b: dict[int, float]) -> dict[str, Any]:
    """Mean of b[i] - a[i] over the prompts both have, with a paired bootstrap 95% CI, their median, and how many
    prompts came out higher."""
    common = sorted(set(a) & set(b))
    d = np.asarray([b[i] - a[i] for i in common], dtype=np.float64)
    mean, ci = paired_bootstrap([a[i] for i in common], [b[i] for i in common])
    return {
        "prompts": len(d), "mean": round(mean, 4), "ci95": [round(x, 4) for x in ci],
        "median": round(float(np.median(d)), 4) if len(d) else math.nan, "higher": int((d > 0).sum()),
    }  # fmt: skip


def correct(answer: str, capital: str) -> bool:
    a = answer.lower()
    return any(c.lower() in a for c in capital.split("|"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ppl-texts", type=int, default=100)
    ap.add_argument("--ppl-tokens", type=int, default=200, help="score the first N tokens of each completion (0: all)")
    ap.add_argument("--corpora", default=",".join(PPL_CORPORA), help="ppl: the corpora to score (plain included)")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--parts", default="ppl,task", help="ppl, task, lists (comma-separated)")
    ap.add_argument("--arms", nargs="*", default=None, help="task: only these arms (and the unwatermarked baseline)")
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    result: dict[str, Any] = {"machine": machine(), "perplexity": {}, "task": {}}

    if "ppl" in parts:
        ppl(args, result)
    if "task" in parts:
        task(args, result)
    if "lists" in parts:
        lists(args, result)
    print(json.dumps(result, indent=2))
    if args.json_out:
        with open(args.json_out, "w") as fh:
            json.dump(result, fh, indent=2)


def ppl(args: Any, result: dict[str, Any]) -> None:
    d = bench_dir()
    llm = load_llm(logits_all=True)
    names = [c for c in args.corpora.split(",") if c]
    if unknown := [c for c in names if c not in PPL_CORPORA]:
        raise SystemExit(f"unknown corpora {', '.join(unknown)}; choose from {', '.join(PPL_CORPORA)}")
    corpora = {c: read_jsonl(d / f"{c}.jsonl") for c in names}
    corpora = {c: rows for c, rows in corpora.items() if rows}
    if not corpora:
        raise SystemExit(f"no corpus found in {d}: run watermark_corpus.py --corpora {args.corpora} first")
    # The same prompts for every scheme: perplexity depends on the prompt as much as on the scheme.
    common = sorted(set.intersection(*({r["i"] for r in rows} for rows in corpora.values())))[: args.ppl_texts]
    result["perplexity_prompts"] = len(common)
    result["perplexity_tokens"] = args.ppl_tokens
    nll: dict[str, dict[int, float]] = {}
    for corpus, all_rows in corpora.items():
        rows = [r for r in all_rows if r["i"] in set(common)]
        scored = perplexities(llm, rows, args.ppl_tokens)
        nll[corpus] = {i: x for i, x, _ in scored}
        result.setdefault("perplexity_per_prompt", {})[corpus] = {str(i): [round(x, 5), n] for i, x, n in scored}
        tokens = sum(n for _, _, n in scored)
        result["perplexity"][corpus] = {
            "texts": len(scored),
            "median_ppl": round(statistics.median(math.exp(x) for _, x, _ in scored), 3),
            "token_weighted_ppl": round(math.exp(sum(x * n for _, x, n in scored) / tokens), 3),
        }
        print(corpus, result["perplexity"][corpus], flush=True)
    # Against plain, and where the control corpus plain-b (other seeds) was scored, against it and against the
    # per-prompt mean of the two unwatermarked corpora.
    both = {i: (x + nll["plain-b"][i]) / 2 for i, x in nll.get("plain", {}).items() if i in nll.get("plain-b", {})}
    for corpus in nll:
        row = result["perplexity"][corpus]
        for base, name in (("plain", "plain"), ("plain-b", "plain_b"), ("both", "unwatermarked_mean")):
            ref = both if base == "both" else nll.get(base)
            if corpus in ("plain", base) or (base != "plain" and corpus == "plain-b") or not ref:
                continue
            row[f"log_ppl_minus_{name}"] = diff = paired_difference(ref, nll[corpus])
            print(corpus, f"log-perplexity minus {name}:", diff, flush=True)


def task_arms(args: Any) -> dict[str, Any]:
    """(key, temperature) -> logits hook (None: unwatermarked), per arm; --arms keeps those and `none`."""
    arms = {
        "none": lambda k, t: None,
        "kgw delta=2": lambda k, t: GreenListWatermark(0.25, 2.0, 1).processor(k),
        "kgw delta=3": lambda k, t: GreenListWatermark(0.25, 3.0, 1).processor(k),
        "kgw delta=4 (strong)": lambda k, t: GreenListWatermark(0.25, 4.0, 1).processor(k),
        "gumbel h=4": lambda k, t: GumbelWatermark(4).processor(k, temperature=t),
        "tournament h=4 m=8": lambda k, t: TournamentWatermark(4).processor(k, temperature=t),
        "tournament h=8 m=8 (default)": lambda k, t: TournamentWatermark(8).processor(k, temperature=t),
    }
    if args.arms:
        if unknown := set(args.arms) - set(arms):
            raise SystemExit(f"unknown arms {', '.join(sorted(unknown))}; choose from {', '.join(arms)}")
        arms = {name: make for name, make in arms.items() if name == "none" or name in args.arms}
    return arms


def task(args: Any, result: dict[str, Any]) -> None:
    llm = load_llm()
    ring = KeyRing(SECRET)
    arms = task_arms(args)
    for temperature, seeds in ((1.0, args.seeds), (0.2, 1)):
        for arm, make in arms.items():
            right = total = 0
            for qi, (country, capital) in enumerate(CAPITALS.items()):
                for seed in range(seeds):
                    hook = make(ring.account(f"acct-{qi:04d}"), temperature)
                    q = f"What is the capital of {country}? Answer with the city name only."
                    # A seed per question: one seed for all would reuse the same random draws everywhere.
                    text, _, _ = chat(llm, q, 16, temperature, seed=1000 * seed + qi, hook=hook)
                    right += correct(text, capital)
                    total += 1
            result["task"][f"T={temperature} {arm}"] = {"answers": total, "accuracy": round(right / total, 4)}
            print(f"T={temperature} {arm}", right, "/", total, flush=True)


def lists(args: Any, result: dict[str, Any], per_list: int = 4, marked_after: int = 8) -> None:
    llm = load_llm()
    ring = KeyRing(SECRET)
    arms = task_arms(args)
    countries = list(CAPITALS)
    groups = [countries[i : i + per_list] for i in range(0, len(countries), per_list)]
    for temperature in (1.0, 0.7):
        # per (list, seed): [items right, items, marked items right, marked items] for each arm
        scores: dict[str, list[list[int]]] = {}
        for arm, make in arms.items():
            rows = scores[arm] = []
            for gi, group in enumerate(groups):
                for seed in range(args.seeds):
                    hook = make(ring.account(f"acct-{gi:04d}"), temperature)
                    q = "Give the capital of each country, one per line as 'Country: Capital'.\n" + "\n".join(group)
                    text, _, _ = chat(llm, q, 64, temperature, seed=1000 * seed + gi, hook=hook)
                    rows.append(list_score(llm, text, group, marked_after))
        base = scores["none"]
        for arm, rows in scores.items():
            right, items = sum(r[0] for r in rows), sum(r[1] for r in rows)
            m_right, m_items = sum(r[2] for r in rows), sum(r[3] for r in rows)
            out: dict[str, Any] = {
                "answers": len(rows),
                "items": items,
                "accuracy": round(right / items, 4),
                "marked_items": m_items,
                "marked_accuracy": round(m_right / m_items, 4) if m_items else None,
            }
            if arm != "none":
                diff, ci = paired_bootstrap([r[0] / r[1] for r in base], [r[0] / r[1] for r in rows])
                out["accuracy_minus_none"] = {"mean": round(diff, 4), "ci95": [round(x, 4) for x in ci]}
            result.setdefault("lists", {})[f"T={temperature} {arm}"] = out
            print(f"lists T={temperature} {arm}", out, flush=True)


def list_score(llm: Any, text: str, group: list[str], marked_after: int) -> list[int]:
    """[items right, items, right among items whose capital starts after token `marked_after`, such items]: an item
    is right when the line naming its country names its capital; where it starts is the token count of the text
    before that line's capital (a missing line counts as unmarked and wrong)."""
    right = marked = marked_right = 0
    lower = text.lower()
    for country in group:
        start = lower.find(country.lower())
        line = lower[start:].split("\n", 1)[0] if start >= 0 else ""
        ok = start >= 0 and correct(line, CAPITALS[country])
        right += ok
        if start >= 0:
            after = start + len(country)
            n = len(llm.tokenize(text[:after].encode(), add_bos=False, special=False))
            if n >= marked_after:
                marked += 1
                marked_right += ok
    return [right, len(group), marked_right, marked]


if __name__ == "__main__":
    main()
