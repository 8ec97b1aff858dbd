"""The watermark inside a real vLLM server (issue 15, item 5): the prepared GPU check, not run in this repository.

Needs a machine with a GPU, vLLM (0.10-0.11, the V1 logits-processor interface; not a dependency of this
project) and a small model on local disk. It loads `distillshield.watermark.vllm:WatermarkLogitsProcessor` into
`vllm.LLM`, answers the same prompts three ways (marked under account A's key, marked under account B's, and
unmarked: no xargs), and tests every answer's token ids under A's and B's keys with the scheme the processor
used (the DISTILLSHIELD_WATERMARK__* settings, the tournament by default). What should hold: A's answers named
by A's key and not B's, B's by B's, the unmarked ones by neither; a seeded request answered identically twice.

    DISTILLSHIELD_WATERMARK__SECRET=$(openssl rand -hex 32) \\
        python benchmarks/watermark_vllm.py --model HuggingFaceTB/SmolLM2-135M-Instruct --json-out vllm.json

Exits 1 when a check fails. The figures it prints are the ones to put in docs/watermark.md ("vLLM and other HTTP
model servers"); until then that section says the processor has run only under the numpy fake of
tests/test_watermark_vllm.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from distillshield.config import load_settings
from distillshield.watermark.gateway import XARG_KEY, XARG_MODE
from distillshield.watermark.schemes import keyring_from_settings, scheme_from_settings

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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a model vLLM can load from local disk or its cache")
    ap.add_argument("--prompts", type=int, default=64, help="answers per arm (the prompts above, cycled)")
    ap.add_argument("--max-tokens", type=int, default=200)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args(argv)

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
