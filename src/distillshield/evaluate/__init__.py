"""The evaluation harness: score an analyser report (or the built-in baseline) against labelled traffic.

One module per stage: `truth` (ground truth from the traffic, one streaming pass), `verdicts` (the
analyser's report, validated), `baseline` (a trivial online volume detector), `metrics` (the join and
every figure), `report` (JSON and HTML), `harness` (the run). docs/evaluation.md defines the metrics.
"""

from distillshield.evaluate.harness import HOLDOUT_RULE, Evaluation, EvaluationError, evaluate
from distillshield.evaluate.verdicts import ReportError

__all__ = ["HOLDOUT_RULE", "Evaluation", "EvaluationError", "ReportError", "evaluate"]
