"""The console's clusters: groups of accounts detection links (the "hydra"), as a list and as a graph.

Where the data lives: the risk board holds each account's latest verdict with its `cluster_id` and its
reasons (a member's `coordination` reason is the detector's own account of the cluster: how many accounts
share which templates, across how many orgs, how much IP space, how synchronised); the review queue keeps
an item per flagged cluster (its members, when it was queued) and per flagged account (when it was queued);
the audit log holds each member's requests. The detector's pairwise links are not kept anywhere, so the
graph's edges are recomputed here from the members' latest audit rows with the detector's own functions
(`detect.text` frames for prompt templates, `detect.corpus.ip_prefix` for IP ranges): shared prompt
templates, shared IP ranges, the same user agent, the same org, and timing (the same hours of activity,
or first requests close together). The layout is networkx's spring layout, computed here and drawn as SVG
by the template: no script.

Large clusters are capped: the graph draws the MAX_NODES riskiest members (the page says so), each read
from its newest ROWS_PER_MEMBER audit rows; the member table is paginated. The graph is kept 30 s per
cluster and drawn members (`ClusterGraphs`), so paging through the table does not draw it again.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from itertools import combinations
from typing import TYPE_CHECKING, Any

import networkx as nx
import numpy as np
import orjson
import sqlalchemy as sa

from distillshield.console.queries import PER_PAGE, Page
from distillshield.contracts import VERDICT_RANK, AccountRisk
from distillshield.detect.corpus import ip_prefix
from distillshield.detect.text import FRAME_WORDS, request_texts, skeleton, stable_hash, words
from distillshield.store.review import ReviewStore
from distillshield.store.tables import accounts, audit_log, review_items

if TYPE_CHECKING:
    from distillshield.gateway.app import AppState

MAX_NODES = 60  # members drawn in the graph (the riskiest)
ROWS_PER_MEMBER = 200  # newest audit rows read per drawn member
LINK_SHARE = 0.15  # a template or IP range links an account when it carries this share of its rows (the detector's)
SYNC_MIN = 0.8  # correlation of two members' hour-of-day profiles that counts as synchronised
SYNC_MIN_ROWS = 5
FIRST_WITHIN_S = 3600.0  # first requests this close count as bunched in time
MAX_EDGE_ROWS = 300  # link rows listed under the graph
HUB = "\x00cluster"  # the layout's centre node (no account id holds NUL)
WIDTH, HEIGHT, MARGIN = 960, 620, 70
EDGE_KINDS = {
    "template": "shared prompt template",
    "ip": "shared IP range",
    "timing": "timing",
    "ua": "same user agent",
    "org": "same org",
}


@dataclass(frozen=True)
class ClusterRow:
    cluster_id: str
    members: int
    flagged: int
    risk: float | None
    verdict: str | None
    updated_at: float | None
    on_board: bool
    review_id: int | None
    review_status: str | None
    queued_at: float | None


async def _cluster_items(state: AppState, ids: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """The review queue's cluster items by cluster id (all, or these)."""
    c = review_items.c
    q = sa.select(c.id, c.subject, c.status, c.verdict, c.risk, c.evidence, c.created_at, c.updated_at).where(
        c.kind == "cluster"
    )
    if ids is not None:
        if not ids:
            return {}
        q = q.where(c.subject.in_(ids))
    async with state.store.engine.connect() as conn:
        return {r.subject: dict(r._mapping) for r in (await conn.execute(q.limit(100_000))).all()}


async def cluster_list(state: AppState, *, page: int = 1) -> Page:
    """Every cluster on the risk board, and every cluster the review queue holds that is no longer on it,
    riskiest first; one page of them."""
    groups: dict[str, list[AccountRisk]] = defaultdict(list)
    for r in state.risk.all():
        if r.cluster_id:
            groups[r.cluster_id].append(r)
    items = await _cluster_items(state)
    rows: list[ClusterRow] = []
    for cid in set(groups) | set(items):
        members = groups.get(cid, [])
        item = items.get(cid)
        if members:
            worst = max(members, key=lambda m: (VERDICT_RANK.get(m.verdict, 0), m.risk))
            risk: float | None = max(m.risk for m in members)
            verdict: str | None = worst.verdict
            n, flagged = len(members), sum(1 for m in members if m.verdict != "benign")
            updated: float | None = max(m.updated_at for m in members)
        else:
            assert item is not None
            ev = item["evidence"] or {}
            risk, verdict, updated = item["risk"], item["verdict"], item["updated_at"]
            n, flagged = len(ev.get("members") or []), int(ev.get("flagged") or 0)
        rows.append(
            ClusterRow(
                cid,
                n,
                flagged,
                risk,
                verdict,
                updated,
                bool(members),
                item["id"] if item else None,
                item["status"] if item else None,
                item["created_at"] if item else None,
            )
        )
    rows.sort(key=lambda r: (-VERDICT_RANK.get(r.verdict or "", -1), -(r.risk or 0.0), r.cluster_id))
    start = (page - 1) * PER_PAGE
    return Page(rows[start : start + PER_PAGE], page, len(rows))


# -- one cluster ----------------------------------------------------------------------------------


@dataclass
class Profile:
    """What a member's newest audit rows say about it."""

    rows: int = 0
    ranges: dict[str, int] = field(default_factory=dict)  # IP range -> rows, ranges carrying LINK_SHARE
    ua: str = ""  # its most used user agent
    templates: dict[int, str] = field(default_factory=dict)  # frame hash -> example words
    hours: np.ndarray = field(default_factory=lambda: np.zeros(24))


def profile(rows: list[tuple[float, str | None, str | None, str, str | None]]) -> Profile:
    """A member's IP ranges, user agent, prompt templates and hour-of-day profile from its audit rows
    (ts, ip, user_agent, endpoint, request JSON). A frame (the opening or closing FRAME_WORDS words of a
    prompt's skeleton, as detection hashes them) is a template when it carries LINK_SHARE of the prompts
    and was used around at least two different prompts."""
    p = Profile(rows=len(rows))
    if not rows:
        return p
    ranges: Counter[str] = Counter()
    uas: Counter[str] = Counter()
    frames: Counter[int] = Counter()
    frame_prompts: dict[int, set[int]] = defaultdict(set)
    examples: dict[int, str] = {}
    prompts = 0
    for ts, ip, ua, endpoint, request in rows:
        p.hours[int(ts // 3600) % 24] += 1
        prefix = ip_prefix(ip)
        if prefix:
            ranges[prefix] += 1
        if ua:
            uas[ua[:120]] += 1
        try:
            body = orjson.loads(request) if request else None
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            continue
        user, _system, _u, _t = request_texts(endpoint, body)
        toks = words(skeleton(user))
        if len(toks) < 5:
            continue
        prompts += 1
        whole = stable_hash(user)
        for tag, part in (("H:", toks[:FRAME_WORDS]), ("T:", toks[-FRAME_WORDS:])):
            h = stable_hash(tag + " ".join(part))
            frames[h] += 1
            frame_prompts[h].add(whole)
            examples.setdefault(h, ("… " if tag == "T:" else "") + " ".join(part) + (" …" if tag == "H:" else ""))
    n = len(rows)
    p.ranges = {r: k for r, k in ranges.items() if k / n >= LINK_SHARE}
    p.ua = uas.most_common(1)[0][0] if uas else ""
    p.templates = {
        h: examples[h] for h, k in frames.items() if prompts and k / prompts >= LINK_SHARE and len(frame_prompts[h]) > 1
    }
    return p


def _sync(a: np.ndarray, b: np.ndarray) -> float:
    if a.sum() < SYNC_MIN_ROWS or b.sum() < SYNC_MIN_ROWS or a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def links(
    ids: list[str], profiles: dict[str, Profile], orgs: dict[str, str | None], first: dict[str, float]
) -> dict[tuple[str, str], dict[str, list[str]]]:
    """What links each pair of members: {(a, b): {kind: [details]}} (a < b). Shared templates, IP ranges,
    user agents and orgs go through an inverted index (one pass per value); timing compares every pair of
    the (at most MAX_NODES) members drawn."""
    out: dict[tuple[str, str], dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))

    def index(kind: str, values: dict[str, list[Any]], label: dict[Any, str]) -> None:
        by_value: dict[Any, list[str]] = defaultdict(list)
        for aid in ids:
            for v in values.get(aid, []):
                by_value[v].append(aid)
        for v, members in by_value.items():
            for a, b in combinations(sorted(members), 2):
                out[(a, b)][kind].append(label.get(v, str(v)))

    template_label: dict[Any, str] = {}
    for pr in profiles.values():
        template_label.update(pr.templates)
    index("template", {a: list(profiles[a].templates) for a in ids}, template_label)
    index("ip", {a: list(profiles[a].ranges) for a in ids}, {})
    index("ua", {a: [profiles[a].ua] if profiles[a].ua else [] for a in ids}, {})
    index("org", {a: [orgs[a]] if orgs.get(a) else [] for a in ids}, {})
    for a, b in combinations(sorted(ids), 2):
        s = _sync(profiles[a].hours, profiles[b].hours)
        if s >= SYNC_MIN:
            out[(a, b)]["timing"].append(f"active in the same hours (r = {s:.2f})")
        if a in first and b in first and abs(first[a] - first[b]) <= FIRST_WITHIN_S:
            out[(a, b)]["timing"].append(f"first requests {abs(first[a] - first[b]) / 60:.0f} min apart")
    return {k: {kind: sorted(set(v)) for kind, v in d.items()} for k, d in out.items()}


def layout(ids: list[str], pairs: dict[tuple[str, str], dict[str, list[str]]]) -> dict[str, tuple[float, float]]:
    """Node positions in the SVG's box: networkx's spring layout (seeded, so a page looks the same on every
    load) over the members, their links (heavier with more kinds of evidence) and a hub every member hangs
    from lightly (members with no evidence stay near the rest instead of drifting off)."""
    g = nx.Graph()
    hub = HUB
    g.add_node(hub)
    for aid in ids:
        g.add_node(aid)
        g.add_edge(hub, aid, weight=0.4)
    for (a, b), kinds in pairs.items():
        g.add_edge(a, b, weight=1.0 + len(kinds))
    pos = nx.spring_layout(g, seed=7, weight="weight", iterations=200)
    xs = np.array([pos[n][0] for n in ids])  # the members fill the box; the hub is placed among them below
    ys = np.array([pos[n][1] for n in ids])
    span_x = max(float(xs.max() - xs.min()), 1e-9)
    span_y = max(float(ys.max() - ys.min()), 1e-9)

    def place(n: str) -> tuple[float, float]:
        x = MARGIN + (pos[n][0] - xs.min()) / span_x * (WIDTH - 2 * MARGIN)
        y = MARGIN + (pos[n][1] - ys.min()) / span_y * (HEIGHT - 2 * MARGIN)
        return round(float(x), 1), round(float(y), 1)

    if len(ids) <= 1:  # nothing to spread: the member (if any) in the middle, the hub just above it
        return {hub: (WIDTH / 2, HEIGHT / 2 - 80), **{aid: (WIDTH / 2, HEIGHT / 2) for aid in ids}}
    out = {aid: place(aid) for aid in ids}
    # The hub is drawn where the members are centred (the layout may push it aside).
    out[hub] = (
        round(sum(x for x, _ in out.values()) / len(ids), 1),
        round(sum(y for _, y in out.values()) / len(ids), 1),
    )
    return out


def _strands(p: tuple[float, float], q: tuple[float, float], kinds: dict[str, list[str]]) -> list[dict[str, Any]]:
    """One line per kind of link between two nodes, side by side (offset across the edge), each as wide as
    the number of things of that kind they share (up to 4 px)."""
    dx, dy = q[0] - p[0], q[1] - p[1]
    norm = max((dx * dx + dy * dy) ** 0.5, 1e-9)
    ox, oy = -dy / norm, dx / norm
    ordered = [k for k in EDGE_KINDS if k in kinds]
    out = []
    for j, kind in enumerate(ordered):
        shift = (j - (len(ordered) - 1) / 2) * 3.5
        out.append(
            {
                "kind": kind,
                "x1": round(p[0] + ox * shift, 1),
                "y1": round(p[1] + oy * shift, 1),
                "x2": round(q[0] + ox * shift, 1),
                "y2": round(q[1] + oy * shift, 1),
                "width": min(1.0 + 0.75 * len(kinds[kind]), 4.0),
            }
        )
    return out


async def _member_facts(state: AppState, ids: list[str]) -> dict[str, dict[str, Any]]:
    """Per member: org, status, created_at (store), first/last request and count (audit log), when its
    own review item was queued."""
    facts: dict[str, dict[str, Any]] = {a: {} for a in ids}
    a, log, r = accounts.c, audit_log.c, review_items.c
    async with state.store.engine.connect() as conn:
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            for row in await conn.execute(sa.select(a.id, a.org_id, a.status, a.created_at).where(a.id.in_(chunk))):
                facts[row.id].update(org_id=row.org_id, status=row.status, created_at=row.created_at)
            for row in await conn.execute(
                sa.select(log.account_id, sa.func.min(log.ts), sa.func.max(log.ts), sa.func.count())
                .where(log.account_id.in_(chunk))
                .group_by(log.account_id)
            ):
                facts[row[0]].update(first_seen=float(row[1]), last_seen=float(row[2]), requests=int(row[3]))
            for row in await conn.execute(
                sa.select(r.id, r.subject, r.status, r.created_at).where(r.kind == "account", r.subject.in_(chunk))
            ):
                facts[row.subject].update(review_id=row.id, review_status=row.status, queued_at=row.created_at)
    return facts


async def _rows_of(state: AppState, ids: list[str]) -> dict[str, list[tuple[Any, ...]]]:
    c = audit_log.c
    out: dict[str, list[tuple[Any, ...]]] = {}
    async with state.store.engine.connect() as conn:
        for aid in ids:
            q = (
                sa.select(c.ts, c.ip, c.user_agent, c.endpoint, c.request)
                .where(c.account_id == aid)
                .order_by(sa.desc(c.seq))
                .limit(ROWS_PER_MEMBER)
            )
            out[aid] = [tuple(r) for r in (await conn.execute(q)).all()]
    return out


def _why(risk: AccountRisk | None) -> list[str]:
    """The detector's own words for why this account is in its cluster (its coordination reasons)."""
    if risk is None:
        return []
    return [str(r.get("detail")) for r in risk.reasons if r.get("signal") == "coordination" and r.get("detail")]


@dataclass(frozen=True)
class Graph:
    """The drawn members' links and layout, and how many audit rows they were read from."""

    pairs: dict[tuple[str, str], dict[str, list[str]]]
    pos: dict[str, tuple[float, float]]
    rows_read: int


class ClusterGraphs:
    """The cluster page's costliest part, its graph (the drawn members' newest audit rows read and profiled,
    their links and layout: about half a second for 60 members of 200 rows), kept TTL_S seconds per cluster
    and drawn members, so paging through a large cluster's member table or reloading it draws the graph once.
    The table itself (review states, counts) is read on every load. At most MAX graphs are kept."""

    TTL_S = 30.0
    MAX = 64

    def __init__(self) -> None:
        self._kept: dict[tuple[str, tuple[str, ...]], tuple[float, Graph]] = {}
        self.computed = 0  # graphs worked out (not served from the cache)

    async def read(self, state: AppState, cluster_id: str, drawn: list[str], facts: dict[str, dict[str, Any]]) -> Graph:
        key = (cluster_id, tuple(drawn))
        now = time.monotonic()
        hit = self._kept.get(key)
        if hit is not None and now - hit[0] <= self.TTL_S:
            return hit[1]
        graph = await draw(state, drawn, facts)
        self.computed += 1
        if len(self._kept) >= self.MAX:
            del self._kept[min(self._kept, key=lambda k: self._kept[k][0])]
        self._kept[key] = (now, graph)
        return graph


async def draw(state: AppState, drawn: list[str], facts: dict[str, dict[str, Any]]) -> Graph:
    """Read the drawn members' newest rows, link them and lay them out."""
    rows = await _rows_of(state, drawn)
    profiles = {aid: profile(rows[aid]) for aid in drawn}
    first = {aid: facts[aid]["first_seen"] for aid in drawn if "first_seen" in facts[aid]}
    pairs = links(drawn, profiles, {aid: facts[aid].get("org_id") for aid in drawn}, first)
    return Graph(pairs, layout(drawn, pairs), sum(len(v) for v in rows.values()))


async def cluster_detail(
    state: AppState, cluster_id: str, *, page: int = 1, graphs: ClusterGraphs | None = None
) -> dict[str, Any] | None:
    """One cluster: its members (paginated), their graph and links, why and when each joined; None when
    neither the risk board nor the review queue knows it. `graphs`: where drawn graphs are kept a while."""
    board = {m: state.risk.get(m) for m in state.risk.cluster_members(cluster_id)}
    item = await ReviewStore(state.store).get(f"cluster:{cluster_id}")
    if not board and item is None:
        return None
    listed = list((item.evidence or {}).get("members") or []) if item is not None else []
    former = sorted(set(listed) - set(board))  # in the review item's evidence, no longer on the board here
    ids = sorted(board, key=lambda m: (-(board[m].risk if board[m] else 0.0), m)) + former  # type: ignore[union-attr]
    drawn = ids[:MAX_NODES]
    start = (page - 1) * PER_PAGE
    shown = ids[start : start + PER_PAGE]
    facts = await _member_facts(state, list(dict.fromkeys(drawn + shown)))  # the table's page and the graph only
    graph = await (graphs.read(state, cluster_id, drawn, facts) if graphs is not None else draw(state, drawn, facts))
    pairs, pos = graph.pairs, graph.pos
    degree: Counter[str] = Counter()
    linked_by: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for (a, b), kinds in pairs.items():
        degree[a] += 1
        degree[b] += 1
        for kind in kinds:
            linked_by[a][kind].add(b)
            linked_by[b][kind].add(a)
    members = []
    for aid in shown:
        risk = board.get(aid)
        f = facts[aid]
        flagged_at = f.get("queued_at")
        members.append(
            {
                "id": aid,
                "risk": risk.risk if risk else None,
                "verdict": risk.verdict if risk else None,
                "on_board": risk is not None,
                "drawn": aid in pos,
                "why": _why(risk),
                "links": {k: len(v) for k, v in linked_by[aid].items()},
                "first_seen": f.get("first_seen"),
                "created_at": f.get("created_at"),
                "flagged_at": flagged_at,
                "scored_at": risk.updated_at if risk else None,
                "requests": f.get("requests", 0),
                "org_id": f.get("org_id"),
                "status": f.get("status"),
                "review_id": f.get("review_id"),
                "review_status": f.get("review_status"),
            }
        )
    member_page = Page(members, page, len(ids))
    verdict_of = {aid: (r.verdict if (r := board.get(aid)) is not None else None) or "unscored" for aid in drawn}
    nodes = [
        {
            "id": aid,
            "x": pos[aid][0],
            "y": pos[aid][1],
            "r": round(7 + 9 * (board[aid].risk if board.get(aid) else 0.0), 1),  # type: ignore[union-attr]
            "verdict": verdict_of[aid],
            "degree": degree[aid],
        }
        for aid in drawn
    ]
    edges = []
    for (a, b), kinds in sorted(pairs.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        edges.append({"a": a, "b": b, "kinds": kinds, "lines": _strands(pos[a], pos[b], kinds)})
    kinds_seen = Counter(k for kinds in pairs.values() for k in kinds)
    summary = next((w for aid in ids for w in _why(board.get(aid))), None)
    on_board = [board[m] for m in board if board[m] is not None]
    worst = max(on_board, key=lambda m: (VERDICT_RANK.get(m.verdict, 0), m.risk), default=None)
    return {
        "cluster_id": cluster_id,
        "summary": summary,
        "members": member_page,
        "n_members": len(ids),
        "n_board": len(board),
        "former": former,
        "flagged": sum(1 for m in on_board if m.verdict != "benign"),
        "risk": worst.risk if worst else (item.risk if item else None),
        "verdict": worst.verdict if worst else (item.verdict if item else None),
        "item": item.as_dict() if item is not None else None,
        "nodes": nodes,
        "edges": edges,
        "edge_rows": edges[:MAX_EDGE_ROWS],
        "hub": pos[HUB],
        "drawn": len(drawn),
        "capped": len(ids) > len(drawn),
        "kinds_seen": dict(kinds_seen),
        "edge_kinds": EDGE_KINDS,
        "rows_read": graph.rows_read,
        "width": WIDTH,
        "height": HEIGHT,
        "max_nodes": MAX_NODES,
        "rows_per_member": ROWS_PER_MEMBER,
        "max_edge_rows": MAX_EDGE_ROWS,
    }
