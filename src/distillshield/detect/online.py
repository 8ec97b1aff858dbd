"""Online detection: the gateway extension that keeps per-account detection state beside the hot path.

The request path pays one deque append per finished request (the observer). A background task wakes
every `interval_s`, takes the queued audit rows, and in a worker thread turns them into observations,
folds them into the engine's per-account sketches (the same engine as batch analysis, so the same
verdicts), rescoring accounts at their checkpoints and re-clustering periodically. Verdicts go to the
gateway's RiskBoard (`state.risk`), where the policy stage and the admin API read them.

A request never waits for detection: nothing here runs on the request path but the append, and the
queue is bounded (the oldest rows are dropped and counted when detection falls behind).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

from distillshield.contracts import AccountRisk, RiskBoard
from distillshield.detect.base import AccountScore
from distillshield.store.export import row_body

if TYPE_CHECKING:
    from distillshield.config import Settings
    from distillshield.detect.corpus import Extractor, Obs
    from distillshield.detect.engine import Engine
    from distillshield.detect.scoring import DetectionModel
    from distillshield.traffic import TrafficRecord

log = logging.getLogger("distillshield.detect")


# -- audit rows as records, without validation ----------------------------------------------------------
#
# The rows come from this process's own gateway, which built them from requests it already parsed and
# checked, so they are trusted: validating each one into a pydantic TrafficRecord (store.export's
# `row_to_record`, which `logs export` and file input keep using) was about half of this extension's CPU
# per row, on a thread that holds the GIL the event loop needs. `TrafficRecord.model_construct` (pydantic's
# "trusted data" constructor) does not help: it runs in Python and measured slower than validating
# (6.4 against 5.2 us per row); these slotted views take 0.9 us, most of it the body's orjson.loads.
# They expose exactly the attributes the Extractor reads from a TrafficRecord, with the same values.


class _RowUsage:
    __slots__ = ("prompt_tokens", "completion_tokens")

    def __init__(self, prompt_tokens: int, completion_tokens: int) -> None:
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens


class _RowResponse:
    __slots__ = ("text", "finish_reason", "usage")

    def __init__(self, text: str, finish_reason: str | None, usage: _RowUsage | None) -> None:
        self.text = text
        self.finish_reason = finish_reason
        self.usage = usage


class _RowRecord:
    __slots__ = (
        "ts", "account_id", "endpoint", "request", "org_id", "key_id", "ip", "user_agent", "response", "status",
        "latency_ms", "account_created_at",
    )  # fmt: skip

    def __init__(self, row: dict[str, Any], body: dict[str, Any], response: _RowResponse | None) -> None:
        self.ts: float = row["ts"]
        self.account_id: str = row["account_id"]
        self.endpoint: str = row["endpoint"]
        self.request = body
        self.org_id: str | None = row.get("org_id")
        self.key_id: str | None = row.get("key_id")
        self.ip: str | None = row.get("ip")
        self.user_agent: str | None = row.get("user_agent")
        self.response = response
        self.status: int | None = row.get("status")
        self.latency_ms: float | None = row.get("latency_ms")
        self.account_created_at: float | None = row.get("account_created_at")


def trusted_record(row: dict[str, Any]) -> TrafficRecord | None:
    """A gateway audit row as the Extractor reads a TrafficRecord, without validating it (the gateway's own
    rows only; see above). None exactly where `store.export.row_to_record` gives None: no account, or a
    request body that is not a JSON object (unauthenticated or malformed requests)."""
    body = row_body(row)
    if body is None:
        return None
    response = None
    text, finish = row.get("response_text"), row.get("finish_reason")
    if text is not None or finish is not None:
        prompt, completion = row.get("prompt_tokens"), row.get("completion_tokens")
        usage = None if prompt is None and completion is None else _RowUsage(prompt or 0, completion or 0)
        response = _RowResponse(text or "", finish, usage)
    return cast("TrafficRecord", _RowRecord(row, body, response))


class DetectionExtension:
    """Gateway extension: observer + background rescoring + RiskBoard updates."""

    name = "detection"

    def __init__(
        self,
        *,
        interval_s: float = 2.0,
        queue_max: int = 200_000,
        recluster_every: int = 2000,
        encoder: str = "none",
        model_path: str | None = None,
        prune_above: int = 2_000_000,
        content: bool = True,
        cohorts: bool = True,
        replay_rows: int = 200_000,
        intel: bool = True,
        intel_refresh_s: float = 30.0,
    ) -> None:
        self.content = content
        self.cohorts = cohorts  # content campaigns judged also by their accounts' creation waves (detect/cohort.py)
        self.intel = intel  # match imported threat-intelligence indicators (detect/signals/intel.py)
        self.intel_refresh_s = intel_refresh_s
        self._indicators: Any = None  # intel.live.LiveIndicators over the store, once detection has loaded
        self.replay_rows = replay_rows
        self.replayed: int | None = None  # rows of the log replayed at start (None until that is done)
        self._replay_head = 0
        self._lock: asyncio.Lock | None = None
        self.interval_s = interval_s
        self.recluster_every = recluster_every
        self.encoder_spec = encoder
        self.model_path = model_path
        self.prune_above = prune_above
        self.queue: deque[dict[str, Any]] = deque(maxlen=queue_max)
        # Observations extracted elsewhere (the fleet's extraction shards, `worker detect --shards`), same bound.
        self.extracted: deque[Obs] = deque(maxlen=queue_max)
        self.dropped = 0
        self.processed = 0
        self.engine: Engine | None = None
        self._extractor: Any = None
        self._encoder: Any = None
        self._state: Any = None  # the gateway's AppState, when started in one
        self._store: Any = None  # where the audit log is read back from at start (replay)
        self._board: RiskBoard | None = None  # where verdicts are published
        self._task: asyncio.Task[None] | None = None
        self._since_recluster = 0
        self.last_run_s = 0.0
        self.model_version: str | None = None

    # -- the hot path: one append ---------------------------------------------------------------------

    def observe(self, row: dict[str, Any]) -> None:
        if len(self.queue) == self.queue.maxlen:
            self.dropped += 1
        self.queue.append(row)

    def observe_extracted(self, batch: list[Obs]) -> None:
        """Queue observations an extraction shard made (workers/extract.py) for the engine, as `observe` queues
        rows: the next run folds them with the rows' own, in time order."""
        room = (self.extracted.maxlen or 0) - len(self.extracted)
        self.dropped += max(0, len(batch) - room)
        self.extracted.extend(batch)

    # -- lifecycle --------------------------------------------------------------------------------------

    async def start(self, state: Any) -> None:
        """Start in a gateway: observe its finished requests, publish to its risk board."""
        self._state = state
        await self.start_detached(state.store, state.risk)
        state.gateway.observers.append(self.observe)
        state.detection = self

    async def start_detached(self, store: Any, board: RiskBoard) -> None:
        """Start without a gateway (`distillshield worker detect`): rows are handed to `observe` by the caller;
        the log in `store` is replayed, verdicts go to `board`."""
        self._store, self._board = store, board
        self._lock = asyncio.Lock()  # one batch of engine work at a time (replay, background, flush)
        # The log's head as the observer starts: rows up to it are replayed, rows after it arrive as queued rows.
        self._replay_head = (await store.chain_head())[0] if store is not None else 0
        self._task = asyncio.create_task(self._loop(), name="detection-rescoring")

    def _load(self) -> None:
        from distillshield.detect.embeddings import load_encoder
        from distillshield.detect.engine import Engine
        from distillshield.detect.reference import embedding_reference
        from distillshield.detect.scoring import DetectionModel

        model = DetectionModel.load(self.model_path)
        reference = None
        if self.encoder_spec != "none":
            self._encoder = load_encoder(self.encoder_spec)
            reference = embedding_reference(self._encoder)
        engine = Engine(model.members(self._encoder is not None), reference, cohorts=self.cohorts)
        self._extractor = online_extractor(model, self.content)
        self.model_version = model.version
        # Last: `engine` set means loaded (run_once and flush may be called from another task meanwhile).
        self.engine = engine

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._state is not None:
            with contextlib.suppress(ValueError):
                self._state.gateway.observers.remove(self.observe)

    async def _loop(self) -> None:
        try:
            # Loaded here, not in start(): the gateway is serving meanwhile (requests only queue).
            await asyncio.to_thread(self._load)
        except Exception:  # noqa: BLE001 - a broken model disables detection, never the gateway
            log.exception("detection disabled: the model could not be loaded")
            return
        await self.refresh_intel(force=True)
        try:
            await self.replay_log()
        except Exception:  # noqa: BLE001 - a log that cannot be read costs the history, not the gateway
            log.exception("detection could not replay the audit log; it starts from this process's traffic")
            self.replayed = 0
        while True:
            await asyncio.sleep(self.interval_s)
            await self.refresh_intel()
            try:
                await self.run_once()
            except Exception:  # noqa: BLE001 - detection must never take the gateway down
                log.exception("detection rescoring failed")

    async def replay_log(self, batch: int = 5000) -> int:
        """Fold the last `replay_rows` rows of the audit log into the engine and publish the verdicts, so
        that a restart is no amnesty: an account flagged before it is flagged after it, before its next
        request. Rows served by this process meanwhile only queue, and come after the log's head as of now."""
        store = self._store
        head = self._replay_head
        if self.engine is None or store is None or self.replay_rows <= 0 or self._lock is None:
            self.replayed = 0
            return 0
        start = max(1, head - self.replay_rows + 1)
        rows: list[dict[str, Any]] = []
        n = 0
        async with self._lock:
            if head > 0:
                async for row in store.iter_audit(start, head):
                    rows.append(row)
                    if len(rows) >= batch:
                        await asyncio.to_thread(self._process_single_blas, rows)
                        n, rows = n + len(rows), []
                if rows:
                    await asyncio.to_thread(self._process_single_blas, rows)
                    n += len(rows)
            if n:
                self._publish(await asyncio.to_thread(self._rescore_all))
        self.replayed = n
        log.info("detection replayed %d audit rows (seq %d-%d)", n, start, head)
        return n

    async def run_once(self) -> int:
        """Process everything queued now (in a worker thread); returns how many rows were processed."""
        if self.engine is None:
            return 0
        rows = []
        while self.queue:
            rows.append(self.queue.popleft())
        extracted = []
        while self.extracted:
            extracted.append(self.extracted.popleft())
        if not rows and not extracted:
            return 0
        async with self._locked():
            changed = await asyncio.to_thread(self._process_single_blas, rows, extracted)
        self._publish(changed)
        return len(rows) + len(extracted)

    def _locked(self) -> Any:
        return self._lock if self._lock is not None else contextlib.nullcontext()

    def _process_single_blas(self, rows: list[dict[str, Any]], extracted: Sequence[Obs] = ()) -> list[AccountScore]:
        from distillshield.detect.content import single_threaded_blas

        with single_threaded_blas():
            return self._process(rows, extracted)

    async def refresh_intel(self, force: bool = False) -> int | None:
        """Load the store's active indicators into the engine when an import changed them, or one expired
        (checked every `intel_refresh_s`); returns how many are loaded, None when nothing was reloaded."""
        if not self.intel or self.engine is None or self._store is None:
            return None
        if self._indicators is None:
            from distillshield.intel.live import LiveIndicators

            self._indicators = LiveIndicators(self._store, self.intel_refresh_s)
        try:
            if not await self._indicators.refresh(force):
                return None
        except Exception:  # noqa: BLE001 - intelligence that cannot be read never stops detection
            log.exception("imported indicators could not be loaded; matching what was loaded before")
            return None
        fresh = self._indicators.matcher
        async with self._locked():
            self.engine.intel.fit(fresh)
        return len(fresh) if fresh is not None else 0

    async def flush(self) -> int:
        """Process everything queued, then re-cluster and rescore every account (the demo and tests use it
        to see verdicts now instead of at the next interval)."""
        await self.refresh_intel(force=True)
        n = await self.run_once()
        if self.engine is not None:
            async with self._locked():
                changed = await asyncio.to_thread(self._rescore_all)
            self._publish(changed)
        return n

    def _rescore_all(self) -> list[AccountScore]:
        assert self.engine is not None
        self.engine.finalise()
        return [acc.score for acc in self.engine.accounts.values() if acc.score is not None]

    def report(self) -> dict[str, Any]:
        """The analyser report format for everything seen so far (as `distillshield analyze` writes it)."""
        from distillshield.detect.analyze import build_report
        from distillshield.detect.content import CONTENT_LABEL
        from distillshield.detect.corpus import LineErrors

        assert self.engine is not None
        meta = {
            "source": "online",
            "model_version": self.model_version,
            "encoder": self.encoder_spec,
            "content": CONTENT_LABEL if self.content else "off",
            "cohorts": self.cohorts,
        }
        return build_report(self.engine, LineErrors(), meta)

    # -- the background work ----------------------------------------------------------------------------

    def _process(self, rows: list[dict[str, Any]], extracted: Sequence[Obs] = ()) -> list[AccountScore]:
        from distillshield.detect.engine import CHECKPOINTS

        assert self.engine is not None and self._extractor is not None
        t0 = time.perf_counter()
        engine = self.engine
        records = [r for r in map(trusted_record, rows) if r is not None]
        obs = list(self._extractor.extract(records)) if records else []
        obs.extend(extracted)
        if self._encoder is not None:
            sampled = [o for o in obs if o.embed and o.text is not None]
            if sampled:
                for o, v in zip(sampled, self._encoder.encode([o.text or "" for o in sampled]), strict=True):
                    o.emb = v
        obs.sort(key=lambda o: o.ts)
        touched: dict[str, Any] = {}
        for o in obs:
            acc = engine.observe(o)
            o.emb = None
            touched[acc.account_id] = acc
            if acc.n in CHECKPOINTS or acc.score is None:
                engine.rescore(acc)
        self._since_recluster += len(obs)
        if self._since_recluster >= self.recluster_every:
            self._since_recluster = 0
            engine.recluster()
            for c in engine.clusters.values():
                for m in c.accounts:
                    touched[m] = engine.accounts[m]
            for acc in engine.operate():
                touched[acc.account_id] = acc
            pop = engine.population
            for index in (pop.frames, pop.prompts, pop.families):
                if len(index.first) > self.prune_above:
                    index.prune_singletons()  # bounded memory: keys only one account ever used go first
        changed = []
        for acc in touched.values():
            if acc.dirty:
                engine.rescore(acc)
            changed.append(acc.score)
        for c in engine.clusters.values():
            c.risk = engine.cluster_risk(c)
        self.processed += len(rows) + len(extracted)
        self.last_run_s = time.perf_counter() - t0
        return changed

    def _publish(self, scores: list[AccountScore]) -> None:
        board = self._board
        if board is None:  # not started (tests, batch use): nowhere to publish
            return
        online = [
            AccountRisk(
                s.account_id,
                s.risk,
                s.verdict,
                s.cluster_id,
                {r.signal: r.score for r in s.reasons},
                tuple(r.as_dict() for r in s.reasons),
                "online",
            )
            for s in scores
        ]
        board.update_many(online, keep_stronger_reports=True)

    # -- reads (admin API, CLI) ---------------------------------------------------------------------------

    def account(self, account_id: str) -> dict[str, Any] | None:
        """The account's latest detection verdict with reasons, or None when it has not been seen."""
        if self.engine is None:
            return None
        acc = self.engine.accounts.get(account_id)
        if acc is None or acc.score is None:
            return None
        return {**acc.score.as_dict(), "model_version": self.model_version}

    def _oldest_queued_s(self) -> float | None:
        oldest = [float(self.queue[0]["ts"])] if self.queue else []
        oldest += [self.extracted[0].ts] if self.extracted else []
        return round(max(0.0, time.time() - min(oldest)), 3) if oldest else None

    def status(self) -> dict[str, Any]:
        eng = self.engine
        return {
            "processed": self.processed,
            "queued": len(self.queue) + len(self.extracted),
            # how long the oldest queued row (or observation) has waited, its request's time to now; None when none
            "oldest_queued_s": self._oldest_queued_s(),
            "dropped": self.dropped,
            "accounts": len(eng.accounts) if eng else 0,
            "clusters": len(eng.clusters) if eng else 0,
            "last_run_s": round(self.last_run_s, 4),
            "replayed_at_start": self.replayed,
        }


def online_extractor(model: DetectionModel, content: bool) -> Extractor:
    """The Extractor online detection uses (the model's CoT classifier, MinHash, the content encoder when content
    is on): in the gateway's extension, and in each extraction shard of a fleet (workers/extract.py)."""
    from distillshield.detect.content import content_encoder
    from distillshield.detect.corpus import Extractor
    from distillshield.detect.engine import MinHasher
    from distillshield.detect.signals.cot import PromptClassifier

    return Extractor(PromptClassifier.from_dict(model.classifier), MinHasher(), content_encoder(content))


def detection_extension(settings: Settings) -> DetectionExtension | None:
    """The factory in distillshield.extensions.standard_extensions: on unless `detection.enabled` is false."""
    cfg = settings.detection
    if not cfg.enabled:
        return None
    return DetectionExtension(
        interval_s=cfg.interval_s,
        queue_max=cfg.queue_max,
        recluster_every=cfg.recluster_every,
        encoder=cfg.encoder,
        model_path=cfg.model_path,
        content=cfg.content,
        cohorts=cfg.cohorts,
        replay_rows=cfg.replay_on_start_rows,
        intel=settings.intel.match,
        intel_refresh_s=settings.intel.refresh_s,
    )
