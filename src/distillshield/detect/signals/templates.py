"""Template reuse: how much of an account's traffic runs through a few prompt skeletons, and whether
other accounts use the same ones.

Within one account, a template is normal (a batch pipeline, a benchmark run); what distillation adds is
the same template across many unrelated accounts, which this signal measures against the population
(`ctx.population`), and near-duplicates that survive light paraphrase (MinHash LSH families).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from distillshield.detect.base import SignalScore
from distillshield.detect.sketch import DistinctCounter, TopK

if TYPE_CHECKING:
    from distillshield.detect.corpus import Obs
    from distillshield.detect.engine import Context

SHARED_MIN_ACCOUNTS = 3  # a frame used by at least this many accounts is a shared template
SHARED_MIN_SHARE = 0.05  # ...when it carries at least this share of the account's traffic
VARIETY_MIN_REQUESTS = 64  # requests before an account's prompt variety says anything (one content window's worth)


class TemplateState:
    __slots__ = ("n", "framed", "heads", "tails", "families", "sampled", "distinct", "prompts", "prompted", "variety")

    def __init__(self) -> None:
        self.n = 0
        self.framed = 0
        # Frame heavy hitters; each entry's payload is [example text, first prompt hash, payload varied?]:
        # a frame is a *template* only once the account used it around different content.
        self.heads = TopK(12)
        self.tails = TopK(12)
        self.families = TopK(8)
        self.prompts = TopK(8)  # exact prompts: the same text sent again
        self.sampled = 0
        self.distinct = DistinctCounter(128)
        # Distinct prompts as sent (not skeletons: a generated bank that varies only its numbers is many prompts).
        self.prompted = 0
        self.variety = DistinctCounter(64)


def _note(topk: TopK, key: int, prompt: int, text: str | None) -> None:
    topk.add(key, None)
    ex = topk.examples.get(key)
    if ex is None:
        topk.examples[key] = [text, prompt, False]
    elif not ex[2] and ex[1] != prompt:
        ex[2] = True
        if ex[0] is None:
            ex[0] = text


def prompt_variety(st: TemplateState) -> float:
    """Distinct prompts per request the account sent (1.0 until it has sent VARIETY_MIN_REQUESTS): a harvest pays
    for new prompts, while a suite run on every commit, an agent re-sending its task at each step of its tool loop or
    a support bot whose customers ask the same few questions sends the same ones again and again."""
    if st.prompted < VARIETY_MIN_REQUESTS:
        return 1.0
    return min(st.variety.estimate() / st.prompted, 1.0)


def is_template(topk: TopK, key: int) -> bool:
    ex = topk.examples.get(key)
    return bool(ex and ex[2])


def example(topk: TopK, key: int) -> str | None:
    ex = topk.examples.get(key)
    return ex[0] if ex else None


class TemplateReuse:
    """Share of traffic in high-reuse prompt skeletons, within the account and across accounts."""

    name = "templates"

    def fit(self, reference: Any) -> TemplateReuse:
        return self

    def new_state(self) -> TemplateState:
        return TemplateState()

    def update(self, st: TemplateState, obs: Obs) -> None:
        st.n += 1
        if obs.skel_hash:
            st.distinct.add(obs.skel_hash)
        if obs.raw_hash:
            st.prompts.add(obs.raw_hash)
            st.prompted += 1
            st.variety.add(obs.raw_hash)
        if obs.head:
            st.framed += 1
            text = obs.text[:90] if obs.text else None
            _note(st.heads, obs.head, obs.raw_hash, text)
            _note(st.tails, obs.tail, obs.raw_hash, text)

    def add_family(self, st: TemplateState, family: int) -> None:
        """A sampled request's near-duplicate family (assigned by the engine's MinHash LSH)."""
        st.sampled += 1
        st.families.add(family)

    def score(self, st: TemplateState, ctx: Context) -> SignalScore:
        n = max(st.n, 1)
        pop = ctx.population
        top_share = 0.0
        shared_share = 0.0
        shared_accounts = 1
        shared_example = None
        for topk in (st.heads, st.tails):
            items = [(h, c) for h, c in topk.top() if is_template(topk, h)]
            if items:
                top_share = max(top_share, items[0][1] / n)
            s = 0.0
            for h, c in items:
                share = c / n
                if share < SHARED_MIN_SHARE:
                    continue
                k = pop.frame_accounts(h)
                if k >= SHARED_MIN_ACCOUNTS and not pop.is_boilerplate(k):
                    s += share
                    if k > shared_accounts:
                        shared_accounts, shared_example = k, example(topk, h) or shared_example
            shared_share = max(shared_share, min(s, 1.0))
        dup_share = 0.0
        repeat_share = 0.0
        for h, c in st.prompts.top():
            if c >= 2:
                repeat_share += c / n
            k = pop.prompt_accounts(h)
            if k >= SHARED_MIN_ACCOUNTS and not pop.is_boilerplate(k):
                dup_share += c / n
        fam_share = 0.0
        fam_accounts = 1
        if st.sampled:
            for fid, c in st.families.top():
                k = pop.family_accounts(fid)
                if k >= SHARED_MIN_ACCOUNTS and not pop.is_boilerplate(k) and c / st.sampled >= SHARED_MIN_SHARE:
                    fam_share += c / st.sampled
                    fam_accounts = max(fam_accounts, k)
        fam_share = min(fam_share, 1.0)
        distinct_ratio = min(st.distinct.estimate() / n, 1.0)
        cross = max(shared_share, fam_share)
        k_max = max(shared_accounts, fam_accounts)
        score = cross * min(1.0, math.log(k_max) / math.log(20)) if k_max > 1 else 0.0
        if cross >= 0.05:
            detail = (
                f"{cross:.0%} of {st.n} requests use prompt templates shared with up to {k_max - 1} other "
                f"accounts" + (f", e.g. {shared_example!r}" if shared_example else "")
            )
        elif top_share >= 0.3:
            detail = f"{top_share:.0%} of {st.n} requests reuse one prompt frame (used by this account only)"
        else:
            detail = f"no dominant template ({top_share:.0%} in the most-used frame)"
        return SignalScore(
            self.name,
            score,
            detail,
            {
                "tpl_top_share": top_share,
                "tpl_distinct_ratio": distinct_ratio,
                "tpl_shared_share": shared_share,
                "tpl_family_share": fam_share,
                "tpl_shared_accounts": math.log1p(k_max - 1),
                "tpl_dup_shared": min(dup_share, 1.0),
                "tpl_repeat": min(repeat_share, 1.0),
            },
        )
