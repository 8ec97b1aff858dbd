"""The Persona interface: one small class per kind of client, with documented knobs.

A persona does two things: `make_accounts` creates its accounts (ids, org, tier, network identity,
creation time, cluster/campaign membership) and `requests(account)` yields that account's requests in
time order. The engine merges every account's stream by time and writes records. Each persona has:

- `name`, `kind` ("benign" | "attack"), `split` ("dev" | "heldout" | "fresh" | "fresh2" | "fresh3" |
  "fresh4": held-out and fresh personas are never used to tune anything; fresh, fresh2, fresh3 and fresh4
  ones are reported once, see docs/simulator.md);
- `Knobs`: a pydantic model (extra keys forbidden) whose field descriptions are the documentation;
- `signature`: one sentence saying what makes it recognisable, which tests check.

Randomness: every account gets its own seed (from the scenario seed, the persona entry and the
account's ordinal), so an account's traffic does not depend on how streams interleave. Personas use
`account.np` (numpy Generator) for vectorised timing and `account.r` (random.Random, seeded from the
same numbers) for per-request choices: it is ~20x faster than numpy for scalar draws in the hot loop.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from distillshield.simulate import netid, timing
from distillshield.simulate.sampling import pick

Kind = Literal["benign", "attack"]
Split = Literal["dev", "heldout", "fresh", "fresh2", "fresh3", "fresh4"]
Api = Literal["openai", "anthropic"]

# One request as a persona yields it: (ts, endpoint, body, ip, user_agent, sim) where `sim` is the
# per-record ground truth (end_user, harvest, conversation_id, turn, source...), or None.
Req = tuple[float, str, dict[str, Any], str, str, dict[str, Any] | None]

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
MESSAGES = "/v1/messages"


class Knobs(BaseModel):
    """Knobs every persona has. Subclasses add their own; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")

    requests_per_day: float = Field(
        20.0, gt=0, description="mean requests per account per simulated day (before per-account spread)"
    )


@dataclass(frozen=True)
class ModelPlan:
    """The model names the simulated API offers, and an optional new release during the scenario."""

    primary: str
    secondary: tuple[str, ...] = ()
    release_model: str | None = None
    release_at: float | None = None  # absolute Unix time

    def released(self, ts: float) -> bool:
        return self.release_at is not None and ts >= self.release_at


@dataclass(frozen=True)
class Limits:
    """The per-account limits the simulated provider enforces (what low-and-slow attackers stay under)."""

    rpm: int
    rpd: int


@dataclass
class Context:
    """What a persona knows about the scenario it runs in."""

    start: float
    end: float
    seed: int
    split: Split
    models: ModelPlan
    limits: Limits
    entry: int  # index of the persona entry in the scenario (distinct seeds per entry)

    @property
    def days(self) -> float:
        return (self.end - self.start) / timing.DAY


@dataclass(slots=True, eq=False)
class Account:
    """One simulated API account and the persona state it carries."""

    id: str
    org_id: str
    key_id: str
    persona: str
    kind: Kind
    tier: str
    verification: str
    created_at: float
    seed: int
    ips: list[str]
    user_agent: str
    api: Api = "openai"
    tz: float = 0.0
    activity: float = 1.0  # multiplier on the persona's requests_per_day
    campaign_id: str | None = None
    cluster_id: str | None = None
    end_user: str | None = None  # the one person behind the account, when the account is one person's
    end_users: int = 1  # distinct people behind the account
    state: dict[str, Any] = field(default_factory=dict)
    _np: np.random.Generator | None = None
    _r: random.Random | None = None

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.persona}"

    @property
    def np(self) -> np.random.Generator:
        if self._np is None:
            self._np = np.random.default_rng([self.seed, 1])
        return self._np

    @property
    def r(self) -> random.Random:
        if self._r is None:
            self._r = random.Random(self.seed * 2 + 1)
        return self._r

    def label_meta(self, split: Split) -> dict[str, Any]:
        """The ground truth every record of this account carries, identical on all of them."""
        return {
            "persona": self.persona,
            "campaign_id": self.campaign_id,
            "cluster_id": self.cluster_id,
            "split": split,
            "end_user": self.end_user,
            "end_users": self.end_users,
            "account_created_at": round(self.created_at, 3),
            "tier": self.tier,
            "verification": self.verification,
        }


class IdFactory:
    """Opaque, unique ids (acct_..., org_..., key_...): ids must not leak the persona to a detector."""

    def __init__(self, seed: int) -> None:
        self._rng = np.random.default_rng([seed, 0xA11D])
        self._seen: set[str] = set()

    def new(self, prefix: str, nbytes: int = 6) -> str:
        while True:
            v = f"{prefix}_{self._rng.bytes(nbytes).hex()}"
            if v not in self._seen:
                self._seen.add(v)
                return v


class LiveObserver(Protocol):
    """What an attack persona makes of the gateway's answers in live mode (simulate/live.py): one per
    account, shown every request of the account as sent and what came back, asked for a report at the end."""

    def observe(self, request: dict[str, Any], status: int | None, answer: Any, error: str | None) -> None:
        """`status` is None when no HTTP answer came (`error` says why); `answer` is the parsed JSON body."""

    def report(self) -> dict[str, Any]:
        """What the attack got, as JSON-ready values, with a one-line `summary`."""


class Persona:
    """Base class: subclasses set the class attributes, `Knobs`, and implement `requests`."""

    name: ClassVar[str]
    kind: ClassVar[Kind]
    split: ClassVar[Split] = "dev"
    Knobs: ClassVar[type[Knobs]] = Knobs
    signature: ClassVar[str] = ""
    # Defaults for make_accounts; personas override them.
    tiers: ClassVar[tuple[tuple[str, float], ...]] = (("standard", 0.7), ("pro", 0.3))
    verifications: ClassVar[tuple[tuple[str, float], ...]] = (("email", 0.8), ("phone", 0.2))
    apis: ClassVar[tuple[tuple[str, float], ...]] = (("openai", 0.7), ("anthropic", 0.3))
    activity_sigma: ClassVar[float] = 0.8  # spread of per-account volume (lognormal sigma)
    needs_release: ClassVar[bool] = False  # the scenario must declare models.release
    # Attackers pace themselves to stay under the per-account limits: at most this share of the rpm
    # limit (and never over the daily limit). None: the persona does not pace itself (honest clients).
    rpm_fill: ClassVar[float | None] = None
    account_age_days: ClassVar[tuple[float, float]] = (20.0, 700.0)
    # Live mode: an attack that acts on what the gateway served (not only sends requests) reports what it
    # got through an observer per account (logit_extraction's LogitReadout). None: nothing to report.
    live_observer: ClassVar[Callable[[], LiveObserver] | None] = None

    def __init__(self, knobs: Knobs, ctx: Context) -> None:
        self.k = knobs
        self.ctx = ctx

    # -- accounts ---------------------------------------------------------------------------------------

    def make_accounts(self, n: int, rng: np.random.Generator, ids: IdFactory) -> list[Account]:
        """Create `n` accounts. The default: independent accounts, each its own org, home IPs."""
        out = []
        for i in range(n):
            out.append(self.new_account(rng, ids, i))
        self.after_accounts(out, rng, ids)
        return out

    def new_account(self, rng: np.random.Generator, ids: IdFactory, i: int, org_id: str | None = None) -> Account:
        api = _pick(rng, self.apis)
        lo, hi = self.account_age_days
        age = float(np.exp(rng.uniform(np.log(lo), np.log(hi)))) * timing.DAY
        act = float(rng.lognormal(-(self.activity_sigma**2) / 2, self.activity_sigma))  # mean 1
        acct = Account(
            id=ids.new("acct"),
            org_id=org_id or ids.new("org"),
            key_id=ids.new("key"),
            persona=self.name,
            kind=self.kind,
            tier=_pick(rng, self.tiers),
            verification=_pick(rng, self.verifications),
            created_at=self.ctx.start - age,
            seed=int(rng.integers(0, 2**62)),
            ips=self.account_ips(rng),
            user_agent=self.account_user_agent(rng, api),
            api=api,  # type: ignore[arg-type]
            tz=timing.pick_timezone(rng),
            activity=act,
        )
        return acct

    def account_ips(self, rng: np.random.Generator) -> list[str]:
        """Home broadband plus sometimes a phone or office address."""
        return [netid.residential_ip(rng) for _ in range(1 + int(rng.random() < 0.5) + int(rng.random() < 0.2))]

    def account_user_agent(self, rng: np.random.Generator, api: str) -> str:
        return netid.user_agent(rng, netid.sdk_family(api, rng))

    def after_accounts(self, accounts: list[Account], rng: np.random.Generator, ids: IdFactory) -> None:
        """Hook for personas whose accounts share things (clusters, NATs)."""

    # -- traffic ----------------------------------------------------------------------------------------

    def requests(self, account: Account) -> Iterator[Req]:
        """Yield this account's requests with non-decreasing ts in [ctx.start, ctx.end)."""
        raise NotImplementedError

    def daily(self, account: Account) -> float:
        """This account's mean requests per day."""
        return self.k.requests_per_day * account.activity

    def max_daily(self) -> float | None:
        """The most requests per account per day this persona will send (None: no cap). Scenario
        validation refuses a volume above it, so the figure a user asks for is the one generated."""
        if self.rpm_fill is None:
            return None
        return min(float(self.ctx.limits.rpd), self.ctx.limits.rpm * self.rpm_fill * 1440)

    def min_gap(self) -> float:
        """Seconds between two requests of one account that keep it under its rpm share."""
        return 60.0 / (self.ctx.limits.rpm * (self.rpm_fill or 1.0))

    def active_days(self) -> float:
        """Days an account of this persona is active during the scenario."""
        return self.ctx.days

    def expected_total_mean(self) -> float:
        """Mean requests of an average account of this persona (planning figure)."""
        cap = self.max_daily()
        daily = self.k.requests_per_day
        return (daily if cap is None else min(daily, cap)) * self.active_days()

    def expected_total(self, account: Account) -> float:
        """Mean requests of this account over the scenario."""
        daily = self.daily(account)
        cap = self.max_daily()
        return (daily if cap is None else min(daily, cap)) * self.active_days()

    # -- helpers ----------------------------------------------------------------------------------------

    def machine_times(self, account: Account) -> list[float]:
        """Request times of a scripted client: spread over the whole scenario at the account's expected
        volume, never closer than its rpm share allows (`timing.spaced_times`)."""
        ctx = self.ctx
        return timing.spaced_times(
            account.np, ctx.start, ctx.end, self.expected_total(account), self.min_gap()
        ).tolist()

    @staticmethod
    def one_campaign(accounts: list[Account], ids: IdFactory) -> str:
        """Put every account of the persona in one new campaign; returns its id."""
        campaign = ids.new("camp")
        for a in accounts:
            a.campaign_id = campaign
        return campaign

    def model_for(self, account: Account, ts: float, adopt_new: float = 0.0) -> str:
        """Primary model, the account's preferred secondary, or (after a release, ramping up over a few
        days to a share of `adopt_new`) the new one."""
        m = self.ctx.models
        if adopt_new > 0 and m.release_model and m.released(ts):
            if account.r.random() < adoption(self.ctx, ts, adopt_new):
                return m.release_model
        pref = account.state.get("model")
        if pref is None:
            pref = m.primary
            if m.secondary and account.r.random() < 0.3:
                pref = pick(account.r, m.secondary)
            account.state["model"] = pref
        return pref

    def ip(self, account: Account) -> str:
        ips = account.ips
        return ips[0] if len(ips) == 1 or account.r.random() < 0.7 else pick(account.r, ips)


def _pick(rng: np.random.Generator, options: tuple[tuple[str, float], ...]) -> str:
    """A weighted choice among (name, weight) options."""
    x = rng.random() * sum(w for _, w in options)
    for name, w in options:
        x -= w
        if x < 0:
            return name
    return options[-1][0]


def adoption(ctx: Context, ts: float, final_share: float, ramp_days: float = 3.0) -> float:
    """Share of an honest population's traffic on the new model at `ts`: ramps up over a few days."""
    m = ctx.models
    if m.release_at is None or ts < m.release_at:
        return 0.0
    return final_share * min(1.0, (ts - m.release_at) / (ramp_days * timing.DAY))
