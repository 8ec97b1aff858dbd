"""The policy engine: one request's caller and risk in, a Decision out, in a few microseconds.

`compile_policy` turns a validated PolicyDoc into plain tuples of predicates once, at load time, so
`PolicyEngine.decide` is a handful of dictionary lookups and comparisons (the hot-path budget is
50 µs; benchmarks/policy_latency.py measures it). Order of evaluation:

1. an account with no verdict, no review state and no standing block, whose request matched no imported
   threat-intelligence indicator, under a policy whose rules cannot match such an account, is allowed at
   once (the common case: honest traffic);
2. allowlists (the policy file's, and review decisions 'allowlist') allow;
3. a review 'clear' allows, as long as detection reports no worse verdict than the one cleared;
4. standing blocks (a block decision sticks to its key, account, org or cluster until a reviewer
   clears it) block;
5. the rules, in order (rules.py);
6. countermeasures an analyst pinned on the account by hand (store/pins.py) are merged into whatever the
   steps above decided, the stricter value winning: a pin throttles, degrades or watermarks an allowlisted or
   cleared account too, and is enforced in shadow mode (it is a person's deliberate act, not a rule on trial).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from distillshield.contracts import VERDICT_RANK, AccountRisk, IntelHit
from distillshield.gateway.policy.rules import (
    SEVERITY,
    TERMINAL,
    BlockParams,
    ChallengeParams,
    DegradeParams,
    PolicyDoc,
    Range,
    Rule,
    ThrottleParams,
    WatermarkParams,
)
from distillshield.store.database import VERIFICATION_LEVELS, KeyContext

Mode = str  # enforce | shadow
_REASONING_ORDER = {"keep": 0, "summarize": 1, "strip": 2}


@dataclass(frozen=True, slots=True)
class Effects:
    """What a decision enforces; merged over every matching rule (the strictest value wins)."""

    throttle: ThrottleParams | None = None
    degrade: DegradeParams | None = None
    watermark: WatermarkParams | None = None
    challenge: ChallengeParams | None = None
    block: BlockParams | None = None

    def merged(self, action: str, params: Any) -> Effects:
        if action == "throttle":
            t = self.throttle
            if t is not None:
                params = ThrottleParams(
                    factor=min(t.factor, params.factor),
                    scope="cluster" if "cluster" in (t.scope, params.scope) else "account",
                    cluster_limits=t.cluster_limits or params.cluster_limits,
                )
            return _replace(self, throttle=params)
        if action == "degrade":
            d = self.degrade
            if d is not None:
                params = DegradeParams(
                    reasoning=max(d.reasoning, params.reasoning, key=_REASONING_ORDER.__getitem__),
                    sections=d.sections or params.sections,
                    summary_chars=min(d.summary_chars, params.summary_chars),
                    open_at_start=d.open_at_start or params.open_at_start,
                    drop_logprobs=d.drop_logprobs or params.drop_logprobs,
                    max_tokens=_min(d.max_tokens, params.max_tokens),
                    n=_min(d.n, params.n),
                )
            return _replace(self, degrade=params)
        if action == "watermark":
            w = self.watermark
            if w is not None:
                params = WatermarkParams(
                    mode="strong" if "strong" in (w.mode, params.mode) else "on",
                    key="cluster" if "cluster" in (w.key, params.key) else "account",
                )
            return _replace(self, watermark=params)
        if action == "challenge":
            return _replace(self, challenge=params)
        if action == "block":
            return _replace(self, block=params)
        return self


def _replace(e: Effects, **kw: Any) -> Effects:
    return Effects(**{"throttle": e.throttle, "degrade": e.degrade, "watermark": e.watermark,
                      "challenge": e.challenge, "block": e.block, **kw})  # fmt: skip


def _min(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


NO_EFFECTS = Effects()


@dataclass(frozen=True, slots=True)
class Decision:
    """The policy's answer for one request. `shadow`: recorded, not enforced."""

    action: str
    rule: str | None = None
    signals: dict[str, float] = field(default_factory=dict)
    shadow: bool = False
    effects: Effects = NO_EFFECTS
    verdict: str | None = None
    risk: float | None = None
    rules: tuple[str, ...] = ()
    shadowed: tuple[tuple[str, str], ...] = ()  # (rule, action) of shadow rules that matched too
    intel: IntelHit | None = None  # the imported indicator this request matched (the request path's match)
    _json: list[str] = field(default_factory=list, compare=False, repr=False)  # audit() computed once

    @property
    def enforced(self) -> bool:
        return not self.shadow and self.action != "allow"

    def as_dict(self, refused: str | None = None) -> dict[str, Any]:
        d: dict[str, Any] = {"action": self.action, "rule": self.rule, "signals": self.signals, "shadow": self.shadow}
        if self.verdict is not None:
            d["verdict"] = self.verdict
            d["risk"] = round(self.risk or 0.0, 4)
        if len(self.rules) > 1:
            d["rules"] = list(self.rules)
        if self.shadowed:
            d["shadowed"] = [{"rule": r, "action": a} for r, a in self.shadowed]
        if self.intel is not None:
            d["intel"] = self.intel.as_dict()
        if refused is not None:
            d["refuse"] = refused
        return d

    def audit(self, refused: str | None = None) -> str:
        """The audit row's `decision`: 'allow' / 'refuse:<code>' when no rule was involved, else JSON."""
        if self.rule is None and not self.shadowed:
            return "allow" if refused is None else f"refuse:{refused}"
        if refused is not None:
            return orjson.dumps(self.as_dict(refused)).decode()
        if not self._json:  # decisions are reused for the same account (PolicyEngine's memo)
            self._json.append(orjson.dumps(self.as_dict()).decode())
        return self._json[0]


ALLOW = Decision("allow")


@dataclass(frozen=True, slots=True)
class LoggedDecision:
    """A decision read back from an audit row's `decision` column (what `Decision.audit` wrote): the replay,
    the console's histories and the demo read logged decisions through `parse`, one reading of the format.
    A field the row did not record is None (or empty)."""

    action: str | None
    rule: str | None
    rules: tuple[str, ...]  # every rule that applied (the one `rule` when the row lists no more)
    verdict: str | None
    risk: float | None  # None unless the row recorded a verdict with a numeric risk
    signals: dict[str, float]
    refused: str | None

    @classmethod
    def parse(cls, text: str | None) -> LoggedDecision | None:
        """The JSON form of a logged decision; None for 'allow', 'refuse:<code>' (no rule involved), an empty
        column or one that is not a JSON object (a row's hash still says whether it was edited)."""
        if not text or not text.startswith("{"):
            return None
        try:
            d = orjson.loads(text)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(d, dict):
            return None
        verdict = d.get("verdict") if isinstance(d.get("verdict"), str) else None
        risk = d.get("risk")
        number = isinstance(risk, (int, float)) and not isinstance(risk, bool)
        raw = d.get("signals")
        signals = (
            {str(k): float(v) for k, v in raw.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            if isinstance(raw, dict)
            else {}
        )
        rule = d.get("rule") if isinstance(d.get("rule"), str) else None
        listed = d.get("rules")
        rules = tuple(str(r) for r in listed) if isinstance(listed, list) and listed else ((rule,) if rule else ())
        return cls(
            action=d.get("action") if isinstance(d.get("action"), str) else None,
            rule=rule,
            rules=rules,
            verdict=verdict,
            risk=float(risk) if number and verdict is not None else None,
            signals=signals,
            refused=d.get("refuse") if isinstance(d.get("refuse"), str) else None,
        )


@dataclass(frozen=True, slots=True)
class Mark:
    """An account's review state in the hot path: open | confirmed | cleared | allowlisted | escalated, with the
    verdict rank at the time of the decision (a clear holds until detection reports worse)."""

    state: str
    rank: int = 0
    ts: float = 0.0


class ReviewBook:
    """Review states the engine consults per request (loaded from the store, updated at once by the
    admin API and by polling for decisions made elsewhere, e.g. the CLI)."""

    def __init__(self) -> None:
        self.accounts: dict[str, Mark] = {}
        self.orgs: set[str] = set()  # allowlisted orgs
        self.version = 0  # bumped on org changes (account marks are compared by identity)

    def set(self, account_id: str, mark: Mark | None) -> None:
        if mark is None:
            self.accounts.pop(account_id, None)
        else:
            self.accounts[account_id] = mark

    def allow_org(self, org_id: str, allowed: bool = True) -> None:
        if allowed:
            self.orgs.add(org_id)
        else:
            self.orgs.discard(org_id)
        self.version += 1


@dataclass(frozen=True, slots=True)
class PinnedEffect:
    """A countermeasure pinned on an account by hand (store/pins.py), as the engine applies it."""

    ref: str  # pin:<id>, as the decision's rules name it
    action: str  # throttle | degrade | watermark
    params: Any  # the action's parsed params (rules.PARAMS)
    expires_at: float | None = None  # wall clock; None: until lifted


class PinBook:
    """Pinned countermeasures per account (loaded from the store, updated at once by the replica that took the
    act and by polling for the others'). An expired pin stops applying at its expiry without a poll."""

    def __init__(self) -> None:
        self.accounts: dict[str, dict[str, PinnedEffect]] = {}
        self.version = 0  # bumped on every change: memoised decisions are then recomputed

    def set(self, account_id: str, pin: PinnedEffect) -> None:
        self.accounts.setdefault(account_id, {})[pin.ref] = pin
        self.version += 1

    def drop(self, account_id: str, ref: str) -> PinnedEffect | None:
        pins = self.accounts.get(account_id)
        gone = pins.pop(ref, None) if pins is not None else None
        if pins is not None and not pins:
            del self.accounts[account_id]
        if gone is not None:
            self.version += 1
        return gone

    def active(self, account_id: str, now: float) -> tuple[PinnedEffect, ...]:
        pins = self.accounts.get(account_id)
        if not pins:
            return ()
        return tuple(p for p in pins.values() if p.expires_at is None or p.expires_at > now)

    def expired(self, now: float) -> list[tuple[str, PinnedEffect]]:
        """Drop the pins past their expiry; returns them (account id, pin)."""
        gone = [(a, p) for a, pins in self.accounts.items() for p in pins.values()
                if p.expires_at is not None and p.expires_at <= now]  # fmt: skip
        for account_id, p in gone:
            self.drop(account_id, p.ref)
        return gone


@dataclass(frozen=True, slots=True)
class StandingBlock:
    scope: str  # key | account | org | cluster
    subject: str
    account_id: str  # the account whose request set it
    decision: Decision
    ts: float


class BlockListener(Protocol):
    """Told of every standing block this process sets (shadow ones excepted) and every lift; the fleet's
    `SharedBlocks` (gateway/policy/shared.py) publishes them to the other replicas."""

    def added(self, block: StandingBlock) -> None: ...

    def lifted(self, scope: str, subject: str) -> None: ...


class BlockBook:
    """Blocks and challenges that stand. A block sticks to what it blocks until a reviewer clears it: a
    cluster block stops members whose own verdict is still mild, an org block the org's other accounts.
    A challenge sticks to the account until it verifies at the level asked (or a reviewer clears it), so
    an attacker cannot wait for a score to dip below the threshold and harvest again.

    In one process the book is the whole truth; in a fleet (`risk.backend: redis`) a `listener` shares what
    this replica sets and lifts, and applies what the others did with `notify=False`."""

    SCOPES = ("key", "account", "org", "cluster", "challenge")

    def __init__(self) -> None:
        self.by_scope: dict[str, dict[str, StandingBlock]] = {s: {} for s in self.SCOPES}
        self.count = 0
        self.version = 0  # bumped on every change: memoised decisions are then recomputed
        self.listener: BlockListener | None = None

    def _changed(self) -> None:
        self.count = sum(len(v) for v in self.by_scope.values())
        self.version += 1

    def add(self, block: StandingBlock, *, notify: bool = True) -> None:
        self.by_scope[block.scope][block.subject] = block
        self._changed()
        if notify and self.listener is not None and not block.decision.shadow:
            self.listener.added(block)

    def lift(self, scope: str, subject: str, *, notify: bool = True, set_before: float | None = None) -> bool:
        """Lift the block on `subject`; with `set_before`, only one set at or before that time (a review decision
        lifts what stood when it was made, not a block set since on newer evidence, e.g. when a replica that
        starts replays the review book over the blocks it loaded)."""
        table = self.by_scope[scope]
        held = table.get(subject)
        if held is None or (set_before is not None and held.ts > set_before):
            return False
        del table[subject]
        self._changed()
        if notify and self.listener is not None:
            self.listener.lifted(scope, subject)
        return True

    def lift_account(self, account_id: str, *, set_before: float | None = None) -> int:
        """Lift the blocks an account's requests set on itself and its keys (`set_before`: as for `lift`)."""
        n = 0
        for scope in ("account", "key", "challenge"):
            for subject in [s for s, b in self.by_scope[scope].items() if b.account_id == account_id]:
                n += self.lift(scope, subject, set_before=set_before)
        return n

    def drop_shadow(self) -> None:
        for table in self.by_scope.values():
            for subject in [s for s, b in table.items() if b.decision.shadow]:
                del table[subject]
        self._changed()

    def find(self, ctx: KeyContext, cluster_id: str | None, flagged: bool) -> StandingBlock | None:
        """The block or challenge standing against this request; `flagged`: the account's own verdict is
        suspicious or worse (a cluster block with members: flagged spares members scored benign)."""
        s = self.by_scope
        found = s["account"].get(ctx.account.id) or s["key"].get(ctx.key.id) or s["org"].get(ctx.account.org_id)
        if found is None and cluster_id:
            found = s["cluster"].get(cluster_id)
            block = found.decision.effects.block if found is not None else None
            if block is not None and block.members == "flagged" and not flagged:
                found = None
        if found is None and s["challenge"]:
            found = s["challenge"].get(ctx.account.id)
            ch = found.decision.effects.challenge if found is not None else None
            if ch is not None and VERIFICATION_LEVELS.index(ctx.account.verification) >= VERIFICATION_LEVELS.index(
                ch.level
            ):
                self.lift("challenge", ctx.account.id)  # verified since: the challenge is passed
                return None
        return found

    def all(self) -> list[StandingBlock]:
        return [b for table in self.by_scope.values() for b in table.values()]


class Subject:
    """What conditions look at, read once per request."""

    __slots__ = ("ctx", "verdict", "risk", "signals", "cluster_id", "review", "intel", "_size", "_sizer")

    def __init__(
        self,
        ctx: KeyContext,
        risk: AccountRisk | None,
        review: str,
        sizer: Callable[[str], int],
        intel: IntelHit | None = None,
    ) -> None:
        self.ctx = ctx
        self.intel = intel  # what this request matched on the request path (before detection has seen it)
        if risk is None:
            self.verdict, self.risk, self.signals, self.cluster_id = "benign", 0.0, {}, None
        else:
            self.verdict, self.risk, self.signals, self.cluster_id = (
                risk.verdict,
                risk.risk,
                risk.signals,
                risk.cluster_id,
            )
        self.review = review
        self._sizer = sizer
        self._size: int | None = None

    @property
    def cluster_size(self) -> int:
        if self._size is None:
            self._size = self._sizer(self.cluster_id) if self.cluster_id else 0
        return self._size


Check = Callable[[Subject], bool]


def _range_check(get: Callable[[Subject], float], r: Range) -> Check:
    lo, lo_strict = (r.gt, True) if r.gt is not None else (r.gte, False)
    hi, hi_strict = (r.lt, True) if r.lt is not None else (r.lte, False)
    if r.gt is not None and r.gte is not None:
        return lambda s: r.holds(get(s))
    if r.lt is not None and r.lte is not None:
        return lambda s: r.holds(get(s))
    # the usual one-sided forms, without a generic call per comparison
    if hi is None:
        assert lo is not None
        return (lambda s: get(s) > lo) if lo_strict else (lambda s: get(s) >= lo)
    if lo is None:
        return (lambda s: get(s) < hi) if hi_strict else (lambda s: get(s) <= hi)
    return lambda s: r.holds(get(s))


def _checks(rule: Rule) -> tuple[Check, ...]:
    w = rule.when
    out: list[Check] = []
    if w.verdict is not None:
        verdicts = frozenset(w.verdict)
        out.append(lambda s: s.verdict in verdicts)
    if w.risk is not None:
        out.append(_range_check(lambda s: s.risk, w.risk))
    if w.signals is not None:
        for name, r in w.signals.items():
            out.append(_range_check(lambda s, n=name: s.signals.get(n, 0.0), r))
    if w.any_signal is not None:
        pairs = tuple(w.any_signal.items())
        out.append(lambda s: any(r.holds(s.signals.get(n, 0.0)) for n, r in pairs))
    if w.in_cluster is not None:
        want = w.in_cluster
        out.append(lambda s: (s.cluster_id is not None) is want)
    if w.cluster_size is not None:
        out.append(_range_check(lambda s: s.cluster_size, w.cluster_size))
    if w.review is not None:
        states = frozenset(w.review)
        out.append(lambda s: s.review in states)
    if w.intel_match is not None:
        # this request matched (the request path, intel/live.py), or the account's did (detection's signal
        # "intel", detect/signals/intel.py)
        matched = w.intel_match
        out.append(lambda s: (s.intel is not None or s.signals.get("intel", 0.0) > 0.0) is matched)
    if w.tier is not None:
        tiers = frozenset(w.tier)
        out.append(lambda s: s.ctx.account.tier in tiers)
    if w.verification is not None:
        levels = frozenset(w.verification)
        out.append(lambda s: s.ctx.account.verification in levels)
    if w.org is not None:
        orgs = frozenset(w.org)
        out.append(lambda s: s.ctx.account.org_id in orgs)
    if w.account is not None:
        accounts = frozenset(w.account)
        out.append(lambda s: s.ctx.account.id in accounts)
    if rule.action == "challenge":
        # an account already verified at the level the challenge asks for has passed it
        below = frozenset(VERIFICATION_LEVELS[: VERIFICATION_LEVELS.index(rule.parsed.level)])
        out.append(lambda s: s.ctx.account.verification in below)
    return tuple(out)


def _matches_clean(rule: Rule) -> bool:
    """Could this rule match an account detection has said nothing about (benign, risk 0, no review)?"""
    w = rule.when
    if w.verdict is not None and "benign" not in w.verdict:
        return False
    if w.risk is not None and not w.risk.holds(0.0):
        return False
    if w.signals is not None and not all(r.holds(0.0) for r in w.signals.values()):
        return False
    if w.any_signal is not None and not any(r.holds(0.0) for r in w.any_signal.values()):
        return False
    if w.in_cluster is True or (w.cluster_size is not None and not w.cluster_size.holds(0)):
        return False
    if w.intel_match is True:
        return False
    return not (w.review is not None and "none" not in w.review)


@dataclass(frozen=True, slots=True)
class CompiledRule:
    name: str
    action: str
    params: Any
    checks: tuple[Check, ...]
    terminal: bool
    shadow: bool
    signal_names: tuple[str, ...]


@dataclass(frozen=True, eq=False)  # compared by identity (the memo's epoch)
class CompiledPolicy:
    doc: PolicyDoc
    source: str
    rules: tuple[CompiledRule, ...]
    allow_orgs: frozenset[str]
    allow_accounts: frozenset[str]
    clean_can_match: bool  # some rule may act on an account without a verdict (tier, org rules)
    uses_cluster_size: bool  # decisions then depend on other accounts too: memoised ones expire
    uses_intel: bool  # some rule reads `intel_match`: requests are matched against imported indicators first
    loaded_at: float = field(default_factory=time.time)
    chains: dict[tuple[str, ...], tuple[Effects, str, str | None]] = field(default_factory=dict, repr=False)


def compile_policy(doc: PolicyDoc, source: str) -> CompiledPolicy:
    rules = []
    for r in doc.rules:
        names = tuple((r.when.signals or {}).keys()) + tuple((r.when.any_signal or {}).keys())
        terminal = r.action in TERMINAL or not r.continue_
        rules.append(CompiledRule(r.name, r.action, r.parsed, _checks(r), terminal, r.shadow, names))
    return CompiledPolicy(
        doc,
        source,
        tuple(rules),
        frozenset(doc.allowlist.orgs),
        frozenset(doc.allowlist.accounts),
        any(_matches_clean(r) for r in doc.rules),
        any(r.when.cluster_size is not None for r in doc.rules),
        any(r.when.intel_match is not None for r in doc.rules),
    )


class PolicyEngine:
    """Decides per request from the compiled policy, the risk board entry, review state and blocks."""

    def __init__(
        self,
        policy: CompiledPolicy,
        book: ReviewBook | None = None,
        blocks: BlockBook | None = None,
        cluster_size: Callable[[str], int] | None = None,
        mode: Mode = "enforce",
        pins: PinBook | None = None,
    ) -> None:
        self.policy = policy
        self.book = book or ReviewBook()
        self.blocks = blocks or BlockBook()
        self.pins = pins or PinBook()
        self.cluster_size = cluster_size or (lambda _cid: 0)
        self.mode = mode
        # account id -> (risk, mark, ctx, epoch, expiry, decision, intel): the same inputs give the same decision,
        # so a flagged account's repeat requests skip the rules (inputs are immutable, compared by identity)
        self._memo: dict[str, tuple[Any, ...]] = {}
        self._allowlisted = Decision("allow", rule="allowlist")
        self._review_allowlisted = Decision("allow", rule="review:allowlisted")
        self._cleared = Decision("allow", rule="review:cleared")

    def set_mode(self, mode: Mode) -> None:
        if mode != self.mode:
            self.blocks.drop_shadow()  # what shadow mode would have blocked is not a real block
        self.mode = mode

    def decide(self, ctx: KeyContext, risk: AccountRisk | None, intel: IntelHit | None = None) -> Decision:
        """The decision for one request of `ctx`'s account, whose latest verdict is `risk`; `intel`: the imported
        indicator the request itself matched (an account detection has not seen yet can match one)."""
        policy = self.policy  # one read: a reload swaps the whole policy atomically
        acct = ctx.account
        mark = self.book.accounts.get(acct.id)
        pinned = acct.id in self.pins.accounts
        if (
            risk is None
            and mark is None
            and intel is None
            and not pinned
            and not self.blocks.count
            and not policy.clean_can_match
        ):
            return ALLOW
        epoch = (policy, self.mode, self.blocks.version, self.book.version, self.pins.version)
        memo = self._memo.get(acct.id)
        if (
            memo is not None
            and memo[0] is risk
            and memo[1] is mark
            and memo[2] is ctx
            and memo[3] == epoch
            and (memo[4] == 0.0 or memo[4] > time.monotonic())
            and memo[6] is intel
        ):
            return memo[5]
        d = self._decide(ctx, risk, mark, policy, intel)
        expiry = time.monotonic() + 1.0 if policy.uses_cluster_size else 0.0  # cluster sizes change elsewhere
        if pinned:
            now = time.time()
            pins = self.pins.active(acct.id, now)
            if pins:
                d = _with_pins(d, pins)
            ends = [p.expires_at for p in pins if p.expires_at is not None]
            if ends:  # the decision holds until the first of its pins expires
                until = time.monotonic() + max(0.0, min(ends) - now)
                expiry = until if expiry == 0.0 else min(expiry, until)
        if len(self._memo) >= 200_000:
            self._memo.clear()
        # the epoch after deciding: a block the decision itself set must not invalidate it
        epoch = (policy, self.mode, self.blocks.version, self.book.version, self.pins.version)
        self._memo[acct.id] = (risk, mark, ctx, epoch, expiry, d, intel)
        return d

    def _decide(
        self,
        ctx: KeyContext,
        risk: AccountRisk | None,
        mark: Mark | None,
        policy: CompiledPolicy,
        intel: IntelHit | None = None,
    ) -> Decision:
        acct = ctx.account
        if acct.id in policy.allow_accounts or acct.org_id in policy.allow_orgs:
            return self._allowlisted
        review = "none"
        if mark is not None:
            if mark.state == "allowlisted":
                return self._review_allowlisted
            rank = VERDICT_RANK[risk.verdict] if risk is not None else 0
            if mark.state == "cleared":
                if rank <= mark.rank:
                    return self._cleared
                review = "open"  # detection says worse than what was cleared: back to the queue
            else:  # an escalated item is still under review: for the rules it is open
                review = "open" if mark.state == "escalated" else mark.state
        if self.book.orgs and acct.org_id in self.book.orgs:
            return self._review_allowlisted
        cluster_id = risk.cluster_id if risk is not None else None
        if self.blocks.count:
            standing = self.blocks.find(ctx, cluster_id, risk is not None and risk.verdict != "benign")
            if standing is not None:
                return standing.decision
        return self._rules(policy, Subject(ctx, risk, review, self.cluster_size, intel), risk, ctx)

    def _rules(self, policy: CompiledPolicy, s: Subject, risk: AccountRisk | None, ctx: KeyContext) -> Decision:
        matched: list[CompiledRule] = []
        shadowed: list[tuple[str, str]] = []
        for rule in policy.rules:
            for check in rule.checks:
                if not check(s):
                    break
            else:
                if rule.shadow:
                    shadowed.append((rule.name, rule.action))
                    continue
                matched.append(rule)
                if rule.terminal:
                    break
        if not matched and not shadowed:
            return ALLOW
        # the same rules match again and again: their merged effects are worked out once per policy
        key = tuple(r.name for r in matched)
        chain = policy.chains.get(key)
        if chain is None:
            effects = NO_EFFECTS
            for r in matched:
                effects = effects.merged(r.action, r.params)
            top = max(matched, key=lambda r: SEVERITY[r.action]) if matched else None
            chain = policy.chains[key] = (effects, top.action if top else "allow", top.name if top else None)
        effects, action, rule_name = chain
        signals = _fired(matched or [], risk, shadowed, policy)
        if s.intel is not None and s.intel.strength > signals.get("intel", 0.0):
            signals = {**signals, "intel": round(s.intel.strength, 4)}
        decision = Decision(
            action,
            rule_name,
            signals,
            shadow=self.mode == "shadow" or (not matched and bool(shadowed)),
            effects=effects,
            verdict=s.verdict if risk is not None else None,
            risk=s.risk if risk is not None else None,
            rules=key,
            shadowed=tuple(shadowed),
            intel=s.intel,
        )
        if effects.block is not None:
            self._stand(decision, effects.block, ctx, s.cluster_id)
        elif effects.challenge is not None:
            self.blocks.add(StandingBlock("challenge", ctx.account.id, ctx.account.id, decision, time.time()))
        return decision

    def _stand(self, decision: Decision, block: BlockParams, ctx: KeyContext, cluster_id: str | None) -> None:
        scope = block.scope
        subject = {"key": ctx.key.id, "account": ctx.account.id, "org": ctx.account.org_id}.get(scope, cluster_id)
        if subject is None:  # a cluster block on an account outside any cluster blocks the account
            scope, subject = "account", ctx.account.id
            decision = Decision(**{**_fields(decision), "effects": _replace(decision.effects, block=BlockParams(
                scope="account", members=block.members, message=block.message))})  # fmt: skip
        self.blocks.add(StandingBlock(scope, subject, ctx.account.id, decision, time.time()))


def _with_pins(d: Decision, pins: tuple[PinnedEffect, ...]) -> Decision:
    """The decision `d` with the account's pinned countermeasures merged in (the stricter value wins); a shadow
    decision's rules stay shadowed, the pins are enforced."""
    enforced = not d.shadow
    effects = d.effects if enforced else NO_EFFECTS
    for p in pins:
        effects = effects.merged(p.action, p.params)
    strongest = max(pins, key=lambda p: SEVERITY[p.action])
    named = d.rules or ((d.rule,) if d.rule else ())  # the rules behind d
    if enforced and SEVERITY[d.action] >= SEVERITY[strongest.action]:
        action, rule = d.action, d.rule
    else:
        action, rule = strongest.action, strongest.ref
    prior = named if enforced else ()
    shadowed = d.shadowed if enforced else (*d.shadowed, *((r, d.action) for r in named))
    return Decision(
        action,
        rule,
        d.signals,
        shadow=False,
        effects=effects,
        verdict=d.verdict,
        risk=d.risk,
        rules=(*prior, *(p.ref for p in pins)),
        shadowed=tuple(dict.fromkeys(shadowed)),
        intel=d.intel,
    )


def _fields(d: Decision) -> dict[str, Any]:
    return {f: getattr(d, f) for f in Decision.__dataclass_fields__ if f != "_json"}


def _fired(
    matched: list[CompiledRule], risk: AccountRisk | None, shadowed: list[tuple[str, str]], policy: CompiledPolicy
) -> dict[str, float]:
    """The signals behind a decision: those its rules named, else the account's strongest ones."""
    if risk is None or not risk.signals:
        return {}
    names: list[str] = [n for r in matched for n in r.signal_names]
    if not matched and shadowed:
        by_name = {r.name: r for r in policy.rules}
        names = [n for rn, _a in shadowed for n in by_name[rn].signal_names]
    if names:
        return {n: round(risk.signals.get(n, 0.0), 4) for n in dict.fromkeys(names)}
    top = sorted(risk.signals.items(), key=lambda kv: -kv[1])[:3]
    return {n: round(v, 4) for n, v in top if v >= 0.5}
