"""The statistics of detection: one-sided tests with exact tails, and multiple-testing correction.

Every p-value is returned with its log10 too: a 400-token watermarked text has p ~ 1e-60 and an
audit over 100,000 tokens far smaller, below what a float holds, and ranking or correcting across
1,000 account keys must still work there. Only numpy and math: no scipy in the package.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

_LN10 = math.log(10.0)


def _logsumexp(x: np.ndarray) -> float:
    if x.size == 0:
        return -math.inf
    m = float(np.max(x))
    if m == -math.inf:
        return m
    return m + math.log(float(np.sum(np.exp(x - m))))


def z_score(green: int, n: int, gamma: float) -> float:
    """One-proportion z: (green - gamma n) / sqrt(n gamma (1 - gamma)); 0 for n = 0."""
    if n <= 0:
        return 0.0
    return (green - gamma * n) / math.sqrt(n * gamma * (1.0 - gamma))


def binomial_log10_sf(green: int, n: int, gamma: float) -> float:
    """log10 P(X >= green) for X ~ Binomial(n, gamma): the exact one-sided p-value of a green count."""
    if green <= 0:
        return 0.0
    if green > n:
        return -math.inf
    k = np.arange(green, n + 1, dtype=np.float64)
    log_c0 = math.lgamma(n + 1) - math.lgamma(green + 1) - math.lgamma(n - green + 1)
    # log C(n, k+1) = log C(n, k) + log(n - k) - log(k + 1): a running sum, no lgamma per term.
    steps = np.log(n - k[:-1]) - np.log(k[:-1] + 1.0)
    log_c = log_c0 + np.concatenate(([0.0], np.cumsum(steps)))
    log_pmf = log_c + k * math.log(gamma) + (n - k) * math.log1p(-gamma)
    return min(0.0, _logsumexp(log_pmf) / _LN10)


def gamma_log10_sf(total: float, n: int) -> float:
    """log10 P(S >= total) for S ~ Gamma(n, 1), the sum of n Exp(1) scores (the Gumbel null).

    For integer n, P(S >= s) = P(Poisson(s) <= n - 1) = sum_{k<n} e^-s s^k / k!.
    """
    return float(gamma_log10_sf_many(np.array([total], dtype=np.float64), n)[0])


def gamma_log10_sf_many(totals: np.ndarray, n: int) -> np.ndarray:
    """gamma_log10_sf of each total (same n: one text under many keys), one row of Poisson terms per total."""
    totals = np.asarray(totals, dtype=np.float64)
    out = np.zeros(totals.shape, dtype=np.float64)
    live = totals > 0
    if n <= 0 or not live.any():
        return out
    s = totals[live][:, None]
    k = np.arange(n, dtype=np.float64)
    log_fact = np.concatenate(([0.0], np.cumsum(np.log(np.arange(1, n, dtype=np.float64)))))
    log_terms = -s + k * np.log(s) - log_fact
    m = log_terms.max(axis=1, keepdims=True)  # the row-wise log-sum-exp of _logsumexp
    out[live] = np.minimum(0.0, (m[:, 0] + np.log(np.sum(np.exp(log_terms - m), axis=1))) / _LN10)
    return out


def normal_log10_sf(z: float) -> float:
    """log10 P(Z >= z) for a standard normal, accurate far into the tail."""
    if z < 5.0:
        return math.log10(max(0.5 * math.erfc(z / math.sqrt(2.0)), 1e-300))
    # Mills-ratio asymptotic expansion: phi(z)/z * (1 - 1/z^2 + 3/z^4)
    log_phi = -0.5 * z * z - 0.5 * math.log(2 * math.pi)
    return (log_phi - math.log(z) + math.log1p(-1 / z**2 + 3 / z**4)) / _LN10


def p_from_log10(log10_p: float) -> float:
    """The p-value as a float (0.0 once it underflows; the log10 keeps the magnitude)."""
    return 10.0**log10_p if log10_p > -320 else 0.0


def holm_log10(log10_ps: Sequence[float]) -> list[float]:
    """Holm-Bonferroni step-down adjusted p-values (log10), in the input order.

    Controls the family-wise error rate over all tests (here: every account key) under any
    dependence between them.
    """
    m = len(log10_ps)
    order = sorted(range(m), key=lambda i: log10_ps[i])
    adjusted = [0.0] * m
    running = -math.inf
    for rank, i in enumerate(order):
        value = min(0.0, log10_ps[i] + math.log10(m - rank))
        running = max(running, value)  # adjusted p-values are monotone in the ordering
        adjusted[i] = running
    return adjusted


def bonferroni_log10(log10_ps: Sequence[float]) -> list[float]:
    m = len(log10_ps)
    return [min(0.0, p + math.log10(m)) for p in log10_ps] if m else []
