"""What the console's pages show, read from the store, the risk board and the policy stage.

Every list is paginated here, in the database where the data lives there (accounts, review items,
decisions, traffic volume) and in memory where it lives in memory (the risk board), so a page costs
one page of rows whatever the number of accounts.
"""

from __future__ import annotations

import asyncio
import math
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
import sqlalchemy as sa

from distillshield.contracts import VERDICT_RANK, AccountRisk
from distillshield.detect.scoring import ModelError
from distillshield.detect.text import request_texts, skeleton, stable_hash, words
from distillshield.gateway.policy.engine import LoggedDecision
from distillshield.gateway.policy.replay import Replay, RuleImpact, replay_window
from distillshield.store.admin_log import AdminLog
from distillshield.store.pins import PinStore
from distillshield.store.review import STATUSES, ReviewStore
from distillshield.store.tables import accounts, audit_log, is_admin_row, review_decisions, review_items

if TYPE_CHECKING:
    from distillshield.detect.signals.cot import PromptClassifier
    from distillshield.gateway.app import AppState

PER_PAGE = 50
OVERVIEW_PINS = 50  # the overview lists the newest active pins, at most this many
VOLUME_WINDOW_S = 24 * 3600
VERDICTS = ("extraction", "suspicious", "benign")
# Sorts read from the risk board (in memory); the others from the store.
BOARD_SORTS = ("risk", "verdict", "cluster")
STORE_SORTS = ("id", "org", "tier", "status")
SORTS = BOARD_SORTS + STORE_SORTS + ("volume",)
DESC_BY_DEFAULT = {"risk", "verdict", "volume"}


@dataclass(frozen=True)
class Page:
    rows: list[Any]
    number: int
    total: int
    per_page: int = PER_PAGE

    @property
    def pages(self) -> int:
        return max(1, math.ceil(self.total / self.per_page))

    @property
    def first(self) -> int:
        """1-based position of the first row on this page (0 when empty)."""
        return (self.number - 1) * self.per_page + 1 if self.rows else 0

    @property
    def last(self) -> int:
        return self.first + len(self.rows) - 1 if self.rows else 0


@dataclass(frozen=True)
class AccountRow:
    id: str
    org_id: str | None
    tier: str | None
    status: str | None
    risk: float | None
    verdict: str | None
    cluster_id: str | None
    requests_24h: int


# -- overview -------------------------------------------------------------------------------------


class TrafficSeries:
    """Requests per bucket (an hour, a day) over the last `buckets`, and how many were refused (status >= 400),
    from the audit log: the overview's two charts (24 hours by the hour, 14 days by the day).

    Buckets that ended more than CLOSED_AFTER_S ago are counted once and kept (their rows are all written by
    then: the audit writer flushes within a second); each call reads only the newer rows."""

    CLOSED_AFTER_S = 300.0

    def __init__(self, bucket_s: int, buckets: int) -> None:
        self.bucket_s, self.buckets = bucket_s, buckets
        self._closed: dict[int, tuple[int, int]] = {}

    async def read(self, conn: Any, now: float) -> dict[str, list[int]]:
        size = self.bucket_s
        first = math.floor(now / size) - (self.buckets - 1)
        spans = range(first, first + self.buckets)
        for h in [h for h in self._closed if h < first]:
            del self._closed[h]
        closed_until = math.floor((now - self.CLOSED_AFTER_S) / size)  # buckets before this one are closed
        since = next((h for h in spans if h not in self._closed or h >= closed_until), first + self.buckets)
        bucket = sa.func.floor(audit_log.c.ts / size).label("bucket")
        refused = sa.func.sum(sa.case((audit_log.c.status >= 400, 1), else_=0))
        q = (
            sa.select(bucket, sa.func.count(), refused)
            .where(audit_log.c.ts >= since * size, sa.not_(is_admin_row()))  # requests, not operators' acts
            .group_by(bucket)
        )
        fresh = {int(h): (int(n), int(r or 0)) for h, n, r in (await conn.execute(q)).all()}
        for h in range(since, closed_until):
            self._closed[h] = fresh.get(h, (0, 0))
        counts = {**fresh, **self._closed}
        return {
            "t": [h * size for h in spans],
            "requests": [counts.get(h, (0, 0))[0] for h in spans],
            "refused": [counts.get(h, (0, 0))[1] for h in spans],
        }


async def overview(
    state: AppState, traffic: TrafficSeries, daily: TrafficSeries | None = None, now: float | None = None
) -> dict[str, Any]:
    now = now or time.time()
    verdicts = Counter(r.verdict for r in state.risk.all())
    async with state.store.engine.connect() as conn:
        n_accounts = (await conn.execute(sa.select(sa.func.count()).select_from(accounts))).scalar_one()
        suspended = (
            await conn.execute(sa.select(sa.func.count()).select_from(accounts).where(accounts.c.status == "suspended"))
        ).scalar_one()
        open_items = (
            await conn.execute(
                sa.select(sa.func.count()).select_from(review_items).where(review_items.c.status == "open")
            )
        ).scalar_one()
        hourly = await traffic.read(conn, now)
        days = await daily.read(conn, now) if daily is not None else None
    blocks: list[dict[str, Any]] = []
    policy: dict[str, Any] | None = None
    if state.policy is not None:
        described = state.policy.describe()
        blocks = [b for b in described["standing_blocks"] if not b["shadow"]]
        policy = {"mode": described["mode"], "source": described["source"], "decisions": described["decisions"]}
    return {
        "accounts": int(n_accounts),
        "verdicts": {v: verdicts.get(v, 0) for v in VERDICTS},
        "scored": sum(verdicts.values()),
        "open_review": int(open_items),
        "suspended": int(suspended),
        "blocks": blocks,
        "pins": await PinStore(state.store).active(limit=OVERVIEW_PINS),
        "policy": policy,
        "detection": state.detection.status() if state.detection is not None else None,
        "traffic": hourly,
        "daily": days,
        "events": await event_backlog(state),
    }


async def event_backlog(state: AppState) -> dict[str, Any]:
    """How far behind the gateway's finished requests are processed: rows queued for the audit log, rows in
    the local spool while the database (or Redis) is away, the event stream's backlog per consumer group
    (audit writers, detectors) when the gateway publishes to one, and online detection's queue here; for the
    last two also how long their oldest row has waited (the lag, in seconds)."""
    writer = state.audit
    out: dict[str, Any] = {
        "audit_queue": writer.pending,
        "spooled": writer.spool_pending,
        "stream": await writer.store.backlogs(),  # None: the stream did not answer
    }
    det = state.detection
    status = det.status() if det is not None else None
    out["detection_queue"] = status.get("queued") if status is not None else None
    out["detection_oldest_s"] = status.get("oldest_queued_s") if status is not None else None
    return out


# -- accounts -------------------------------------------------------------------------------------


async def account_list(
    state: AppState,
    volume: VolumeRanking,
    *,
    q: str = "",
    sort: str = "risk",
    desc: bool = True,
    verdict: str = "",
    page: int = 1,
) -> Page:
    """One page of accounts. Risk, verdict and cluster sorts (and a verdict filter) list the accounts
    detection has scored; the other sorts list the store's accounts; volume lists accounts with traffic
    in the last 24 h. Each row carries all the columns whichever list it came from."""
    if sort not in SORTS:
        sort = "risk"
    if verdict not in VERDICTS:
        verdict = ""
    if sort in BOARD_SORTS or verdict:
        return await _scored_accounts(state, q, sort if sort in BOARD_SORTS else "risk", desc, verdict, page)
    if sort == "volume":
        return await _busiest_accounts(state, volume, q, desc, page)
    return await _stored_accounts(state, q, sort, desc, page)


async def _scored_accounts(state: AppState, q: str, sort: str, desc: bool, verdict: str, page: int) -> Page:
    needle = q.lower()
    risks = [
        r
        for r in state.risk.all()
        if (not verdict or r.verdict == verdict)
        and (not needle or needle in r.account_id.lower() or needle in (r.cluster_id or "").lower())
    ]

    def key(r: AccountRisk) -> tuple[Any, ...]:
        if sort == "verdict":
            return (VERDICT_RANK.get(r.verdict, 0), r.risk, r.account_id)
        if sort == "cluster":
            return (r.cluster_id or "", r.risk, r.account_id)
        return (r.risk, r.account_id)

    risks.sort(key=key, reverse=desc)
    start = (page - 1) * PER_PAGE
    chosen = risks[start : start + PER_PAGE]
    ids = [r.account_id for r in chosen]
    async with state.store.engine.connect() as conn:
        stored = {
            row.id: row
            for row in await conn.execute(
                sa.select(accounts.c.id, accounts.c.org_id, accounts.c.tier, accounts.c.status).where(
                    accounts.c.id.in_(ids)
                )
            )
        }
        volume = await _volumes(conn, ids)
    rows = []
    for r in chosen:
        s = stored.get(r.account_id)
        rows.append(
            AccountRow(
                r.account_id,
                s.org_id if s else None,
                s.tier if s else None,
                s.status if s else None,
                r.risk,
                r.verdict,
                r.cluster_id,
                volume.get(r.account_id, 0),
            )
        )
    return Page(rows, page, len(risks))


async def _stored_accounts(state: AppState, q: str, sort: str, desc: bool, page: int) -> Page:
    c = accounts.c
    where = sa.or_(c.id.icontains(q, autoescape=True), c.org_id.icontains(q, autoescape=True)) if q else sa.true()
    column = {"id": c.id, "org": c.org_id, "tier": c.tier, "status": c.status}[sort]
    order = [sa.desc(column) if desc else column, c.id]
    query = (
        sa.select(c.id, c.org_id, c.tier, c.status)
        .where(where)
        .order_by(*order)
        .limit(PER_PAGE)
        .offset((page - 1) * PER_PAGE)
    )
    async with state.store.engine.connect() as conn:
        total = (await conn.execute(sa.select(sa.func.count()).select_from(accounts).where(where))).scalar_one()
        found = (await conn.execute(query)).all()
        volume = await _volumes(conn, [r.id for r in found])
    return Page([_row(state, r.id, r, volume.get(r.id, 0)) for r in found], page, int(total))


class VolumeRanking:
    """Accounts by their requests in the last 24 h, busiest first: one GROUP BY over a day of the audit
    log, so it is kept for TTL_S seconds (the volume sort shows counts up to that old)."""

    TTL_S = 30.0

    def __init__(self) -> None:
        self._ranked: list[tuple[str, int]] = []
        self._at = -math.inf

    async def read(self, conn: Any, now: float) -> list[tuple[str, int]]:
        if now - self._at > self.TTL_S:
            c = audit_log.c
            n = sa.func.count().label("n")
            q = (
                sa.select(c.account_id, n)
                .where(c.ts >= now - VOLUME_WINDOW_S, c.account_id.is_not(None))
                .group_by(c.account_id)
                .order_by(sa.desc(n), c.account_id)
            )
            self._ranked = [(a, int(k)) for a, k in (await conn.execute(q)).all()]
            self._at = now
        return self._ranked


async def _busiest_accounts(state: AppState, volume: VolumeRanking, q: str, desc: bool, page: int) -> Page:
    async with state.store.engine.connect() as conn:
        ranked = await volume.read(conn, time.time())
        needle = q.lower()
        if needle:
            ranked = [r for r in ranked if needle in r[0].lower()]
        if not desc:
            ranked = ranked[::-1]
        start = (page - 1) * PER_PAGE
        chosen = ranked[start : start + PER_PAGE]
        ids = [a for a, _ in chosen]
        stored = {
            row.id: row
            for row in await conn.execute(
                sa.select(accounts.c.id, accounts.c.org_id, accounts.c.tier, accounts.c.status).where(
                    accounts.c.id.in_(ids)
                )
            )
        }
    return Page([_row(state, a, stored.get(a), n) for a, n in chosen], page, len(ranked))


def _row(state: AppState, account_id: str, stored: Any, requests: int) -> AccountRow:
    risk = state.risk.get(account_id)
    return AccountRow(
        account_id,
        stored.org_id if stored else None,
        stored.tier if stored else None,
        stored.status if stored else None,
        risk.risk if risk else None,
        risk.verdict if risk else None,
        risk.cluster_id if risk else None,
        requests,
    )


async def _volumes(conn: Any, ids: list[str]) -> dict[str, int]:
    """Requests of each account in the last 24 h."""
    if not ids:
        return {}
    c = audit_log.c
    q = (
        sa.select(c.account_id, sa.func.count())
        .where(c.account_id.in_(ids), c.ts >= time.time() - VOLUME_WINDOW_S)
        .group_by(c.account_id)
    )
    return {a: int(n) for a, n in (await conn.execute(q)).all()}


def effective_limits(state: AppState, tier: str, own: dict[str, Any] | None) -> dict[str, Any]:
    """The account scope's limits as the gateway applies them: defaults, then its tier, then its own."""
    lim = state.settings.limits
    tier_limits = lim.tiers.get(tier)
    tier_set = tier_limits.account if tier_limits else None
    out = lim.account.merged(tier_set.model_dump(exclude_unset=True) if tier_set else None).merged(own)
    return out.model_dump()


# -- review queue and decisions -------------------------------------------------------------------


async def review_list(state: AppState, *, status: str = "open", page: int = 1) -> Page:
    """Review items, most urgent first (open before decided, then by risk), as `GET /admin/review`."""
    c = review_items.c
    where = c.status == status if status in STATUSES else sa.true()
    open_first = sa.case((c.status == "open", 0), else_=1)
    q = (
        review_items.select()
        .where(where)
        .order_by(open_first, sa.desc(sa.func.coalesce(c.risk, 0)), c.id)
        .limit(PER_PAGE)
        .offset((page - 1) * PER_PAGE)
    )
    async with state.store.engine.connect() as conn:
        total = (await conn.execute(sa.select(sa.func.count()).select_from(review_items).where(where))).scalar_one()
        rows = [dict(r) for r in (await conn.execute(q)).mappings()]
    return Page(rows, page, int(total))


async def decision_log(state: AppState, *, page: int = 1) -> Page:
    """Every review decision, newest first, with the item it was made on."""
    d, i = review_decisions.c, review_items.c
    q = (
        sa.select(
            d.id,
            d.ts,
            d.decision,
            d.scope,
            d.reviewer,
            d.note,
            d.verdict,
            d.members,
            i.kind,
            i.subject,
            i.id.label("item_id"),
        )
        .select_from(review_decisions.join(review_items, d.item_id == i.id))
        .order_by(sa.desc(d.id))
        .limit(PER_PAGE)
        .offset((page - 1) * PER_PAGE)
    )
    count = sa.select(sa.func.count()).select_from(review_decisions)
    async with state.store.engine.connect() as conn:
        total = (await conn.execute(count)).scalar_one()
        rows = [dict(r) for r in (await conn.execute(q)).mappings()]
    return Page(rows, page, int(total))


async def admin_actions(state: AppState, *, page: int = 1) -> Page:
    """Every administrative act in the audit log (store/admin_log.py): decisions, account and key changes,
    reveals, lookups; newest first."""
    rows, total = await AdminLog(state.store).page(PER_PAGE, (page - 1) * PER_PAGE)
    return Page([r.as_dict() for r in rows], page, total)


async def account_review(state: AppState, account_id: str) -> dict[str, Any] | None:
    """The account's own review item and its decisions, if it has one."""
    store = ReviewStore(state.store)
    item = await store.get(f"account:{account_id}")
    if item is None:
        return None
    return {"item": item.as_dict(), "decisions": [x.as_dict() for x in await store.decisions(item.id)]}


# -- an account's charts --------------------------------------------------------------------------

TIMELINE_HOURS = 7 * 24
RISK_ROWS_MAX = 20_000  # audit rows read for one account's risk history (its newest)


async def account_timeline(
    state: AppState, account_id: str, now: float | None = None, cot: CotShares | None = None
) -> dict[str, Any]:
    """The account's requests, refusals and tokens per hour over the last TIMELINE_HOURS, from the audit log
    (one GROUP BY over the account's rows in the window; audit_log.account_id and ts are indexed), and the
    share of each hour's requests that ask for step-by-step reasoning (`CotShares`, sampled)."""
    now = now or time.time()
    cot = cot if cot is not None else CotShares()
    first = math.floor(now / 3600) - TIMELINE_HOURS + 1
    hours = range(first, first + TIMELINE_HOURS)
    c = audit_log.c
    hour = sa.func.floor(c.ts / 3600).label("hour")
    q = (
        sa.select(
            hour,
            sa.func.count(),
            sa.func.sum(sa.case((c.status >= 400, 1), else_=0)),
            sa.func.sum(sa.func.coalesce(c.prompt_tokens, 0)),
            sa.func.sum(sa.func.coalesce(c.completion_tokens, 0)),
        )
        .where(c.account_id == account_id, c.ts >= first * 3600)
        .group_by(hour)
    )
    share: dict[int, tuple[float, int]] = {}
    cot_error = ""
    async with state.store.engine.connect() as conn:
        found = (await conn.execute(q)).all()
        if found:
            try:
                share = await cot.read(conn, account_id, hours, now)
            except ModelError as exc:  # no model shipped or a bad one: the chart shows no share, the page says why
                cot_error = str(exc)
    got = {int(h): (int(n), int(r or 0), int(p or 0), int(k or 0)) for h, n, r, p, k in found}
    zero = (0, 0, 0, 0)
    return {
        "t": [h * 3600 for h in hours],
        "requests": [got.get(h, zero)[0] for h in hours],
        "refused": [got.get(h, zero)[1] for h in hours],
        "prompt_tokens": [got.get(h, zero)[2] for h in hours],
        "completion_tokens": [got.get(h, zero)[3] for h in hours],
        "total": sum(v[0] for v in got.values()),
        # share of the hour's sampled requests whose prompt asks for step-by-step reasoning; None: no requests
        "cot_share": [round(share[h][0], 4) if share.get(h, (0, 0))[1] else None for h in hours],
        "cot_sampled": [share.get(h, (0.0, 0))[1] for h in hours],
        "cot_per_hour": COT_SAMPLE_PER_HOUR,
        "cot_error": cot_error,
    }


# -- the CoT share of an account's requests -------------------------------------------------------

COT_SAMPLE_PER_HOUR = 200  # requests classified per hour of the timeline, at most (evenly spread over the hour)
_classifier: PromptClassifier | None = None
_classifier_lock = threading.Lock()


def cot_classifier() -> PromptClassifier:
    """The shipped detection model's prompt classifier (`DetectionModel.load().classifier`), loaded once per
    process on first use (about a second: the model file is parsed)."""
    global _classifier
    with _classifier_lock:
        if _classifier is None:
            from distillshield.detect.scoring import DetectionModel
            from distillshield.detect.signals.cot import PromptClassifier

            _classifier = PromptClassifier.from_dict(DetectionModel.load().classifier)
        return _classifier


class CotShares:
    """Per account and hour, the share of sampled requests that ask for step-by-step reasoning and how many were
    classified. Hours that ended more than CLOSED_AFTER_S ago are classified once and kept (at most MAX_KEPT
    account-hours, the oldest kept dropped first); each page load classifies only the account's newer hours.
    Kept per process: a request that reaches the audit log more than CLOSED_AFTER_S after its hour ended is
    not counted in a kept hour."""

    CLOSED_AFTER_S = 300.0
    MAX_KEPT = 100_000

    def __init__(self) -> None:
        self._kept: dict[tuple[str, int], tuple[float, int]] = {}

    async def read(self, conn: Any, account_id: str, hours: range, now: float) -> dict[int, tuple[float, int]]:
        closed_until = math.floor((now - self.CLOSED_AFTER_S) / 3600)  # hours before this one are closed
        since = next((h for h in hours if (account_id, h) not in self._kept or h >= closed_until), hours.stop)
        kept = {h: self._kept[(account_id, h)] for h in range(hours.start, since)}  # before any await
        fresh: dict[int, tuple[float, int]] = {}
        if since < hours.stop:
            rows = (await conn.execute(_cot_sample_query(account_id, since * 3600))).all()
            fresh = await asyncio.to_thread(_cot_share_per_hour, rows) if rows else {}
            for h in range(since, closed_until):
                self._kept[(account_id, h)] = fresh.get(h, (0.0, 0))
            while len(self._kept) > self.MAX_KEPT:
                del self._kept[next(iter(self._kept))]
        return {**kept, **fresh}


def _cot_sample_query(account_id: str, since: float) -> sa.Select[Any]:
    """The account's audit rows since `since`, at most COT_SAMPLE_PER_HOUR per hour: with n rows in an hour
    (in seq order, 1-based rank k), a row is kept when floor(k*K/n) > floor((k-1)*K/n), which keeps every row
    when n <= K and exactly K rows evenly spread over the hour otherwise. The window functions read only seq;
    the request bodies are read for the kept rows only."""
    c = audit_log.c
    hour = sa.func.floor(c.ts / 3600)
    ranked = (
        sa.select(
            c.seq,
            sa.func.row_number().over(partition_by=hour, order_by=c.seq).label("k"),
            sa.func.count().over(partition_by=hour).label("n"),
        )
        .where(c.account_id == account_id, c.ts >= since)
        .subquery()
    )
    k, n, per = ranked.c.k, ranked.c.n, COT_SAMPLE_PER_HOUR
    kept = sa.select(ranked.c.seq).where((k * per) // n > ((k - 1) * per) // n)
    return sa.select(c.ts, c.endpoint, c.request).where(c.seq.in_(kept))


def _cot_share_per_hour(rows: list[Any]) -> dict[int, tuple[float, int]]:
    """hour -> (share of its rows whose prompt the classifier gives P(CoT elicitation) >= FLAG_AT, rows). The
    prompt is read as detection reads it (`detect.corpus.classifier_text`: the last user turn's start and end,
    and the system prompt); all rows are classified in one vectorised call."""
    from distillshield.detect.corpus import classifier_text
    from distillshield.detect.signals.cot import FLAG_AT

    hours, texts = [], []
    for ts, endpoint, raw in rows:
        try:
            body = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            body = {}
        user, system, _users, _turns = request_texts(endpoint, body) if isinstance(body, dict) else ("", "", 0, 0)
        hours.append(math.floor(float(ts) / 3600))
        texts.append(classifier_text(user, system))
    cot, _rubric = cot_classifier()(texts)
    counts: dict[int, list[int]] = {}
    for h, p in zip(hours, cot, strict=True):
        tally = counts.setdefault(h, [0, 0])
        tally[0] += int(p >= FLAG_AT)
        tally[1] += 1
    return {h: (hits / n, n) for h, (hits, n) in counts.items()}


async def account_risk_history(
    state: AppState, account_id: str, review: dict[str, Any] | None, now: float | None = None
) -> dict[str, Any]:
    """The account's risk over time. The store keeps no history of verdicts (the risk board holds the latest
    only), so this is derived from what is recorded: the risk and verdict the policy saw on the account's
    requests when a rule was involved (the audit row's `decision` JSON; the highest per hour, over the last
    TIMELINE_HOURS, from its newest RISK_ROWS_MAX such rows), then the risk board's current entry; the account's
    review item (`account_review`) gives the events: when it was queued and each decision."""
    now = now or time.time()
    since = (math.floor(now / 3600) - TIMELINE_HOURS + 1) * 3600
    c = audit_log.c
    q = (
        sa.select(c.ts, c.decision)
        .where(c.account_id == account_id, c.ts >= since, c.decision.like("{%"))
        .order_by(sa.desc(c.seq))
        .limit(RISK_ROWS_MAX)
    )
    hourly: dict[int, tuple[float, str, float]] = {}  # hour -> (highest risk, its verdict, when)
    async with state.store.engine.connect() as conn:
        rows = (await conn.execute(q)).all()
    for ts, decision in rows:
        d = LoggedDecision.parse(decision)
        if d is None or d.risk is None:
            continue
        h = math.floor(float(ts) / 3600)
        if h not in hourly or d.risk > hourly[h][0]:
            hourly[h] = (d.risk, d.verdict or "", float(ts))
    points = [(at, r, v, "policy") for _h, (r, v, at) in sorted(hourly.items())]
    board = state.risk.get(account_id)
    if board is not None:
        points.append((float(board.updated_at), float(board.risk), board.verdict, f"risk board ({board.source})"))
        points.sort(key=lambda p: p[0])
    events: list[dict[str, Any]] = []
    if review is not None:
        item = review["item"]
        events.append({"ts": item["created_at"], "what": f"queued for review ({item['verdict'] or 'unscored'})"})
        for x in review["decisions"]:
            who = x["reviewer"] or "unnamed"
            events.append(
                {"ts": x["ts"], "what": f"review decision {x['decision']} by {who} (verdict then: {x['verdict']})"}
            )
    return {
        "t": [p[0] for p in points],
        "risk": [round(p[1], 4) for p in points],
        "points": [{"ts": p[0], "risk": p[1], "verdict": p[2], "source": p[3]} for p in points],
        "from_policy": len(hourly),
        "rows_read": len(rows),
        "capped": len(rows) >= RISK_ROWS_MAX,
        "events": sorted(events, key=lambda e: e["ts"]),
    }


VERDICT_ROWS_MAX = 50_000  # audit rows read for one account's verdict history (its newest)


async def verdict_history(state: AppState, account_id: str, *, page: int = 1) -> tuple[Page, dict[str, Any]]:
    """The account's verdict changes, newest first, one page of them, and what was read.

    The store keeps no history of verdicts; what it records is the verdict and risk detection gave the account
    when the policy decided on one of its requests with a rule involved (the audit row's `decision` JSON, as
    `account_risk_history` reads it). Those rows are read in order (the account's newest VERDICT_ROWS_MAX, all
    time) and only the transitions kept: the first row, then each row whose verdict differs from the row before.
    Each carries its risk, the rule that decided and the highest signal the rule named (the top reason)."""
    c = audit_log.c
    q = (
        sa.select(c.seq, c.ts, c.decision)
        .where(c.account_id == account_id, c.decision.like("{%"))
        .order_by(sa.desc(c.seq))
        .limit(VERDICT_ROWS_MAX)
    )
    async with state.store.engine.connect() as conn:
        rows = (await conn.execute(q)).all()
    changes: list[dict[str, Any]] = []
    for seq, ts, decision in reversed(rows):
        d = LoggedDecision.parse(decision)
        if d is None or d.verdict is None or d.risk is None:
            continue
        if changes and changes[-1]["verdict"] == d.verdict:
            continue
        top = max(d.signals.items(), key=lambda kv: (kv[1], kv[0])) if d.signals else None
        changes.append(
            {
                "seq": int(seq),
                "ts": float(ts),
                "verdict": d.verdict,
                "previous": changes[-1]["verdict"] if changes else None,
                "risk": d.risk,
                "rule": d.rule,
                "top": {"signal": top[0], "score": top[1]} if top else None,
            }
        )
    changes.reverse()
    start = (page - 1) * PER_PAGE
    read = {"rows_read": len(rows), "capped": len(rows) >= VERDICT_ROWS_MAX, "max_rows": VERDICT_ROWS_MAX}
    return Page(changes[start : start + PER_PAGE], page, len(changes)), read


# -- an account's sample prompts ------------------------------------------------------------------

SAMPLE_PROMPTS = 10  # the account's latest requests whose prompts the page samples
REVEALED_CHARS = 4000  # a revealed prompt's length (its user turn; the system prompt gets a quarter)


PLACEHOLDERS = {"§n": "numbers", "§name": "names", "§q": "quoted", "§url": "URLs or e-mails", "§code": "code"}
_PLACEHOLDER = re.compile(r"§(?:name|code|url|n|q)\b")


def redacted(text: str) -> str:
    """A prompt with none of its words: its template (a digest of the detector's skeleton, `detect.text.skeleton`,
    so the same template shows the same digest whatever its data), its length, and what data it carries."""
    skel = skeleton(text)
    found = Counter(_PLACEHOLDER.findall(skel))
    data = ", ".join(f"{PLACEHOLDERS[k]} {n}" for k, n in found.items())
    n_words = len(words(text))
    return f"template {stable_hash(skel) & 0xFFFFFFFF:08x} · {n_words} word{'s' if n_words != 1 else ''}" + (
        f" · {data}" if data else ""
    )


async def sample_prompts(state: AppState, account_id: str, *, reveal: bool = False) -> list[dict[str, Any]]:
    """The prompts of the account's latest SAMPLE_PROMPTS requests (its last user turn, as detection reads it).

    Redacted (the default): none of the prompt's words (`redacted`); the raw text never leaves this function.
    With `reveal` (the console's logged reveal action only): the text as sent, cut to REVEALED_CHARS, and
    the system prompt."""
    c = audit_log.c
    q = (
        sa.select(c.seq, c.ts, c.endpoint, c.request)
        .where(c.account_id == account_id)
        .order_by(sa.desc(c.seq))
        .limit(SAMPLE_PROMPTS)
    )
    async with state.store.engine.connect() as conn:
        rows = (await conn.execute(q)).all()
    out = []
    for seq, ts, endpoint, raw in rows:
        try:
            body = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            body = {}
        user, system, _users, _turns = request_texts(endpoint, body) if isinstance(body, dict) else ("", "", 0, 0)
        item: dict[str, Any] = {"seq": int(seq), "ts": ts, "endpoint": endpoint, "chars": len(user)}
        if reveal:
            item |= {"text": user[:REVEALED_CHARS], "system": system[: REVEALED_CHARS // 4]}
            item["cut"] = len(user) > REVEALED_CHARS
        else:
            item |= {"text": redacted(user), "system": "", "cut": False}
        out.append(item)
    return out


# -- the policy's shadow replay -------------------------------------------------------------------


class ShadowReplay:
    """What each rule of the active policy would have done over the last 24 h (gateway/policy/replay.py): one
    GROUP BY over a day of the audit log, so it is kept for TTL_S seconds per policy (paging through a rule's
    accounts reads nothing again)."""

    TTL_S = 30.0

    def __init__(self) -> None:
        self._kept: tuple[Any, float, Replay] | None = None

    async def read(self, state: AppState, now: float | None = None) -> Replay:
        assert state.policy is not None
        now = now or time.time()
        policy = state.policy.policy
        kept = self._kept
        if kept is not None and kept[0] is policy and now - kept[1] <= self.TTL_S:
            return kept[2]
        board = state.risk
        out = await replay_window(state.store, policy, board.get, board.cluster_size, now=now)
        self._kept = (policy, now, out)
        return out


async def policy_replay(
    state: AppState, cache: ShadowReplay, *, rule: str = "", page: int = 1
) -> tuple[Replay, RuleImpact | None, Page | None]:
    """The replay, the rule asked for and a page of its accounts (None, None when no rule or an unknown one)."""
    out = await cache.read(state)
    chosen = out.rule(rule) if rule else None
    if chosen is None:
        return out, None, None
    ranked = chosen.ranked()
    start = (page - 1) * PER_PAGE
    return out, chosen, Page(ranked[start : start + PER_PAGE], page, len(ranked))
