"""`distillshield watermark detect`: is a text watermarked, under which account's key?"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from distillshield.cli.common import CliError, console, print_json, progress, settings, with_store
from distillshield.store import Store
from distillshield.watermark.attribution import ALPHA, CORRECTIONS, SECONDARY_ALPHA, attribute, score_keys
from distillshield.watermark.keys import KeyRing, WatermarkKey, key_label
from distillshield.watermark.schemes import (
    Scheme,
    build_scheme,
    keyring_from_settings,
    require_weights,
    supports_weights,
)
from distillshield.watermark.texts import TextsError, read_texts
from distillshield.watermark.tokenizer import LlamaTokenizer, default_tokenizer
from distillshield.watermark.weights import ModelWeigher

app = typer.Typer(
    help="Per-account output watermarks. Example: distillshield watermark detect reply.txt --account alice",
    no_args_is_help=True,
)


@dataclass
class WatermarkSetup:
    scheme: Scheme
    keys: KeyRing
    threshold: float
    tokenizer: LlamaTokenizer


def setup(
    scheme: str | None, gamma: float | None, context_width: int | None, threshold: float | None, tokenizer: Path | None
) -> WatermarkSetup:
    """The configured watermark with command-line overrides; CliError when something is missing."""
    cfg = settings().watermark
    try:
        keys = keyring_from_settings(cfg)
        sch = build_scheme(
            scheme or cfg.scheme,
            cfg.gamma if gamma is None else gamma,
            cfg.delta,
            cfg.width(scheme) if context_width is None else context_width,
            cfg.tournament_layers,
        )
    except ValueError as exc:
        raise CliError(str(exc)) from None
    try:
        tok = LlamaTokenizer(tokenizer) if tokenizer else default_tokenizer()
    except (FileNotFoundError, ValueError) as exc:
        raise CliError(f"cannot load the tokenizer: {exc}") from None
    return WatermarkSetup(sch, keys, cfg.z_threshold if threshold is None else threshold, tok)


def candidate_keys(
    keys: KeyRing, accounts: list[str] | None, clusters: list[str] | None, accounts_file: Path | None, everyone: bool
) -> list[WatermarkKey]:
    """Keys named on the command line, from a file (one account id per line), or every account in the store."""
    ids = list(accounts or [])
    if accounts_file is not None:
        if not accounts_file.is_file():
            raise CliError(f"accounts file {accounts_file} does not exist or is not a file")
        ids += [ln.strip() for ln in accounts_file.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if everyone and accounts_file is None:

        async def go(store: Store) -> list[str]:
            return [a.id for a in await store.list_accounts()]

        ids += with_store(go)
    labels = [key_label("account", a) for a in dict.fromkeys(ids)]
    labels += [key_label("cluster", c) for c in dict.fromkeys(clusters or [])]
    return [keys.key(lbl) for lbl in labels]


def fmt_p(p: float, log10_p: float) -> str:
    return f"{p:.3g}" if p > 0 else f"1e{log10_p:.0f}"


@app.command("detect")
def detect(
    source: str = typer.Argument(..., help="text file, JSONL (a text per line), or - for stdin"),
    account: list[str] = typer.Option(None, "--account", "-a", help="test under this account's key (repeatable)"),
    cluster: list[str] = typer.Option(None, "--cluster", help="test under this cluster's key (repeatable)"),
    attribute_mode: bool = typer.Option(
        False, "--attribute", help="test every account key (the store's, or --accounts) and name the likely sources"
    ),
    accounts_file: Path = typer.Option(None, "--accounts", help="candidate account ids, one per line"),
    pool: bool = typer.Option(False, "--pool", help="pool all texts into one test (their distinct pairs once)"),
    correction: str = typer.Option("holm", help=f"multiple-testing correction: {' | '.join(CORRECTIONS)}"),
    alpha: float = typer.Option(ALPHA, help="family-wise error rate for naming an account"),
    secondary_alpha: float = typer.Option(
        SECONDARY_ALPHA, help="stricter level for each account named after the first (docs/watermark.md)"
    ),
    top: int = typer.Option(5, help="candidates shown per text in attribution mode"),
    scheme: str = typer.Option(None, help="kgw | gumbel | tournament (default: watermark.scheme)"),
    gamma: float = typer.Option(None, help="kgw green share (default: watermark.gamma)"),
    context_width: int = typer.Option(None, help="default: watermark.context_width"),
    threshold: float = typer.Option(None, help="z threshold (default: watermark.z_threshold)"),
    tokenizer: Path = typer.Option(None, help="GGUF file whose tokenizer generated the text (default: embedded model)"),
    entropy_weights: bool = typer.Option(
        None, "--entropy-weights/--no-entropy-weights",
        help="weight each token by how open the model's choice was there (tournament only; default: on for it). "
        "Runs the model of --tokenizer (default: the embedded one) over each text, after its prompt when the "
        "JSONL record has one (prompt, instruction, or the user's message)",
    ),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:  # fmt: skip
    """Test texts for the watermark: z-score and exact p-value per text under a key, or, with
    --attribute, under every account key with Holm (or Bonferroni) correction.

    Needs the server secret the gateway used (watermark.secret / DISTILLSHIELD_WATERMARK__SECRET).

    Example: distillshield watermark detect outputs.jsonl --attribute --accounts accounts.txt --json
    """
    if correction not in CORRECTIONS:
        raise CliError(f"--correction must be one of {', '.join(CORRECTIONS)}, got {correction!r}")
    for option, level in (("--alpha", alpha), ("--secondary-alpha", secondary_alpha)):
        if not 0.0 < level < 1.0:
            raise CliError(f"{option} must be between 0 and 1 (exclusive), got {level}")
    if not (account or cluster or attribute_mode):
        raise CliError("name a key: --account ID, --cluster ID, or --attribute to test every account")
    wm = setup(scheme, gamma, context_width, threshold, tokenizer)
    try:
        texts = read_texts(source)
    except TextsError as exc:
        raise CliError(str(exc)) from None
    if not texts:
        raise CliError(f"{source} holds no text to test")
    keys = candidate_keys(wm.keys, account, cluster, accounts_file, everyone=attribute_mode)
    if not keys:
        raise CliError("no candidate keys: the store has no accounts; pass --accounts FILE or --account ID")
    weigher = _weigher(wm.scheme, tokenizer, entropy_weights)

    units = [("pooled", texts)] if pool else [(t.id, [t]) for t in texts]
    results = []
    with progress() as bar:
        task = bar.add_task("testing", total=len(units))
        for ident, group in units:
            ids = [wm.tokenizer.encode(t.text) for t in group]
            weights = None
            if weigher is not None:
                weights = [weigher.weights(x, t.prompt) for x, t in zip(ids, group, strict=True)]
            if attribute_mode:
                a = attribute(wm.scheme, ids, keys, correction=correction, alpha=alpha,
                              secondary_alpha=secondary_alpha, threshold=wm.threshold, weights=weights)  # fmt: skip
                results.append({"id": ident, **a.as_dict(top)})
            else:
                dets = score_keys(wm.scheme, ids, keys, wm.threshold, weights=weights)[0]
                results.append({"id": ident, "tests": [d.as_dict() for d in dets]})
            bar.advance(task)

    out = {
        "scheme": wm.scheme.name,
        "params": _params(wm.scheme),
        "threshold": wm.threshold,
        "tokenizer": wm.tokenizer.name,
        "weighting": None if weigher is None else weigher.name,
        "mode": "attribution" if attribute_mode else "detection",
        "keys_tested": len(keys),
        "results": results,
    }
    if as_json:
        print_json(out)
        return
    if attribute_mode:
        _print_attribution(results, correction, alpha, secondary_alpha)
    else:
        _print_detection(results)


def _weigher(scheme: Scheme, tokenizer: Path | None, wanted: bool | None) -> ModelWeigher | None:
    """The entropy weigher (the model behind the tokenizer) when the scheme has a weighted test and it is not
    turned off; CliError when it was asked for and cannot be had."""
    if wanted is False or (wanted is None and not supports_weights(scheme)):
        return None
    try:
        require_weights(scheme)
    except ValueError as exc:
        raise CliError(f"--entropy-weights: {exc}") from None
    try:
        return ModelWeigher(tokenizer)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        raise CliError(f"cannot load the model for entropy weights ({exc}); pass --no-entropy-weights") from None


def _params(scheme: object) -> dict[str, object]:
    return {k: getattr(scheme, k) for k in ("gamma", "context_width") if hasattr(scheme, k)}


def _print_detection(results: list[dict]) -> None:
    t = Table("text", "key", "tokens", "scored", "z", "p-value", "watermarked")
    for r in results:
        for d in r["tests"]:
            t.add_row(
                escape(str(r["id"])),
                escape(d["key"]),
                str(d["tokens"]),
                str(d["scored"]),
                f"{d['z']:.2f}",
                fmt_p(d["p_value"], d["log10_p"]),
                "[green]yes[/green]" if d["detected"] else "no",
            )
    console.print(t)


def _print_attribution(results: list[dict], correction: str, alpha: float, secondary_alpha: float) -> None:
    t = Table("text", "rank", "key", "z", "p-value", f"p ({correction})", "named")
    for r in results:
        for i, c in enumerate(r["top"], start=1):
            named = c["key"] in r["attributed"]
            t.add_row(
                escape(str(r["id"])) if i == 1 else "",
                str(i),
                escape(c["key"]),
                f"{c['z']:.2f}",
                fmt_p(c["p_value"], c["log10_p"]),
                fmt_p(c["p_adjusted"], c["log10_p_adjusted"]),
                "[red]yes[/red]" if named else "",
            )
    console.print(t)
    console.print(
        f"{results[0]['keys_tested']} keys tested; named = adjusted p < {alpha} for the first account, "
        f"< {min(alpha, secondary_alpha)} for each further one"
    )
