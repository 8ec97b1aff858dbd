"""Where batch scoring spends its time: how often the costly steps run, and what one call of each costs.

`analyze` replays every observation and rescores accounts at their checkpoints (detect/analyze.py). This
analyses a traffic file once with counting wrappers around the steps that dominate a profile of that
replay, then times single calls against the final population:

- content products: `ContentPopulation.judge_rows` (an account's new prompts judged against the population
  sample, one product per account scoring with new prompts) and `typicality_many` (the final rescoring's);
- content verdicts (`signals.content.judge`), rescores, and the window breadth;
- one product of k rows (k = 1, 3, 16, 64, 256; single-threaded BLAS, as in the replay), and one
  combiner walk with attribution (`Combiner.explain`) on the accounts' final features.

    .venv/bin/python benchmarks/detect_scoring_calls.py --traffic large-7.jsonl
    .venv/bin/python benchmarks/detect_scoring_calls.py --traffic large-7.jsonl --json-out calls.json

The wrappers add a little time to each call; the wall time printed is not the speed benchmark's
(`benchmarks/detect_speed.py`).
"""

from __future__ import annotations

import argparse
import json
import time
import timeit
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def _count(owner: Any, name: str, calls: Counter[str], seconds: Counter[str], rows: bool = False) -> None:
    """Replace owner.name with a wrapper that counts its calls (and rows: the length of the first argument
    after self) and their time."""
    fn = getattr(owner, name)

    def wrapped(*args: Any, **kw: Any) -> Any:
        t = time.perf_counter()
        out = fn(*args, **kw)
        seconds[name] += time.perf_counter() - t
        calls[name] += 1
        if rows:
            calls[name + " rows"] += len(args[1])
        return out

    setattr(owner, name, wrapped)


def _per_call_us(fn: Callable[[], Any], number: int) -> float:
    return timeit.timeit(fn, number=number) / number * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--traffic", type=Path, required=True, help="a traffic JSONL file")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json-out", type=Path)
    args = ap.parse_args()

    from threadpoolctl import threadpool_limits

    import distillshield.detect.signals.content as signal
    from distillshield.detect import engine
    from distillshield.detect.analyze import analyze_file
    from distillshield.detect.content import ContentPopulation
    from distillshield.detect.scoring import DetectionModel

    calls: Counter[str] = Counter()
    seconds: Counter[str] = Counter()
    _count(ContentPopulation, "judge_rows", calls, seconds, rows=True)
    _count(ContentPopulation, "typicality_many", calls, seconds, rows=True)
    _count(signal, "judge", calls, seconds)
    _count(signal.ContentState, "breadth", calls, seconds)
    _count(engine.Engine, "rescore", calls, seconds)
    t0 = time.perf_counter()
    an = analyze_file(args.traffic, model=DetectionModel.load(), workers=args.workers)
    wall = time.perf_counter() - t0
    counted, timed = dict(sorted(calls.items())), {k: round(v, 2) for k, v in sorted(seconds.items())}
    pop = an.engine.population.content
    rng = np.random.default_rng(0)
    product_us = {}
    with threadpool_limits(1):
        for k in (1, 3, 16, 64, 256):
            x = rng.standard_normal((k, pop.dim)).astype(np.float32)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            product_us[k] = round(_per_call_us(lambda x=x: pop.judge_rows(x, "nobody"), 200), 1)
    comb = an.engine.combiners[0]
    vecs = [comb.vector(a.features) for a in an.engine.accounts.values() if a.features]
    explain_us = round(float(np.median([_per_call_us(lambda v=v: comb.explain(v), 50) for v in vecs[:200]])), 1)
    out = {
        "traffic": str(args.traffic),
        "requests": an.report["summary"]["requests"],
        "wall_s": round(wall, 1),
        "timings_s": an.report["summary"]["timings_s"],
        "calls": counted,
        "seconds": timed,
        "product_us_by_rows": product_us,
        "explain_us_median": explain_us,
    }
    print(json.dumps(out, indent=2))
    if args.json_out:
        args.json_out.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
