"""`distillshield logs verify|export|import`: the audit log's hash chain and the public traffic format."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from distillshield.cli.common import CliError, console, err_console, print_json, progress, with_store
from distillshield.store import Store
from distillshield.store.export import record_to_row, row_to_record
from distillshield.traffic import LineError, iter_jsonl

app = typer.Typer(help="The audit log. Example: distillshield logs verify", no_args_is_help=True)


@app.command("verify")
def verify(as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """Check the audit log's sha256 hash chain; names the first edited, deleted or reordered row.

    Exits 0 when the chain is intact, 1 when it is broken.

    Example: distillshield logs verify --json
    """
    report = with_store(lambda store: store.verify_chain(), existing=True)
    if as_json:
        print_json(report.as_dict())
    elif report.ok:
        console.print(
            f"[green]intact[/green]: {report.rows} rows, head seq {report.head_seq} hash {report.head_hash}"
        )
    else:
        console.print(
            f"[red]BROKEN[/red] at row {report.first_bad_seq}: {report.problem} "
            f"({report.rows} rows verified before it)"
        )
    raise typer.Exit(0 if report.ok else 1)


@app.command("export")
def export(
    out: Path = typer.Option(..., "--out", "-o", help="JSONL file to write ('-' for stdout)"),
    since: float = typer.Option(None, help="only requests at or after this Unix time"),
    until: float = typer.Option(None, help="only requests before this Unix time"),
    account: str = typer.Option(None, "--account", help="only this account"),
) -> None:
    """Write the audit log as traffic JSONL (docs/traffic-format.md), the input of analyze and evaluate.

    Rows without an account (unauthenticated) or without a JSON-object body (malformed requests)
    cannot be expressed in the format and are counted as skipped.

    Example: distillshield logs export --out traffic.jsonl --since 1767225600
    """

    to_stdout = str(out) == "-"
    try:
        fh = sys.stdout.buffer if to_stdout else open(out, "wb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise CliError(f"cannot write {out}: {exc.strerror}") from None

    async def go(store: Store) -> tuple[int, int]:
        head, _ = await store.chain_head()
        written = skipped = 0
        try:
            with progress() as bar:
                task = bar.add_task("exporting", total=head)
                async for row in store.iter_audit():
                    bar.advance(task)
                    if (since is not None and row["ts"] < since) or (
                        until is not None and row["ts"] >= until
                    ):
                        continue
                    if account is not None and row["account_id"] != account:
                        continue
                    rec = row_to_record(row)
                    if rec is None:
                        skipped += 1
                        continue
                    fh.write(rec.to_json() + b"\n")
                    written += 1
        finally:
            if not to_stdout:
                fh.close()
        return written, skipped

    written, skipped = with_store(go, existing=True)
    err_console.print(
        f"exported {written} requests to {out}"
        + (f"; skipped {skipped} (no account or body)" if skipped else "")
    )


@app.command("import")
def import_(
    path: Path = typer.Argument(..., help="traffic JSONL file"),
    batch: int = typer.Option(1000, help="rows per write transaction"),
) -> None:
    """Append traffic records to the audit log (extending its hash chain). Bad lines are reported with
    their numbers and skipped; the good ones are still imported.

    Example: distillshield logs import traffic.jsonl
    """
    if not path.is_file():
        raise CliError(f"{path} does not exist or is not a file")
    total = sum(1 for _ in open(path, "rb"))

    async def go(store: Store) -> tuple[int, int, list[LineError]]:
        errors: list[LineError] = []
        rows: list[dict] = []
        n = dup = 0
        seen: set[str] = set()

        async def write() -> None:
            nonlocal n, dup
            # Idempotent: a record already in the log (an earlier import of the same file) is not added again.
            there = await store.existing_request_ids([r["request_id"] for r in rows])
            fresh = []
            for r in rows:
                if r["request_id"] in there or r["request_id"] in seen:
                    dup += 1
                else:
                    seen.add(r["request_id"])
                    fresh.append(r)
            await store.append_audit(fresh)
            n += len(fresh)

        with progress() as bar:
            task = bar.add_task("importing", total=total)
            for rec in iter_jsonl(path, errors):
                rows.append(record_to_row(rec))
                if len(rows) >= batch:
                    await write()
                    bar.update(task, completed=n + dup + len(errors))
                    rows = []
            if rows:
                await write()
            bar.update(task, completed=total)
        return n, dup, errors

    n, dup, errors = with_store(go)
    for e in errors[:20]:
        err_console.print(f"[yellow]skipped[/yellow] {path}:{e}")
    if len(errors) > 20:
        err_console.print(f"... and {len(errors) - 20} more bad lines")
    console.print(
        f"imported {n} requests from {path}"
        + (f"; {dup} already in the log skipped" if dup else "")
        + (f"; {len(errors)} bad lines skipped" if errors else "")
    )
    if n == 0 and dup == 0 and errors:  # nothing in the file was usable
        raise typer.Exit(1)
