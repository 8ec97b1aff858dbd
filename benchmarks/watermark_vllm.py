"""The watermark's vLLM processor with real torch, and inside a real vLLM server (issue 15, item 5).

`--torch-only` needs torch alone (CPU build: pip install torch==2.13.0; CUDA when there is one): it drives
`WatermarkLogitsProcessor` with real torch tensors (the test suite drives it with a numpy fake), checks step by
step that every scheme's rows come out exactly as the embedded model's hook leaves the same logits (float32), that
float16 and bfloat16 rows keep one token of probability 1 and no NaN, and times `apply` per decoding step for
batches of marked rows against the same batch unmarked:

    .venv/bin/python benchmarks/watermark_vllm.py --torch-only --json-out vllm-torch.json

`--host-only` times only the keyed samplers' choice on the host (no torch): one row at a time, as the embedded
model's hook makes it, against a batch of 32 rows at once, as the vLLM processor makes it.

    .venv/bin/python benchmarks/watermark_vllm.py --host-only --json-out vllm-host.json

With `--model` (the prepared GPU check, not run in this repository: no device was lent) it needs a machine
with a GPU, vLLM (0.10-0.11, the V1 logits-processor interface; not a dependency of this
project) and a small model on local disk. It loads `distillshield.watermark.vllm:WatermarkLogitsProcessor` into
`vllm.LLM`, answers the same prompts three ways (marked under account A's key, marked under account B's, and
unmarked: no xargs), and tests every answer's token ids under A's and B's keys with the scheme the processor
used (the DISTILLSHIELD_WATERMARK__* settings, the tournament by default). What should hold: A's answers named
by A's key and not B's, B's by B's, the unmarked ones by neither; a seeded request answered identically twice.

    DISTILLSHIELD_WATERMARK__SECRET=$(openssl rand -hex 32) \\
        python benchmarks/watermark_vllm.py --model HuggingFaceTB/SmolLM2-135M-Instruct --json-out vllm.json

Exits 1 when a check fails. The figures of a `--model` run are the ones to put in docs/watermark.md ("vLLM and
other HTTP model servers"); until then that section says the processor has not run inside vLLM.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from distillshield.config import load_settings
from distillshield.watermark.gateway import XARG_KEY, XARG_MODE
from distillshield.watermark.gumbel import GumbelWatermark
from distillshield.watermark.keys import KeyRing
from distillshield.watermark.kgw import GreenListWatermark
from distillshield.watermark.schemes import Scheme, keyring_from_settings, scheme_from_settings
from distillshield.watermark.tournament import TournamentWatermark

SECRET = "benchmark-secret-0123456789abcdef"
VOCAB = 49152  # SmolLM2's vocabulary

PROMPTS = [
    "Explain how a refrigerator keeps food cold.",
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "What are the main causes of inflation, and how do central banks respond?",
    "Describe the water cycle to a ten-year-old.",
    "Give me advice on preparing for a job interview at a small company.",
    "Compare the climates of Norway and Portugal.",
    "How does a compiler turn source code into a program?",
    "Write a letter to a friend describing a recent trip to the mountains.",
]


@dataclass
class _Params:  # what the processor reads of vLLM's SamplingParams
    extra_args: dict[str, Any] | None = None
    temperature: float = 0.7
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    seed: int | None = None


@dataclass
class _Update:  # vLLM's BatchUpdate
    batch_size: int
    removed: list[int] = field(default_factory=list)
    added: list[tuple] = field(default_factory=list)
    moved: list[tuple] = field(default_factory=list)


def _xargs(account: str) -> dict[str, str]:
    return {XARG_KEY: f"account:{account}", XARG_MODE: "on"}


def _logits(rng: np.random.Generator, rows: int) -> np.ndarray:
    return (rng.standard_normal((rows, VOCAB)) * 2.5).astype(np.float32)


_SAMPLING = {"temperature": 0.7, "top_k": 40, "top_p": 0.95, "min_p": 0.05}


def _schemes() -> dict[str, Scheme]:
    return {
        "kgw": GreenListWatermark(0.25, 2.0, 1),
        "gumbel": GumbelWatermark(1),
        "tournament": TournamentWatermark(8, 8),
    }


def torch_only(steps: int, batches: list[int], repeats: int) -> tuple[bool, dict[str, Any]]:
    import torch

    from distillshield.watermark.vllm import WatermarkLogitsProcessor, _Watermark

    device = "cuda" if torch.cuda.is_available() else "cpu"
    keys = KeyRing(SECRET)
    out: dict[str, Any] = {"torch": torch.__version__, "device": device, "vocab": VOCAB, "equal": {}, "half": {},
                           "step_us": {}}  # fmt: skip
    ok = True
    for name, scheme in _schemes().items():  # the same rows as the embedded hook, step by step
        p = WatermarkLogitsProcessor(_wm=_Watermark(keys, scheme, 4.0, torch, device))
        sampling = {**_SAMPLING, "seed": 7}
        prompt, answer = [3, 1, 4, 1, 5], []
        p.update_state(_Update(2, added=[(0, _Params(_xargs("alice"), **sampling), prompt, answer),
                                         (1, _Params(), [9], [])]))  # fmt: skip
        if isinstance(scheme, GreenListWatermark):
            hook = scheme.processor(keys.account("alice"), 2.0)
        else:
            hook = scheme.processor(keys.account("alice"), **sampling)
        rng = np.random.default_rng(1)
        same = 0
        for _ in range(steps):
            rows = _logits(rng, 2)
            want = hook(np.asarray(prompt + answer), rows[0].copy())
            got = p.apply(torch.as_tensor(rows.copy(), device=device)).cpu().numpy()
            same += int(np.array_equal(got[0], want) and np.array_equal(got[1], rows[1]))
            answer.append(int(np.argmax(got[0])))
        out["equal"][name] = f"{same}/{steps}"
        ok &= same == steps
        print(f"{name}: {same} of {steps} steps equal to the embedded hook's rows")
    for dtype in ("float16", "bfloat16"):  # suppression in half precision: one token left, no NaN
        p = WatermarkLogitsProcessor(_wm=_Watermark(keys, TournamentWatermark(2, 8), 4.0, torch, device))
        p.update_state(_Update(1, added=[(0, _Params(_xargs("bob"), seed=1), [5], [1, 2])]))
        y = p.apply(torch.as_tensor(_logits(np.random.default_rng(2), 1), device=device).to(getattr(torch, dtype)))
        probs = torch.softmax(y.float(), -1)
        one = bool(abs(float(probs.max()) - 1.0) < 1e-6 and not torch.isnan(probs).any())
        out["half"][dtype] = one
        ok &= one
        print(f"{dtype}: one token of probability 1 left, no NaN: {one}")
    rng = np.random.default_rng(3)
    for b in batches:  # apply() per decoding step: every row marked, against the same batch with no row marked
        host = _logits(rng, b)
        for name, scheme in {"none": None, **_schemes()}.items():
            p = WatermarkLogitsProcessor(_wm=_Watermark(keys, scheme or TournamentWatermark(8, 8), 4.0, torch, device))
            outputs = [[int(x) for x in rng.integers(0, VOCAB, 8)] for _ in range(b)]
            added = [(i, _Params(_xargs(f"a{i}") if scheme else None), [1], outputs[i]) for i in range(b)]
            p.update_state(_Update(b, added=added))
            p.apply(torch.tensor(host, device=device))  # warm-up (on a copy): the keys' token tables are built once
            times = []
            for _ in range(repeats):
                x = torch.tensor(host, device=device)  # a copy: apply() writes into the rows it marks
                for o in outputs:
                    o.append(int(rng.integers(0, VOCAB)))  # a new context each step (no repeated-context skip)
                if device == "cuda":
                    torch.cuda.synchronize()
                t = time.perf_counter()
                p.apply(x)
                if device == "cuda":
                    torch.cuda.synchronize()
                times.append((time.perf_counter() - t) * 1e6)
            out["step_us"].setdefault(str(b), {})[name] = round(statistics.median(times), 1)
        print(f"batch of {b} rows, apply() per step, median us: {out['step_us'][str(b)]}")
    out.update(host_choice(repeats))
    return ok, out


def host_choice(repeats: int, batch: int = 32) -> dict[str, Any]:
    """The keyed samplers' choice alone, on the host, per marked row and step, whatever the device: row by row
    (the embedded hook's path: its candidates, then its choice) and for a batch of `batch` rows at once (the
    vLLM processor's path: each row's candidates, then one numpy choice over the batch). Needs no torch."""
    keys = KeyRing(SECRET)
    rng = np.random.default_rng(3)
    out: dict[str, Any] = {"host_choice_batch": batch}
    for name, scheme in (("tournament", TournamentWatermark(8, 8)), ("gumbel", GumbelWatermark(8))):
        samplers = [scheme.processor(keys.account(f"h{i}"), **_SAMPLING, seed=i) for i in range(batch)]
        rows = _logits(rng, batch)
        ids = np.argsort(-rows, axis=1)[:, :40]  # what the device's top-k hands over (top_k 40)
        values = np.take_along_axis(rows, ids, axis=1)
        one, many = [], []
        for _ in range(repeats):
            contexts = [tuple(int(a) for a in rng.integers(0, VOCAB, 8)) for _ in samplers]
            t = time.perf_counter()
            for s, ctx, v, i in zip(samplers, contexts, values, ids, strict=True):
                local = s.candidates(v)
                s.choose_token(ctx, i[local], v[local], VOCAB)
            one.append((time.perf_counter() - t) * 1e6 / batch)
            t = time.perf_counter()
            type(samplers[0]).choose_rows(samplers, contexts, ids, values, VOCAB)
            many.append((time.perf_counter() - t) * 1e6 / batch)
        width = float(np.mean([s.candidates(v).size for s, v in zip(samplers, values, strict=True)]))
        out[f"host_choice_us_per_row_{name}"] = {"one_by_one": round(statistics.median(one), 1),
                                                 "batch": round(statistics.median(many), 1),
                                                 "candidates_per_row": round(width, 1)}  # fmt: skip
        print(f"{name} choice on the host, per marked row and step (median us): one row at a time "
              f"{statistics.median(one):.1f}, {batch} rows at once {statistics.median(many):.1f} "
              f"({width:.1f} candidates per row)")  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="a model vLLM can load from local disk or its cache")
    ap.add_argument("--torch-only", action="store_true", help="the processor on real torch, no vLLM, no model")
    ap.add_argument("--host-only", action="store_true", help="the keyed samplers' host-side choice alone, no torch")
    ap.add_argument("--steps", type=int, default=100, help="--torch-only: steps compared with the embedded hook")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32], help="--torch-only: rows per timed batch")
    ap.add_argument("--repeats", type=int, default=50, help="--torch-only: timed steps per cell")
    ap.add_argument("--prompts", type=int, default=64, help="answers per arm (the prompts above, cycled)")
    ap.add_argument("--max-tokens", type=int, default=200)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args(argv)
    if args.host_only or args.torch_only:
        if args.host_only:
            ok, results = True, host_choice(args.repeats)
        else:
            ok, results = torch_only(args.steps, args.batches, args.repeats)
        if args.json_out:
            with open(args.json_out, "w") as fh:
                json.dump(results, fh, indent=2)
        return 0 if ok else 1
    if not args.model:
        ap.error("give --model MODEL (a vLLM run) or --torch-only")

    from vllm import LLM, SamplingParams  # type: ignore[import-not-found]

    from distillshield.watermark.vllm import WatermarkLogitsProcessor

    cfg = load_settings().watermark
    scheme, keys = scheme_from_settings(cfg), keyring_from_settings(cfg)
    llm = LLM(model=args.model, logits_processors=[WatermarkLogitsProcessor], gpu_memory_utilization=0.5)
    tokenizer = llm.get_tokenizer()
    texts = [
        tokenizer.apply_chat_template([{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}], tokenize=False,
                                      add_generation_prompt=True)
        for i in range(args.prompts)
    ]  # fmt: skip

    def generate(label: str | None, seed0: int) -> list[list[int]]:
        extra = {XARG_KEY: label, XARG_MODE: "on"} if label else None
        params = [
            SamplingParams(temperature=args.temperature, max_tokens=args.max_tokens, seed=seed0 + i, extra_args=extra)
            for i in range(len(texts))
        ]
        return [list(o.outputs[0].token_ids) for o in llm.generate(texts, params)]

    arms = {"account:a": generate("account:a", 1000), "account:b": generate("account:b", 2000)}
    arms["plain"] = generate(None, 3000)
    again = generate("account:a", 1000)[:4]  # the same seeds: the same answers
    results: dict[str, Any] = {"scheme": repr(scheme), "model": args.model, "temperature": args.temperature, "arms": {}}
    wrong = 0  # answers named by a key that did not mark them (expected about 3e-5 per test at z >= 4)
    for arm, answers in arms.items():
        named = {
            label: sum(scheme.detect(keys.key(label), ids, threshold=cfg.z_threshold).detected for ids in answers)
            for label in ("account:a", "account:b")
        }
        wrong += sum(n for label, n in named.items() if label != arm)
        full = sum(len(ids) >= args.max_tokens for ids in answers)
        results["arms"][arm] = {"answers": len(answers), "full_length": full, "detected_under": named}
        print(f"{arm}: {len(answers)} answers ({full} of {args.max_tokens} tokens); detected under A "
              f"{named['account:a']}, under B {named['account:b']}")  # fmt: skip
    results["wrong_key_detections"] = wrong
    results["seeded_requests_reproduce"] = again == arms["account:a"][:4]
    print(f"wrong-key detections: {wrong}; seeded requests reproduce: {results['seeded_requests_reproduce']}")
    own = results["arms"]["account:a"]["detected_under"]["account:a"]
    ok = wrong == 0 and results["seeded_requests_reproduce"] and own > 0
    if args.json_out:
        with open(args.json_out, "w") as fh:
            json.dump(results, fh, indent=2)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
