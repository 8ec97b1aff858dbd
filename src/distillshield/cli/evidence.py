"""`distillshield evidence`: build (or verify) the evidence bundle for an account or a cluster."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from distillshield.cli.common import (
    CliError,
    console,
    err_console,
    open_store,
    print_json,
    progress,
    require_existing_store,
    settings,
)
from distillshield.evidence import (
    EvidenceError,
    build_bundle,
    chained_traffic,
    load_report,
    traffic_from_file,
    verify_bundle,
    watermark_detector,
)
from distillshield.store.checkpoint import CheckpointError, load_verifier


def evidence_command(
    target: str = typer.Argument(None, help="account id, or cluster id of --report"),
    out: Path = typer.Option(None, "--out", "-o", help="folder to write the bundle into"),
    report: Path = typer.Option(None, "--report", "-r", help="the analyser's REPORT.json (signals, clusters)"),
    traffic: Path = typer.Option(
        None, "--traffic", help="traffic JSONL instead of the audit log (then the bundle has no chain proof)"
    ),
    audit_result: Path = typer.Option(None, "--audit-result", help="JSON of `distillshield audit --json` to include"),
    max_prompts: int = typer.Option(8, min=1, help="representative prompt templates shown"),
    max_rows: int = typer.Option(5000, min=10, help="audit rows cited in rows.jsonl at most"),
    no_watermark: bool = typer.Option(False, "--no-watermark", help="do not test the served outputs for the watermark"),
    verify: Path = typer.Option(None, "--verify", help="check an existing bundle instead of building one"),
    offline: bool = typer.Option(False, "--offline", help="with --verify: check the bundle alone, not the audit log"),
    pubkey: str = typer.Option(
        None, "--pubkey", help="with --verify: the verifier key (or a file holding it) the signed tree head must carry"
    ),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:  # fmt: skip
    """Write an evidence bundle (HTML report, JSON, charts, cluster graph, watermark results, the
    audit-log hash-chain proof of the rows cited, a signed checkpoint with each cited row's Merkle
    inclusion proof when checkpoints.key_file is set, and a sha256 manifest), or check one with --verify
    (exit 1 when the bundle, a cited row, a proof or the audit log was changed; --offline --pubkey KEY
    checks the signature and proofs with no database).

    Example: distillshield evidence cluster-3 --report report.json --out evidence/cluster-3
    """
    if verify is not None:
        _verify(verify, offline, as_json, pubkey)
        return
    if not target or out is None:
        raise CliError("give the account or cluster id and --out DIR (or --verify DIR to check a bundle)")
    try:
        rep = load_report(report) if report is not None else None
        audit = _load_audit(audit_result) if audit_result is not None else None
    except EvidenceError as exc:
        raise CliError(str(exc)) from None
    from distillshield.evidence.collect import resolve_subject

    try:
        subject = resolve_subject(target, rep)
    except EvidenceError as exc:
        raise CliError(str(exc)) from None
    s = settings()
    if traffic is None:
        require_existing_store(s.store.url)  # a bundle of 0 requests from a log that is not there helps no one
    wm = None if no_watermark else _watermark(s)

    async def go() -> dict[str, Any]:
        with progress() as bar:
            task = bar.add_task("reading traffic", total=None)
            if traffic is not None:
                t, errors = traffic_from_file(traffic, subject.accounts)
                for e in errors[:5]:
                    err_console.print(f"[yellow]skipped[/yellow] {escape(f'{traffic}:{e}')}")
                store_url = None
            else:
                store = await open_store(s)
                try:
                    t = await chained_traffic(store, s.checkpoints, subject.accounts)
                finally:
                    await store.close()
                store_url = store.safe_url
            return build_bundle(
                target, out, t, report=rep, report_path=report, wm=wm, audit_result=audit,
                max_prompts=max_prompts, max_rows=max_rows, store_url=store_url,
                progress=lambda msg: bar.update(task, description=msg),
            )  # fmt: skip

    try:
        manifest = asyncio.run(go())
    except EvidenceError as exc:
        raise CliError(str(exc)) from None
    if as_json:
        print_json({"out": str(out), **manifest})
        return
    proof = manifest["chain_proof"]
    console.print(f"wrote evidence bundle for {subject.kind} [bold]{escape(target)}[/bold] to {escape(str(out))}")
    console.print(
        f"  {len(manifest['files'])} files + manifest.json (sha256 of each); open {escape(str(out / 'report.html'))}"
    )
    if proof.get("chained"):
        console.print(
            f"  cites {proof['rows_cited']} audit rows {proof['row_range']}; chain head row "
            f"{proof['chain_head']['seq']} {proof['chain_head']['hash'][:16]}...; check with: "
            f"distillshield evidence --verify {escape(str(out))}"
        )
        tree = proof.get("signed_tree")
        if tree:
            fresh = " (signed now for this bundle)" if tree["written_for_this_bundle"] else ""
            console.print(
                f"  signed tree head: size {tree['size']}, key {tree['key_id']}{fresh}; every cited row has an "
                "inclusion proof in tree_proof.json"
            )
        else:
            console.print(f"  [yellow]no signed tree head[/yellow]: {escape(proof['signed_tree_note'])}")
    else:
        console.print("  [yellow]no hash-chain proof[/yellow]: traffic came from a file, not the audit log")


def _load_audit(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise EvidenceError(f"audit result {path} does not exist or is not a file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise EvidenceError(f"audit result {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or "results" not in data:
        raise EvidenceError(f"{path} is not the output of `distillshield audit --json`")
    return data


def _watermark(s: Any) -> Any:
    try:
        return watermark_detector(s.watermark)
    except (ValueError, FileNotFoundError) as exc:
        raise CliError(f"cannot set up watermark detection: {exc}") from None


def _verify(bundle: Path, offline: bool, as_json: bool, pubkey: str | None) -> None:
    pinned = None
    if pubkey is not None:
        try:
            pinned = load_verifier(pubkey, settings().checkpoints.origin)
        except CheckpointError as exc:
            raise CliError(f"--pubkey: {exc}") from None

    async def go() -> Any:
        store = None if offline else await open_store()
        try:
            return await verify_bundle(bundle, store, pinned)
        finally:
            if store is not None:
                await store.close()

    try:
        result = asyncio.run(go())
    except EvidenceError as exc:
        raise CliError(str(exc)) from None
    if as_json:
        print_json({"bundle": str(bundle), "offline": offline, **result.as_dict()})
    else:
        for c in result.checks:
            mark = "[green]ok[/green]    " if c["ok"] else "[red]FAILED[/red]"
            console.print(f"{mark} {c['check']}: {escape(c['detail'])}")
        if offline:
            console.print("[yellow]offline[/yellow]: the audit log itself was not checked")
        console.print("[green]bundle verified[/green]" if result.ok else "[red]bundle does NOT verify[/red]")
    raise typer.Exit(0 if result.ok else 1)


def register(app: typer.Typer) -> None:
    app.command("evidence")(evidence_command)
