"""The policy file: ordered rules that turn detection verdicts into graduated actions.

A policy is YAML (docs/policy.md documents the shipped default line by line):

    version: 1
    allowlist: {orgs: [...], accounts: [...]}     # never acted on
    rules:
      - name: block-confirmed                    # unique; the audit log names it
        when: {review: [confirmed], verdict: [extraction]}
        action: block                            # allow | monitor | throttle | degrade | watermark | challenge | block
        params: {scope: cluster}                 # per action, validated
        continue: false                          # true: apply and keep evaluating the rules below
        shadow: false                            # true: log what the rule would do, enforce nothing

Rules are tried in order; the first matching rule decides, unless it says `continue: true`, in which
case its effects (throttle, degrade, watermark, monitor) are kept and evaluation goes on. A condition
that is absent matches everything; all conditions present must hold. `parse_policy` reports every
problem with the rule's index, its name and the field, and never returns a half-valid policy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from distillshield.config import LimitSet, yaml_error_detail
from distillshield.contracts import Verdict
from distillshield.store.database import TIERS, VERIFICATION_LEVELS
from distillshield.store.pins import PIN_ACTIONS

ACTIONS = ("allow", "monitor", "watermark", "throttle", "degrade", "challenge", "block")
SEVERITY = {a: i for i, a in enumerate(ACTIONS)}  # the decision's action is the most severe one applied
TERMINAL = frozenset({"allow", "challenge", "block"})  # these stop evaluation even with continue: true
REVIEW_STATES = ("none", "open", "confirmed")

Action = Literal["allow", "monitor", "watermark", "throttle", "degrade", "challenge", "block"]
Tier = Literal["free", "standard", "pro", "enterprise"]
Verification = Literal["none", "email", "phone", "id", "business"]
ReviewState = Literal["none", "open", "confirmed"]
assert set(Tier.__args__) == set(TIERS) and set(Verification.__args__) == set(VERIFICATION_LEVELS)  # type: ignore[attr-defined]


class PolicyError(ValueError):
    """The policy file is invalid; the message names the file, the rule and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Range(_Strict):
    """Bounds on a 0..1 score (risk, a signal) or a count (cluster size); at least one bound."""

    gte: float | None = None
    gt: float | None = None
    lte: float | None = None
    lt: float | None = None

    @model_validator(mode="after")
    def _some_bound(self) -> Range:
        if self.gte is None and self.gt is None and self.lte is None and self.lt is None:
            raise ValueError("give at least one bound: gte, gt, lte or lt")
        return self

    def holds(self, v: float) -> bool:
        return (
            (self.gte is None or v >= self.gte)
            and (self.gt is None or v > self.gt)
            and (self.lte is None or v <= self.lte)
            and (self.lt is None or v < self.lt)
        )


class When(_Strict):
    """Conditions; all that are given must hold. An account with no verdict yet counts as benign, risk 0."""

    verdict: list[Verdict] | None = Field(None, description="the account's detection verdict is one of these")
    risk: Range | None = Field(None, description="the account's risk score (0..1)")
    signals: dict[str, Range] | None = Field(None, description="every named signal's score is in range")
    any_signal: dict[str, Range] | None = Field(None, description="at least one named signal's score is in range")
    in_cluster: bool | None = Field(None, description="the account is (true) or is not (false) in a cluster")
    cluster_size: Range | None = Field(None, description="accounts in the account's cluster (0 when none)")
    tier: list[Tier] | None = Field(None, description="the account's tier is one of these")
    verification: list[Verification] | None = Field(None, description="the account's verification level")
    org: list[str] | None = Field(None, description="the account's org is one of these")
    account: list[str] | None = Field(None, description="the account is one of these")
    review: list[ReviewState] | None = Field(
        None, description="the account's review state: none (never queued), open (awaiting review), confirmed"
    )
    intel_match: bool | None = Field(
        None,
        description="this request (matched on the request path, before the decision) or the account's earlier ones "
        "(detection's intel signal) match (true) or do not match (false) an imported threat-intelligence indicator "
        "(docs/intel.md)",
    )

    @field_validator("verdict", "tier", "verification", "org", "account", "review", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("signals", "any_signal")
    @classmethod
    def _nonempty(cls, v: dict[str, Range] | None) -> dict[str, Range] | None:
        if v is not None and not v:
            raise ValueError("name at least one signal")
        return v

    def is_empty(self) -> bool:
        return all(getattr(self, f) is None for f in type(self).model_fields)


class NoParams(_Strict):
    pass


class ThrottleParams(_Strict):
    factor: float = Field(..., gt=0, le=1, description="multiply the key, account and org limits by this")
    scope: Literal["account", "cluster"] = Field(
        "account", description="cluster: the whole cluster also shares one budget (scope 'cluster:<id>')"
    )
    cluster_limits: LimitSet | None = Field(
        None, description="the cluster's shared limits; default: the account's limits times factor"
    )


class DegradeParams(_Strict):
    reasoning: Literal["keep", "strip", "summarize"] = Field(
        "strip", description="chain-of-thought segments and reasoning fields: keep, remove, or summarise"
    )
    sections: bool = Field(True, description="also treat explicit step-by-step sections in text as reasoning")
    summary_chars: int = Field(240, ge=20, le=4000, description="length bound of a summary")
    open_at_start: bool = Field(False, description="the model's output starts inside a <think> block")
    drop_logprobs: bool = Field(True, description="remove logprobs, top_logprobs and logit_bias")
    max_tokens: int | None = Field(None, ge=1, description="cap max_tokens (before the token reservation)")
    n: int | None = Field(None, ge=1, description="cap the number of choices")


class WatermarkParams(_Strict):
    mode: Literal["on", "strong"] = Field("on", description="the account's watermark: on, or strong (larger bias)")
    key: Literal["account", "cluster"] = Field(
        "account", description="cluster: key the watermark by the account's cluster, so a leak names the cluster"
    )

    @field_validator("mode", mode="before")
    @classmethod
    def _yaml_bool(cls, v: Any) -> Any:
        # YAML 1.1 reads a bare `on` as true
        return "on" if v is True else v


class ChallengeParams(_Strict):
    level: Verification = Field("phone", description="the verification level that lifts the challenge")
    message: str | None = Field(None, description="replaces the default message; {url}, {level} are filled in")


class BlockParams(_Strict):
    scope: Literal["key", "account", "org", "cluster"] = Field(
        "account", description="what is blocked: the key used, the account, its org, or every cluster member"
    )
    members: Literal["flagged", "all"] = Field(
        "flagged",
        description="scope cluster: block the members detection flags too (suspicious or worse), or all of "
        "them; members scored benign are left to the cluster's review item",
    )
    message: str | None = Field(None, description="replaces the default message")


PARAMS: dict[str, type[_Strict]] = {
    "allow": NoParams,
    "monitor": NoParams,
    "watermark": WatermarkParams,
    "throttle": ThrottleParams,
    "degrade": DegradeParams,
    "challenge": ChallengeParams,
    "block": BlockParams,
}


PINNABLE = PIN_ACTIONS  # what an analyst can pin on one account by hand (store/pins.py)


def pin_params(action: str, params: dict[str, Any] | None) -> Any:
    """Check a pinned countermeasure's action and params as the policy file would (PolicyError names the
    field); returns the parsed params, whose `model_dump(mode="json")` is what the store keeps."""
    if action not in PINNABLE:
        raise PolicyError(f"a pinned countermeasure is one of {', '.join(PINNABLE)}, not '{action}'")
    try:
        return PARAMS[action].model_validate(params or {})
    except ValidationError as exc:
        raise PolicyError(f"{_errors(exc, 'params')} (action '{action}')") from None


class Rule(_Strict):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
    description: str = ""
    when: When = When()
    action: Action
    params: dict[str, Any] = Field(default_factory=dict)
    continue_: bool = Field(False, alias="continue")
    shadow: bool = False

    @model_validator(mode="after")
    def _params(self) -> Rule:
        try:
            PARAMS[self.action].model_validate(self.params)
        except ValidationError as exc:
            raise ValueError(f"{_errors(exc, 'params')} (action '{self.action}')") from None
        if self.continue_ and self.action in TERMINAL:
            raise ValueError(f"continue: true has no effect on '{self.action}', which always stops evaluation")
        return self

    @property
    def parsed(self) -> Any:
        return PARAMS[self.action].model_validate(self.params)


class Allowlist(_Strict):
    orgs: list[str] = Field(default_factory=list)
    accounts: list[str] = Field(default_factory=list)


class PolicyDoc(_Strict):
    version: Literal[1] = 1
    description: str = ""
    allowlist: Allowlist = Allowlist()
    rules: list[Rule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _names_and_reachability(self) -> PolicyDoc:
        seen: dict[str, int] = {}
        for i, r in enumerate(self.rules):
            if r.name in seen:
                raise ValueError(
                    f"rule {i} ('{r.name}'): name already used by rule {seen[r.name]}; names must be unique"
                )
            seen[r.name] = i
        for i, r in enumerate(self.rules):
            if r.when.is_empty() and not r.continue_ and not r.shadow and i + 1 < len(self.rules):
                later = self.rules[i + 1].name
                raise ValueError(
                    f"rule {i + 1} ('{later}') can never match: rule {i} ('{r.name}') above it has no conditions "
                    "and stops evaluation; move the catch-all rule last"
                )
        return self


def _errors(exc: ValidationError, prefix: str = "", names: list[str | None] | None = None) -> str:
    """One line per problem: 'rule 3 ('name'): when.risk.gte: Input should be a valid number'."""
    lines = []
    for e in exc.errors():
        loc = [str(p) for p in e["loc"]]
        where = ""
        if names is not None and len(loc) >= 2 and loc[0] == "rules" and loc[1].isdigit():
            i = int(loc[1])
            name = names[i] if i < len(names) else None
            where = f"rule {i}" + (f" ('{name}')" if name else "")
            loc = loc[2:]
        field = ".".join([prefix, *loc] if prefix else loc)
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; docs/policy.md lists every key)"
        elif e["type"] in ("literal_error", "enum"):
            msg = f"{msg} (got {e.get('input')!r})"
        parts = [p for p in (where, field) if p]
        lines.append(f"{': '.join(parts)}: {msg}" if parts else msg)
    return "; ".join(lines)


def parse_policy(text: str, source: str = "<policy>") -> PolicyDoc:
    """Parse and validate policy YAML; raises PolicyError naming the file, rule and field."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PolicyError(f"policy file {source} is not valid YAML: {yaml_error_detail(exc)}") from None
    if not isinstance(data, dict):
        raise PolicyError(f"policy file {source} must be a mapping with a 'rules' list, got {type(data).__name__}")
    rules = data.get("rules")
    names = [r.get("name") if isinstance(r, dict) else None for r in rules] if isinstance(rules, list) else []
    try:
        return PolicyDoc.model_validate(data)
    except ValidationError as exc:
        raise PolicyError(f"invalid policy in {source}: {_errors(exc, names=names)}") from None


def load_policy(path: str | Path) -> PolicyDoc:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PolicyError(f"policy file {p} not found") from None
    except (OSError, ValueError) as exc:  # ValueError: not UTF-8, or a NUL in the path
        raise PolicyError(f"cannot read policy file {p}: {exc}") from None
    return parse_policy(text, str(p))


DEFAULT_POLICY = Path(__file__).with_name("default.yaml")
