"""`distillshield evaluate`: score an analyser report, or the built-in volume baseline, against labelled traffic."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from distillshield.cli.common import CliError, console, err_console, print_json, progress
from distillshield.evaluate import EvaluationError, ReportError, evaluate
from distillshield.evaluate.report import SUMMARY_HEADERS, rate_text, summary_rows, write_html, write_json


class FlagOn(StrEnum):
    suspicious = "suspicious"
    extraction = "extraction"


def evaluate_command(
    traffic: Path = typer.Argument(..., help="labelled traffic JSONL (docs/traffic-format.md), e.g. from simulate"),
    report: Path = typer.Option(None, "--report", "-r", help="the analyser's report JSON to score"),
    baseline: bool = typer.Option(False, "--baseline", help="score the built-in volume baseline instead of a report"),
    out: Path = typer.Option(None, "--out", "-o", help="write the metrics JSON here"),
    html_path: Path = typer.Option(None, "--html", help="write an HTML report (ROC curves, tables, delay charts)"),
    flag_on: FlagOn = typer.Option(FlagOn.suspicious, "--flag-on",
                                   help="lowest verdict that counts as flagged: suspicious (also extraction) "
                                        "or extraction only"),
    as_json: bool = typer.Option(False, "--json", help="print the metrics JSON to stdout instead of tables"),
) -> None:  # fmt: skip
    """Score detection against the traffic's ground-truth labels, per split (dev / heldout / all).

    Reports ROC-AUC, TPR at benign FPR 0.1% and 1%, benign FPR per honest persona, TPR per attack
    persona and per cluster, detection delay and leakage. Definitions: docs/evaluation.md. Nothing is
    tuned on the heldout split; the baseline is calibrated on dev benign accounts only.

    Example: distillshield evaluate traffic.jsonl --report report.json --out metrics.json --html report.html
    """
    if report is not None and baseline:
        raise CliError("give either --report REPORT.json or --baseline, not both")
    if report is None and not baseline:
        raise CliError("nothing to score: give --report REPORT.json (the analyser's output) or --baseline")
    if not traffic.is_file():
        raise CliError(f"traffic file {traffic} does not exist or is not a file")
    if report is not None and not report.is_file():
        raise CliError(f"report {report} does not exist or is not a file")
    for target in (out, html_path):
        if target is not None and not target.parent.is_dir():
            raise CliError(f"cannot write {target}: folder {target.parent} does not exist")

    with open(traffic, "rb") as fh:
        total = sum(1 for _ in fh)  # a cheap pre-pass so the bar has an end
    with progress() as bar:
        tasks: dict[str, Any] = {}

        def on_progress(phase: str, done: int) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task(phase, total=total)
            bar.update(tasks[phase], completed=done)

        try:
            result = evaluate(traffic, report=report, baseline=baseline, flag_on=flag_on.value,
                              progress=on_progress)  # fmt: skip
        except (ReportError, EvaluationError, FileNotFoundError) as exc:
            bar.live.transient = True  # erase the bar: the error is the one line the user should see
            raise CliError(str(exc)) from None
        for task in tasks.values():
            bar.update(task, completed=total)  # bad and blank lines are not counted as they pass

    m = result.metrics
    for e in result.truth.bad_lines[:20]:
        err_console.print(f"[yellow]skipped[/yellow] {escape(f'{traffic}:{e}')}")
    if result.truth.bad_line_count > 20:
        err_console.print(f"... and {result.truth.bad_line_count - 20} more bad lines")
    if out is not None:
        write_json(m, out)
    if html_path is not None:
        write_html(m, result.scored, html_path)

    if as_json:
        for w in m["warnings"]:
            err_console.print(f"[yellow]warning[/yellow]: {escape(w)}")
        print_json(m)
        return
    _print_tables(m)
    for w in m["warnings"]:
        console.print(f"[yellow]warning[/yellow]: {escape(w)}")
    for label, target in (("metrics", out), ("HTML report", html_path)):
        if target is not None:
            console.print(f"wrote {label} to {target}")


def _print_tables(m: dict[str, Any]) -> None:
    det = m["detector"]
    if det["source"] == "baseline":
        scored = (f"volume baseline (suspicious from {det['suspicious_at']} requests, extraction from "
                  f"{det['extraction_at']}; {det['calibration']})")  # fmt: skip
    else:
        scored = f"report {escape(str(det['report']))}"
    # Splits as columns, figures as rows: fits an 80-column terminal, and each number sits under its split.
    rows = summary_rows(m, ci=False)  # the 95% intervals are in the JSON and HTML
    summary = Table(title=f"Evaluation of {scored}; flagged = {' or '.join(m['flagged_verdicts'])}")
    summary.add_column("figure \\ split")
    for row in rows:
        summary.add_column(str(row[0]), overflow="fold")
    for i, header in enumerate(SUMMARY_HEADERS[1:], start=1):
        summary.add_row(header, *[escape(str(row[i])) for row in rows])
    console.print(summary)

    personas = Table(title="Per persona (FPR for honest, TPR for attack), by split")
    for h in ("split", "kind", "persona", "flagged", "median delay"):
        personas.add_column(h)
    for name, s in m["splits"].items():
        if name == "all" and len(m["splits"]) > 1 and not m["data"]["accounts_without_split"]:
            continue  # the split rows already cover every account; the JSON has "all" too
        for r in s["honest_personas"]:
            personas.add_row(name, "benign", escape(r["persona"]), rate_text(r, ci=False), "")
        for r in s["attack_personas"]:
            d = r["median_delay_requests"]
            personas.add_row(
                name, "attack", escape(r["persona"]), rate_text(r, ci=False), "" if d is None else f"{d:.0f} req"
            )
    console.print(personas)


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate_command)
