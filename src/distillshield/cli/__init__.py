"""The command-line front door: `distillshield COMMAND --help` documents every command with an example."""

from __future__ import annotations

import sys

import typer

from distillshield.cli import accounts, evaluate, keys, logs, review, serve
from distillshield.cli import analyze as analyze_cli
from distillshield.cli import audit as audit_cli
from distillshield.cli import evidence as evidence_cli
from distillshield.cli import intel as intel_cli
from distillshield.cli import simulate as simulate_cli
from distillshield.cli import train as train_cli
from distillshield.cli import watermark as watermark_cli
from distillshield.cli import worker as worker_cli
from distillshield.cli.common import CliError, set_config_path
from distillshield.config import ConfigError
from distillshield.store.database import StoreError

app = typer.Typer(
    name="distillshield",
    help="DistillShield: a gateway and toolkit that defends model APIs against distillation.\n\n"
    "Example: distillshield init && distillshield serve",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _global(
    config: str = typer.Option(
        None,
        "--config",
        "-c",
        envvar="DISTILLSHIELD_CONFIG",
        help="YAML config file (default ./distillshield.yaml)",
    ),
) -> None:
    set_config_path(config)


serve.register(app)
evaluate.register(app)
simulate_cli.register(app)
analyze_cli.register(app)
train_cli.register(app)
audit_cli.register(app)
evidence_cli.register(app)
app.add_typer(accounts.app, name="accounts")
app.add_typer(keys.app, name="keys")
app.add_typer(logs.app, name="logs")
app.add_typer(review.app, name="review")
app.add_typer(watermark_cli.app, name="watermark")
app.add_typer(worker_cli.app, name="worker")
app.add_typer(intel_cli.app, name="intel")


def main() -> None:
    """Console entry point: user errors print one line and exit non-zero, never a traceback."""
    try:
        app(standalone_mode=True)
    except (CliError, ConfigError, StoreError) as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
