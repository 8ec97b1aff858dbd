"""`distillshield simulate`: labelled traffic from honest and attacking personas, offline or live."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import IO, Any

import typer

from distillshield.cli.common import CliError, console, err_console, print_json, progress


def register(app: typer.Typer) -> None:
    @app.command("simulate")
    def simulate(
        scenario: str = typer.Option(
            "smoke",
            "--scenario",
            "-s",
            help="a named scenario (smoke, dev, heldout, large, logit; --list names all) or a scenario YAML file",
        ),
        seed: int = typer.Option(
            None, "--seed", help="random seed (default: the scenario's own); held-out seeds are >= 10000"
        ),
        out: Path = typer.Option(Path("traffic.jsonl"), "--out", "-o", help="JSONL file to write ('-' for stdout)"),
        target: str = typer.Option(
            None, "--target", help="live mode: send the traffic to the gateway at this loopback URL"
        ),
        admin_token: str = typer.Option(
            None, "--admin-token", envvar="DISTILLSHIELD_ADMIN_TOKEN", help="live mode: the gateway's admin token"
        ),
        concurrency: int = typer.Option(16, "--concurrency", min=1, max=1024, help="live mode: requests in flight"),
        speed: float = typer.Option(
            None,
            "--speed",
            min=0.001,
            help="live mode: simulated seconds per real second (default: as fast as possible)",
        ),
        limit: int = typer.Option(None, "--limit", min=1, help="live mode: send only the first N requests"),
        max_tokens: int = typer.Option(None, "--max-tokens", min=1, help="live mode: cap every request's max_tokens"),
        model: str = typer.Option(None, "--model", help="live mode: send every request to this model"),
        workers: int = typer.Option(
            1, "--workers", min=1, max=16, help="offline: generate in N processes (same bytes; faster on idle cores)"
        ),
        list_: bool = typer.Option(False, "--list", help="list the named scenarios and the personas, then exit"),
        as_json: bool = typer.Option(False, "--json", help="print the run's summary as JSON"),
    ) -> None:
        """Generate labelled traffic (the public traffic format, docs/traffic-format.md) from a scenario.

        Offline, it writes simulated requests with simulated timestamps. With --target it replays them
        against a running gateway on this machine (real accounts and keys through the admin API, real
        concurrency) and records what the gateway served. Every record is labelled "benign:<persona>" or
        "attack:<persona>"; docs/simulator.md describes the personas, their knobs and the dev/held-out split.

        Live, an attack persona that acts on the answers reports what it got: the `logit` scenario's
        logit_extraction account runs the published logit-extraction attack and reports the hidden size it
        recovered (docs/policy.md, "The logit_extraction persona"); the admin token comes from
        --admin-token or DISTILLSHIELD_ADMIN_TOKEN.

        Example: distillshield simulate --scenario smoke --seed 1 --out traffic.jsonl

        Example: distillshield simulate --scenario logit --target http://127.0.0.1:8787 --out logit-live.jsonl
        """
        from distillshield.simulate import corpora, engine
        from distillshield.simulate import scenario as scen
        from distillshield.simulate.live import LiveError, LiveOptions, check_loopback, replay

        if list_:
            _list(as_json)
            return
        try:
            sc, use_seed = scen.load(scenario, seed)
        except scen.ScenarioError as exc:
            raise CliError(str(exc)) from None
        if target is not None:
            try:
                check_loopback(target)
            except LiveError as exc:
                raise CliError(str(exc)) from None
            if not admin_token:
                raise CliError(
                    "live mode needs the gateway's admin token: pass --admin-token or set DISTILLSHIELD_ADMIN_TOKEN"
                )
        to_stdout = str(out) == "-"
        try:
            fh: IO[bytes] = sys.stdout.buffer if to_stdout else open(out, "wb")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise CliError(f"cannot write {out}: {exc.strerror}") from None
        try:
            with progress() as bar:
                if target is None:
                    task = bar.add_task(f"simulating '{sc.name}' (seed {use_seed})", total=round(sc.end - sc.start))

                    def on_progress(ts: float, n: int) -> None:
                        bar.update(task, completed=round(ts - sc.start))

                    summary = engine.write(sc, use_seed, fh, on_progress, workers=workers)
                    result: dict[str, Any] = {**summary.as_dict(), "out": str(out)}
                else:
                    engine.require_corpora()
                    expected = sc.expected_requests()
                    total = min(limit, expected) if limit else expected
                    task = bar.add_task(f"replaying '{sc.name}' to {target}", total=round(total))
                    opts = LiveOptions(
                        target=target,
                        admin_token=admin_token,
                        concurrency=concurrency,
                        speed=speed,
                        limit=limit,
                        max_tokens=max_tokens,
                        model=model,
                    )

                    def on_record(_rec: dict[str, Any]) -> None:
                        bar.advance(task)

                    stats = asyncio.run(replay(engine.iter_records(sc, use_seed), opts, fh, on_record))
                    bar.update(task, total=stats.sent, completed=stats.sent)
                    result = {
                        "scenario": sc.name,
                        "split": sc.split,
                        "seed": use_seed,
                        "out": str(out),
                        "target": target,
                        "live": stats.as_dict(),
                    }
        except corpora.CorpusUnavailable as exc:
            raise CliError(str(exc)) from None
        except LiveError as exc:
            raise CliError(str(exc)) from None
        finally:
            if not to_stdout:
                fh.close()
        if as_json:
            if to_stdout:  # stdout carries the traffic; the summary must not end up inside it
                err_console.print_json(data=result)
            else:
                print_json(result)
            return
        target_console = err_console if to_stdout else console
        if target is None:
            target_console.print(
                f"wrote {result['records']:,} requests from {_accounts_text(result)} to {out} "
                f"({result['split']} split, seed {use_seed}) in {result['elapsed_s']:.1f} s "
                f"({result['records_per_s']:,.0f} records/s)"
            )
        else:
            live = result["live"]
            target_console.print(
                f"sent {live['sent']:,} requests to {target}: {live['served']:,} served, {live['errors']:,} errors "
                f"({live['by_status']}); {live['accounts_created']:,} accounts created; wrote {out} "
                f"({result['split']} split, seed {use_seed})"
            )
            for acct, got in live["attacks"].items():
                target_console.print(f"{got['persona']} {acct}: {got['summary']}", markup=False)


def _accounts_text(result: dict[str, Any]) -> str:
    """The accounts that appear in the file; configured ones that sent nothing in the window are named apart."""
    active, configured = result["active_accounts"], result["accounts"]
    noun = "account" if active == 1 else "accounts"
    if active == configured:
        return f"{active:,} {noun}"
    return f"{active:,} active {noun} ({configured:,} configured, {configured - active:,} sent no request)"


def _list(as_json: bool) -> None:
    from distillshield.simulate import scenario as scen
    from distillshield.simulate.personas import PERSONAS

    personas = [{"name": p.name, "kind": p.kind, "split": p.split, "signature": p.signature} for p in PERSONAS.values()]
    if as_json:
        print_json({"scenarios": scen.named_scenarios(), "personas": personas})
        return
    console.print("[bold]named scenarios[/bold]: " + ", ".join(scen.named_scenarios()))
    for p in personas:
        console.print(f"  {p['kind']:6s} {p['split']:7s} [bold]{p['name']}[/bold]: {p['signature']}")
