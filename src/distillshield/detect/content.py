"""Content: where an account's prompts sit in *this deployment's own* traffic, learned from no labels.

An extraction bank (sentences of some corpus sent as queries, a language-model-written question bank
swept over a topic taxonomy, a public instruction set) differs from a deployment's real users in what it
asks, whatever its timing and headers look like. This module gives every sampled prompt a vector and
keeps a sample of the deployment's own prompts to measure it against:

- `ContentEncoder`: hashed TF-IDF of word 1-2-grams, with the characters of unspaced scripts (CJK,
  kana, Thai) as words (multilingual, no model, no download, no GPU), folded by a fixed signed hash into
  CONTENT_DIM dense dimensions so that a window of
  prompts is a small matrix. IDF comes from the packaged benign reference, so every process (batch
  analysis, every gateway) encodes a prompt to the same vector.
- `ContentPopulation`: a bottom-k sample of accounts by a stable hash of their id (at most
  POP_PER_ACCOUNT prompts each), so the sample does not depend on the order traffic arrives in and batch
  and online analysis agree. From it, at each refresh: every sampled prompt's *typicality* (the mean
  cosine similarity of its K_NEIGHBOURS most similar *other users*: each other account counts once, by
  its best-matching prompt, so one account or a small campaign cannot vouch for a prompt on its own),
  the benign null of typicality (its NULL_QUANTILE quantile), and the spread of per-account statistics.
  Refreshes are robust to attackers in the population: accounts that are themselves outliers are
  excluded from the neighbour set and the null, and the statistic is recomputed (two passes). A fixed
  instruction that an application wraps around every prompt (the service's boilerplate) is projected
  out before prompts are compared (`ContentPopulation.centred`).

Hand-written rather than a library's kNN/outlier detector: what is needed is a *leave-own-account-out*
neighbour score against a trimmed, order-independent population sample, with an explicit null that a
reason can quote; scikit-learn's NearestNeighbors/LocalOutlierFactor fit one matrix and cannot exclude
the query's own account or re-trim, and at these sizes one matrix product is all the search costs.
"""

from __future__ import annotations

import heapq
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from distillshield.detect.text import stable_hash

CONTENT_LABEL = "population-relative (tfidf-hash)"  # what reports say the content signal is
CONTENT_DIM = 512  # folded dimensions: the fold's noise (about 1/sqrt(dim) in a cosine) stays below real overlaps
HASH_FEATURES = 1 << 20
CONTENT_CHARS = 600  # of each prompt: instructions and the start of the payload
WINDOW = 64  # an account's most recent distinct sampled prompts that its content is judged on
POP_ACCOUNTS = 128  # accounts in the population sample
POP_PER_ACCOUNT = 12  # prompts each sampled account contributes
K_NEIGHBOURS = 3
NULL_QUANTILE = 0.05  # a prompt is "far" when it is less typical than this share of the population's prompts
MIN_CONTENT = 8  # sampled prompts an account needs before its content is judged
REFRESH_GROWTH = 0.25  # refresh the population's statistics when this share of its rows changed
EXCLUDE_EXCESS = 0.1  # an account this far above the median far share is left out of the neighbours and null
EXCLUDE_Z = 3.0  # ...or whose prompts rank this many spreads below the typical account's
EXCLUDE_AT_MOST = 0.25  # ...but never more than this share of the sampled accounts
BOILERPLATE_QUANTILE = 0.1  # boilerplate: a direction at least 90% of a service's sampled prompts carry...
# ...with at least this cosine. A shared language or genre gives far less: the 10% quantile was 0.03-0.07
# on the chat, maths-tutoring and code deployments of benchmarks/detect_realbank.py, 0.52 where every
# prompt was wrapped in one classification instruction.
BOILERPLATE_MIN = 0.25
LOW_RANK = 0.2  # prompts ranked this low in typicality are the service's less typical ones
ASSOC_FLOOR = 0.02  # the base rate of resembling far accounts' prompts is never taken as below this
# A near-copy: cosine at least COPY_SIM with one prompt of a far account (the fold's noise is ~0.04, so this is
# the same text up to a few words) when no ordinary user in the sample and no reference prompt is as close (a
# popular prompt that a far account also sent is vouched for by the other users who send it).
COPY_SIM = 0.9
COPY_FLOOR = 0.01  # the base rate of near-copies is never taken as below this (half ASSOC_FLOOR: copies are rarer)
AREAS = 24  # topic areas of the service's traffic (k-means over the sample and the reference)
K_PEERS = 8  # a genre: at least this many other accounts ask like an unusual account's less typical prompt
# A vouching account stands with its whole window of less typical prompts: a genre with a wide range (developers'
# questions over many topics) holds a prompt like a given one in more of its accounts than a sample of each shows.
GENRE_ROWS = WINDOW
GENRE_JUDGED = 32  # an unusual account's less typical prompts whose genre share is measured
GENRE_MAX = 256  # vouching accounts compared (those with the most less typical prompts): cost ~ N*GENRE_ROWS each
GENRE_SHARE = 0.5  # an account whose less typical prompts are at least this much a genre's is one of it


# Scripts written without spaces (CJK, kana, Thai): each character becomes a word, so word 1-2-grams are
# character unigrams and bigrams there, which is how such text is usually indexed.
_UNSPACED = re.compile(r"([\u0e00-\u0e7f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff])")


def words_of(text: str) -> str:
    """The word analyser's input: lower case, characters of unspaced scripts spaced apart."""
    return _UNSPACED.sub(r" \1 ", text.lower())


def _idf_from(texts: list[str], vectorizer: Any) -> np.ndarray:
    x = vectorizer.transform(texts).tocsc()
    df = np.diff(x.indptr).astype(np.float64)
    return (np.log((1.0 + len(texts)) / (1.0 + df)) + 1.0).astype(np.float32)


class ContentEncoder:
    """Hashed TF-IDF of word 1-2-grams, folded to CONTENT_DIM dims, rows L2-normalised.

    Words rather than character n-grams: at a third of the cost per prompt, and the unspaced scripts
    that need characters get them through `words_of`."""

    name = "tfidf-hash"

    def __init__(self, dim: int = CONTENT_DIM, reference: list[str] | None = None, seed: int = 7) -> None:
        from sklearn.feature_extraction.text import HashingVectorizer

        self.dim = dim
        common = {"n_features": HASH_FEATURES, "alternate_sign": False, "norm": None, "dtype": np.float32}
        self._vec = HashingVectorizer(
            analyzer="word", ngram_range=(1, 2), token_pattern=r"(?u)\b\w+\b", preprocessor=words_of, **common
        )
        self._reference_vectors: np.ndarray | None = None
        rng = np.random.default_rng(seed)
        # One fixed signed bucket per hashed feature (a count sketch): cosines are kept up to ~1/sqrt(dim).
        self._bucket = rng.integers(0, dim, HASH_FEATURES, dtype=np.int64)
        self._sign = rng.choice(np.asarray([-1.0, 1.0], dtype=np.float32), HASH_FEATURES)
        if reference is None:
            from distillshield.detect.reference import reference_texts

            reference = list(reference_texts())
        self._idf = _idf_from([t[:CONTENT_CHARS] for t in reference], self._vec)

    def reference_vectors(self) -> np.ndarray:
        """The packaged benign reference prompts, encoded (once)."""
        if self._reference_vectors is None:
            from distillshield.detect.reference import reference_texts

            self._reference_vectors = self.encode(list(reference_texts()))
        return self._reference_vectors

    def encode(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dim) float32, each row L2-normalised (an empty text gives a zero row)."""
        n = len(texts)
        if not n:
            return np.zeros((0, self.dim), dtype=np.float32)
        x = self._vec.transform([t[:CONTENT_CHARS] for t in texts]).tocsr()
        data = np.log1p(x.data) * self._idf[x.indices]
        rows = np.repeat(np.arange(n), np.diff(x.indptr))
        flat = rows * self.dim + self._bucket[x.indices]
        out = np.bincount(flat, weights=data * self._sign[x.indices], minlength=n * self.dim).reshape(n, -1)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return (out / np.maximum(norms, 1e-12)).astype(np.float32)


def _median_mad(x: np.ndarray) -> tuple[float, float]:
    if len(x) == 0:
        return 0.0, 0.0
    med = float(np.median(x))
    return med, float(np.median(np.abs(x - med)))


def _trimmed_rate(hits: np.ndarray, owner: np.ndarray) -> float:
    """The share of `hits` among the rows of all accounts but the EXCLUDE_AT_MOST with the highest share of
    their own: the ordinary rate, robust to a campaign's accounts that are in the sample but were not found
    far (the accounts of a bank hidden in cover traffic copy it far more often than anyone else)."""
    if len(hits) == 0:
        return 0.0
    ids, inv = np.unique(owner, return_inverse=True)
    n = np.bincount(inv, minlength=len(ids))
    k = np.bincount(inv, weights=hits.astype(np.float64), minlength=len(ids))
    drop = np.argsort(-k / n, kind="stable")[: int(EXCLUDE_AT_MOST * len(ids))]
    keep = np.ones(len(ids), dtype=bool)
    keep[drop] = False
    return float(k[keep].sum() / max(n[keep].sum(), 1))


def top_k_mean(sims: np.ndarray, k: int = K_NEIGHBOURS) -> np.ndarray:
    """Per row, the mean of its k largest entries (fewer columns: the mean of those there are)."""
    if sims.shape[1] == 0:
        return np.zeros(sims.shape[0], dtype=np.float32)
    k = min(k, sims.shape[1])
    part = np.partition(sims, sims.shape[1] - k, axis=1)[:, -k:]
    return part.mean(axis=1)


def breadth(window: np.ndarray) -> float:
    """1 - the mean pairwise cosine of a window's prompts: 0 for one repeated prompt, ~1 for unrelated ones."""
    m = len(window)
    if m < 2:
        return 0.0
    w = window.astype(np.float32)  # once: einsum over float16 rows casts them element by element, slower
    s = w.sum(axis=0)
    pair = (float(s @ s) - float(np.einsum("ij,ij->", w, w))) / (m * (m - 1))
    return float(min(max(1.0 - pair, 0.0), 1.0))


@dataclass
class ContentNull:
    """What ordinary looks like, measured on the trimmed sample: the sorted typicality of its prompts, the
    "far" threshold, and the spread of per-account statistics. The population keeps one for the whole
    service; a candidate campaign is judged against one computed without its members."""

    null: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    tau: float = -1.0  # typicality below which a prompt is "far" (NULL_QUANTILE of the null)
    acc_frac: tuple[float, float] = (NULL_QUANTILE, 0.0)  # median, MAD of accounts' far shares
    acc_rank: tuple[float, float] = (0.5, 0.0)  # median, MAD of accounts' mean typicality ranks
    rank_between: float = 0.0  # variance of accounts' mean ranks beyond sampling noise
    assoc_base: float = ASSOC_FLOOR  # share of ordinary prompts that resemble the far accounts' prompts
    copy_base: float = COPY_FLOOR  # share of ordinary accounts' prompts that are near-copies of theirs
    compared: frozenset[str] = frozenset()  # the far accounts whose prompts others' are compared with

    def rank(self, typ: np.ndarray) -> np.ndarray:
        """Each typicality's rank among the null's prompts, 0..1 (uniform for the null's own prompts)."""
        if len(self.null) == 0:
            return np.full(len(typ), 0.5)
        return (np.searchsorted(self.null, typ, side="left") + 0.5) / (len(self.null) + 1.0)

    def rank_z(self, mean_rank: float, m: int) -> float:
        """How many spreads an account's mean rank over `m` prompts sits from the typical account's."""
        return (mean_rank - self.acc_rank[0]) / math.sqrt(self.rank_between + 1.0 / (12.0 * max(m, 1)))

    def per_account(self, typ: np.ndarray, owner: np.ndarray, n_acc: int) -> tuple[np.ndarray, ...]:
        """Every account's far share and mean rank under this null, and its prompt count (accounts without
        prompts get 0, 0.5 and 0)."""
        n = np.bincount(owner, minlength=n_acc)
        counts = np.maximum(n, 1)
        fracs = np.bincount(owner, weights=(typ < self.tau).astype(np.float64), minlength=n_acc) / counts
        ranks = np.where(n > 0, np.bincount(owner, weights=self.rank(typ), minlength=n_acc) / counts, 0.5)
        return fracs, ranks, n

    @classmethod
    def measure(cls, typ: np.ndarray, owner: np.ndarray, n_acc: int) -> ContentNull:
        """The null of these prompts (typicality and owning account index each)."""
        out = cls(null=np.sort(typ))
        out.tau = float(np.quantile(out.null, NULL_QUANTILE)) if len(typ) else -1.0
        fracs, ranks, n = out.per_account(typ, owner, n_acc)
        present = n > 0
        out.acc_frac = _median_mad(fracs[present])
        out.acc_rank = med_mad = _median_mad(ranks[present])
        # Accounts' mean ranks spread by their own differences plus sampling noise (1/12 per prompt for a
        # uniform rank); what is left after the noise is the between-account spread an account is held to.
        noise = 1.0 / (12.0 * float(np.mean(n[present]))) if present.any() else 0.0
        out.rank_between = max((1.4826 * med_mad[1]) ** 2 - noise, 0.0)
        return out


class ContentPopulation:
    """An order-independent sample of the deployment's prompts and the statistics measured against it."""

    def __init__(
        self, dim: int = CONTENT_DIM, accounts: int = POP_ACCOUNTS, per_account: int = POP_PER_ACCOUNT
    ) -> None:
        self.dim = dim
        self.max_accounts = accounts
        self.per_account = per_account
        self.rows: dict[str, list[np.ndarray]] = {}
        self._total = 0  # rows over all sampled accounts (stale() is asked at every rescore)
        self._heap: list[tuple[int, str]] = []  # (-hash, account): the largest hash on top, evicted first
        self._changes = 0
        self.version = 0  # refreshes so far
        self.epoch = 0  # refreshes at which the sample had at least doubled: cached typicality is redone then
        self._epoch_rows = 0
        self.matrix = np.zeros((0, dim), dtype=np.float32)
        self.owner = np.zeros(0, dtype=np.int64)
        self.accounts: list[str] = []
        self._index: dict[str, int] = {}
        self.excluded: set[str] = set()
        self.stats = ContentNull()  # the service-wide null (its tau is -1 until the sample can say anything)
        self._out_cols = np.zeros((0, dim), dtype=np.float32)  # prompts of the excluded (far) accounts
        self._out_owner = np.zeros(0, dtype=np.int64)
        self._ok = np.zeros(0, dtype=bool)
        self.anchors: np.ndarray | None = None
        self.centre = np.zeros(dim, dtype=np.float32)  # unit direction of the service's mean prompt
        self.boilerplate = False  # nearly every prompt carries it: a fixed wrapper (see `centred`)
        self._cols = np.zeros((0, dim), dtype=np.float32)
        self._n_sample_cols = 0
        self._seg_starts = self._seg_owner = np.zeros(0, dtype=np.int64)
        self.areas = np.zeros((0, dim), dtype=np.float32)  # unit centroids of the topic areas

    # -- sampling -------------------------------------------------------------------------------------

    def offer(self, account: str, vec: np.ndarray) -> None:
        """A sampled prompt of `account`; kept when the account is in the sample and has room."""
        rows = self.rows.get(account)
        if rows is not None:
            if len(rows) < self.per_account:
                rows.append(vec)
                self._changes += 1
                self._total += 1
            return
        h = stable_hash(account)
        if len(self.rows) >= self.max_accounts:
            if -self._heap[0][0] <= h:
                return
            _, gone = heapq.heapreplace(self._heap, (-h, account))
            dropped = len(self.rows.pop(gone))
            self._changes += dropped
            self._total -= dropped
        else:
            heapq.heappush(self._heap, (-h, account))
        self.rows[account] = [vec]
        self._changes += 1
        self._total += 1

    def stale(self) -> bool:
        return self._changes > 0 and (self.version == 0 or self._changes >= max(REFRESH_GROWTH * self._total, 8))

    # -- statistics -------------------------------------------------------------------------------------

    def _typicality(self, x: np.ndarray, own: np.ndarray, drop: np.ndarray | None = None) -> np.ndarray:
        """Typicality of prompts `x` (rows of accounts with sample index `own`, -1 outside the sample): the
        mean similarity of the K_NEIGHBOURS most similar *users*, each sampled account counting once (by
        its best-matching prompt) and each reference prompt on its own, leaving out the row's own account
        and `drop`. A prompt is ordinary when several of the service's users ask something like it, not
        when one other account (or two accounts of one campaign) sends many prompts like it."""
        if len(self._cols) == 0:
            return np.ones(len(x), dtype=np.float32)
        return top_k_mean(self._user_sims(x, own, drop))

    def _neighbours(
        self, x: np.ndarray, own: np.ndarray, drop: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Typicality (`_typicality`) and the similarity of the closest other user or reference prompt."""
        if len(self._cols) == 0:
            return np.ones(len(x), dtype=np.float32), np.ones(len(x), dtype=np.float32)
        sims = self._user_sims(x, own, drop)
        return top_k_mean(sims), sims.max(axis=1)

    def _user_sims(self, x: np.ndarray, own: np.ndarray, drop: np.ndarray | None) -> np.ndarray:
        """Each row's similarity with every other sampled user (its best-matching prompt) and reference prompt."""
        sims = self.centred(x) @ self._cols.T
        ns = self._n_sample_cols
        if ns:
            best = np.maximum.reduceat(sims[:, :ns], self._seg_starts, axis=1)
            best[own[:, None] == self._seg_owner[None, :]] = -1.0
            if drop is not None and len(drop):
                best[:, np.isin(self._seg_owner, drop)] = -1.0
            sims = np.hstack([best, sims[:, ns:]])
        return sims

    def centred(self, x: np.ndarray) -> np.ndarray:
        """Rows without the service's boilerplate, renormalised. A service has boilerplate when nearly all
        its sampled prompts (BOILERPLATE_QUANTILE) carry its common direction (the unit mean of its prompts)
        with a cosine of at least BOILERPLATE_MIN: a fixed instruction an application wraps around every
        payload. It says nothing about who asks what, and drowns the payload; projected out, similarity is
        about the payload. Where prompts merely share a language or a genre (chat, word problems, code) their
        components along the mean vary widely, many carry little of it, and nothing is removed: there the
        shared vocabulary is the service's content. Cf. Mu & Viswanath 2018, "All-but-the-Top"."""
        y = x.astype(np.float32)
        if self.boilerplate:
            y = y - np.outer(y @ self.centre, self.centre)
        return y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-8)

    def _set_columns(self, with_sample: bool = True) -> None:
        """What typicality is measured against: the non-excluded sample plus the packaged benign reference
        (real users' prompts: a prompt like those is not far, however rare it is in this deployment)."""
        if self.anchors is None:
            self.anchors = default_content_encoder().reference_vectors() if self.dim == CONTENT_DIM else None
        ok = self._ok if with_sample else np.zeros(len(self.owner), dtype=bool)
        cols = [self.matrix[ok]]
        if self.anchors is not None:
            cols.append(self.anchors)
        # Stored column-major, so that `self._cols.T` is contiguous: OpenBLAS multiplies the few rows of an
        # account's window by a contiguous matrix about twice as fast as by a transposed view of a row-major one
        # (a rescore's main cost on a large file).
        self._cols = np.asfortranarray(self.centred(np.vstack(cols)))
        # Sample columns are in account order: one segment per account, whose best match stands for it.
        sample_owner = self.owner[ok]
        self._n_sample_cols = len(sample_owner)
        starts = np.flatnonzero(np.r_[True, np.diff(sample_owner) != 0]) if len(sample_owner) else sample_owner
        self._seg_starts = starts.astype(np.int64)
        self._seg_owner = sample_owner[starts] if len(sample_owner) else sample_owner

    def group_null(self, members: set[str]) -> ContentNull:
        """The null for judging a group of accounts that ask alike: typicality against the packaged reference
        of real users' prompts only, measured on everyone else's sampled prompts. Against the sample itself
        a group that asks alike is always somewhat far from everyone else (taking it out takes its near
        twins with it), and the reference does not move with the group."""
        drop = np.asarray([self._index[a] for a in members if a in self._index], dtype=np.int64)
        rows = self._ok & ~np.isin(self.owner, drop)
        if rows.sum() < 2 * K_NEIGHBOURS or self.anchors is None:
            return self.stats
        typ = self.reference_typicality(self.matrix[rows])
        stats = ContentNull.measure(typ, self.owner[rows], len(self.accounts))
        stats.assoc_base, stats.copy_base = self.stats.assoc_base, self.stats.copy_base
        stats.compared = frozenset(self.stats.compared - members)
        return stats

    def reference_typicality(self, x: np.ndarray) -> np.ndarray:
        """Typicality against the packaged benign reference alone."""
        if self.anchors is None:
            return np.ones(len(x), dtype=np.float32)
        return top_k_mean(x.astype(np.float32) @ self.anchors.T)

    def set_outliers(self, windows: dict[str, np.ndarray] | None = None) -> None:
        """The excluded accounts' prompts (their recent windows when given, else their sampled rows), and how
        often an ordinary prompt resembles them more than the trimmed population, or is a near-copy of one
        of them (the base rates of `judge_rows`)."""
        if windows is not None:
            kept = [(self._index[a], w) for a, w in sorted(windows.items()) if a in self.excluded and len(w)]
            out = self.centred(np.concatenate([w for _, w in kept])) if kept else self.matrix[:0]
            self._out_cols = np.asfortranarray(out)  # column-major: see _set_columns
            self._out_owner = np.asarray([i for i, w in kept for _ in range(len(w))], dtype=np.int64)
        else:
            bad = np.asarray([self.accounts[o] in self.excluded for o in self.owner], dtype=bool)
            self._out_cols = np.asfortranarray(self.centred(self.matrix[bad]))  # column-major: see _set_columns
            self._out_owner = self.owner[bad]
        self.stats.assoc_base, self.stats.copy_base = ASSOC_FLOOR, COPY_FLOOR
        self.stats.compared = frozenset(self.accounts[i] for i in np.unique(self._out_owner))
        if len(self._out_cols) and self._ok.any() and len(self.stats.null):
            ok = self.matrix[self._ok]
            own = self.owner[self._ok]
            hits, copies = self._resembles(ok, own, *self._neighbours(ok, own))
            self.stats.assoc_base = max(float(hits.mean()), ASSOC_FLOOR)
            self.stats.copy_base = max(_trimmed_rate(copies, own), COPY_FLOOR)

    def _resembles(
        self, x: np.ndarray, own: np.ndarray, typ: np.ndarray, closest: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per prompt (with its typicality and its closest ordinary neighbour's similarity, `_neighbours`):
        whether it resembles the far accounts' prompts (among the less typical, closer to them than to the
        rest), and whether it is a near-copy of one of theirs that no ordinary user sends."""
        sims = self.centred(x) @ self._out_cols.T
        sims[own[:, None] == self._out_owner[None, :]] = -1.0
        near = top_k_mean(sims)
        copy = sims.max(axis=1)  # called only when there are far accounts' prompts to compare with
        return (near > typ) & (self.stats.rank(typ) < LOW_RANK), (copy >= COPY_SIM) & (closest < COPY_SIM)

    def judge_rows(self, x: np.ndarray, account: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """An account's prompts against every *other* (non-excluded) sampled account: their typicality; whether
        each is among the population's less typical ones and closer to the prompts of the accounts found far
        from this service's traffic than to the rest of it (a campaign's shared bank); and whether it is a
        near-copy of one of their prompts that no ordinary user sends (a bank's queries in cover traffic)."""
        own = np.full(len(x), self._index.get(account, -1), dtype=np.int64)
        x = x.astype(np.float32)
        typ, closest = self._neighbours(x, own)
        if len(self._out_cols) == 0:
            return typ, np.zeros(len(x), dtype=bool), np.zeros(len(x), dtype=bool)
        return (typ, *self._resembles(x, own, typ, closest))

    def refresh(self, new_epoch: bool = False) -> None:
        """Recompute the population's statistics (a few matrix products over at most a few thousand rows).

        `new_epoch` starts a new epoch whatever the growth (the final rescoring does, so that every account
        is judged against the same, final population in batch and online analysis alike)."""
        self.accounts = sorted(self.rows)
        self._index = index = {a: i for i, a in enumerate(self.accounts)}
        vecs = [(index[a], v) for a in self.accounts for v in self.rows[a]]
        self.matrix = np.asarray([v for _, v in vecs], dtype=np.float32).reshape(-1, self.dim)
        self.owner = np.asarray([i for i, _ in vecs], dtype=np.int64)
        n_acc = len(self.accounts)
        mean = self.matrix.mean(axis=0) if len(self.matrix) else np.zeros(self.dim, dtype=np.float32)
        self.centre = (mean / max(float(np.linalg.norm(mean)), 1e-8)).astype(np.float32)
        along = self.matrix @ self.centre
        self.boilerplate = bool(len(along)) and float(np.quantile(along, BOILERPLATE_QUANTILE)) >= BOILERPLATE_MIN
        # Three passes of a trimmed estimate: against the reference alone (a campaign's accounts cannot
        # vouch for each other there), then twice against the sample less the accounts found far.
        self.excluded = set()
        for step in range(3):
            self._ok = np.asarray([self.accounts[o] not in self.excluded for o in self.owner], dtype=bool)
            self._set_columns(with_sample=step > 0)
            if n_acc < 3 or len(self._cols) < 2 * K_NEIGHBOURS:
                self.stats = ContentNull()
                break
            typ = self._typicality(self.matrix, self.owner)
            self.stats = stats = ContentNull.measure(typ[self._ok], self.owner[self._ok], n_acc)
            # Excluded accounts are measured against the same null (they have no rows in it).
            fracs, ranks, n = stats.per_account(typ, self.owner, n_acc)
            far_limit = stats.acc_frac[0] + max(3.0 * 1.4826 * stats.acc_frac[1], EXCLUDE_EXCESS)
            rank_z = (ranks - stats.acc_rank[0]) / np.sqrt(stats.rank_between + 1.0 / (12.0 * np.maximum(n, 1)))
            outlying = (fracs > far_limit) | (rank_z < -EXCLUDE_Z)
            order = np.argsort(rank_z, kind="stable")[: int(EXCLUDE_AT_MOST * n_acc)]
            self.excluded = {self.accounts[i] for i in order if outlying[i]}
        self.set_outliers({})
        self._changes = 0
        self.version += 1
        if new_epoch or len(self.matrix) >= 2 * self._epoch_rows:
            self.epoch += 1
            self._epoch_rows = len(self.matrix)
            self._fit_areas()

    def _fit_areas(self) -> None:
        """Topic areas: k-means on the trimmed sample plus the reference, refitted once per epoch (so an
        account's cached areas change only when its cached typicality does)."""
        from sklearn.cluster import KMeans

        k = min(AREAS, len(self._cols) // 8)
        if k < 2:
            self.areas = np.zeros((0, self.dim), dtype=np.float32)
            return
        c = KMeans(n_clusters=k, n_init=1, max_iter=50, random_state=0).fit(self._cols).cluster_centers_
        self.areas = (c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-8)).astype(np.float32)

    def area_of(self, x: np.ndarray) -> np.ndarray:
        """The nearest topic area of each row (-1 before any area exists)."""
        if len(self.areas) == 0:
            return np.full(len(x), -1, dtype=np.int64)
        return np.argmax(self.centred(x) @ self.areas.T, axis=1)

    def typicality_many(
        self, x: np.ndarray, accounts: list[str], chunk: int = 4096, also_exclude: set[str] | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Typicality and both masks of `judge_rows` of many prompts at once, each against the
        accounts other than its own and `also_exclude` (in chunks: one large product per chunk is where BLAS
        is fast)."""
        typ = np.ones(len(x), dtype=np.float32)
        assoc = np.zeros(len(x), dtype=bool)
        copied = np.zeros(len(x), dtype=bool)
        if len(self._cols) == 0:
            return typ, assoc, copied
        own = np.asarray([self._index.get(a, -1) for a in accounts], dtype=np.int64)
        drop = np.asarray([self._index[a] for a in (also_exclude or ()) if a in self._index], dtype=np.int64)
        for i in range(0, len(x), chunk):
            xc, oc = x[i : i + chunk].astype(np.float32), own[i : i + chunk]
            typ[i : i + chunk], closest = self._neighbours(xc, oc, drop)
            if len(self._out_cols):
                assoc[i : i + chunk], copied[i : i + chunk] = self._resembles(xc, oc, typ[i : i + chunk], closest)
        return typ, assoc, copied


@dataclass
class Genre:
    """What a minority genre says about one unusual account: the share of its less typical prompts that at
    least K_PEERS other unusual accounts ask alike (each holding a prompt as similar as the service's far
    threshold), and how many such accounts a prompt has (the median over its prompts)."""

    share: float = 0.0
    peers: int = 0


def genres(
    windows: dict[str, np.ndarray], vouchers: set[str], groups: dict[str, str], pop: ContentPopulation
) -> dict[str, Genre]:
    """Genre support for unusual accounts, from their windows' less typical prompts (centred rows, chosen by
    the caller), judged among the `vouchers`: the unusual accounts with enough traffic to be judged on
    their own (thin accounts that ask alike are judged together, as content campaigns).

    The population sample is one of accounts: a genre that a few percent of a deployment's accounts share
    (developers sending code to a chat service) has a handful of accounts in it, or none, and its prompts
    read as far. Judged among the other unusual accounts of the *whole* population, such a prompt is a
    genre's when at least K_PEERS of them each hold a prompt as similar to it as the service's far
    threshold (each account counting once, by its best-matching prompt, as the sample's typicality counts
    users). Accounts of one cluster (`groups`: linked by templates, addresses or a content campaign) are one
    actor and do not vouch for each other, and a bank sent by a few accounts (fewer than K_PEERS others) never
    reaches a genre. Each vouching account stands with its whole window of less typical prompts (GENRE_ROWS).
    Hand-written for the same reason as `_typicality`: a leave-own-group-out, each-account-once neighbour
    count that no library's kNN gives."""
    out = {a: Genre() for a in windows}
    # An account without less typical prompts has nothing to vouch with (and an empty segment would make
    # reduceat below read its neighbour's first prompt as its own).
    voters = sorted((a for a in vouchers if len(windows.get(a, ())) > 0), key=lambda a: (-len(windows[a]), a))
    voters = voters[:GENRE_MAX]
    voters.sort()
    if len(voters) < K_PEERS or pop.stats.tau < -0.5:
        return out
    rows = [windows[a][:GENRE_ROWS] for a in voters]
    cols = np.concatenate(rows).astype(np.float32)
    starts = np.cumsum([0] + [len(r) for r in rows[:-1]])
    ids: dict[tuple[str, str], int] = {}

    def actor(a: str) -> int:  # its cluster, or the account alone (kept apart: an id may look like either)
        return ids.setdefault(("cluster", groups[a]) if a in groups else ("account", a), len(ids))

    gid = np.asarray([actor(a) for a in voters])
    tau = pop.stats.tau
    for a, x in windows.items():
        own = actor(a)
        others = gid != own  # itself, and accounts of its own cluster, do not vouch
        if others.sum() < K_PEERS or not len(x):
            continue
        x = x[:GENRE_JUDGED]
        best = np.maximum.reduceat(x.astype(np.float32) @ cols.T, starts, axis=1)[:, others]
        alike = (best >= tau).sum(axis=1)  # per prompt: other accounts with a prompt at least this similar
        out[a] = Genre(float((alike >= K_PEERS).mean()), int(np.median(alike)))
    return out


_DEFAULT: ContentEncoder | None = None
_BLAS: Any = None


def single_threaded_blas() -> Any:
    """A context in which BLAS runs on one thread. Content scoring multiplies a few prompts by a few
    thousand at a time, where waking BLAS threads costs more than the product (measured 5-10x slower)."""
    global _BLAS
    from threadpoolctl import ThreadpoolController

    if _BLAS is None:
        _BLAS = ThreadpoolController()
    return _BLAS.limit(limits=1, user_api="blas")


def content_encoder(on: bool) -> Callable[[list[str]], np.ndarray] | None:
    """The encoding function the Extractor takes when content is on (batch and online alike), else None."""
    return default_content_encoder().encode if on else None


def default_content_encoder() -> ContentEncoder:
    """The process's content encoder (built once: its IDF comes from the packaged reference)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = ContentEncoder()
    return _DEFAULT
