"""`distillshield train`: fit the detection model on labelled simulator traffic, hardened adversarially."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from distillshield.cli.analyze import ENCODER_HELP, load_encoder_or_exit
from distillshield.cli.common import CliError, PhaseProgress, console, print_json, progress


def train_command(
    traffic: list[Path] = typer.Argument(..., help="labelled traffic JSONL files (from `distillshield simulate`)"),
    out: Path = typer.Option(..., "--out", "-o", help="where to write the model artefact (JSON)"),
    rounds: int = typer.Option(2, "--rounds", min=0, max=5, help="adversarial rounds (evasive variants, retrain)"),
    encoder: str = typer.Option("use", "--encoder", help=ENCODER_HELP),
    fpr: float = typer.Option(0.001, "--fpr", min=0.0, max=0.5, help="target benign FPR for 'suspicious'"),
    fpr_extraction: float = typer.Option(
        0.0002, "--fpr-extraction", min=0.0, max=0.5, help="target benign FPR for 'extraction'"
    ),
    seed: int = typer.Option(0, "--seed", help="seed for the classifier split, folds and evasive variants"),
    version: str = typer.Option(None, "--version", help="model version string (default: the UTC time)"),
    alongside: Path = typer.Option(
        None,
        "--alongside",
        help="a model artefact to keep: the combiner trained here is added beside its own, and an account's "
        "risk is the higher of the two (an ensemble; run benchmarks/detect_recalibrate.py on the result)",
    ),
    machine_pace: bool = typer.Option(
        True,
        "--machine-pace/--no-machine-pace",
        help="in adversarial round 1, half of the evasive attackers send at machine pace (bursts, no human day); "
        "off for a combiner meant for human-paced attackers (the shipped ensemble's primary)",
    ),
    as_json: bool = typer.Option(False, "--json", help="print the model's training metadata as JSON"),
) -> None:
    """Train the detection model: the CoT/rubric prompt classifier, then the signal combiner on the dev split
    of labelled traffic, then `--rounds` adversarial rounds (paraphrase, timing jitter, cover traffic,
    spreading over more accounts), reporting robustness before and after each retrain.

    Only accounts whose label_meta.split is "dev" are used; held-out personas never tune anything.

    Example: distillshield train dev-1.jsonl dev-2.jsonl --out model.json --rounds 2

    Example (beside the shipped model): distillshield train dev-*.jsonl --out both.json --alongside shipped.json
    """
    from distillshield.detect.scoring import DetectionModel, ModelError
    from distillshield.detect.train import train

    for p in traffic:
        if not p.is_file():
            raise CliError(f"traffic file {p} does not exist or is not a file")
    if not out.parent.is_dir():
        raise CliError(f"cannot write {out}: folder {out.parent} does not exist")
    base = None
    if alongside is not None:
        try:
            base = DetectionModel.load(alongside)
        except ModelError as exc:
            raise CliError(f"--alongside: {exc}") from None
    enc = load_encoder_or_exit(encoder)
    with progress() as bar:
        model = train(
            traffic,
            encoder=enc,
            rounds=rounds,
            seed=seed,
            fpr_suspicious=fpr,
            fpr_extraction=fpr_extraction,
            version=version,
            progress=PhaseProgress(bar),
            machine_pace=machine_pace,
        )
    artefact = model
    if base is not None:
        try:
            artefact = model.alongside(base)
        except ModelError as exc:
            raise CliError(f"--alongside: {exc}") from None
    artefact.save(out)
    if as_json:
        print_json(model.meta)
        return
    clf = model.meta["prompt_classifier"]["heldout"]
    console.print(
        f"prompt classifier on held-out templates: CoT precision {clf['cot']['precision']:.2f} recall "
        f"{clf['cot']['recall']:.2f}; rubric precision {clf['rubric']['precision']:.2f} recall "
        f"{clf['rubric']['recall']:.2f}"
    )
    t = Table(
        "round",
        "attack TPR before",
        "attack TPR after",
        "benign FPR after",
        "accounts",
        title="Adversarial rounds (dev split; evasive variants of that round)",
    )
    for r in model.meta["rounds"]:
        b, a = r.get("before_retrain", {}), r.get("after_retrain", {})

        def pct(v: float | None) -> str:
            return "-" if v is None else f"{v:.1%}"

        t.add_row(
            str(r["round"]),
            pct(b.get("attack_tpr")),
            pct(a.get("attack_tpr")),
            pct(a.get("benign_fpr")),
            str(r["accounts"]),
        )
    console.print(t)
    console.print(f"wrote model {artefact.version} to {out}")


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
