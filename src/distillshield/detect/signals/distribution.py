"""Distribution tests against benign reference traffic, on sentence embeddings of sampled prompts.

- MMD (after Liu et al. 2026): maximum mean discrepancy between an account's prompt window and the
  benign reference, with an RBF kernel made streamable by random Fourier features (Rahimi & Recht 2007):
  the account keeps only the running mean of its features (D numbers), and MMD^2 is the squared distance
  between that mean and the reference's. The null is benign-calibrated: the statistic's mean and spread
  for windows of m reference prompts, so the score is a z value that means the same at every m.
- PRADA (Juuti et al. 2019): the distances from each new query to the closest earlier one; benign
  streams give roughly normal distances, synthetic sweeps do not. The score is 1 - Shapiro-Wilk W.

Both see the sampled requests only (see corpus.sampled), so their windows are tens to hundreds of
prompts, not the 1,500 of the MMD paper: their figures here are our own, measured by `evaluate`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from distillshield.detect.base import SignalScore

if TYPE_CHECKING:
    from distillshield.detect.engine import Context

RFF_DIM = 256
NULL_SIZES = (4, 8, 16, 32, 64, 128, 256)
PRADA_BUFFER = 24  # earlier embeddings a new one is compared with
PRADA_MIN = 20  # distances needed before the normality test says anything
TOPICS = 16


class EmbeddingReference:
    """What benign prompts look like to one encoder: topic centroids, RFF map, and MMD null statistics.

    Fitted at run time from the benign reference corpus that ships in the package, so it always matches
    whichever encoder is in use.
    """

    def __init__(self) -> None:
        self.encoder_name = ""
        self.centroids = np.zeros((0, 0), dtype=np.float32)
        self.w = np.zeros((0, 0), dtype=np.float32)
        self.b = np.zeros(0, dtype=np.float32)
        self.ref_mean = np.zeros(0, dtype=np.float32)
        self.null: dict[int, tuple[float, float]] = {}

    def features(self, emb: np.ndarray) -> np.ndarray:
        """Random Fourier features: phi(x).phi(y) approximates exp(-gamma |x-y|^2)."""
        return (math.sqrt(2.0 / RFF_DIM) * np.cos(emb @ self.w + self.b)).astype(np.float32)

    def topics(self, emb: np.ndarray) -> np.ndarray:
        return np.argmax(emb @ self.centroids.T, axis=1)

    def fit(self, emb: np.ndarray, encoder_name: str, seed: int = 0) -> EmbeddingReference:
        from sklearn.cluster import KMeans

        rng = np.random.default_rng(seed)
        self.encoder_name = encoder_name
        km = KMeans(n_clusters=min(TOPICS, len(emb)), n_init=4, random_state=seed).fit(emb)
        c = km.cluster_centers_
        self.centroids = (c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-8)).astype(np.float32)
        # Median heuristic for the RBF bandwidth on the reference itself.
        idx = rng.choice(len(emb), size=(min(2000, len(emb) * 4), 2))
        d2 = np.sum((emb[idx[:, 0]] - emb[idx[:, 1]]) ** 2, axis=1)
        gamma = 1.0 / max(float(np.median(d2[d2 > 0])) if np.any(d2 > 0) else 1.0, 1e-6)
        dim = emb.shape[1]
        self.w = (rng.normal(size=(dim, RFF_DIM)) * math.sqrt(2 * gamma)).astype(np.float32)
        self.b = rng.uniform(0, 2 * math.pi, RFF_DIM).astype(np.float32)
        # Half the reference defines the benign mean, the other half draws null windows: a window of m
        # benign prompts is then as far from the mean as a fresh benign account's would be.
        perm = rng.permutation(len(emb))
        half = len(emb) // 2
        phi = self.features(emb)
        self.ref_mean = phi[perm[:half]].mean(axis=0)
        pool = phi[perm[half:]]
        for m in NULL_SIZES:
            stats = []
            for _ in range(200):
                win = pool[rng.choice(len(pool), size=m, replace=m > len(pool))]
                stats.append(float(np.sum((win.mean(axis=0) - self.ref_mean) ** 2)))
            self.null[m] = (float(np.mean(stats)), float(np.std(stats)) + 1e-9)
        return self

    def mmd_z(self, phi_sum: np.ndarray, m: int) -> float:
        """z of the window's MMD^2 under the benign null for the nearest calibrated window size."""
        if m <= 0 or not self.null:
            return 0.0
        mmd2 = float(np.sum((phi_sum / m - self.ref_mean) ** 2))
        size = min(NULL_SIZES, key=lambda s: abs(math.log(s / m)))
        mu, sd = self.null[size]
        # Null spread shrinks like 1/m; rescale from the calibrated size to this m.
        scale = size / m
        return (mmd2 - mu * scale) / (sd * scale)


class EmbedState:
    __slots__ = ("m", "phi_sum", "topics", "last_topic", "switches", "buffer", "dists")

    def __init__(self) -> None:
        self.m = 0
        self.phi_sum: np.ndarray | None = None
        self.topics = [0] * TOPICS
        self.last_topic = -1
        self.switches = 0
        self.buffer: list[np.ndarray] = []
        self.dists: list[float] = []


class DistributionTest:
    """MMD against the benign reference and PRADA's distance-normality test, per account."""

    name = "distribution"

    def __init__(self) -> None:
        self.ref: EmbeddingReference | None = None

    def fit(self, reference: EmbeddingReference) -> DistributionTest:
        self.ref = reference
        return self

    def new_state(self) -> EmbedState:
        return EmbedState()

    def update_embeddings(self, st: EmbedState, emb: np.ndarray, phi: np.ndarray, topics: np.ndarray) -> None:
        """Fold a batch of the account's sampled embeddings (in arrival order) into its state."""
        st.m += len(emb)
        st.phi_sum = phi.sum(axis=0) if st.phi_sum is None else st.phi_sum + phi.sum(axis=0)
        for e, t in zip(emb, topics, strict=True):
            t = int(t)
            if t < TOPICS:
                st.topics[t] += 1
            if st.last_topic >= 0 and t != st.last_topic:
                st.switches += 1
            st.last_topic = t
            if st.buffer:
                d = float(np.min(np.linalg.norm(np.asarray(st.buffer, dtype=np.float32) - e, axis=1)))
                if len(st.dists) < 512:
                    st.dists.append(d)
            st.buffer.append(e.astype(np.float16))
            if len(st.buffer) > PRADA_BUFFER:
                st.buffer.pop(0)

    def score(self, st: EmbedState, ctx: Context) -> SignalScore:
        if self.ref is None or st.m == 0 or st.phi_sum is None:
            return SignalScore(self.name, 0.0, "no embeddings", {"mmd_z": 0.0, "prada": 0.0})
        z = self.ref.mmd_z(st.phi_sum, st.m)
        prada = 0.0
        if len(st.dists) >= PRADA_MIN:
            from scipy.stats import shapiro

            d = np.asarray(st.dists)
            if np.ptp(d) > 1e-6:
                prada = 1.0 - float(shapiro(d).statistic)
        score = 1.0 / (1.0 + math.exp(-(z - 3.0)))
        detail = (
            f"prompts differ from benign reference traffic: MMD z={z:.1f} over {st.m} sampled prompts"
            if z >= 3
            else f"prompt distribution close to benign reference (MMD z={z:.1f}, {st.m} prompts)"
        )
        if prada > 0.1:
            detail += f"; PRADA distance test abnormal (1-W={prada:.2f})"
        return SignalScore(self.name, score, detail, {"mmd_z": max(min(z, 50.0), -5.0) / 10.0, "prada": prada})
