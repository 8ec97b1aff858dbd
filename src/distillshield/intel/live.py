"""Imported indicators in the request path: matched on every request, before the policy decides.

`LiveIndicators` keeps an `IntelMatcher` of the store's active indicators current (reloaded within
`intel.refresh_s` of an import, rebuilt when a loaded one expires) and answers `match_request` from it in a
few microseconds: the client address by bisect over the imported ranges (an exact address, so a range
narrower than a /24 matches too) and the user agent by one dictionary lookup. With `frames` (the setting
`intel.request_frames`), also the prompt's opening and closing template frames, when frames were imported:
the skeleton of the last user turn, as detection computes it, which costs several times the request budget
(benchmarks/intel_match.py), so it is off by default. MinHash signatures are left to detection's loop.

`IntelExtension` runs it beside the gateway (gateway/extensions.py) and publishes it as `state.intel`
(contracts.IntelWatch), which the policy stage reads for its `intel_match` condition. Online detection keeps
its own `LiveIndicators` for its `intel` signal (detect/online.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from distillshield.contracts import IntelHit
from distillshield.detect import text as T
from distillshield.intel.matcher import Hit, IntelMatcher
from distillshield.intel.store import IntelStore
from distillshield.outage import Outage

if TYPE_CHECKING:
    from distillshield.config import Settings
    from distillshield.store.database import Store

log = logging.getLogger("distillshield.intel")
_ENDPOINT = {"chat": "/v1/chat/completions", "completions": "/v1/completions", "embeddings": "/v1/embeddings"}


class LiveIndicators:
    """The store's active indicators, kept current, matched one request at a time."""

    def __init__(self, store: Store, refresh_s: float = 30.0, frames: bool = False) -> None:
        self.store = store
        self.refresh_s = refresh_s
        self.frames = frames  # match template frames too (the prompt's skeleton: tens of µs a request)
        self.matcher: IntelMatcher | None = None  # replaced whole on a reload: readers never see half of one
        self._version: tuple[int, float] | None = None
        self._checked = 0.0
        # One IntelHit per (indicator, kind, value) of the loaded matcher: the policy memoises its decisions
        # by the hit's identity, and a request that matches allocates nothing.
        self._hits: dict[tuple[str, str, str], IntelHit] = {}

    def __len__(self) -> int:
        return len(self.matcher) if self.matcher is not None else 0

    async def refresh(self, force: bool = False) -> bool:
        """Reload when an import changed the store's indicators or a loaded one expired, checking the store at
        most every `refresh_s` (`force`: check now); True when the matcher was replaced. Raises when the store
        cannot be read (the caller logs it and keeps matching what was loaded)."""
        now = time.time()
        m = self.matcher
        expired = m is not None and m.stale(now)
        if not force and not expired and now - self._checked < self.refresh_s:
            return False
        self._checked = now
        indicators = IntelStore(self.store)
        version = await indicators.version()
        if version == self._version and not expired:
            return False
        active = await indicators.active(now)
        # Indexing 10,000 indicators (ranges, LSH bands) takes a while: not on the event loop.
        fresh = await asyncio.to_thread(IntelMatcher, active, now) if active else None
        self.matcher, self._hits, self._version = fresh, {}, version
        return True

    def match_request(
        self, ip: str | None, user_agent: str | None, body: dict[str, Any] | None = None, api: str = "chat"
    ) -> IntelHit | None:
        """The strongest active indicator this request matches (contracts.IntelWatch), None when none does.

        An indicator that expired since the last reload never matches, even before the reload drops it."""
        m = self.matcher
        if m is None:
            return None
        frames: tuple[int, ...] = ()
        if self.frames and m.frames and body is not None:
            user = T.request_texts(_ENDPOINT.get(api, "/v1/chat/completions"), body)[0]
            head, tail = T.frames(T.words(T.skeleton(user))) if user else (0, 0)
            frames = (head, tail) if head else ()
        hits = m.match(ip or "", user_agent or "", frames)
        if not hits:
            return None
        now = time.time()
        best: Hit | None = None
        for h in hits:
            if h.indicator.active(now) and (best is None or h.strength > best.strength):
                best = h
        return self._hit(best) if best is not None else None

    def _hit(self, h: Hit) -> IntelHit:
        key = (h.indicator.id, h.kind, h.value)
        found = self._hits.get(key)
        if found is None:
            ind = h.indicator
            found = IntelHit(ind.id, ind.name, ind.producer, ind.confidence, h.kind, h.value, h.strength, h.describe())
            if len(self._hits) >= 65_536:
                self._hits.clear()
            self._hits[key] = found
        return found


class IntelExtension:
    """Gateway extension: loads the imported indicators at start, keeps them current, publishes them as
    `state.intel` for the policy stage."""

    name = "intel"

    def __init__(self, refresh_s: float = 30.0, frames: bool = False) -> None:
        self.refresh_s = refresh_s
        self.frames = frames
        self.live: LiveIndicators | None = None
        self._task: asyncio.Task[None] | None = None
        self._outage = Outage(log, "imported indicators (reload from the store)")

    async def start(self, state: Any) -> None:
        self.live = LiveIndicators(state.store, self.refresh_s, self.frames)
        await self.refresh(force=True)
        state.intel = self.live
        self._task = asyncio.create_task(self._loop(), name="distillshield-intel")
        log.info("intel: %d active imported indicators matched on the request path", len(self.live))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def refresh(self, force: bool = False) -> bool:
        """One reload check (the loop's tick); a store that cannot be read is logged once per outage and the
        indicators loaded before stay in use."""
        assert self.live is not None
        try:
            changed = await self.live.refresh(force)
        except Exception as exc:  # noqa: BLE001 - retried on the next tick; requests keep the loaded matcher
            self._outage.failed(exc, self.refresh_s)
            return False
        self._outage.succeeded()
        if changed:
            log.info("intel: %d active imported indicators loaded", len(self.live))
        return changed

    async def _loop(self) -> None:
        assert self.live is not None
        while True:
            m = self.live.matcher
            wait = self.refresh_s
            if m is not None and m.expires is not None:  # rebuild as soon as a loaded indicator expires
                wait = min(wait, max(m.expires - time.time(), 0.0) + 0.01)
            await asyncio.sleep(wait)
            await self.refresh(force=True)  # this loop's tick is the refresh interval


def intel_extension(settings: Settings) -> IntelExtension | None:
    """The factory in distillshield.extensions.standard_extensions: on unless `intel.match` is false."""
    if not settings.intel.match:
        return None
    return IntelExtension(settings.intel.refresh_s, settings.intel.request_frames)
