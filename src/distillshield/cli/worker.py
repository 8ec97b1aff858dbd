"""`distillshield worker audit|detect|extract`: the processes beside a fleet of gateways (workers/)."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable

import typer

from distillshield.cli.common import CliError, console, settings
from distillshield.config import Settings
from distillshield.store.database import Store
from distillshield.workers.stream import AuditStream, consumer_name

app = typer.Typer(help="Workers beside a fleet of gateways.", no_args_is_help=True)


@app.command("audit")
def audit(
    name: str = typer.Option(None, help="consumer name (default audit-<host>-<pid>); reuse it after a restart"),
    claim_idle_s: float = typer.Option(30.0, help="take over entries another worker held this long unacknowledged"),
    batch: int = typer.Option(1000, min=1, help="entries per read and rows per transaction"),
    log_level: str = typer.Option("info", help="log level"),
) -> None:
    """Move the audit event stream (gateways with audit.sink: redis) into the hash-chained log, exactly once.

    Example: distillshield -c distillshield.yaml worker audit --name audit-1
    """
    from distillshield.store.checkpoint import Checkpointer
    from distillshield.workers.audit import AuditWorker

    s = settings()
    if s.audit.sink != "redis":
        raise CliError("audit.sink is 'database': the gateways write the log themselves; set audit.sink: redis")
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def run(store: Store, stream: AuditStream, stop: asyncio.Event) -> str:
        cp = s.checkpoints
        worker = AuditWorker(
            store,
            stream,
            name or consumer_name("audit"),
            batch=batch,
            claim_idle_ms=int(claim_idle_s * 1000),
            checkpointer=Checkpointer.from_settings(cp),
            checkpoint_every_rows=cp.every_rows,
            checkpoint_every_s=cp.every_s,
        )
        console.print(f"audit worker [bold]{worker.name}[/bold]: {stream.key} -> {store.safe_url}")
        await worker.run(stop)
        return f"audit worker {worker.name} stopped: {worker.stored} rows stored"

    _serve(s, run)


@app.command("detect")
def detect(
    name: str = typer.Option(None, help="consumer name (default detect-<host>-<pid>); reuse it after a restart"),
    lease_s: float = typer.Option(
        15.0, min=1.0, help="the detector lease: a second worker waits this long for the first one's to lapse"
    ),
    shards: int = typer.Option(
        0, min=0, help="read the observations of this many extraction shards (`worker extract`) instead of the rows"
    ),
    log_level: str = typer.Option("info", help="log level"),
) -> None:
    """Run online detection over every replica's traffic (the audit stream) and publish verdicts to the shared
    risk board (needs audit.sink: redis and risk.backend: redis; set detection.enabled: false on the gateways).
    One per deployment: a second one refuses to start while the first one's lease is renewed. With --shards N,
    extraction runs in N `worker extract` processes and this one folds and scores their observations.

    Example: distillshield -c distillshield.yaml worker detect --name detect-1 --shards 2
    """
    from distillshield.detect.online import detection_extension
    from distillshield.gateway.risk import build_risk_board
    from distillshield.workers.detect import DetectorBusy, DetectWorker

    s = settings()
    if s.audit.sink != "redis":
        raise CliError("audit.sink is 'database': there is no stream to read; set audit.sink: redis")
    if s.risk.backend != "redis":
        raise CliError("risk.backend is 'local': the gateways would not see the verdicts; set risk.backend: redis")
    ext = detection_extension(s.model_copy(update={"detection": s.detection.model_copy(update={"enabled": True})}))
    assert ext is not None
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def run(store: Store, stream: AuditStream, stop: asyncio.Event) -> str:
        board = build_risk_board(s.risk, s.limits.redis_url)
        worker = DetectWorker(ext, store, stream, board, name or consumer_name("detect"), lease_ms=int(lease_s * 1000),
                              shards=shards)  # fmt: skip
        source = f"{worker.source.key} ({shards} extraction shards)" if shards else stream.key
        console.print(f"detect worker [bold]{worker.name}[/bold]: {source} -> risk board {s.risk.namespace}")
        try:
            await worker.run(stop)
        except DetectorBusy as exc:
            raise CliError(str(exc)) from None
        if worker.lost_lease:
            raise CliError(f"detect worker {worker.name} stopped: another detector worker took over its lease")
        st = ext.status()
        return (
            f"detect worker {worker.name} stopped: {worker.received} requests observed, {st['processed']} "
            f"processed by the engine, {st['dropped']} dropped (its queue was full), {st['queued']} still queued"
            + (f", {worker.duplicates} repeated observation batches dropped" if shards else "")
        )

    _serve(s, run)


@app.command("extract")
def extract(
    shard: int = typer.Option(..., min=0, help="this worker's shard, 0..shards-1"),
    shards: int = typer.Option(..., min=1, help="how many extraction shards the deployment runs"),
    name: str = typer.Option(None, help="consumer name (default extract-<host>-<pid>); reuse it after a restart"),
    lease_s: float = typer.Option(15.0, min=1.0, help="the shard's lease: a second worker waits this long for it"),
    batch: int = typer.Option(2000, min=1, help="entries per read (one observation batch per read)"),
    log_level: str = typer.Option("info", help="log level"),
) -> None:
    """Extract one shard of the fleet's traffic for online detection (the accounts whose id hashes to the shard),
    for a detector worker started with --shards (needs audit.sink: redis). One worker per shard.

    Example: distillshield -c distillshield.yaml worker extract --shard 0 --shards 2
    """
    from distillshield.detect.online import online_extractor
    from distillshield.detect.scoring import DetectionModel, ModelError
    from distillshield.workers.extract import ExtractWorker, ShardBusy

    s = settings()
    if s.audit.sink != "redis":
        raise CliError("audit.sink is 'database': there is no stream to read; set audit.sink: redis")
    if shard >= shards:
        raise CliError(f"--shard {shard} is not one of the {shards} shards (0..{shards - 1})")
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        model = DetectionModel.load(s.detection.model_path)
    except ModelError as exc:
        raise CliError(f"the detection model could not be loaded: {exc}") from None
    extractor = online_extractor(model, s.detection.content)

    async def run(store: Store, stream: AuditStream, stop: asyncio.Event) -> str:
        worker = ExtractWorker(extractor, store, stream, shard, shards, name or consumer_name("extract"),
                               batch=batch, lease_ms=int(lease_s * 1000),
                               warm_rows=s.detection.replay_on_start_rows)  # fmt: skip
        console.print(f"extract worker [bold]{worker.name}[/bold]: shard {shard}/{shards} of {stream.key} -> "
                      f"{worker.observations.key}")  # fmt: skip
        try:
            await worker.run(stop)
        except ShardBusy as exc:
            raise CliError(str(exc)) from None
        if worker.lost_lease:
            raise CliError(f"extract worker {worker.name} stopped: another worker took over shard {shard}/{shards}")
        return (
            f"extract worker {worker.name} stopped: {worker.read} requests read, {worker.extracted} of shard "
            f"{shard}/{shards} extracted"
        )

    _serve(s, run)


def _serve(s: Settings, run: Callable[[Store, AuditStream, asyncio.Event], Awaitable[str]]) -> None:
    """Open the store and the stream, run the worker until SIGTERM or SIGINT, close both, say what it did."""

    async def main() -> None:
        store = Store(s.store.url)
        await store.init()
        stream = AuditStream(s.audit.redis_url or s.limits.redis_url, s.audit.stream_key)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            said = await run(store, stream, stop)
        finally:
            await stream.close()
            await store.close()
        console.print(said)

    asyncio.run(main())
