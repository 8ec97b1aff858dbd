"""The evaluation run: traffic + (a report or the built-in baseline) -> metrics, per split.

Order matters for memory and passes: an external report is read first (it is small), so the single
traffic pass can resolve its first_flag_index values to times. The baseline is fitted on the ground
truth of that pass (dev benign accounts only) and then replays the traffic online in a second pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distillshield.contracts import FLAGGED_VERDICTS
from distillshield.evaluate.baseline import VolumeBaseline, run_baseline
from distillshield.evaluate.metrics import (
    SPLIT_ORDER,
    ScoredAccount,
    check_report_fits,
    join,
    split_groups,
    summarize_split,
)
from distillshield.evaluate.truth import TrafficTruth, read_truth
from distillshield.evaluate.verdicts import ReportError, Verdicts, load_report, parse_report

SCHEMA = "distillshield.evaluate/1"
HOLDOUT_RULE = (
    "Personas and seeds are split into a development set (dev) and a held-out set (heldout). Nothing is "
    "tuned on heldout: the built-in baseline's thresholds are fitted on dev benign accounts only, and any "
    "detector's thresholds must be too. Figures on dev are optimistic for anything tuned on dev; heldout "
    "is the honest estimate. 'all' pools both (and accounts without a split)."
)

# (phase, lines done) -> None; phases: "reading traffic", "baseline (online replay)"
ProgressHook = Callable[[str, int], None]


class EvaluationError(ValueError):
    """The inputs cannot be evaluated (no records, no labels); the message says what to do."""


@dataclass
class Evaluation:
    metrics: dict[str, Any]  # the JSON output
    scored: list[ScoredAccount]  # per labelled account, for charts
    truth: TrafficTruth
    report: dict[str, Any] | None = None  # the baseline's report, when the baseline was run


def _hook(progress: ProgressHook | None, phase: str) -> Callable[[int], None] | None:
    if progress is None:
        return None
    return lambda n: progress(phase, n)


def evaluate(
    traffic: str | Path,
    *,
    report: str | Path | None = None,
    baseline: bool = False,
    flag_on: str = "suspicious",
    progress: ProgressHook | None = None,
) -> Evaluation:
    """Score a report (or the built-in volume baseline) against the traffic's ground-truth labels.

    Raises ReportError for a report that is malformed or does not fit the traffic, EvaluationError for
    traffic with nothing to evaluate, FileNotFoundError for a missing traffic file.
    """
    if (report is None) == (not baseline):
        raise EvaluationError("give a report to score or ask for the baseline, not both or neither")
    if flag_on not in FLAGGED_VERDICTS:
        raise EvaluationError(f"flag_on must be one of {sorted(FLAGGED_VERDICTS)}, got {flag_on!r}")
    path = Path(traffic)
    if not path.is_file():
        raise FileNotFoundError(f"traffic file {path} does not exist or is not a file")

    verdicts: Verdicts | None = None
    if report is not None:
        verdicts = Verdicts.from_report(load_report(report), str(report))
    truth = read_truth(path, flag_index=verdicts.flag_indexes() if verdicts else None,
                       on_progress=_hook(progress, "reading traffic"))  # fmt: skip
    if truth.records == 0:
        raise EvaluationError(f"{path} has no valid records ({truth.bad_line_count} bad lines)")
    if not truth.labelled:
        raise EvaluationError(f"{path} has no labelled accounts: evaluate needs ground truth in 'label' "
                              "(\"benign:<persona>\" or \"attack:<persona>\"), as the simulator writes it")  # fmt: skip

    baseline_report: dict[str, Any] | None = None
    detector: dict[str, Any]
    if baseline:
        model = VolumeBaseline.fit_truth(truth)
        baseline_report = run_baseline(path, model, flag_on, _hook(progress, "baseline (online replay)"))
        verdicts = Verdicts.from_report(parse_report(baseline_report, "baseline"), "baseline")
        detector = {"source": "baseline", "report": None, **model.describe()}
    else:
        assert verdicts is not None
        detector = {"source": "report", "report": str(report), "summary": verdicts.summary}
    check_report_fits(truth, verdicts)

    scored = join(truth, verdicts, flag_on)
    leakage_basis = ("served responses (a response with status 2xx or no status)" if truth.has_responses
                     else "requests (the traffic has no responses)")  # fmt: skip
    has_flag_times = verdicts.gives_flag_times()
    groups = split_groups(scored)
    splits = {name: summarize_split(groups[name], name, has_flag_times=has_flag_times, leakage_basis=leakage_basis)
              for name in SPLIT_ORDER if name in groups}  # fmt: skip

    labelled = truth.labelled
    missing = sum(1 for a in scored if not a.in_report)
    warnings: list[str] = []
    if truth.bad_line_count:
        warnings.append(f"{truth.bad_line_count} malformed traffic lines skipped")
    if truth.unlabelled_count:
        warnings.append(f"{truth.unlabelled_count} accounts have no label and are excluded from the metrics")
    if truth.bad_label_accounts:
        warnings.append(f"{len(truth.bad_label_accounts)} accounts have a label that is not 'benign:<persona>' or "
                        "'attack:<persona>' and are excluded (first: " f"{truth.bad_label_accounts[0]!r})")  # fmt: skip
    if truth.conflicting_accounts:
        warnings.append(f"{len(truth.conflicting_accounts)} accounts have records with different labels; "
                        f"the first record's label is used (first: {truth.conflicting_accounts[0]!r})")  # fmt: skip
    no_split = sum(1 for a in labelled if a.split is None)
    if no_split:
        warnings.append(f"{no_split} labelled accounts have no label_meta.split of dev/heldout; they count in "
                        "'all' only")  # fmt: skip
    if missing:
        warnings.append(f"{missing} labelled accounts are not in the report; they count as risk 0, not flagged")
    if not has_flag_times:
        warnings.append("the report gives no first-flag times (a batch report): detection delay is not available, "
                        "nor leakage wherever an attack account was stopped")  # fmt: skip

    metrics: dict[str, Any] = {
        "schema": SCHEMA,
        "traffic": str(path),
        "detector": detector,
        "flag_on": flag_on,
        "flagged_verdicts": [v for v in ("suspicious", "extraction") if v in FLAGGED_VERDICTS[flag_on]],
        "holdout_rule": HOLDOUT_RULE,
        "data": {
            "records": truth.records,
            "bad_lines": truth.bad_line_count,
            "bad_line_examples": [str(e) for e in truth.bad_lines[:20]],
            "accounts": len(truth.accounts),
            "labelled_accounts": len(labelled),
            "unlabelled_accounts": truth.unlabelled_count,
            "bad_label_accounts": len(truth.bad_label_accounts),
            "label_conflict_accounts": len(truth.conflicting_accounts),
            "accounts_without_split": no_split,
            "missing_from_report": missing,
            "report_accounts": len(verdicts.by_account),
            "leakage_basis": leakage_basis,
            "delay_available": has_flag_times,
        },
        "splits": splits,
        "warnings": warnings,
    }
    return Evaluation(metrics, scored, truth, baseline_report)


__all__ = ["Evaluation", "EvaluationError", "HOLDOUT_RULE", "ProgressHook", "ReportError", "evaluate"]
