"""`distillshield intel export|import|list|push|pull`: campaign indicators as STIX 2.1, shared over TAXII 2.1."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from distillshield.cli.common import CliError, console, err_console, fmt_ts, print_json, settings, with_store
from distillshield.store import Store

app = typer.Typer(
    help="Threat-intelligence exchange (docs/intel.md): export a detected campaign's indicators as a STIX 2.1 "
    "bundle, share it over TAXII 2.1, import others' and flag requests that match them. "
    "Example: distillshield intel export --report report.json --traffic traffic.jsonl --cluster cl_391a4900 "
    "--out bundle.json",
    no_args_is_help=True,
)


def _read_bundle_file(path: Path) -> bytes:
    if not path.is_file():
        raise CliError(f"bundle file {path} does not exist or is not a file")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read bundle file {path}: {exc}") from None


@app.command("export")
def export(
    report: Path = typer.Option(..., "--report", "-r", help="the analyser report (distillshield analyze --out)"),
    traffic: Path = typer.Option(..., "--traffic", "-t", help="the traffic file the report was made from"),
    cluster: str = typer.Option(None, "--cluster", help="export this cluster of the report"),
    account: str = typer.Option(None, "--account", help="export this one account of the report"),
    out: Path = typer.Option(None, "--out", "-o", help="write the bundle here (default: print it)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="show what would leave, object by object; write nothing"),
    tlp: str = typer.Option(
        None, "--tlp", help="TLP 2.0 marking: clear, green, amber, amber+strict, red (default intel.tlp, amber)"
    ),  # fmt: skip
    salt: str = typer.Option(None, "--salt", help="pseudonym secret (default intel.salt)"),
    min_accounts: int = typer.Option(
        2, "--min-accounts", min=1, help="share an indicator seen from at least this many of the campaign's accounts"
    ),  # fmt: skip
    max_outside: int = typer.Option(
        0, "--max-outside", min=0, help="... and from at most this many accounts outside it"
    ),  # fmt: skip
    as_json: bool = typer.Option(False, "--json", help="print JSON (with --dry-run: the summary and the bundle)"),
) -> None:
    """Export one detected campaign as a STIX 2.1 bundle: identity, campaign, indicators (IP ranges, user
    agents, template fingerprints), sightings, relationships, a TLP 2.0 marking.

    Never in a bundle: prompts, responses, API keys, account or cluster ids (salted pseudonyms stand for them).
    Ids are deterministic: exporting the same campaign again updates it at the consumer.

    Example: distillshield intel export --report report.json --traffic traffic.jsonl --cluster cl_391a4900 --dry-run

    Example: distillshield intel export -r report.json -t traffic.jsonl --cluster cl_391a4900 -o bundle.json
    """
    from distillshield.detect.corpus import LineErrors, read_records
    from distillshield.evaluate.verdicts import ReportError, load_report
    from distillshield.intel.export import ExportError, ExportOptions, export_campaign, summarise
    from distillshield.intel.stix import BundleError, parse_bundle

    if (cluster is None) == (account is None):
        raise CliError("name the campaign: --cluster ID (a cluster of the report) or --account ID, one of them")
    if not traffic.is_file():
        raise CliError(f"traffic file {traffic} does not exist or is not a file")
    if out is not None and not dry_run and not out.parent.is_dir():
        raise CliError(f"cannot write {out}: folder {out.parent} does not exist")
    cfg = settings().intel
    try:
        rep = load_report(report)
    except ReportError as exc:
        raise CliError(str(exc)) from None
    opts = ExportOptions(
        producer=cfg.producer,
        salt=salt or (cfg.salt.get_secret_value() if cfg.salt else ""),
        tlp=tlp or cfg.tlp,
        min_accounts=min_accounts,
        max_outside=max_outside,
        valid_days=cfg.valid_days,
    )
    errors = LineErrors()
    try:
        bundle = export_campaign(rep, read_records(traffic, errors), opts, cluster=cluster, account=account)
        parse_bundle(bundle)  # what leaves is valid STIX 2.1, every pattern included
    except (ExportError, BundleError) as exc:
        raise CliError(str(exc)) from None
    summary = summarise(bundle)
    if dry_run:
        if as_json:
            print_json({"summary": summary, "bundle": bundle})
            return
        _print_dry_run(summary)
        return
    text = json.dumps(bundle, indent=2)
    if out is None:
        typer.echo(text)
        return
    out.write_text(text + "\n", encoding="utf-8")
    if as_json:
        print_json({**summary, "out": str(out)})
        return
    n = summary["objects"].get("indicator", 0)
    console.print(f"wrote {len(bundle['objects'])} STIX objects ({n} indicators, {summary['marking']}) to {out}")


def _print_dry_run(summary: dict[str, Any]) -> None:
    objs = ", ".join(f"{n} {t}" for t, n in summary["objects"].items())
    console.print(f"[bold]would leave[/bold]: bundle {summary['bundle']}, marked {summary['marking']}: {objs}")
    for i in summary["indicators"]:
        console.print(f"  {i['id']}  {i['pattern']}  confidence {i['confidence']}, valid until {i['valid_until']}",
                      highlight=False, markup=False, soft_wrap=True)  # fmt: skip
    console.print(
        "never leaves: prompts or responses, API keys, account, org or cluster ids (salted pseudonyms only), "
        "accounts' IP addresses (only /24 or /48 ranges several campaign accounts used and no other account did)"
    )


@app.command("import")
def import_(
    bundle: Path = typer.Argument(..., help="a STIX 2.1 bundle (JSON)"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Validate a STIX 2.1 bundle and store its indicators in the configured store, for detection to match.

    A newer version of an indicator replaces the older one; revoked and expired indicators stop matching.

    Example: distillshield intel import bundle.json
    """
    from distillshield.intel.stix import BundleError
    from distillshield.intel.store import import_bundle

    data = _read_bundle_file(bundle)

    async def go(store: Store) -> Any:
        try:
            return await import_bundle(store, data, str(bundle))
        except BundleError as exc:
            raise CliError(f"{bundle}: {exc}") from None

    res = with_store(go)
    if as_json:
        print_json(res.as_dict())
        return
    console.print(_import_line(res, str(bundle)))


def _import_line(res: Any, source: str) -> str:
    line = (
        f"{source}: {res.added} indicators added, {res.updated} updated ({res.revoked} revocations), "
        f"{res.unchanged} unchanged, {res.older} older than the stored version"
    )
    if res.unsupported:
        line += f"; {res.unsupported} with no pattern DistillShield can match per request (kept)"
    return line


@app.command("list")
def list_(
    all_: bool = typer.Option(False, "--all", help="also revoked and expired indicators"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """List imported indicators (active ones by default).

    Example: distillshield intel list --json
    """
    import time

    from distillshield.intel.store import IntelStore

    now = time.time()

    async def go(store: Store) -> Any:
        return await (IntelStore(store).all() if all_ else IntelStore(store).active(now))

    inds = with_store(go)
    if as_json:
        print_json([{**i.as_dict(), "active": i.active(now)} for i in inds])
        return
    t = Table("indicator", "producer", "confidence", "matches", "valid until (UTC)", "state")
    for i in inds:
        state = "revoked" if i.revoked else "active" if i.active(now) else "expired"
        t.add_row(i.id, i.producer, str(i.confidence), ", ".join(i.kinds) or "-", fmt_ts(i.valid_until), state)
    console.print(t)
    console.print(f"{len(inds)} indicators" + ("" if all_ else " active"))


def _target(url: str | None, collection: str | None, user: str | None, password: str | None) -> Any:
    from distillshield.intel.taxii import TaxiiTarget

    cfg = settings().intel
    url = url or cfg.taxii_url
    collection = collection or cfg.taxii_collection
    if not url or not collection:
        raise CliError("no TAXII collection: pass --url API_ROOT and --collection ID, or set intel.taxii_url and "
                       "intel.taxii_collection")  # fmt: skip
    if not url.startswith(("http://", "https://")):
        raise CliError(f"--url {url}: a TAXII API root is an http:// or https:// URL")
    pw = password or (cfg.taxii_password.get_secret_value() if cfg.taxii_password else None)
    return TaxiiTarget(url, collection, user or cfg.taxii_user, pw)


URL_HELP = "TAXII 2.1 API root (default intel.taxii_url)"
COLLECTION_HELP = "collection id (default intel.taxii_collection)"


@app.command("push")
def push(
    bundle: Path = typer.Argument(..., help="a STIX 2.1 bundle (intel export --out)"),
    url: str = typer.Option(None, "--url", help=URL_HELP),
    collection: str = typer.Option(None, "--collection", help=COLLECTION_HELP),
    user: str = typer.Option(None, "--user", help="HTTP basic user (default intel.taxii_user)"),
    password: str = typer.Option(None, "--password", help="its password (default intel.taxii_password)"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Add a bundle's objects to a TAXII 2.1 collection (validated first) and wait for the server's status.

    Example: distillshield intel push bundle.json --url https://taxii.example.org/api1/ --collection 472c94ae-...
    """
    from distillshield.intel import taxii
    from distillshield.intel.stix import BundleError, parse_bundle

    data = _read_bundle_file(bundle)
    target = _target(url, collection, user, password)
    try:
        parse_bundle(data)
        result = taxii.push(target, json.loads(data))
    except BundleError as exc:
        raise CliError(f"{bundle}: {exc}") from None
    except taxii.TaxiiError as exc:
        raise CliError(str(exc)) from None
    if as_json:
        print_json({**result, "collection": target.url})
        return
    console.print(f"pushed {result['succeeded']} of {result['total']} objects to {target.url} ({result['status']})")


@app.command("pull")
def pull(
    url: str = typer.Option(None, "--url", help=URL_HELP),
    collection: str = typer.Option(None, "--collection", help=COLLECTION_HELP),
    user: str = typer.Option(None, "--user", help="HTTP basic user (default intel.taxii_user)"),
    password: str = typer.Option(None, "--password", help="its password (default intel.taxii_password)"),
    again: bool = typer.Option(False, "--all", help="pull the whole collection, not only what is new"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Pull the objects added to a TAXII 2.1 collection since the last pull and import their indicators.

    Example: distillshield intel pull --url https://taxii.example.org/api1/ --collection 472c94ae-...
    """
    from distillshield.intel import taxii
    from distillshield.intel.stix import BundleError
    from distillshield.intel.store import IntelStore, import_bundle

    target = _target(url, collection, user, password)

    async def go(store: Store) -> Any:
        istore = IntelStore(store)
        since = None if again else await istore.pulled(target.url)
        try:
            bundle, end = taxii.pull(target, since)
        except taxii.TaxiiError as exc:
            raise CliError(str(exc)) from None
        if not bundle["objects"]:
            await istore.set_pulled(target.url, end)
            return None, len(bundle["objects"]), since
        try:
            res = await import_bundle(store, bundle, target.url)
        except BundleError as exc:
            raise CliError(f"the objects pulled from {target.url}: {exc}") from None
        await istore.set_pulled(target.url, end)
        return res, len(bundle["objects"]), since

    res, n, since = with_store(go)
    if as_json:
        print_json({"collection": target.url, "objects": n, "since": since, **(res.as_dict() if res else {})})
        return
    if res is None:
        console.print(f"nothing new in {target.url}" + (f" since {since}" if since else ""))
        return
    err_console.print(f"pulled {n} objects from {target.url}")
    console.print(_import_line(res, target.url))
