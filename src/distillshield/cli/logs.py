"""`distillshield logs verify|checkpoint|keygen|pubkey|export|import`: the audit log's hash chain, its
signed Merkle-tree checkpoints, and the public traffic format."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from rich.markup import escape

from distillshield.cli.common import CliError, console, err_console, print_json, progress, settings, with_store
from distillshield.config import Settings
from distillshield.store import Store
from distillshield.store.chain import ChainReport
from distillshield.store.checkpoint import (
    Checkpointer,
    CheckpointError,
    SignedCheckpoint,
    Signer,
    Verifier,
    generate_key_file,
    load_key_file,
    load_verifier,
    read_notes,
    signer_from_settings,
)
from distillshield.store.export import record_to_row, row_to_record
from distillshield.store.tables import is_admin_endpoint
from distillshield.store.transparency import TreeReport, open_checkpoints, verify_log
from distillshield.traffic import LineError, ParquetWriter, TrafficRecord, iter_jsonl

app = typer.Typer(help="The audit log. Example: distillshield logs verify", no_args_is_help=True)


@app.command("verify")
def verify(
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
    checkpoint: Path = typer.Option(
        None, "--checkpoint", help="also check the log against this file of signed checkpoints"
    ),
    pubkey: str = typer.Option(
        None, "--pubkey", help="verifier key (or a file holding it) for --checkpoint; default: the configured key"
    ),
) -> None:
    """Check the audit log's sha256 hash chain; names the first edited, deleted or reordered row.

    With --checkpoint FILE, also check every signed checkpoint in FILE (signature by --pubkey or the
    configured key) and recompute the Merkle tree from the database against each one: a truncated
    log, a rewritten history (even with the chain recomputed), a forged checkpoint or a replaced key
    is reported with the first row (or checkpoint interval) where the log departs from what was signed.

    Exits 0 when everything verifies, 1 when the log (or a checkpoint) was tampered with.

    Example: distillshield logs verify --checkpoint distillshield-checkpoints.txt --json
    """
    if checkpoint is None:
        report = with_store(lambda store: store.verify_chain(), existing=True)
        if as_json:
            print_json(report.as_dict())
        else:
            _print_chain(report)
        raise typer.Exit(0 if report.ok else 1)

    s = settings()
    if not checkpoint.is_file():
        raise CliError(f"checkpoint file {checkpoint} does not exist or is not a file")
    verifier = _verifier(s, pubkey)
    try:
        notes = read_notes(checkpoint)
    except CheckpointError as exc:
        if not checkpoint.is_file():
            raise CliError(str(exc)) from None
        notes, forged = [], str(exc)
    else:
        forged = None
    if forged is None:
        try:
            checkpoints = open_checkpoints(notes, verifier, str(checkpoint))
        except CheckpointError as exc:
            forged = str(exc)
    if forged is not None:
        if as_json:
            print_json({"ok": False, "chain": None, "checkpoints": {"ok": False, "problem": forged}})
        else:
            console.print(f"[red]TAMPERED[/red]: {escape(forged)}", soft_wrap=True)
        raise typer.Exit(1)

    async def go(store: Store) -> tuple[ChainReport, TreeReport]:
        return await store.verify_chain(), await verify_log(store, checkpoints)

    chain_report, tree_report = with_store(go, existing=True)
    ok = chain_report.ok and tree_report.ok
    if as_json:
        print_json({"ok": ok, "chain": chain_report.as_dict(), "checkpoints": tree_report.as_dict()})
    elif not tree_report.ok:
        console.print(f"[red]TAMPERED[/red]: {escape(tree_report.problem or '')}", soft_wrap=True)
    elif not chain_report.ok:
        _print_chain(chain_report)
    else:
        latest = tree_report.latest
        signed = (
            f"{tree_report.checkpoints} signed checkpoints agree, the latest at size {latest.size}"
            if latest
            else "no signed checkpoint to check"
        )
        console.print(
            f"[green]intact[/green]: {chain_report.rows} rows, head seq {chain_report.head_seq}; {signed}"
            f" (key {verifier.key_id})",
            soft_wrap=True,
        )
        for note in tree_report.notes:
            console.print(f"  note: {escape(note)}")
    raise typer.Exit(0 if ok else 1)


def _print_chain(report: ChainReport) -> None:
    if report.ok:
        console.print(f"[green]intact[/green]: {report.rows} rows, head seq {report.head_seq} hash {report.head_hash}")
    else:
        console.print(
            f"[red]BROKEN[/red] at row {report.first_bad_seq}: {report.problem} ({report.rows} rows verified before it)"
        )


def _verifier(s: Settings, pubkey: str | None) -> Verifier:
    """The key checkpoints are checked with: --pubkey, else the public half of the configured key."""
    if pubkey is not None:
        try:
            return load_verifier(pubkey, s.checkpoints.origin)
        except CheckpointError as exc:
            raise CliError(f"--pubkey: {exc}") from None
    if s.checkpoints.key_file is None:
        raise CliError("no key to check checkpoints with: pass --pubkey, or set checkpoints.key_file")
    if not Path(s.checkpoints.key_file).is_file():
        raise CliError(f"no key to check checkpoints with: {s.checkpoints.key_file} does not exist; pass --pubkey")
    signer = signer_from_settings(s.checkpoints, create=False)
    assert signer is not None
    return signer.verifier


def _key_path(s: Settings) -> Path:
    if s.checkpoints.key_file is None:
        raise CliError("no signing key configured: set checkpoints.key_file (or DISTILLSHIELD_CHECKPOINTS__KEY_FILE)")
    return Path(s.checkpoints.key_file)


@app.command("keygen")
def keygen(
    out: Path = typer.Option(None, "--out", "-o", help="where to write the key; default: checkpoints.key_file"),
) -> None:
    """Create the Ed25519 key that signs checkpoints (PEM, mode 0600; an existing file is never
    overwritten) and print its public verifier key, to keep somewhere the database's admins cannot change.

    Example: distillshield logs keygen --out /etc/distillshield/checkpoint.key
    """
    s = settings()
    path = out or _key_path(s)
    try:
        key = generate_key_file(path)
    except CheckpointError as exc:
        raise CliError(str(exc)) from None
    console.print(f"wrote signing key {escape(str(path))} (mode 0600)")
    console.print(Signer(s.checkpoints.origin, key).verifier.encode(), highlight=False, soft_wrap=True)


@app.command("pubkey")
def pubkey_(pem: bool = typer.Option(False, "--pem", help="print the public key as PEM instead")) -> None:
    """Print the public verifier key of the configured signing key (NAME+KEYID+BASE64, the signed-note
    format), for `logs verify --pubkey` and `evidence --verify --pubkey` elsewhere.

    Example: distillshield logs pubkey > checkpoint.pub
    """
    s = settings()
    path = _key_path(s)
    try:
        key = load_key_file(path)
    except CheckpointError as exc:
        raise CliError(f"{exc} (create it with `distillshield logs keygen`)") from None
    if pem:
        text = key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode("ascii")
        sys.stdout.write(text)
    else:
        sys.stdout.write(Signer(s.checkpoints.origin, key).verifier.encode() + "\n")


@app.command("checkpoint")
def checkpoint_(as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """Sign the audit log's current Merkle tree head now and add the checkpoint to the configured file
    (and command). The gateway does this by itself every checkpoints.every_rows rows or every_s seconds.

    Example: distillshield logs checkpoint
    """
    s = settings()
    _key_path(s)
    checkpointer = Checkpointer.from_settings(s.checkpoints)
    assert checkpointer is not None

    async def go(store: Store) -> SignedCheckpoint | None:
        return await checkpointer.checkpoint(store, force=True)

    try:
        signed = with_store(go, existing=True)
    except CheckpointError as exc:
        raise CliError(str(exc)) from None
    assert signed is not None
    where = [str(p) for p in (checkpointer.file, checkpointer.command) if p is not None]
    if as_json:
        print_json({**signed.checkpoint.as_dict(), "note": signed.note, "written_to": where})
        return
    err_console.print(f"checkpoint of {signed.checkpoint.size} rows written to {escape(', '.join(where))}")
    sys.stdout.write(signed.note)


@app.command("export")
def export(
    out: Path = typer.Option(..., "--out", "-o", help="file to write ('-' for stdout, JSONL only)"),
    since: float = typer.Option(None, help="only requests at or after this Unix time"),
    until: float = typer.Option(None, help="only requests before this Unix time"),
    account: str = typer.Option(None, "--account", help="only this account"),
    fmt: str = typer.Option(
        None, "--format", help="jsonl or parquet (default: parquet when --out ends in .parquet, else jsonl)"
    ),
) -> None:
    """Write the audit log as traffic records (docs/traffic-format.md), the input of analyze and evaluate:
    JSON Lines, or with --format parquet the same records as a Parquet file (its schema: the
    "Parquet" section of docs/traffic-format.md), which `analyze` reads too.

    Rows without an account (unauthenticated) or without a JSON-object body (malformed requests)
    cannot be expressed in the format and are counted as skipped; operators' administrative acts
    (docs/console.md) are not traffic and are left out, counted apart.

    Example: distillshield logs export --out traffic.jsonl --since 1767225600

    Example: distillshield logs export --format parquet --out traffic.parquet
    """
    to_stdout = str(out) == "-"
    fmt = fmt or ("parquet" if out.suffix == ".parquet" else "jsonl")
    if fmt not in ("jsonl", "parquet"):
        raise CliError(f"--format {fmt}: use jsonl or parquet")
    if fmt == "parquet" and to_stdout:
        raise CliError("--format parquet writes a file: give --out FILE")
    if not to_stdout and not out.parent.is_dir():
        raise CliError(f"cannot write {out}: folder {out.parent} does not exist")

    async def go(store: Store) -> tuple[int, int, int]:
        head, _ = await store.chain_head()
        try:  # opened once the log is known to exist, so a missing log leaves no empty file behind
            sink: _JsonlSink | ParquetWriter = _JsonlSink(out) if fmt == "jsonl" else ParquetWriter(out)
        except OSError as exc:
            raise CliError(f"cannot write {out}: {exc.strerror or str(exc).splitlines()[0]}") from None
        written = skipped = acts = 0
        try:
            with progress() as bar:
                task = bar.add_task("exporting", total=head)
                async for row in store.iter_audit():
                    bar.advance(task)
                    if (since is not None and row["ts"] < since) or (until is not None and row["ts"] >= until):
                        continue
                    if account is not None and row["account_id"] != account:
                        continue
                    if is_admin_endpoint(row["endpoint"]):  # an operator's act, not a request
                        acts += 1
                        continue
                    rec = row_to_record(row)
                    if rec is None:
                        skipped += 1
                        continue
                    sink.write(rec)
                    written += 1
        finally:
            sink.close()
        return written, skipped, acts

    written, skipped, acts = with_store(go, existing=True)
    err_console.print(
        f"exported {written} requests to {out}"
        + (f"; skipped {skipped} (no account or body)" if skipped else "")
        + (f"; {acts} administrative acts left out (not traffic)" if acts else "")
    )


class _JsonlSink:
    """Records as JSON Lines to a file or stdout (the Parquet sink is traffic.ParquetWriter)."""

    def __init__(self, out: Path) -> None:
        self.to_stdout = str(out) == "-"
        self.fh = sys.stdout.buffer if self.to_stdout else open(out, "wb")  # noqa: SIM115 - closed by close()

    def write(self, rec: TrafficRecord) -> None:
        self.fh.write(rec.to_json() + b"\n")

    def close(self) -> None:
        if not self.to_stdout:
            self.fh.close()


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
