"""The seams between DistillShield's layers, declared once.

Detection (detect/), evaluation (evaluate/), the watermark (watermark/) and the gateway (gateway/) meet
here and only here, so no lower layer imports the gateway:

- the verdict vocabulary (`Verdict`, `VERDICTS`, `VERDICT_RANK`, `FLAGGED_VERDICTS`) and the analyser
  report's schema id (`REPORT_SCHEMA`);
- `AccountRisk`, one account's latest verdict, and `RiskBoard`, where verdicts are published and read
  (gateway/risk/: `LocalRiskBoard` in one process, `RedisRiskBoard` shared by every replica);
- `AuditSink`, where the gateway's audit writer puts finished requests: the database (store.Store) or the
  event stream the audit workers read (workers/stream.py);
- what an extension publishes to the gateway: `DetectionService` (online detection's reads, for the admin
  API), `WatermarkControl` (the per-account watermark switch the policy turns) and `IntelWatch` (imported
  threat-intelligence indicators, matched on each request before the policy decides; `IntelHit`), typed
  fields of the gateway's AppState instead of attributes patched on and probed.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

Verdict = Literal["benign", "suspicious", "extraction"]
VERDICTS: tuple[Verdict, ...] = ("benign", "suspicious", "extraction")
VERDICT_RANK: dict[str, int] = {v: i for i, v in enumerate(VERDICTS)}  # higher: more severe
FlagOn = Literal["suspicious", "extraction"]
# Which verdicts count as "flagged" at each level.
FLAGGED_VERDICTS: dict[str, frozenset[str]] = {
    "suspicious": frozenset({"suspicious", "extraction"}),
    "extraction": frozenset({"extraction"}),
}
REPORT_SCHEMA = "distillshield.analyze/1"  # `summary.schema` of an analyser report (docs/detection.md)


@dataclass(frozen=True)
class AccountRisk:
    """One account's latest verdict, as detection (online, or a report loaded by an analyst) publishes it."""

    account_id: str
    risk: float
    verdict: str
    cluster_id: str | None = None
    signals: dict[str, float] = field(default_factory=dict)  # signal name -> score in 0..1
    reasons: tuple[dict[str, Any], ...] = ()  # {"signal", "score", "detail"}
    source: str = "online"  # online | report
    updated_at: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        return {
            "account_id": self.account_id,
            "risk": self.risk,
            "verdict": self.verdict,
            "cluster_id": self.cluster_id,
            "signals": dict(self.signals),
            "reasons": list(self.reasons),
            "source": self.source,
            "updated_at": self.updated_at,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AccountRisk:
        """The inverse of as_dict (a board shared through Redis carries them as JSON)."""
        return cls(
            account_id=str(d["account_id"]),
            risk=float(d["risk"]),
            verdict=str(d["verdict"]),
            cluster_id=d.get("cluster_id") or None,
            signals={str(k): float(v) for k, v in (d.get("signals") or {}).items()},
            reasons=tuple(d.get("reasons") or ()),
            source=str(d.get("source") or "online"),
            updated_at=float(d.get("updated_at") or time.time()),
        )


class RiskBoard(Protocol):
    """The latest verdict per account: detection writes it, the policy reads it on every request (reads
    must be local lookups). A shared board keeps a local copy current in the background between `start`
    and `stop`; writes apply to the local copy at once and reach the other replicas from there."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def get(self, account_id: str) -> AccountRisk | None: ...

    def update(self, risk: AccountRisk) -> None: ...

    def update_many(self, risks: Iterable[AccountRisk], *, keep_stronger_reports: bool = False) -> int: ...

    def cluster_members(self, cluster_id: str) -> set[str]: ...

    def cluster_size(self, cluster_id: str) -> int: ...

    def all(self) -> list[AccountRisk]: ...


class DetectionService(Protocol):
    """Online detection as the admin API reads it."""

    def account(self, account_id: str) -> dict[str, Any] | None: ...

    def status(self) -> dict[str, Any]: ...


class WatermarkControl(Protocol):
    """The per-account watermark switch the policy turns (watermark/gateway.py WatermarkRegistry)."""

    def set(
        self, account_id: str, mode: str, *, key_scope: str | None = None, cluster_id: str | None = None
    ) -> Any: ...

    def clear(self, account_id: str) -> None: ...


@dataclass(frozen=True, slots=True)
class IntelHit:
    """The imported indicator one request matched (the strongest, when several did): what the policy's
    `intel_match` condition reads before it decides, and what the decision's audit record names."""

    indicator_id: str  # the STIX id: indicator--...
    name: str
    producer: str  # the identity that published it (its name, or its id when the bundle did not carry it)
    confidence: int  # the producer's, 0..100
    kind: str  # ip-range | user-agent | frame
    value: str  # what matched: the range, the user agent, the frame hash
    strength: float  # confidence / 100 x how specific the kind is (intel.matcher.KIND_WEIGHT), 0..1
    detail: str  # one line a human can check: the indicator, its producer and confidence, what matched

    def as_dict(self) -> dict[str, Any]:
        return {
            "indicator": self.indicator_id,
            "name": self.name,
            "producer": self.producer,
            "confidence": self.confidence,
            "kind": self.kind,
            "matched": self.value,
            "strength": round(self.strength, 4),
            "detail": self.detail,
        }


class IntelWatch(Protocol):
    """Imported threat-intelligence indicators as the request path reads them (intel/live.py): a lookup of a
    few microseconds, never a wait on the store."""

    def match_request(
        self, ip: str | None, user_agent: str | None, body: dict[str, Any] | None = None, api: str = "chat"
    ) -> IntelHit | None:
        """The strongest active indicator the request matches: its client address in an imported range, its
        user agent, or its prompt's template frame (`body`: the OpenAI-format request of `api`); None when
        none does."""
        ...


@dataclass(frozen=True, slots=True)
class Backlog:
    """What one consumer of an audit sink has not processed yet: how many rows, and how long the oldest of them
    has waited, in seconds (None when nothing waits)."""

    rows: int
    oldest_s: float | None = None


class AuditSink(Protocol):
    """Where audit rows are made durable: the hash-chained log itself, or a stream the audit workers move into
    it. `existing_request_ids` lets a replay skip rows the sink already holds, and `skip_existing` leaves them
    out of an append (a stream holds none and skips none: its workers append with `skip_existing`)."""

    async def append_audit(self, rows: Sequence[Mapping[str, Any]], *, skip_existing: bool = False) -> int: ...

    async def existing_request_ids(self, ids: Sequence[str]) -> set[str]: ...

    async def ping(self) -> bool: ...

    async def backlogs(self) -> dict[str, Backlog] | None:
        """Rows this sink holds that each of its consumers has not processed yet, and the oldest one's wait (a
        stream: per consumer group); {} for the log itself, where nothing waits; None when the sink does not
        answer."""
        ...

    async def close(self) -> None: ...
