"""Population-relative content: is an account's recent traffic made of prompts this service does not see?

Per account the state is a window of the WINDOW most recent sampled prompt vectors (float16) and their
typicality against the deployment's population sample (detect/content.py), recomputed when the
population's statistics change. The evidence is a count a person can check: "k of m recent prompts are
less typical of this service's traffic than 95% of its prompts", with the binomial tail probability of
that count under the population's own null, and the account's breadth (how unrelated its prompts are to
each other), because a narrow app is unusual but focused while a bank sweeps.

No labels and no training: the thresholds below are statistical levels (a p-value, an excess over the
population's median share of far prompts, the population's own breadth quantile), not fitted weights.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.special import bdtrc

from distillshield.detect.base import SignalScore
from distillshield.detect.content import (
    CONTENT_DIM,
    GENRE_SHARE,
    K_PEERS,
    LOW_RANK,
    MIN_CONTENT,
    NULL_QUANTILE,
    WINDOW,
    ContentNull,
    ContentPopulation,
    Genre,
    breadth,
)

__all__ = ["CONTENT_DIM", "ContentState", "PopulationContent", "far_logp", "spread"]

if TYPE_CHECKING:
    from distillshield.detect.engine import Context

LOGP_UNUSUAL = 6.0  # -log10 of the binomial tail: how improbable the far count is for this service's traffic
LOGP_STRONG = 14.0
Z_UNUSUAL = 5.0  # spreads below the typical account's mean typicality rank
Z_STRONG = 10.0
# Resembling the far accounts' prompts is more specific evidence than being far, so it needs less of it.
LOGP_ASSOC = 4.5
EXCESS_ASSOC = 0.08
RANK_GAP = 0.15  # ...and at least this far below it (an effect, not only a significance)
REJUDGE_ROWS = 8192  # prompts rejudged per product in the final rescoring (bounds its memory)
EXCESS_MIN = 0.15  # far share above the population's median share, at least this much (and 4 robust sds)
APP_TEMPLATE_SHARE = 0.5  # an account whose traffic runs this much through one template of its own is an app
RESEND_VARIETY = 0.25  # ...or that sends each of its prompts four times on average (distinct prompts per request)
AREAS_SWEEP = 4.0  # far prompts spread over at least this many topic areas (effective number) make a sweep


def spread(areas: np.ndarray) -> float:
    """Effective number of topic areas (exp of the entropy) that the given area labels cover."""
    areas = areas[areas >= 0]
    if len(areas) == 0:
        return 0.0
    p = np.bincount(areas).astype(np.float64)
    p = p[p > 0] / len(areas)
    return float(np.exp(-(p * np.log(p)).sum()))


class ContentState:
    __slots__ = (
        "account", "window", "typ", "area", "assoc", "copied", "count", "epoch", "seen", "flagged", "unusual", "genre",
        "_breadth",
    )  # fmt: skip

    def __init__(self, account: str = "") -> None:
        self.account = account
        self.window: np.ndarray | None = None  # (WINDOW, dim) float16 ring buffer
        self.typ = np.full(WINDOW, np.nan, dtype=np.float32)
        self.area = np.full(WINDOW, -1, dtype=np.int64)  # topic area of each window prompt
        self.assoc = np.zeros(WINDOW, dtype=bool)  # the prompt resembles the far accounts' prompts
        self.copied = np.zeros(WINDOW, dtype=bool)  # ...is a near-copy of one of them that ordinary users do not send
        self.count = 0  # sampled prompts seen in all
        self.epoch = -1  # population epoch `typ` was computed in
        self.seen: dict[int, None] = {}  # recent prompt hashes: a prompt sent again is not new evidence
        self.flagged = False  # its last content verdict was unusual and broad (it can then vouch against others)
        self.unusual = False  # its last content verdict was unusual, broad or not
        self.genre = Genre()  # how much its less typical prompts are a minority genre's (engine._genres)
        self._breadth = (-1, 0.0)  # (count, breadth of the window then): the window changes only when it grows

    def less_typical(self, stats: ContentNull) -> np.ndarray:
        """The window's prompts among the service's less typical ones (LOW_RANK), as stored (float16)."""
        if self.window is None:
            return np.zeros((0, 0), dtype=np.float16)
        typ = self.typ[: self.m]
        return self.window[: self.m][~np.isnan(typ) & (stats.rank(typ) < LOW_RANK)]

    def is_new(self, prompt_hash: int) -> bool:
        """True (and remembered) the first time a prompt is seen among the account's recent ones."""
        if prompt_hash in self.seen:
            return False
        self.seen[prompt_hash] = None
        if len(self.seen) > 4 * WINDOW:
            del self.seen[next(iter(self.seen))]
        return True

    def add(self, vec: np.ndarray) -> None:
        # The window grows by doubling up to WINDOW rows: most accounts send few requests.
        if self.window is None:
            self.window = np.zeros((8, len(vec)), dtype=np.float16)
        elif self.count < WINDOW and self.count == len(self.window):
            grown = np.zeros((min(2 * len(self.window), WINDOW), len(vec)), dtype=np.float16)
            grown[: self.count] = self.window
            self.window = grown
        slot = self.count % WINDOW
        self.window[slot] = vec
        self.typ[slot] = np.nan
        self.count += 1

    @property
    def m(self) -> int:
        return min(self.count, WINDOW)

    def breadth(self) -> float:
        """The window's breadth (content.breadth), computed once per new prompt."""
        if self._breadth[0] != self.count:
            self._breadth = (self.count, breadth(self.window[: self.m]) if self.window is not None else 0.0)
        return self._breadth[1]


def far_logp(far: int, m: int, q: float = NULL_QUANTILE) -> float:
    """-log10 P(X >= far) for X ~ Binomial(m, q): how surprising `far` far prompts of `m` are."""
    if far <= 0 or m <= 0:
        return 0.0
    p = float(bdtrc(far - 1, m, q))
    return 30.0 if p <= 1e-30 else min(-math.log10(p), 30.0)


NEUTRAL = {
    "content_far": 0.0,
    "content_logp": 0.0,
    "content_excess": 0.0,
    "content_rank": 0.5,
    "content_rank_z": 0.0,
    "content_breadth": 0.0,
    "content_areas": 0.0,
    "content_assoc": 0.0,
    "content_copied": 0.0,
}


class PopulationContent:
    """How far an account's recent prompts sit from this deployment's own traffic, and how broad they are."""

    name = "content"

    def fit(self, reference: Any) -> PopulationContent:
        return self

    def new_state(self, account: str = "") -> ContentState:
        return ContentState(account)

    def update(self, st: ContentState, vec: np.ndarray) -> None:
        st.add(vec)

    def rejudge_all(self, states: list[ContentState], pop: ContentPopulation) -> None:
        """Recompute every window's typicality and areas against the population as it stands, in large
        products (the final rescoring: batch and online then judge every account on the same population)."""
        states = [st for st in states if st.window is not None and st.m > 0]
        batch: list[ContentState] = []
        rows = 0
        for st in states:
            batch.append(st)
            rows += st.m
            if rows >= REJUDGE_ROWS:
                self._rejudge(batch, pop)
                batch, rows = [], 0
        if batch:
            self._rejudge(batch, pop)

    def mark_unusual(self, states: list[ContentState], pop: ContentPopulation) -> None:
        """Set every state's `unusual` from its current typicality (after `rejudge_all`, before minority
        genres are found among the unusual accounts: engine._genres)."""
        for st in states:
            m = st.m
            if st.window is None or m < MIN_CONTENT or pop.stats.tau < -0.5 or np.isnan(st.typ[:m]).any():
                st.unusual = False
                continue
            st.unusual = judge(
                self.name, st.typ[:m], st.assoc[:m], st.area[:m], pop.stats, 0.0, st.breadth(), copied=st.copied[:m]
            )[1]

    @staticmethod
    def _rejudge(states: list[ContentState], pop: ContentPopulation) -> None:
        x = np.concatenate([st.window[: st.m] for st in states if st.window is not None]).astype(np.float32)
        owners = [st.account for st in states for _ in range(st.m)]
        typ, assoc, copied = pop.typicality_many(x, owners)
        area = pop.area_of(x)
        i = 0
        for st in states:
            st.typ[: st.m] = typ[i : i + st.m]
            st.assoc[: st.m] = assoc[i : i + st.m]
            st.copied[: st.m] = copied[i : i + st.m]
            st.area[: st.m] = area[i : i + st.m]
            st.epoch = pop.epoch
            i += st.m

    def score(self, st: ContentState, ctx: Context) -> SignalScore:
        pop: ContentPopulation = ctx.population.content
        m = st.m
        if st.window is None or m < MIN_CONTENT or pop.stats.tau < -0.5:
            st.unusual = False
            return SignalScore(self.name, 0.0, f"content: {m} sampled prompts, not judged yet", dict(NEUTRAL))
        win = st.window[:m]
        if st.epoch != pop.epoch:
            st.typ[:] = np.nan
            st.epoch = pop.epoch
        todo = np.isnan(st.typ[:m])
        if todo.any():
            x = win[todo].astype(np.float32)
            st.typ[:m][todo], st.assoc[:m][todo], st.copied[:m][todo] = pop.judge_rows(x, st.account)
            st.area[:m][todo] = pop.area_of(x)
        out, st.unusual = judge(
            self.name, st.typ[:m], st.assoc[:m], st.area[:m], pop.stats, ctx.own_template_share, st.breadth(),
            st.account, genre=st.genre, copied=st.copied[:m], variety=ctx.prompt_variety,
        )  # fmt: skip
        st.flagged = out.score >= 0.5
        return out


def judge(
    name: str,
    typ: np.ndarray,
    assoc_mask: np.ndarray,
    area: np.ndarray,
    null: ContentNull,
    own_template_share: float,
    width: float,
    account: str = "",
    excess_min: float = EXCESS_MIN,
    rank_gap: float = RANK_GAP,
    genre: Genre | None = None,
    copied: np.ndarray | None = None,
    variety: float = 1.0,
) -> tuple[SignalScore, bool]:
    """The content verdict on a window of prompts (an account's, or a campaign's pooled), and whether it is
    unusual, from each prompt's typicality, whether it resembles the far accounts' prompts, and its topic
    area; `width` is the prompts' breadth (content.breadth). A group is held to a larger effect (`excess_min`,
    `rank_gap`): removing a group that asks alike removes its own near twins, so any such group looks somewhat
    far from everyone else. An account whose less typical prompts are a minority genre's (`genre`:
    content.genres) is unusual for this service but not a sweep. `copied` marks prompts that are near-copies of
    a far account's prompts that the service's ordinary users do not send: a bank's queries, also when they are
    a quarter of a window of cover traffic. `variety`: distinct prompts per request the account sent; one that
    sends the same prompts again and again (a suite re-run, an agent loop) is focused, not a sweep."""
    m = len(typ)
    far = int((typ < null.tau).sum())
    ranks = null.rank(typ)
    mean_rank = float(ranks.mean())
    rank_z = null.rank_z(mean_rank, m)
    areas = spread(area[ranks < LOW_RANK])
    frac = far / m
    logp = far_logp(far, m)
    med, mad = null.acc_frac
    excess = frac - med
    # Two ways to be far: many prompts in the population's extreme tail (a bank of unrelated text), or
    # the whole window shifted towards its less typical end (a bank that is merely unlike this service).
    tail = logp >= LOGP_UNUSUAL and excess >= max(excess_min, 4.0 * 1.4826 * mad)
    shift = rank_z <= -Z_UNUSUAL and mean_rank <= null.acc_rank[0] - rank_gap
    # A third: prompts that resemble the far accounts' prompts more than this service's ordinary traffic
    # (a campaign's shared bank, also when it hides among cover traffic or spreads over accounts).
    alike = int(assoc_mask.sum())
    logp_assoc = far_logp(alike, m, null.assoc_base)
    assoc = logp_assoc >= LOGP_ASSOC and alike / m - null.assoc_base >= max(EXCESS_ASSOC, excess_min - EXCESS_MIN)
    # A fourth: near-copies of the far accounts' prompts (the same bank's queries), rarer among ordinary
    # prompts than mere resemblance, so fewer of them say as much.
    copies = int(copied.sum()) if copied is not None else 0
    logp_copy = far_logp(copies, m, null.copy_base)
    copy = logp_copy >= LOGP_ASSOC and copies / m - null.copy_base >= max(EXCESS_ASSOC, excess_min - EXCESS_MIN)
    unusual = tail or shift or assoc or copy
    app = own_template_share >= APP_TEMPLATE_SHARE
    of_genre = genre is not None and genre.share >= GENRE_SHARE
    resends = variety <= RESEND_VARIETY
    focused = areas < AREAS_SWEEP or app or resends or of_genre
    feats = {
        "content_far": frac,
        "content_logp": logp / 30.0,
        "content_excess": excess,
        "content_rank": mean_rank,
        "content_rank_z": max(rank_z, -50.0) / 10.0,
        "content_breadth": width,
        "content_areas": areas,
        "content_assoc": alike / m,
        "content_copied": copies / m,
    }

    def named() -> str:  # the far accounts whose prompts the two tests compare with
        others = sorted(null.compared - {account})
        return ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")

    if copy and not (tail or shift):
        evidence = (
            f"{copies} of {m} recent prompts are near-copies of prompts sent by accounts far from this service's "
            f"traffic ({named()}) that its ordinary users do not send (p={10**-logp_copy:.1g}; typical: "
            f"{null.copy_base:.0%})"
        )
    elif assoc and not (tail or shift):
        evidence = (
            f"{alike} of {m} recent prompts resemble the prompts of accounts far from this service's traffic "
            f"({named()}) more than its ordinary traffic (p={10**-logp_assoc:.1g}; typical: "
            f"{null.assoc_base:.0%})"
        )
    elif tail:
        evidence = (
            f"{far} of {m} recent prompts are farther from this service's traffic than "
            f"{1 - NULL_QUANTILE:.0%} of its prompts (p={10**-logp:.1g}; typical accounts: {med:.0%})"
        )
    else:
        evidence = (
            f"{m} recent prompts are less typical of this service's traffic than {1 - mean_rank:.0%} of its "
            f"prompts on average (typical accounts: {1 - null.acc_rank[0]:.0%}; {-rank_z:.1f} spreads out)"
        )
    if unusual and not focused:
        strength = max(
            (logp - LOGP_UNUSUAL) / (LOGP_STRONG - LOGP_UNUSUAL) if tail else 0.0,
            (-rank_z - Z_UNUSUAL) / (Z_STRONG - Z_UNUSUAL) if shift else 0.0,
            (logp_assoc - LOGP_ASSOC) / (LOGP_STRONG - LOGP_ASSOC) if assoc else 0.0,
            (logp_copy - LOGP_ASSOC) / (LOGP_STRONG - LOGP_ASSOC) if copy else 0.0,
        )
        score = 0.5 + 0.49 * min(1.0, max(strength, 0.0))
        detail = f"{evidence}, spread over {areas:.1f} topic areas like a sweep"
    elif unusual:
        score = 0.3
        if app:
            why = f"focused like an app: {own_template_share:.0%} of its traffic runs through one template of its own"
        elif resends:
            why = (
                f"focused like an app: it sends the same prompts again and again (one distinct prompt per "
                f"{1 / max(variety, 1e-3):.0f} requests), not new ones like a sweep"
            )
        elif areas < AREAS_SWEEP:
            why = f"focused like an app: its atypical prompts stay in {areas:.1f} topic area(s)"
        else:
            assert genre is not None
            why = (
                f"a minority genre of this service: {genre.share:.0%} of its less typical prompts are asked alike "
                f"by at least {K_PEERS} other accounts (a median {genre.peers}) that are not linked to it"
            )
        detail = f"{evidence}, but {why}; unusual, not a sweep"
    else:
        score = min(0.45, 0.45 * max(logp / LOGP_UNUSUAL, -rank_z / Z_UNUSUAL, 0.0))
        detail = (
            f"{far} of {m} recent prompts are farther from this service's traffic than "
            f"{1 - NULL_QUANTILE:.0%} of its prompts; within its usual range (typical accounts: {med:.0%})"
        )
    return SignalScore(name, score, detail, feats), unusual
