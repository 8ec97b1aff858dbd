"""When simulated clients send requests: human day/week rhythms, machine-regular schedules, bursts.

Everything here is vectorised numpy on one account's Generator, so a week of one account's arrival
times costs microseconds; personas turn the arrays into Python lists once and walk them.
"""

from __future__ import annotations

import numpy as np

DAY = 86_400.0
HOUR = 3_600.0

# Relative activity by local hour (0..23). Consumers: low at night, a late-morning and an evening peak.
CONSUMER_HOURLY = np.array(
    [
        0.25,
        0.15,
        0.08,
        0.05,
        0.04,
        0.05,
        0.12,
        0.30,
        0.55,
        0.75,
        0.90,
        0.95,
        0.85,
        0.85,
        0.90,
        0.90,
        0.85,
        0.80,
        0.80,
        0.90,
        1.00,
        0.95,
        0.75,
        0.45,
    ]
)
# Office work: 9-18 with a lunch dip, a little evening work.
WORK_HOURLY = np.array(
    [
        0.02,
        0.01,
        0.01,
        0.01,
        0.01,
        0.02,
        0.05,
        0.15,
        0.55,
        0.95,
        1.00,
        0.95,
        0.60,
        0.85,
        1.00,
        0.95,
        0.90,
        0.70,
        0.35,
        0.20,
        0.15,
        0.12,
        0.08,
        0.04,
    ]
)
FLAT_HOURLY = np.ones(24)
HOURLY = {"consumer": CONSUMER_HOURLY, "work": WORK_HOURLY, "flat": FLAT_HOURLY}
# Monday = 0. Consumers use weekends a bit less; offices almost not at all.
WEEKDAY = {
    "consumer": np.array([1.0, 1.0, 1.0, 1.0, 0.95, 0.8, 0.8]),
    "work": np.array([1.0, 1.0, 1.0, 1.0, 0.9, 0.12, 0.08]),
    "flat": np.ones(7),
}

# Where simulated people live (UTC offset in hours) and how common each is.
TIMEZONES = np.array([-8.0, -7.0, -6.0, -5.0, -3.0, 0.0, 1.0, 2.0, 3.0, 5.5, 7.0, 8.0, 9.0, 10.0])
TZ_WEIGHTS = np.array([0.12, 0.04, 0.06, 0.16, 0.05, 0.08, 0.16, 0.06, 0.03, 0.08, 0.03, 0.06, 0.04, 0.03])
TZ_WEIGHTS = TZ_WEIGHTS / TZ_WEIGHTS.sum()


def pick_timezone(rng: np.random.Generator) -> float:
    return float(rng.choice(TIMEZONES, p=TZ_WEIGHTS))


def _weights(t: np.ndarray, tz_offset_h: float, profile: str) -> np.ndarray:
    local = t + tz_offset_h * HOUR
    hour = ((local // HOUR) % 24).astype(np.int64)
    dow = ((local // DAY + 3) % 7).astype(np.int64)  # 1970-01-01 was a Thursday; Monday = 0
    return HOURLY[profile][hour] * WEEKDAY[profile][dow]


def activity_weight(t: np.ndarray, tz_offset_h: float, profile: str) -> np.ndarray:
    """Relative activity (0..1) at Unix times `t` for a client in `tz_offset_h` with this profile."""
    return _weights(np.asarray(t, dtype=np.float64), tz_offset_h, profile)


def diurnal_times(
    rng: np.random.Generator, start: float, end: float, expected: float, tz_offset_h: float, profile: str
) -> np.ndarray:
    """Sorted arrival times in [start, end) from a Poisson process modulated by a day/week profile.

    `expected` is the mean number of arrivals over the whole span (thinning keeps the mean exact: the
    candidate rate is scaled by the profile's mean weight over the span).
    """
    if expected <= 0 or end <= start:
        return np.empty(0)
    grid = np.arange(start + HOUR / 2, end, HOUR)
    mean_w = float(_weights(grid, tz_offset_h, profile).mean()) if grid.size else 1.0
    w_max = float(HOURLY[profile].max() * WEEKDAY[profile].max())
    n = rng.poisson(expected * w_max / max(mean_w, 1e-6))
    t = rng.uniform(start, end, n)
    keep = rng.random(n) * w_max < _weights(t, tz_offset_h, profile)
    return np.sort(t[keep])


def regular_times(rng: np.random.Generator, start: float, end: float, interval: float, jitter: float) -> np.ndarray:
    """A machine schedule: one arrival every `interval` seconds, each moved by at most `jitter` x interval.

    The phase is random, so two pipelines with the same interval do not fire in lockstep.
    """
    if interval <= 0 or end <= start:
        return np.empty(0)
    base = np.arange(start + rng.uniform(0, interval), end, interval)
    t = base + rng.uniform(-jitter, jitter, base.size) * interval
    t = t[(t >= start) & (t < end)]
    return np.sort(t)


def lane_times(
    rng: np.random.Generator, t0: float, n: int, lanes: int, median_s: float, sigma: float = 0.5
) -> np.ndarray:
    """Send times of `n` requests issued by `lanes` parallel workers that each wait for the previous answer.

    Service times are lognormal around `median_s` (the model's latency for that kind of request).
    """
    if n <= 0:
        return np.empty(0)
    lanes = max(1, min(lanes, n))
    per_lane = -(-n // lanes)
    service = rng.lognormal(np.log(median_s), sigma, (lanes, per_lane))
    starts = t0 + np.cumsum(service, axis=1) - service + rng.uniform(0, 0.2, (lanes, 1))
    return np.sort(starts.ravel()[:n])


def spaced_times(rng: np.random.Generator, start: float, end: float, expected: float, min_gap: float) -> np.ndarray:
    """Low-and-slow arrivals: about `expected` times in [start, end), never closer than `min_gap` seconds.

    Gaps are min_gap plus an exponential with the remaining mean, so the stream looks random yet can
    never exceed 60/min_gap requests in any minute.
    """
    if expected <= 0 or end <= start:
        return np.empty(0)
    span = end - start
    mean_gap = span / expected
    extra = max(mean_gap - min_gap, 0.0)
    n = int(expected * 1.3) + 8
    gaps = min_gap + rng.exponential(extra, n) if extra > 0 else np.full(n, min_gap)
    t = start + rng.uniform(0, mean_gap) + np.cumsum(gaps) - gaps[0]
    return t[t < end]
