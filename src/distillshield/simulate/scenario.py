"""Scenario files: which personas, how many accounts each, duration, volume, mix, models, limits.

A scenario is YAML (see the named ones in simulate/scenarios/ and docs/simulator.md). Validation
happens once, here, and every error names the key (`personas[3].knobs.clusters: ...`), the file, and
what to do. Persona knobs are checked against the persona's own Knobs model.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from distillshield.config import yaml_error_detail
from distillshield.simulate.personas import PERSONAS, Context, Limits, ModelPlan, Persona

# Hold-out discipline: seeds below HELDOUT_SEED_MIN are development seeds, seeds from it up to
# FRESH_SEED_MIN are held out, seeds from FRESH_SEED_MIN up to FRESH2_SEED_MIN belong to the fresh split
# (defined 2026-12-02 before the detector was retrained; reported once, see docs/simulator.md), seeds from
# FRESH2_SEED_MIN up to FRESH3_SEED_MIN belong to the fresh2 split (defined 2026-12-03 before anyone
# measured on it; reported once, docs/simulator.md "Fresh2 held-out split"), seeds from FRESH3_SEED_MIN up
# to FRESH4_SEED_MIN belong to the fresh3 split (defined 2026-12-03, later, before anyone measured on it;
# reported once, docs/simulator.md "Fresh3 held-out split"), and seeds at or above FRESH4_SEED_MIN belong
# to the fresh4 split (pacing; defined 2026-12-03, later still, before anyone measured on it; reported
# once, docs/simulator.md "Fresh4 held-out split").
HELDOUT_SEED_MIN = 10_000
FRESH_SEED_MIN = 20_000
FRESH2_SEED_MIN = 30_000
FRESH3_SEED_MIN = 40_000
FRESH4_SEED_MIN = 50_000
# Which personas a scenario of each split may hold. fresh2, fresh3 and fresh4 take dev and held-out
# background but not the personas of another fresh split: a report on one must not reveal figures of
# another before its own one report.
ALLOWED_PERSONA_SPLITS: dict[str, tuple[str, ...]] = {
    "dev": ("dev",),
    "heldout": ("dev", "heldout"),
    "fresh": ("dev", "heldout", "fresh"),
    "fresh2": ("dev", "heldout", "fresh2"),
    "fresh3": ("dev", "heldout", "fresh3"),
    "fresh4": ("dev", "heldout", "fresh4"),
}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)?\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}


class ScenarioError(Exception):
    """The scenario is invalid; the message names the key and the file."""


def parse_duration(v: Any) -> float:
    """'7d', '36h', '90m', '3600s', '2w' or a number of seconds."""
    if isinstance(v, bool):
        raise ValueError("must be a duration like 7d, 36h, 90m or a number of seconds")
    if isinstance(v, (int, float)):
        return float(v)
    m = _DURATION.match(str(v))
    if not m:
        raise ValueError(f"'{v}' is not a duration; write e.g. 7d, 36h, 90m, 3600s or a number of seconds")
    return float(m.group(1)) * _UNITS[m.group(2)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ReleaseSpec(_Strict):
    model: str = Field(..., min_length=1, description="name of the model released during the scenario")
    at: float = Field(..., description="when, after the scenario start (e.g. 3d, 60h)")

    @field_validator("at", mode="before")
    @classmethod
    def _at(cls, v: Any) -> float:
        return parse_duration(v)


class ModelsSpec(_Strict):
    primary: str = Field("frontier-1", min_length=1)
    secondary: list[str] = Field(default_factory=lambda: ["frontier-1-mini"])
    release: ReleaseSpec | None = None


class LimitsSpec(_Strict):
    rpm: int = Field(60, ge=1, description="per-account requests per minute the provider enforces")
    rpd: int = Field(10_000, ge=1, description="per-account requests per day the provider enforces")


class PersonaEntry(_Strict):
    persona: str
    accounts: int = Field(..., ge=1, le=1_000_000)
    requests: int | None = Field(None, ge=1, description="expected requests of this entry over the scenario")
    share: float | None = Field(None, gt=0, le=1, description="share of the scenario's `requests`")
    knobs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("persona")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in PERSONAS:
            raise ValueError(f"unknown persona '{v}'; choose from {', '.join(PERSONAS)}")
        return v


class ScenarioSpec(_Strict):
    name: str = Field(..., min_length=1)
    description: str = ""
    split: Literal["dev", "heldout", "fresh", "fresh2", "fresh3", "fresh4"] = "dev"
    seed: int | None = Field(None, ge=0, description="default seed (the CLI's --seed overrides it)")
    start: float = Field(1_772_409_600.0, description="Unix seconds or an ISO date (default 2026-03-02, a Monday)")
    duration: float = Field(86_400.0, gt=0)
    requests: int | None = Field(None, ge=1, description="expected total requests; entries then give `share`")
    models: ModelsSpec = ModelsSpec()
    limits: LimitsSpec = LimitsSpec()
    personas: list[PersonaEntry] = Field(..., min_length=1)

    @field_validator("duration", mode="before")
    @classmethod
    def _dur(cls, v: Any) -> float:
        return parse_duration(v)

    @field_validator("start", mode="before")
    @classmethod
    def _start(cls, v: Any) -> float:
        if isinstance(v, (dt.datetime, dt.date)):
            v = v.isoformat()
        if isinstance(v, str):
            try:
                d = dt.datetime.fromisoformat(v.replace("Z", "+00:00"))
            except ValueError:
                raise ValueError(f"'{v}' is not an ISO date/time or Unix seconds") from None
            if d.tzinfo is None:
                d = d.replace(tzinfo=dt.UTC)
            return d.timestamp()
        return v


@dataclass
class Entry:
    """One validated persona entry: the persona instance (with final knobs) and its account count."""

    index: int
    persona: Persona
    accounts: int


@dataclass
class Scenario:
    """A validated scenario, ready for the engine."""

    spec: ScenarioSpec
    source: str
    entries: list[Entry]

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def split(self) -> str:
        return self.spec.split

    @property
    def start(self) -> float:
        return self.spec.start

    @property
    def end(self) -> float:
        return self.spec.start + self.spec.duration

    def expected_requests(self) -> float:
        """Mean number of requests a run generates (a planning figure; runs vary around it)."""
        return sum(e.accounts * e.persona.expected_total_mean() for e in self.entries)

    def check_seed(self, seed: int) -> None:
        """Hold-out discipline: each split's scenarios run only on that split's seeds (dev < 10000 <= held-out
        < 20000 <= fresh < 30000 <= fresh2 < 40000 <= fresh3 < 50000 <= fresh4)."""
        own = seed_split(seed)
        what, lo = _SEED_KIND.get(own, ("dev seed", 0))
        if self.split == "dev" and own != "dev":
            raise ScenarioError(
                f"seed {seed} is a {what} (>= {lo}) but scenario '{self.name}' is a dev scenario; use a seed below "
                f"{HELDOUT_SEED_MIN}, or a scenario with split: {own}"
            )
        if self.split == "heldout" and seed < HELDOUT_SEED_MIN:
            raise ScenarioError(
                f"scenario '{self.name}' is held out: run it with a held-out seed (>= {HELDOUT_SEED_MIN}), "
                f"never with a dev seed ({seed})"
            )
        if self.split == "fresh" and seed < FRESH_SEED_MIN:
            raise ScenarioError(
                f"scenario '{self.name}' is in the fresh split: run it with a fresh seed (>= {FRESH_SEED_MIN}), "
                f"never with a dev or held-out seed ({seed})"
            )
        if self.split == "fresh2" and seed < FRESH2_SEED_MIN:
            raise ScenarioError(
                f"scenario '{self.name}' is in the fresh2 split: run it with a fresh2 seed ({FRESH2_SEED_MIN}-"
                f"{FRESH3_SEED_MIN - 1}), never with a dev, held-out or fresh seed ({seed})"
            )
        if self.split == "fresh3" and seed < FRESH3_SEED_MIN:
            raise ScenarioError(
                f"scenario '{self.name}' is in the fresh3 split: run it with a fresh3 seed ({FRESH3_SEED_MIN}-"
                f"{FRESH4_SEED_MIN - 1}), never with a dev, held-out, fresh or fresh2 seed ({seed})"
            )
        if self.split == "fresh4" and seed < FRESH4_SEED_MIN:
            raise ScenarioError(
                f"scenario '{self.name}' is in the fresh4 split: run it with a fresh4 seed (>= {FRESH4_SEED_MIN}), "
                f"never with a dev, held-out, fresh, fresh2 or fresh3 seed ({seed})"
            )
        # A seed of a later split than the scenario's: name the split the seed belongs to and the scenario's range.
        if self.split in _SEED_RANGE and own != self.split and self.split != "dev":
            lo_own, hi_own = _SEED_RANGE[self.split]
            name = "held-out" if self.split == "heldout" else self.split
            raise ScenarioError(
                f"seed {seed} is a {what} (>= {lo}); {name} seeds are {lo_own}-{hi_own - 1}. "
                f"{own.capitalize()} seeds run only scenarios with split: {own}"
            )


# How an error names a seed of each split, and where the split's seeds start.
_SEED_KIND: dict[str, tuple[str, int]] = {
    "heldout": ("held-out seed", HELDOUT_SEED_MIN),
    "fresh": ("fresh-split seed", FRESH_SEED_MIN),
    "fresh2": ("fresh2-split seed", FRESH2_SEED_MIN),
    "fresh3": ("fresh3-split seed", FRESH3_SEED_MIN),
    "fresh4": ("fresh4-split seed", FRESH4_SEED_MIN),
}
# The closed seed ranges [lo, hi) of the splits that have an upper bound (fresh4 is open-ended).
_SEED_RANGE: dict[str, tuple[int, int]] = {
    "heldout": (HELDOUT_SEED_MIN, FRESH_SEED_MIN),
    "fresh": (FRESH_SEED_MIN, FRESH2_SEED_MIN),
    "fresh2": (FRESH2_SEED_MIN, FRESH3_SEED_MIN),
    "fresh3": (FRESH3_SEED_MIN, FRESH4_SEED_MIN),
}


def seed_split(seed: int) -> str:
    """The split a seed belongs to: dev (< 10000), heldout (< 20000), fresh (< 30000), fresh2 (< 40000),
    fresh3 (< 50000) or fresh4."""
    if seed < HELDOUT_SEED_MIN:
        return "dev"
    if seed < FRESH_SEED_MIN:
        return "heldout"
    if seed < FRESH2_SEED_MIN:
        return "fresh"
    if seed < FRESH3_SEED_MIN:
        return "fresh2"
    if seed < FRESH4_SEED_MIN:
        return "fresh3"
    return "fresh4"


def _fmt(err: ValidationError, prefix: str = "") -> list[str]:
    out = []
    for e in err.errors():
        loc = prefix + ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in e["loc"]).replace(".[", "[")
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; docs/simulator.md lists every key)"
        elif e["type"] == "missing":
            msg = "is required"
        out.append(f"{loc}: {msg}")
    return out


def build(data: Any, source: str = "scenario", seed: int = 0) -> Scenario:
    """Validate a scenario mapping and build its personas; raises ScenarioError naming every bad key."""
    if not isinstance(data, dict):
        raise ScenarioError(f"{source} must be a mapping of keys, got {type(data).__name__}")
    try:
        spec = ScenarioSpec.model_validate(data)
    except ValidationError as exc:
        raise ScenarioError(f"invalid {source}: " + "; ".join(_fmt(exc))) from None
    problems: list[str] = []
    release_at = spec.start + spec.models.release.at if spec.models.release else None
    if spec.models.release and not 0 <= spec.models.release.at < spec.duration:
        problems.append("models.release.at: must fall inside the scenario's duration")
    if spec.requests is not None:
        missing = [i for i, e in enumerate(spec.personas) if e.share is None]
        if missing:
            problems.append(f"personas[{missing[0]}].share: required when the top-level 'requests' is set")
        total = sum(e.share or 0 for e in spec.personas)
        if not missing and abs(total - 1) > 0.01:
            problems.append(f"personas[*].share: the shares add up to {total:.3f}; they must add up to 1")
    ctx_base = dict(
        start=spec.start,
        end=spec.start + spec.duration,
        seed=seed,
        split=spec.split,
        models=ModelPlan(
            spec.models.primary,
            tuple(spec.models.secondary),
            spec.models.release.model if spec.models.release else None,
            release_at,
        ),
        limits=Limits(spec.limits.rpm, spec.limits.rpd),
    )
    entries: list[Entry] = []
    for i, e in enumerate(spec.personas):
        where = f"personas[{i}]"
        cls = PERSONAS[e.persona]
        if cls.split == "heldout" and spec.split == "dev":
            problems.append(
                f"{where}.persona: '{e.persona}' is held out; it may only appear in a scenario with split: heldout "
                "(held-out personas are never used to tune anything)"
            )
        elif cls.split not in ALLOWED_PERSONA_SPLITS[spec.split]:
            problems.append(
                f"{where}.persona: '{e.persona}' belongs to the {cls.split} split; it may only appear in a scenario "
                f"with split: {cls.split} (fresh, fresh2, fresh3 and fresh4 personas are never used to tune anything "
                "and are reported once)"
            )
        if cls.needs_release and spec.models.release is None:
            problems.append(f"{where}.persona: '{e.persona}' needs a model release: add models.release (model, at)")
        if e.share is not None and spec.requests is None:
            problems.append(f"{where}.share: needs the top-level 'requests' total")
        if e.requests is not None and e.share is not None:
            problems.append(f"{where}: give either 'requests' or 'share', not both")
        target = (
            e.requests if e.requests is not None else (spec.requests * e.share if spec.requests and e.share else None)
        )
        if target is not None and "requests_per_day" in e.knobs:
            problems.append(f"{where}.knobs.requests_per_day: set either it or the entry's requests/share, not both")
        ctx = Context(entry=i, **ctx_base)  # type: ignore[arg-type]
        try:
            knobs = cls.Knobs.model_validate(e.knobs)
        except ValidationError as exc:
            problems.extend(_fmt(exc, f"{where}.knobs."))
            continue
        persona = cls(knobs, ctx)
        if target is not None:
            per_day = target / e.accounts / persona.active_days()
            try:
                knobs = cls.Knobs.model_validate({**e.knobs, "requests_per_day": per_day})
            except ValidationError as exc:
                problems.extend(_fmt(exc, f"{where}.knobs."))
                continue
            persona = cls(knobs, ctx)
        cap = persona.max_daily()
        if cap is not None and knobs.requests_per_day > cap * 1.0001:
            problems.append(
                f"{where}: {knobs.requests_per_day:,.0f} requests per account per day asked, but '{e.persona}' stays "
                f"under {cap:,.0f} (its share of limits.rpm/rpd); add accounts or lower the volume"
            )
        entries.append(Entry(i, persona, e.accounts))
    if problems:
        raise ScenarioError(f"invalid {source}: " + "; ".join(problems))
    return Scenario(spec, source, entries)


def named_scenarios() -> list[str]:
    """Names of the scenarios that ship with the package."""
    d = resources.files("distillshield.simulate") / "scenarios"
    return sorted(p.name.removesuffix(".yaml") for p in d.iterdir() if p.name.endswith(".yaml"))


def read(name_or_path: str) -> tuple[dict[str, Any], str]:
    """The raw mapping of a named scenario or a YAML file, and where it came from."""
    path = Path(name_or_path)
    if name_or_path.endswith((".yaml", ".yml")) or path.exists():
        if not path.is_file():
            raise ScenarioError(f"scenario file {path} does not exist")
        source, text = f"scenario file {path}", None
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ScenarioError(f"cannot read scenario file {path}: {exc}") from None
    else:
        res = resources.files("distillshield.simulate") / "scenarios" / f"{name_or_path}.yaml"
        if not res.is_file():
            raise ScenarioError(
                f"no scenario named '{name_or_path}'; named scenarios: {', '.join(named_scenarios())} "
                "(or give a path to a .yaml file)"
            )
        source, text = f"named scenario '{name_or_path}'", res.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{source} is not valid YAML: {yaml_error_detail(exc)}") from None
    return data, source


def load(name_or_path: str, seed: int | None = None) -> tuple[Scenario, int]:
    """Read, validate and build a scenario; returns it with the seed to use (CLI seed, else the file's, else 0)."""
    data, source = read(name_or_path)
    file_seed = data.get("seed") if isinstance(data, dict) else None
    use_seed = seed if seed is not None else (file_seed if isinstance(file_seed, int) else 0)
    scenario = build(data, source, use_seed)
    scenario.check_seed(use_seed)
    return scenario, use_seed
