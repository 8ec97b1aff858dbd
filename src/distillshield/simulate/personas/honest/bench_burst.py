"""Benchmark burst (fresh variant of `eval_run`): a researcher's whole benchmark, "think step by step", at once.

Imitates a researcher who sends a full benchmark (GSM-style maths, logic sets, MT-Bench) through an
evaluation harness in one burst of parallel requests, every prompt asking the model to think step by
step in the harness's own format, then nothing until the next run. Same behaviour as `eval_run` with
chain-of-thought on every run and new harness prompt formats.
"""

from __future__ import annotations

from pydantic import Field

from distillshield.simulate import fresh_text, text
from distillshield.simulate.personas.honest.eval_run import EvalRun, EvalRunKnobs


class BenchBurstKnobs(EvalRunKnobs):
    requests_per_day: float = Field(120.0, gt=0, description="mean requests per account per day (runs x size)")
    benchmarks: list[str] = Field(
        default_factory=lambda: ["gsm", "logic", "mt-bench"], description="benchmarks run (as for eval_run)"
    )
    concurrency: int = Field(32, ge=1, le=256, description="parallel requests the harness keeps in flight")
    cot_share: float = Field(1.0, ge=0, le=1, description="share of runs whose template asks for step-by-step")


class BenchBurst(EvalRun):
    name = "bench_burst"
    split = "fresh"
    Knobs = BenchBurstKnobs
    signature = "a whole benchmark in one parallel burst, every prompt asking to think step by step"
    templates = {**text.EVAL_TEMPLATES, "cot": fresh_text.BENCH_COT_TEMPLATES}
    system_prompts = fresh_text.BENCH_SYSTEM
