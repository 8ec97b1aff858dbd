"""`distillshield analyze`: per-account and cross-account extraction detection over a traffic file or the audit log."""

from __future__ import annotations

import json
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import typer
from rich.table import Table

from distillshield.cli.common import (
    CliError,
    PhaseProgress,
    console,
    err_console,
    id_column,
    print_json,
    progress,
    with_store,
)

ENCODER_HELP = "sentence encoder: use (packaged, offline), hashing (no model), st:<model name or path>, or none"


def load_encoder_or_exit(spec: str) -> Any:
    if spec == "none":
        return None
    from distillshield.detect.embeddings import load_encoder

    try:
        return load_encoder(spec)
    except (ValueError, RuntimeError, OSError) as exc:
        raise CliError(f"--encoder {spec}: {exc}") from None


def load_model_or_exit(path: Path | None) -> Any:
    from distillshield.detect.scoring import DetectionModel, ModelError

    try:
        return DetectionModel.load(path)
    except ModelError as exc:
        raise CliError(str(exc)) from None


def _export_log(dest: Path) -> int:
    """Write the configured audit log as traffic JSONL (what `logs export` does), for analysis."""
    from distillshield.store import Store
    from distillshield.store.export import row_to_record

    async def go(store: Store) -> int:
        n = 0
        with open(dest, "wb") as fh:  # noqa: ASYNC230 - a local temp file, written in order as rows arrive
            async for row in store.iter_audit():
                rec = row_to_record(row)
                if rec is not None:
                    fh.write(rec.to_json() + b"\n")
                    n += 1
        return n

    return with_store(go, existing=True)


def analyze_command(
    traffic: Path = typer.Argument(
        None, help="traffic file, JSONL or Parquet (docs/traffic-format.md); omit with --from-log"
    ),
    out: Path = typer.Option(None, "--out", "-o", help="write the report JSON here"),
    from_log: bool = typer.Option(False, "--from-log", help="analyse the configured gateway's audit log"),
    model: Path = typer.Option(None, "--model", help="trained model artefact (default: the one shipped)"),
    encoder: str = typer.Option(
        "none", "--encoder", help=ENCODER_HELP + " (the model must have been trained with embeddings)"
    ),
    top: int = typer.Option(15, "--top", help="flagged accounts to list in the terminal"),
    workers: int = typer.Option(
        2, "--workers", min=1, max=1024, help="processes (local) or Ray CPUs (ray) that read and extract the traffic"
    ),
    engine: str = typer.Option(
        "local", "--engine", help="local (a process pool on this machine) or ray (Ray Data; the same report)"
    ),
    ray_address: str = typer.Option(
        None,
        "--ray-address",
        help="with --engine ray: the Ray cluster to run on (default: $RAY_ADDRESS, else a local Ray on --workers CPUs)",
    ),
    content: bool = typer.Option(
        True,
        "--content/--no-content",
        help="population-relative content signal and content campaigns (prompts far from this traffic's own)",
    ),
    cohorts: bool = typer.Option(
        True,
        "--cohorts/--no-cohorts",
        help="judge content campaigns also by the waves their accounts were created in (the records' "
        "account_created_at); --no-cohorts where honest users sign up in cohorts and ask for reasoning",
    ),
    intel: bool = typer.Option(
        False, "--intel", help="also match the indicators imported into the configured store (distillshield intel)"
    ),
    as_json: bool = typer.Option(False, "--json", help="print the report summary as JSON instead of tables"),
) -> None:
    """Score every account for distillation (extraction) and find coordinated account clusters (hydras).

    Works on unlabelled traffic: labels in the file are ignored. Malformed lines are reported with their
    line numbers and skipped. The report lists every account once with risk (0..1), verdict
    (benign / suspicious / extraction), cluster and reasons, then the clusters; see docs/detection.md.

    --engine ray reads and extracts on Ray Data (a local Ray on --workers CPUs, or the cluster at
    --ray-address / $RAY_ADDRESS, whose nodes must all see the file); scoring stays in this process, and the
    report is the local engine's (docs/performance.md, "Batch analysis on Ray").

    Example: distillshield analyze traffic.jsonl --out report.json

    Example: distillshield analyze traffic.parquet --engine ray --workers 8 --out report.json

    Example: distillshield analyze traffic.jsonl --intel   # flag accounts matching imported indicators (docs/intel.md)
    """
    from distillshield.detect.analyze import analyze_file

    if engine not in ("local", "ray"):
        raise CliError(f"--engine {engine}: use local or ray")
    if ray_address is not None and engine != "ray":
        raise CliError("--ray-address needs --engine ray")
    if workers > 64 and engine == "local":
        raise CliError(f"--workers {workers}: the local engine takes at most 64 processes (more with --engine ray)")
    if from_log == (traffic is not None):
        raise CliError("give a traffic file or --from-log (the configured audit log), not both or neither")
    if traffic is not None and not traffic.is_file():
        raise CliError(f"traffic file {traffic} does not exist or is not a file")
    if out is not None and not out.parent.is_dir():
        raise CliError(f"cannot write {out}: folder {out.parent} does not exist")
    if intel and engine == "ray":
        raise CliError("--intel needs --engine local")
    on_engine = _intel_matcher() if intel else None
    det_model = load_model_or_exit(model)
    enc = load_encoder_or_exit(encoder)
    from distillshield.detect.scoring import ModelError

    try:
        det_model.combiner(enc is not None)
    except ModelError as exc:
        raise CliError(str(exc)) from None

    with tempfile.TemporaryDirectory() as tmp:
        path = traffic
        if from_log:
            path = Path(tmp) / "audit.jsonl"
            n = _export_log(path)
            err_console.print(f"read {n} requests from the audit log")
        assert path is not None
        with progress() as bar:
            on_progress = PhaseProgress(bar)
            if engine == "ray":
                analysis = _analyze_on_ray(path, det_model, enc, on_progress, workers, content, ray_address, cohorts)
            else:
                analysis = analyze_file(
                    path,
                    model=det_model,
                    encoder=enc,
                    progress=on_progress,
                    workers=workers,
                    content=content,
                    cohorts=cohorts,
                    on_engine=on_engine,
                )
            if "reading traffic" in on_progress.tasks:
                t = on_progress.tasks["reading traffic"]
                bar.update(t, total=bar.tasks[t].completed or 1, completed=bar.tasks[t].completed or 1)
    report = analysis.report
    for e in analysis.errors.kept[:20]:
        err_console.print(f"[yellow]skipped[/yellow] {traffic or 'audit log'}:{e}")
    if analysis.errors.count > 20:
        err_console.print(f"... and {analysis.errors.count - 20} more malformed lines")
    if out is not None:
        out.write_text(json.dumps(report, separators=(",", ":")), encoding="utf-8")
    if as_json:
        print_json(report["summary"])
        return
    print_tables(report, top)
    if out is not None:
        console.print(f"wrote the report ({report['summary']['accounts']} accounts) to {out}")


def _intel_matcher() -> Any:
    """`on_engine` for analyze_file: switch on the intel signal with the store's active indicators."""
    from distillshield.intel.store import load_matcher

    matcher = with_store(load_matcher, existing=True)
    if matcher is None:
        raise CliError("--intel: the store holds no active indicator (distillshield intel import BUNDLE.json)")
    err_console.print(f"matching {len(matcher)} imported indicators")
    return lambda engine: engine.intel.fit(matcher)


def _analyze_on_ray(
    path: Path,
    model: Any,
    enc: Any,
    on_progress: PhaseProgress,
    workers: int,
    content: bool,
    address: str | None,
    cohorts: bool = True,
) -> Any:
    try:
        from distillshield.detect.ray_engine import RayEngineError, analyze_file_ray
    except ImportError as exc:
        raise CliError(f"--engine ray needs Ray Data ({exc}): pip install 'ray[data]'") from None
    try:
        return analyze_file_ray(
            path,
            model=model,
            encoder=enc,
            progress=on_progress,
            workers=workers,
            content=content,
            address=address,
            cohorts=cohorts,
        )
    except RayEngineError as exc:
        raise CliError(str(exc)) from None


def print_tables(report: dict[str, Any], top: int = 15) -> None:
    """The flagged accounts and the clusters, with their strongest reasons."""
    s = report["summary"]
    v = s["verdicts"]
    console.print(
        f"[bold]{s['accounts']} accounts, {s['requests']} requests[/bold]: {v['extraction']} extraction, "
        f"{v['suspicious']} suspicious, {v['benign']} benign; {s['clusters']} flagged clusters "
        f"({s['linked_groups']} other template-linked groups); model {s['model_version']}, encoder {s['encoder']}"
    )
    flagged = sorted((a for a in report["accounts"] if a["verdict"] != "benign"), key=lambda a: -a["risk"])
    if flagged:
        shown = flagged[:top]
        t = Table(
            id_column("account", (a["account_id"] for a in shown)), "risk", "verdict",
            id_column("cluster", (a["cluster_id"] for a in shown)), "requests", "top reasons", title="Flagged accounts",
        )  # fmt: skip
        for a in shown:
            reasons = "\n".join(f"[{r['signal']}] {r['detail']}" for r in a["reasons"][:3])
            colour = "red" if a["verdict"] == "extraction" else "yellow"
            t.add_row(
                a["account_id"],
                f"{a['risk']:.2f}",
                f"[{colour}]{a['verdict']}[/{colour}]",
                a["cluster_id"] or "-",
                str(a.get("requests", "")),
                reasons,
            )
        console.print(t)
        if len(flagged) > top:
            console.print(f"... and {len(flagged) - top} more flagged accounts in the report")
    if report["clusters"]:
        t = Table(id_column("cluster", (c["cluster_id"] for c in report["clusters"][:top])), "risk", "accounts", "why",
                  title="Clusters")  # fmt: skip
        for c in report["clusters"][:top]:
            t.add_row(c["cluster_id"], f"{c['risk']:.2f}", str(len(c["accounts"])), c["reasons"][0]["detail"])
        console.print(t)


def register(app: typer.Typer) -> None:
    app.command("analyze")(analyze_command)


# -- the demo's detection act (called by `distillshield demo`) --------------------------------------------

DEMO_SCENARIO: dict[str, Any] = {
    "name": "demo-live",
    "description": "Honest chat users and a distillation campaign (a CoT harvester and a small hydra cluster).",
    "split": "dev",
    "start": "2026-03-02T09:00:00Z",
    "duration": "2h",
    "models": {"primary": "frontier-1", "secondary": []},
    "personas": [
        {"persona": "casual_chat", "accounts": 6, "knobs": {"requests_per_day": 150}},
        {"persona": "cot_harvester", "accounts": 1, "knobs": {"requests_per_day": 600}},
        {"persona": "hydra", "accounts": 5, "knobs": {"clusters": 1, "requests_per_day": 300, "active_days": 0.1}},
    ],
}


def run_live_demo(
    base: str,
    admin_token: str,
    model: str,
    state: Any,
    loop: Any,
    requests: int,
    after: int = 0,
    speed: float | None = None,
) -> None:
    """Replay a short simulation through the running gateway (loopback), let online detection fold it in,
    and print the accounts and clusters with their verdicts and reasons; then, with `after` > 0, send the
    campaign's next `after` requests and show what the policy did to each account's (`_show_policy_act`).
    `speed`: simulated seconds per real second (None: as fast as the gateway answers)."""
    import asyncio

    from distillshield.simulate import engine, live, scenario

    ext = state.detection
    if ext is None:
        console.print("[yellow]online detection is disabled (detection.enabled: false); skipping its demo[/yellow]")
        return
    sc = scenario.build(DEMO_SCENARIO, "the demo scenario", 3)
    both = [r for _, r in zip(range(requests + after), engine.iter_records(sc, 3), strict=False)]
    records, later = both[:requests], both[requests:]
    console.rule("[bold]Detection: a short live simulation")
    pace = f" at {speed:g}x their simulated pace" if speed else ""
    console.print(
        f"sending {len(records)} simulated requests (honest chat users, a chain-of-thought harvester and a "
        f"5-account hydra cluster) to {base}{pace} with max_tokens 8 ..."
    )
    opts = live.LiveOptions(target=base, admin_token=admin_token, concurrency=4, max_tokens=8, model=model, speed=speed)
    stats = _replay_with_bar(records, opts, "live simulation")
    statuses = ", ".join(f"{n} x {code}" for code, n in sorted(stats.by_status.items()))
    console.print(f"served {stats.served} of {stats.sent} requests in {stats.elapsed_s:.1f} s (status: {statuses})")
    if any(code in ("403", "429") for code in stats.by_status):
        console.print("(403/429: the policy stage acting on detection verdicts while the campaign ran)")
    deadline = time.monotonic() + 60
    while ext.engine is None and time.monotonic() < deadline:
        time.sleep(0.1)
    asyncio.run_coroutine_threadsafe(ext.flush(), loop).result(120)
    report = ext.report()
    demo_ids = {r["account_id"] for r in records}
    report["accounts"] = [a for a in report["accounts"] if a["account_id"] in demo_ids]
    rows = sorted(report["accounts"], key=lambda a: -a["risk"])
    clusters = [a["cluster_id"] or a.get("linked_group") or "-" for a in rows]
    t = Table(
        id_column("account", (a["account_id"] for a in rows)), "risk", "verdict", id_column("cluster", clusters),
        "requests", "top reasons", title="Accounts (online detection)",
    )  # fmt: skip
    for a in rows:
        reasons = "\n".join(f"[{r['signal']}] {r['detail'][:110]}" for r in a["reasons"][:2])
        cluster = a["cluster_id"] or a.get("linked_group") or "-"
        t.add_row(a["account_id"], f"{a['risk']:.2f}", _coloured(a["verdict"]), cluster, str(a["requests"]), reasons)
    console.print(t)
    groups = report["clusters"] + report.get("linked_groups", [])
    if groups:
        t = Table(id_column("cluster", (c["cluster_id"] for c in groups)), "risk", "accounts", "why", title="Clusters")
        for c in groups:
            t.add_row(c["cluster_id"], f"{c['risk']:.2f}", str(len(c["accounts"])), c["reasons"][0]["detail"])
        console.print(t)
    console.print("the same verdicts: GET /admin/risk, GET /admin/accounts/ID (field 'detection')")
    if later:
        truth = {r["account_id"]: str(r.get("label") or "") for r in both}
        _show_policy_act(later, opts, state, loop, {a["account_id"]: a["verdict"] for a in rows}, truth)


def _replay_with_bar(records: list[dict[str, Any]], opts: Any, label: str) -> Any:
    """`simulate.live.replay` of `records` with a progress bar; what it served is not kept."""
    import asyncio
    import io

    from distillshield.simulate import live

    with progress() as bar:
        task = bar.add_task(label, total=len(records))
        return asyncio.run(live.replay(iter(records), opts, io.BytesIO(), on_progress=lambda _rec: bar.advance(task)))


def _show_policy_act(
    records: list[dict[str, Any]],
    opts: Any,
    state: Any,
    loop: Any,
    verdicts: dict[str, str],
    truth: dict[str, str],
) -> None:
    """The demo's second act: the same users go on, and the policy meets each account's next requests by its
    verdict. One row per account: who the simulator made it (`truth`, its label), its verdict before the act
    (`verdicts`) and after, its requests' statuses and the policy rules that acted on them, read back from
    the audit log (the rows' `decision`); then what the honest users and the campaign got in all."""
    import asyncio

    from distillshield.store.tables import audit_log

    console.rule("[bold]Countermeasures: the campaign goes on")
    console.print(
        f"the same accounts send their next {len(records)} requests; the policy meets each by its verdict "
        "(default policy: a cluster of extraction accounts is blocked, an unverified extraction account is "
        "challenged, a suspicious one watermarked) ..."
    )
    since = time.time()
    _replay_with_bar(records, opts, "the campaign goes on")
    asyncio.run_coroutine_threadsafe(state.audit.flush(), loop).result(60)
    asyncio.run_coroutine_threadsafe(state.detection.flush(), loop).result(120)
    now = {a["account_id"]: a["verdict"] for a in state.detection.report()["accounts"]}

    async def read() -> list[Any]:
        c = audit_log.c
        q = sa.select(c.account_id, c.status, c.decision).where(
            c.ts >= since, c.account_id.in_(sorted({r["account_id"] for r in records}))
        )
        async with state.store.engine.connect() as conn:
            return list((await conn.execute(q)).all())

    acts: dict[str, Counter[str]] = defaultdict(Counter)
    statuses: dict[str, Counter[int]] = defaultdict(Counter)
    for account, status, decision in asyncio.run_coroutine_threadsafe(read(), loop).result(60):
        statuses[account][int(status)] += 1
        for rule in _decision_rules(decision):
            acts[account][rule] += 1
    order = sorted(statuses, key=lambda a: (not truth.get(a, "").startswith("attack"), truth.get(a, ""), a))
    t = Table(
        id_column("account", order), "simulated as", "verdict before → after", "requests", "served (200)",
        "refused", "policy rules applied", title="What the policy did to the next requests",
    )  # fmt: skip
    for a in order:
        st = statuses[a]
        refused = ", ".join(f"{n} x {code}" for code, n in sorted(st.items()) if code != 200) or "-"
        rules = ", ".join(f"{rule} x {n}" for rule, n in acts[a].most_common()) or "-"
        moved = f"{_coloured(verdicts.get(a, 'benign'))} → {_coloured(now.get(a, 'benign'))}"
        t.add_row(a, truth.get(a, "?"), moved, str(sum(st.values())), str(st.get(200, 0)), refused, rules)
    console.print(t)
    for who, kind in (("honest users", "benign"), ("campaign accounts", "attack")):
        mine = [a for a in order if truth.get(a, "").startswith(kind)]
        served = sum(statuses[a].get(200, 0) for a in mine)
        console.print(f"{who}: {served} of {sum(sum(statuses[a].values()) for a in mine)} requests served")
    console.print(
        "each decision is in the audit log (`decision`), on the console's account pages and in GET /admin/policy"
    )


def _coloured(verdict: str) -> str:
    colour = {"extraction": "red", "suspicious": "yellow"}.get(verdict, "green")
    return f"[{colour}]{verdict}[/{colour}]"


def _decision_rules(decision: str | None) -> list[str]:
    """The policy rules a logged decision names ('allow' and plain refusals name none)."""
    from distillshield.gateway.policy.engine import LoggedDecision

    d = LoggedDecision.parse(decision)
    return list(d.rules) if d is not None else []
