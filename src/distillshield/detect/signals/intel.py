"""Imported threat intelligence: an account whose requests match another provider's indicators.

The evidence is external: a producer (another lab, a cloud provider) mapped a distillation campaign and
shared its infrastructure and templates (intel/, docs/intel.md). A match needs no history here, so it
flags a new account on its first matching request, whatever the thin-evidence rule says of its own
evidence; on its own it makes an account *suspicious*, never *extraction* (acting harder on another
provider's word is the policy's choice: the `intel_match` condition).

score = the producer's confidence x how specific the kind of match is (intel.matcher.KIND_WEIGHT), of the
account's strongest match. An indicator revoked or expired since the match no longer counts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from distillshield.detect.base import SignalScore
from distillshield.detect.scoring import RISK_EXTRACTION, RISK_SUSPICIOUS

if TYPE_CHECKING:
    from distillshield.detect.corpus import Obs
    from distillshield.intel.matcher import IntelMatcher

TRACKED = 16  # indicators remembered per account (the first ones matched)
MIN_SCORE = 0.2  # a weaker match (a low-confidence producer) is shown, and flags nothing


def intel_risk(score: float) -> float:
    """The risk an indicator match gives on its own: the suspicious band, below extraction."""
    if score < MIN_SCORE:
        return 0.0
    return RISK_SUSPICIOUS + (RISK_EXTRACTION - RISK_SUSPICIOUS) * 0.98 * min(score, 1.0)


class IntelState:
    __slots__ = ("n", "hits")

    def __init__(self) -> None:
        self.n = 0
        self.hits: dict[str, list[Any]] = {}  # indicator id -> [requests matched, kind, what matched]


class IntelMatch:
    """Requests matching imported indicators (IP range, user agent, template fingerprint)."""

    name = "intel"

    def __init__(self) -> None:
        self.matcher: IntelMatcher | None = None

    def fit(self, reference: IntelMatcher | None) -> IntelMatch:
        """Use these indicators (None: switch the signal off); states keep their matches, and a match whose
        indicator is no longer loaded (revoked, expired) stops counting at the next score."""
        self.matcher = reference if reference is not None and len(reference) else None
        return self

    def new_state(self) -> IntelState:
        return IntelState()

    def update(self, st: IntelState, obs: Obs) -> None:
        st.n += 1
        if self.matcher is None:
            return
        for hit in self.matcher.match_obs(obs):
            entry = st.hits.get(hit.indicator.id)
            if entry is not None:
                entry[0] += 1
            elif len(st.hits) < TRACKED:
                st.hits[hit.indicator.id] = [1, hit.kind, hit.value]

    def score(self, st: IntelState, ctx: Any) -> SignalScore:
        from distillshield.intel.matcher import Hit

        best: tuple[float, Hit, int] | None = None
        live = 0
        by_id = self.matcher.by_id if self.matcher is not None else {}
        for ind_id, entry in st.hits.items():
            ind = by_id.get(ind_id)
            if ind is None:
                continue  # revoked or expired since
            live += 1
            hit = Hit(ind, entry[1], entry[2])
            if best is None or hit.strength > best[0]:
                best = (hit.strength, hit, entry[0])
        if best is None:
            return SignalScore(self.name, 0.0, "matches no imported indicator", {"intel_match": 0.0})
        strength, hit, count = best
        detail = f"{hit.describe()} in {count} of {st.n} requests"
        if live > 1:
            detail += f"; {live - 1} more indicator{'s' if live > 2 else ''} matched"
        return SignalScore(self.name, strength, detail, {"intel_match": strength})
