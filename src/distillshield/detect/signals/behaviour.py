"""Behaviour: how an account uses the API, independent of what it asks.

Volume and ramp speed, inter-arrival regularity, diurnal shape, single-turn ratio, sweeps over
max_tokens / temperature / n, logprobs and logit_bias requests, pivots to a newly released model, and
change against the account's own early baseline (the feature that held up on real traffic where
absolute thresholds did not: see shared/threat-model.md).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from distillshield.detect.base import SignalScore
from distillshield.detect.sketch import DistinctCounter, Welford

if TYPE_CHECKING:
    from distillshield.detect.corpus import Obs
    from distillshield.detect.engine import Context

HOUR = 3600.0
DAY = 86400.0
BASELINE_AT = 64  # the account's own baseline: its first this-many requests
EWMA = 1 / 64  # recent behaviour: exponentially weighted over about the last 64 requests
PIVOT_WINDOW = DAY  # a pivot is a move to a new model within this long of its first appearance
MAX_DISTINCT = 16
SWEEP_MAX_TOKENS = 4  # a logit read needs one output token; answers are not what such a request is for


def _entropy(counts: list[int]) -> float:
    total = sum(counts)
    if total <= 0:
        return 0.0
    h = -sum(c / total * math.log(c / total) for c in counts if c)
    return h / math.log(len(counts))


class BehaviourState:
    __slots__ = (
        "n",
        "first_ts",
        "last_ts",
        "dt",
        "fast",
        "hours",
        "days",
        "hour_bucket",
        "hour_count",
        "peak_hour",
        "single",
        "max_tokens",
        "temps",
        "n_multi",
        "logprobs",
        "logit_bias",
        "tools",
        "models",
        "errors",
        "chars",
        "base",
        "ewma_cot",
        "ewma_ldt",
        "ewma_tpl",
        "last_head",
        "end_users",
        "logit_sweeps",
        "bias_sets",
    )

    def __init__(self) -> None:
        self.n = 0
        self.first_ts = math.inf
        self.last_ts = -math.inf
        self.dt = Welford()  # of log(seconds between requests)
        self.fast = 0  # requests < 2 s after the previous one
        self.hours = [0] * 24
        self.days: dict[int, int] = {}
        self.hour_bucket = -1
        self.hour_count = 0
        self.peak_hour = 0
        self.single = 0
        self.max_tokens: set[float] = set()
        self.temps: set[float] = set()
        self.n_multi = 0
        self.logprobs = 0
        self.logit_bias = 0
        self.tools = 0
        self.models: dict[str, list[float]] = {}  # model -> [requests, first ts]
        self.errors = 0
        self.chars = Welford()
        self.base: tuple[float, float, float] | None = None  # (cot, log dt, same-frame) over the first requests
        self.ewma_cot = 0.0
        self.ewma_ldt = 0.0
        self.ewma_tpl = 0.0
        self.last_head = 0
        self.end_users = DistinctCounter(64)  # an app or reseller relays many people; a harvester is one
        self.logit_sweeps = 0  # requests combining logit_bias with logprobs at a few output tokens (signals/logits.py)
        self.bias_sets = DistinctCounter(64)  # distinct token sets those requests biased


def param_sweep(st: BehaviourState) -> float:
    """How many max_tokens and temperature values the account has used (log scale)."""
    return math.log1p(len(st.max_tokens)) + math.log1p(len(st.temps))


class Behaviour:
    """Volume, timing, parameters and models of one account."""

    name = "behaviour"

    def fit(self, reference: Any) -> Behaviour:
        return self

    def new_state(self) -> BehaviourState:
        return BehaviourState()

    def update(self, st: BehaviourState, obs: Obs) -> None:
        ts = obs.ts
        st.n += 1
        ldt = None
        if st.n > 1:
            dt = max(ts - st.last_ts, 0.0)
            ldt = math.log(dt + 0.5)
            st.dt.add(ldt)
            if dt < 2.0:
                st.fast += 1
        st.first_ts = min(st.first_ts, ts)
        st.last_ts = max(st.last_ts, ts)
        st.hours[int(ts // HOUR) % 24] += 1
        day = int(ts // DAY)
        if day in st.days or len(st.days) < 400:
            st.days[day] = st.days.get(day, 0) + 1
        hb = int(ts // HOUR)
        if hb != st.hour_bucket:
            st.hour_bucket, st.hour_count = hb, 0
        st.hour_count += 1
        st.peak_hour = max(st.peak_hour, st.hour_count)
        if obs.user_turns <= 1 and obs.turns <= 1:
            st.single += 1
        if obs.max_tokens is not None and len(st.max_tokens) < MAX_DISTINCT:
            st.max_tokens.add(obs.max_tokens)
        if obs.temperature is not None and len(st.temps) < MAX_DISTINCT:
            st.temps.add(round(obs.temperature, 3))
        st.n_multi += obs.n > 1
        st.logprobs += obs.logprobs
        st.logit_bias += obs.logit_bias
        st.tools += obs.tools
        m = st.models.get(obs.model)
        if m is None:
            if len(st.models) < 8:
                st.models[obs.model] = [1, ts]
        else:
            m[0] += 1
        st.errors += obs.status == 429
        if obs.end_user:
            st.end_users.add(obs.end_user)
        if obs.bias_set and obs.logprobs and (obs.max_tokens is None or obs.max_tokens <= SWEEP_MAX_TOKENS):
            st.logit_sweeps += 1
            st.bias_sets.add(obs.bias_set)
        st.chars.add(math.log1p(obs.user_chars))
        same = 1.0 if obs.head and obs.head == st.last_head else 0.0
        st.last_head = obs.head
        if st.n == 1:
            st.ewma_tpl = same
        else:
            st.ewma_tpl += EWMA * (same - st.ewma_tpl)
        if obs.cot >= 0:  # classified requests only (see corpus.sampled): a sparser, unbiased sample
            st.ewma_cot = obs.cot if st.n == 1 else st.ewma_cot + 8 * EWMA * (obs.cot - st.ewma_cot)
        if ldt is not None:
            st.ewma_ldt = ldt if st.n == 2 else st.ewma_ldt + EWMA * (ldt - st.ewma_ldt)
        if st.n == BASELINE_AT:
            st.base = (st.ewma_cot, st.ewma_ldt, st.ewma_tpl)

    def _pivot(self, st: BehaviourState, ctx: Context) -> float:
        """Share of the account's requests on a newly released model within a day of its first appearance."""
        best = 0.0
        for model, first in ctx.population.new_models().items():
            if first < st.first_ts:
                continue  # the account arrived after the release: nothing to pivot from
            mine = st.models.get(model)
            if mine is None or mine[1] - first > PIVOT_WINDOW:
                continue
            span = max(st.last_ts - first, HOUR)
            share = min(1.0, mine[0] / max(st.n * min(1.0, span / max(st.last_ts - st.first_ts, HOUR)), 1.0))
            best = max(best, share)
        return best

    def score(self, st: BehaviourState, ctx: Context) -> SignalScore:
        n = max(st.n, 1)
        span = max(st.last_ts - st.first_ts, 60.0)
        active_days = max(len(st.days), 1)
        per_day = n / active_days
        day_counts = list(st.days.values())
        ramp = math.log(max(day_counts) / (sum(day_counts) / len(day_counts))) if day_counts else 0.0
        dt_cv = st.dt.std if st.dt.n > 2 else 1.0
        diurnal = _entropy(st.hours) if n >= 24 else 0.5
        drift = 0.0
        if st.base is not None and st.n >= 2 * BASELINE_AT:
            bc, bl, bt = st.base
            drift = max(abs(st.ewma_cot - bc), min(abs(st.ewma_ldt - bl) / 3.0, 1.0), abs(st.ewma_tpl - bt))
        pivot = self._pivot(st, ctx)
        f = {
            "log_volume": math.log1p(st.n),
            "log_per_day": math.log1p(per_day),
            "log_peak_hour": math.log1p(st.peak_hour),
            "ramp": ramp,
            "dt_cv": dt_cv,
            "log_dt": st.dt.mean if st.dt.n else math.log(span),
            "fast_share": st.fast / n,
            "diurnal_entropy": diurnal,
            "single_turn": st.single / n,
            "param_sweep": param_sweep(st),
            "n_multi": st.n_multi / n,
            "logprobs": (st.logprobs + st.logit_bias) / n,
            "tools": st.tools / n,
            "rate_limited": st.errors / n,
            "log_chars": st.chars.mean,
            "drift": drift,
            "pivot": pivot,
            "log_end_users": math.log1p(st.end_users.estimate()),
        }
        notes = []
        if per_day >= 200:
            notes.append(f"{per_day:.0f} requests per active day")
        if diurnal > 0.9 and n >= 100:
            notes.append("active around the clock")
        if dt_cv < 0.5 and n >= 50:
            notes.append("machine-regular timing")
        if f["logprobs"] > 0.2:
            notes.append(f"logprobs/logit_bias on {f['logprobs']:.0%} of requests")
        if f["param_sweep"] > 3:
            notes.append(f"sweeps {len(st.max_tokens)} max_tokens and {len(st.temps)} temperature values")
        if pivot > 0.3:
            notes.append(f"moved {pivot:.0%} of its traffic to a newly released model within a day")
        if drift > 0.4:
            notes.append("changed behaviour against its own first requests")
        if f["single_turn"] > 0.95 and n >= 50:
            notes.append("single-turn only")
        score = min(1.0, 0.25 * len(notes))
        detail = "; ".join(notes) or f"{st.n} requests, {per_day:.0f}/active day, nothing unusual"
        return SignalScore(self.name, score, detail, f)
