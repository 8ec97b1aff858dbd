"""Accounts created together: whether a group's accounts were born in a wave, against this deployment's own.

A campaign of many thin accounts needs the accounts first, and they are made in bulk: bought or registered
in a few bursts (hours apart) shortly before the campaign runs. Honest accounts mostly arrive one by one,
whenever each person or team signs up; where honest accounts do arrive together (a course's enrolment
week, a company's roll-out), the group they form is judged on what it asks as before (detect/campaign.py).

The evidence is a count a person can check: "83 of the group's 229 accounts were created within 6 hours of
one another (2026-10-14 09:10 UTC); this service's other accounts would put 0.3 of 229 in those 6 hours".
The null is the deployment's own creation history: were the group's members drawn from this service's
accounts at random, how many would fall in that window? The expected count comes from the other accounts
created in the window, or, where that is none or few, from their rate over the surrounding month (so a
window that happens to hold no other account does not make any pair of accounts a wave), and never less
than one account's worth. The tail probability of the observed count (binomial) is corrected for every
window tried (each member's creation time as a start, at each width), so a group of honest accounts that
each signed up on their own day does not pass however large it is.

A deployment whose accounts were all made at once (imported by a script) has no waves to find: the other
accounts fill the same window and the expectation is as large as the count. A log without creation times
(`account_created_at`, written by the gateway from its accounts table) gives no cohort evidence at all.

No labels and no training: the level below is a significance (a corrected tail probability), not a fitted
weight.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from scipy.special import bdtrc

HOUR = 3600.0
WINDOWS_S = (1 * HOUR, 6 * HOUR, 24 * HOUR, 7 * 24 * HOUR)  # the wave widths tried
CONTEXT_S = 30 * 24 * HOUR  # the surrounding span whose creation rate sets a window's expectation
MIN_KNOWN_SHARE = 0.8  # members with a known creation time, at least this share of the group
MIN_OTHERS = 30  # other accounts with a known creation time: fewer is no history to compare with
MIN_TOGETHER = 5  # a wave holds at least this many members
COHORT_LOGP = 8.0  # -log10 of the corrected tail probability: how improbable the wave is for this deployment


@dataclass(frozen=True, slots=True)
class Cohort:
    """The largest wave among a group's members, and how improbable it is for this deployment."""

    members: int  # members with a known creation time
    together: int  # of them, created within `window_s` of the first of them
    window_s: float
    start: float  # when the wave's first member was created (Unix seconds)
    expected: float  # members a random draw of this deployment's other accounts would put in that window
    logp: float  # -log10 of the tail probability, corrected for the windows tried

    @property
    def significant(self) -> bool:
        return self.together >= MIN_TOGETHER and self.logp >= COHORT_LOGP

    def describe(self) -> str:
        hours = self.window_s / HOUR
        width = f"{hours:.0f} hour{'s' if hours != 1 else ''}" if hours < 48 else f"{hours / 24:.0f} days"
        when = datetime.fromtimestamp(self.start, UTC).strftime("%Y-%m-%d %H:%M UTC")
        return (
            f"{self.together} of the group's {self.members} accounts were created within {width} of one another "
            f"(from {when}); this service's other accounts would put {self.expected:.1f} of {self.members} there"
        )


def creation_cohort(created: np.ndarray, others: np.ndarray, group_size: int | None = None) -> Cohort | None:
    """The most improbable wave among `created` (the members' creation times, 0 = unknown) against `others`
    (every other account's creation time, 0 = unknown); None where there is too little to judge: too few
    members or other accounts with a known creation time. `group_size`: the group's size where `created` holds
    only the members still to be placed (born_in_waves); then no share of known times is required."""
    size = group_size if group_size is not None else len(created)
    mine = np.sort(created[created > 0].astype(np.float64))
    rest = np.sort(others[others > 0].astype(np.float64))
    if group_size is None and len(mine) < MIN_KNOWN_SHARE * size:
        return None
    if len(mine) < MIN_TOGETHER or len(rest) < MIN_OTHERS:
        return None
    g, n = len(mine), len(rest)
    tries = g * len(WINDOWS_S)
    best: Cohort | None = None
    for w in WINDOWS_S:
        # Each member's creation time opens a window [t, t + w]: how many members fall in it, and how many of
        # the other accounts (in it, and over the surrounding month, scaled to the window).
        together = np.searchsorted(mine, mine + w, side="right") - np.arange(g)
        in_window = np.searchsorted(rest, mine + w, side="right") - np.searchsorted(rest, mine, side="left")
        half = max(CONTEXT_S, 8 * w) / 2
        around = np.searchsorted(rest, mine + w / 2 + half, side="right") - np.searchsorted(
            rest, mine + w / 2 - half, side="left"
        )
        rate = np.maximum(np.maximum(in_window, around * w / (2 * half)), 1.0)
        q = np.minimum(rate / n, 1.0)
        tail = bdtrc(together - 1, g, q)  # P(X >= together), X ~ Binomial(g, q), for every window at once
        i = int(np.argmin(tail))
        k = int(together[i])
        logp = max(min(-math.log10(max(float(tail[i]), 1e-300)), 300.0) - math.log10(tries), 0.0)
        c = Cohort(g, k, w, float(mine[i]), float(g * q[i]), logp)
        if best is None or c.logp > best.logp:
            best = c
    return best


def born_in_waves(
    created: np.ndarray, others: np.ndarray, first: Cohort | None = None
) -> tuple[np.ndarray, list[Cohort]]:
    """Which of `created` (the members' creation times, 0 = unknown) were created in a wave, and the waves: the
    most improbable wave first, then the most improbable among the members left, while one is significant. A
    campaign's evidence is its waves, so a member created on a day of its own (an honest account that asks alike
    and was grouped with it) does not share in it. `first`: that most improbable wave, when the caller has
    judged it already (`creation_cohort(created, others)`), so it is not looked for twice."""
    mask = np.zeros(len(created), dtype=bool)
    found: list[Cohort] = []
    size = len(created)
    while True:
        if first is not None:
            c, first = first, None
        else:
            c = creation_cohort(np.where(mask, 0.0, created), others, group_size=size)
        if c is None or not c.significant:
            return mask, found
        found.append(c)
        mask |= (created > 0) & (created >= c.start) & (created <= c.start + c.window_s)
