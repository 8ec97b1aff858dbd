"""Entropy-aware detection: weight each scored token by how much the watermark could have moved it.

A keyed sampler can only bias a token where the model had more than one likely candidate. Where it had
one (the rest of a word, a closing bracket, a name already given), the chosen token's keyed bits are
fair coins whether or not the text is watermarked, and an unweighted count adds their noise to the
evidence. The tournament's one round between two draws from p lifts the winner's bit from 1/2 by
(1 - sum p^2) / 4 (the draws differ with probability 1 - sum p^2, and then the larger bit wins), so the
most powerful linear test weights each pair by w = 1 - sum p^2 of the sampler's distribution at that
position (Lee et al. 2023, "Who Wrote this Code?", score only high-entropy tokens; SynthID-Text weights
its mean score too). At T = 0.7 most of a completion is nearly determined, which is where the
unweighted test lost its power (docs/watermark.md, "Entropy-weighted detection").

The detector recomputes p with the model that generated the text (`ModelWeigher`: the embedded model
through llama.cpp, with the sampler's truncation at a nominal temperature). It does not know the
prompt of a leaked text, so the weights condition on the text alone (a prompt can be given when known).

Validity does not depend on the weights being right: they come from the text and the model, never from
a key, so under "no key of ours marks this text" each pair's bits are still fair coins independent of
its weight. `WeightedNull` gives the exact tail of the weighted count (weights quantised to
WEIGHT_LEVELS integer levels, the distribution convolved level by level), and above EXACT_SUPPORT
values, or below EXACT_FLOOR where float rounding would show, a Chernoff bound, which can only
overstate the p-value. Hand-written: no library gives the tail of a sum of integer-weighted binomials.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from distillshield.watermark.base import DEFAULT_MIN_P, DEFAULT_TOP_K, DEFAULT_TOP_P, TokenIds, as_sequences

WEIGHT_LEVELS = 16  # weights are quantised to 0..WEIGHT_LEVELS (a weight under 1/32 counts as 0)
EXACT_SUPPORT = 1 << 21  # largest weighted count whose null distribution is convolved exactly
EXACT_FLOOR = 1e-12  # below this the convolution's rounding could show: the Chernoff bound takes over
_LN10 = math.log(10.0)


@runtime_checkable
class TokenWeigher(Protocol):
    """Per-token detection weights in [0, 1] for a sequence of token ids: entry i is how much the
    sampler could bias token i given the tokens before it (and the prompt, when known)."""

    name: str

    def weights(self, ids: Sequence[int], prompt: str | None = None) -> np.ndarray: ...


def quantise(w: np.ndarray) -> np.ndarray:
    """Weights in [0, 1] -> integer levels 0..WEIGHT_LEVELS."""
    return np.rint(np.clip(np.asarray(w, dtype=np.float64), 0.0, 1.0) * WEIGHT_LEVELS).astype(np.int64)


def weighted_pairs(
    sequences: TokenIds, weights: Iterable[np.ndarray], context_width: int, dedup: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """`base.scored_pairs` with each pair's weight level, one weight array per sequence: (contexts (n, h),
    tokens (n,), levels (n,), tokens seen). A pair met twice keeps the weight of its first occurrence (any
    rule that ignores the key keeps the test valid)."""
    h = context_width
    rows, levels, seen = [], [], 0
    for s, w in zip(as_sequences(sequences), weights, strict=True):
        w = np.asarray(w, dtype=np.float64)
        if w.shape != s.shape:
            raise ValueError(f"weights must match the token ids one for one: {w.shape} against {s.shape}")
        seen += int(s.size)
        if s.size > h:
            rows.append(np.lib.stride_tricks.sliding_window_view(s, h + 1))
            levels.append(quantise(w[h:]))
    if not rows:
        return np.empty((0, h), np.int64), np.empty(0, np.int64), np.empty(0, np.int64), seen
    win = np.concatenate(rows, axis=0)
    lev = np.concatenate(levels)
    if dedup:
        _, first = np.unique(win, axis=0, return_index=True)
        first.sort()
        win, lev = win[first], lev[first]
    return win[:, :h], win[:, h], lev, seen


class WeightedNull:
    """The null distribution of S = sum_t k_t * X_t with X_t ~ Binomial(trials, rate) independent and k_t the
    pairs' integer weight levels: its mean, variance, and exact upper tail (log10)."""

    def __init__(self, levels: np.ndarray, trials: int, rate: float) -> None:
        lev = np.asarray(levels, dtype=np.int64)
        lev = lev[lev > 0]
        self.trials, self.rate = trials, rate
        self.counts = np.bincount(lev, minlength=WEIGHT_LEVELS + 1)  # pairs at each level
        ks = np.arange(len(self.counts), dtype=np.float64)
        self.mean = rate * trials * float((self.counts * ks).sum())
        self.var = rate * (1.0 - rate) * trials * float((self.counts * ks * ks).sum())
        self.support = trials * int((self.counts * np.arange(len(self.counts))).sum())
        self._tail: np.ndarray | None = None  # log10 P(S >= s), s = 0..support, when computed exactly
        if 0 < self.support <= EXACT_SUPPORT:
            self._tail = self._exact_tail()

    def z(self, s: float) -> float:
        return (s - self.mean) / math.sqrt(self.var) if self.var > 0 else 0.0

    def log10_sf(self, s: int) -> float:
        """log10 P(S >= s)."""
        if s <= 0:
            return 0.0
        if s > self.support:
            return -math.inf
        if self._tail is not None and self._tail[s] >= math.log10(EXACT_FLOOR):
            return float(self._tail[s])
        # Beyond what the convolution resolves: the bound, never above the floor the exact tail stopped at
        # (so the p-value still falls as s grows).
        bound = self._chernoff(s)
        return bound if self._tail is None else min(math.log10(EXACT_FLOOR), bound)

    def _exact_tail(self) -> np.ndarray:
        pmf = np.ones(1, dtype=np.float64)
        for k, n in enumerate(self.counts.tolist()):
            if k == 0 or n == 0:
                continue
            b = _binomial_pmf(n * self.trials, self.rate)
            spread = np.zeros(k * (len(b) - 1) + 1, dtype=np.float64)
            spread[::k] = b  # k * Binomial: mass on multiples of k
            pmf = _convolve(pmf, spread)
        pmf = np.clip(pmf, 0.0, None)
        tail = np.cumsum(pmf[::-1])[::-1]
        with np.errstate(divide="ignore"):
            return np.minimum(0.0, np.log10(np.maximum(tail / tail[0], 1e-300)))

    def _chernoff(self, s: float) -> float:
        """log10 of min over lam >= 0 of exp(-lam s) E[exp(lam S)]: an upper bound on P(S >= s)."""
        ks = np.arange(len(self.counts), dtype=np.float64)
        live = self.counts > 0
        n, k = self.counts[live].astype(np.float64), ks[live]
        r, m = self.rate, self.trials

        def f(lam: float) -> float:  # log E[exp(lam S)] - lam s
            return float(m * (n * np.logaddexp(math.log1p(-r), math.log(r) + lam * k)).sum()) - lam * s

        def df(lam: float) -> float:
            e = 1.0 / (1.0 + (1.0 - r) / r * np.exp(-lam * k))
            return float(m * (n * k * e).sum()) - s

        if s <= self.mean:
            return 0.0
        lo, hi = 0.0, 1.0
        while df(hi) < 0 and hi < 1e4:
            lo, hi = hi, hi * 2.0
        for _ in range(80):  # the exponent is convex in lam: bisect its derivative
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if df(mid) < 0 else (lo, mid)
        return min(0.0, f(0.5 * (lo + hi)) / _LN10)


def _binomial_pmf(n: int, rate: float) -> np.ndarray:
    k = np.arange(n + 1, dtype=np.float64)
    # log C(n, k+1) = log C(n, k) + log(n - k) - log(k + 1): a running sum, as stats.binomial_log10_sf does
    log_c = np.concatenate(([0.0], np.cumsum(np.log(n - k[:-1]) - np.log(k[:-1] + 1.0))))
    return np.exp(log_c + k * math.log(rate) + (n - k) * math.log1p(-rate))


def _convolve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if min(len(a), len(b)) < 64:
        return np.convolve(a, b)
    size = len(a) + len(b) - 1
    nfft = 1 << (size - 1).bit_length()
    return np.fft.irfft(np.fft.rfft(a, nfft) * np.fft.rfft(b, nfft), nfft)[:size]


def collision_weights(logits: np.ndarray, temperature: float, top_k: int, top_p: float, min_p: float) -> np.ndarray:
    """1 - sum p^2 of the sampler's distribution (llama.cpp's top-k, top-p, min-p on the raw logits, then the
    temperature) for each row of next-token logits."""
    from distillshield.watermark.gumbel import truncated

    out = np.zeros(len(logits), dtype=np.float64)
    for i, row in enumerate(logits):
        cand = truncated(row, top_k, top_p, min_p)
        if cand.size < 2:
            continue
        z = row[cand].astype(np.float64) / temperature
        p = np.exp(z - z.max())
        p /= p.sum()
        out[i] = 1.0 - float((p * p).sum())
    return out


class ModelWeigher:
    """Weights from a GGUF model run through llama.cpp (default: the embedded model), at a nominal sampler
    temperature (the one the text was generated at is unknown to the detector; 1.0 ranks positions by how
    open they were, which is what the test needs)."""

    def __init__(
        self,
        model_path: str | Path | None = None,
        temperature: float = 1.0,
        top_k: int = DEFAULT_TOP_K,
        top_p: float = DEFAULT_TOP_P,
        min_p: float = DEFAULT_MIN_P,
        n_ctx: int = 1024,
        threads: int | None = None,
    ) -> None:
        from llama_cpp import Llama

        from distillshield.watermark.tokenizer import model_file

        path = model_file(model_path, "weighting")
        self.name = f"{path.name} (1 - sum p^2 at T={temperature:g})"
        self.temperature, self.top_k, self.top_p, self.min_p = temperature, top_k, top_p, min_p
        with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):
            # logits_all keeps an (n_ctx, vocabulary) float32 array: 200 MB at 1,024 positions for SmolLM2.
            self._llm: Any = Llama(
                model_path=str(path), n_ctx=n_ctx, logits_all=True, verbose=False,
                n_threads=threads or max(1, min(4, os.cpu_count() or 1)),
            )  # fmt: skip
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        llm = self._llm
        self._format = Jinja2ChatFormatter(
            llm.metadata["tokenizer.chat_template"],
            eos_token=llm._model.token_get_text(llm.token_eos()),
            bos_token=llm._model.token_get_text(llm.token_bos()),
            add_generation_prompt=True,
        )
        self._lock = threading.Lock()
        self._header = self._prefix(None)

    def _prefix(self, prompt: str | None) -> list[int]:
        """The tokens before a reply: the chat template's turn for the prompt (empty when unknown) and the
        assistant's header."""
        text = self._format(messages=[{"role": "user", "content": prompt or ""}]).prompt
        return list(self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def weights(self, ids: Sequence[int], prompt: str | None = None) -> np.ndarray:
        ids = [int(t) for t in ids]
        out = np.zeros(len(ids), dtype=np.float64)
        if not ids:
            return out
        with self._lock:
            prefix = self._prefix(prompt) if prompt is not None else self._header
            room = self._llm.n_ctx() - len(prefix)
            if room < 2:
                prefix, room = self._header, self._llm.n_ctx() - len(self._header)
            for start in range(0, len(ids), room):  # a text longer than the context: chunks, each after the prefix
                chunk = ids[start : start + room]
                self._llm.reset()
                self._llm.eval(prefix + chunk)
                logits = np.asarray(self._llm.scores[len(prefix) - 1 : len(prefix) + len(chunk) - 1])
                out[start : start + len(chunk)] = collision_weights(
                    logits, self.temperature, self.top_k, self.top_p, self.min_p
                )
        return out

    def close(self) -> None:
        self._llm.close()
