"""Combining signals into one calibrated risk, and the versioned model artefact that carries it.

The combiner is a small gradient-boosted tree ensemble over the signals' features whose per-signal
contributions add up exactly (see Combiner), so a reason's weight is how much that signal moved the
account's log-odds, which an analyst can check. Thresholds are not 0.5: they are set on benign training accounts
to a target false-positive rate (suspicious at `fpr_suspicious`, extraction at `fpr_extraction`), and
risk is a monotone map of the log-odds that puts the suspicious threshold at 0.5 and the extraction
threshold at 0.8, so "risk >= 0.5" means the same whatever was trained.

The artefact is JSON (no pickle: loading it runs no code), with a format version checked on load.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "distillshield.detect.model/1"
RISK_SUSPICIOUS = 0.5
RISK_EXTRACTION = 0.8
DEFAULT_ARTEFACT = "default-model.json"
# The deployment's own population sets the model's operating point (Combiner.population_level): the log-odds
# of its lower quartile of accounts with enough evidence. A quartile, not a mean or the median, so that even a
# third of the accounts being attackers barely moves it; computed only once MIN_POPULATION accounts have it.
POPULATION_QUANTILE = 0.25
MIN_POPULATION = 20

# Which signal each feature belongs to (for reasons); features not listed belong to their prefix's signal.
SIGNAL_OF_PREFIX = {
    "tpl_": "templates",
    "cot_": "cot",
    "rubric_": "cot",
    "topic_": "coverage",
    "mmd_": "distribution",
    "prada": "distribution",
    "clu_": "coordination",
    "content_": "content",
    "ip_": "coordination",
}


def signal_of(feature: str) -> str:
    for prefix, sig in SIGNAL_OF_PREFIX.items():
        if feature.startswith(prefix):
            return sig
    return "behaviour"


def quantile_above(logits: np.ndarray, fpr: float) -> float:
    """A threshold just above the benign logits, so that at most `fpr` of them reach it."""
    b = np.sort(np.asarray(logits, dtype=np.float64))
    n = len(b)
    allowed = int(math.floor(fpr * n))  # benign accounts allowed at or above the threshold
    return float(b[n - 1 - allowed] + 1e-6) if allowed < n else float(b[0])


class ModelError(ValueError):
    """The model artefact is missing, of another format version, or inconsistent."""


@dataclass
class Combiner:
    """Gradient-boosted trees on the signals' features, exported to plain arrays, with calibrated thresholds.

    Trees, because the honest twins of each attack differ from it in combinations (a shared template is
    benign in a machine-regular batch pipeline and damning across bursty low-volume accounts), which a
    linear model cannot express. Reasons stay exact: each tree's output is split along its decision path
    into per-feature steps (Saabas' path attribution), so the per-signal contributions add up to the
    account's log-odds minus the average account's.
    """

    features: list[str]
    base: float  # the ensemble's prior log-odds
    trees: list[dict[str, np.ndarray]]  # left, right, feature, threshold, value (leaf and inner means)
    t_suspicious: float = 0.0
    t_extraction: float = 1.0
    calibration: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Trees padded into [n_trees, max_nodes] arrays so that every tree is walked at once, level by
        # level, in numpy: a rescore costs tens of microseconds instead of a Python loop per node.
        n = max((len(t["left"]) for t in self.trees), default=1)
        k = len(self.trees)
        self._left = np.full((k, n), -1, dtype=np.int64)
        self._right = np.full((k, n), -1, dtype=np.int64)
        self._feat = np.zeros((k, n), dtype=np.int64)
        self._thr = np.zeros((k, n), dtype=np.float64)
        self._val = np.zeros((k, n), dtype=np.float64)
        for i, t in enumerate(self.trees):
            m = len(t["left"])
            self._left[i, :m], self._right[i, :m] = t["left"], t["right"]
            self._feat[i, :m], self._thr[i, :m], self._val[i, :m] = t["feature"], t["threshold"], t["value"]
        self._rows = np.arange(k)
        # The same arrays flattened: a node's row is tree * n + node, one take per level instead of 2-D indexing.
        self._offsets = self._rows * n
        self._left_flat, self._right_flat = self._left.ravel(), self._right.ravel()
        self._feat_flat, self._thr_flat, self._val_flat = self._feat.ravel(), self._thr.ravel(), self._val.ravel()
        self._signals = sorted({signal_of(f) for f in self.features})
        self._signal_idx = np.asarray([self._signals.index(signal_of(f)) for f in self.features], dtype=np.int64)

    def _paths(self, x: np.ndarray, attribute: bool) -> tuple[float, np.ndarray]:
        contrib = np.zeros(len(self.features))
        if not self.trees:
            return self.base, contrib
        at = self._offsets.copy()  # every tree's current node, as a flat index
        feats, steps = [], []
        while True:
            left = self._left_flat[at]
            inner = left >= 0
            if not inner.any():
                break
            feat = self._feat_flat[at]
            go_left = x[feat] <= self._thr_flat[at]
            nxt = np.where(inner, self._offsets + np.where(go_left, left, self._right_flat[at]), at)
            if attribute:
                feats.append(feat[inner])
                steps.append((self._val_flat[nxt] - self._val_flat[at])[inner])
            at = nxt
        if feats:  # one accumulation in the walk's order (level by level, tree by tree): the same sums as per level
            np.add.at(contrib, np.concatenate(feats), np.concatenate(steps))
        return self.base + float(self._val_flat[at].sum()), contrib

    def logit(self, x: np.ndarray) -> float:
        return self._paths(x, False)[0]

    def logits(self, xs: np.ndarray) -> np.ndarray:
        return np.asarray([self.logit(x) for x in xs])

    def contributions(self, x: np.ndarray) -> dict[str, float]:
        """Per-signal contribution to the log-odds, relative to the average training account."""
        return self.explain(x)[1]

    def explain(self, x: np.ndarray) -> tuple[float, dict[str, float]]:
        """(log-odds, per-signal contributions) in one walk of the trees."""
        total, contrib = self._paths(x, True)
        return total, self._by_signal(contrib)

    def _by_signal(self, contrib: np.ndarray) -> dict[str, float]:
        if not self.features:
            return {}
        sums = np.bincount(self._signal_idx, weights=contrib, minlength=len(self._signals))
        return {sig: float(v) for sig, v in zip(self._signals, sums, strict=True)}

    def risk(self, logit: float, shift: float = 0.0) -> float:
        """Monotone map: t_suspicious -> 0.5, t_extraction -> 0.8, bounded in (0, 1). `shift` raises the
        suspicious threshold (a deployment whose ordinary accounts score higher than the calibration's:
        OperatingPoint); the extraction threshold, set on honest accounts' peaks far above, moves only to stay
        above it."""
        ts = self.t_suspicious + shift
        te = max(self.t_extraction, ts + 0.5) if shift else self.t_extraction
        if logit < ts:
            return RISK_SUSPICIOUS * math.exp(max(logit - ts, -50.0))
        if logit < te:
            return RISK_SUSPICIOUS + (RISK_EXTRACTION - RISK_SUSPICIOUS) * (logit - ts) / max(te - ts, 1e-9)
        return RISK_EXTRACTION + (1 - RISK_EXTRACTION) * (1 - math.exp(-(logit - te)))

    def vector(self, feats: dict[str, float]) -> np.ndarray:
        return np.asarray([feats.get(f, 0.0) for f in self.features], dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        trees = [{k: v.tolist() for k, v in t.items()} for t in self.trees]
        return {
            "kind": "gbt",
            "features": self.features,
            "base": self.base,
            "trees": trees,
            "t_suspicious": self.t_suspicious,
            "t_extraction": self.t_extraction,
            "calibration": self.calibration,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Combiner:
        kinds = {"left": np.int32, "right": np.int32, "feature": np.int32, "threshold": np.float64, "value": np.float64}
        trees = [{k: np.asarray(t[k], dtype=dt) for k, dt in kinds.items()} for t in d["trees"]]
        n = len(d["features"])
        for t in trees:
            if len({len(v) for v in t.values()}) != 1 or (len(t["feature"]) and t["feature"].max() >= n):
                raise ModelError("a tree of the combiner does not match its feature list")
        return cls(
            list(d["features"]),
            float(d["base"]),
            trees,
            float(d["t_suspicious"]),
            float(d["t_extraction"]),
            dict(d.get("calibration", {})),
        )

    @classmethod
    def fit(
        cls,
        x: np.ndarray,
        y: np.ndarray,
        features: list[str],
        *,
        n_trees: int = 150,
        depth: int = 3,
        learning_rate: float = 0.1,
        weight: np.ndarray | None = None,
        seed: int = 0,
    ) -> Combiner:
        """Fit on labelled accounts (y=1 attack). Thresholds are set separately (`calibrate`)."""
        from sklearn.ensemble import GradientBoostingClassifier

        gb = GradientBoostingClassifier(
            n_estimators=n_trees,
            max_depth=depth,
            learning_rate=learning_rate,
            subsample=0.8,
            min_samples_leaf=5,
            random_state=seed,
        )
        gb.fit(x, y, sample_weight=weight)
        base = float(gb.init_.predict_proba(x[:1])[0, 1])
        trees = []
        for est in gb.estimators_[:, 0]:
            tr = est.tree_
            value = tr.value[:, 0, 0].astype(np.float64) * learning_rate
            # Inner nodes get the sample-weighted mean of their leaves, so path steps add up exactly.
            w = tr.weighted_n_node_samples.astype(np.float64)
            for node in range(tr.node_count - 1, -1, -1):
                lft, rgt = tr.children_left[node], tr.children_right[node]
                if lft >= 0:
                    value[node] = (value[lft] * w[lft] + value[rgt] * w[rgt]) / max(w[lft] + w[rgt], 1e-12)
            trees.append(
                {
                    "left": tr.children_left.astype(np.int32),
                    "right": tr.children_right.astype(np.int32),
                    "feature": np.maximum(tr.feature, 0).astype(np.int32),
                    "threshold": tr.threshold.astype(np.float64),
                    "value": value,
                }
            )
        comb = cls(features, math.log(base / (1 - base)), trees)
        check = comb.logits(x[:50])
        ref = gb.decision_function(x[:50])
        if not np.allclose(check, ref, atol=1e-6):
            raise ModelError("exported trees disagree with scikit-learn's decision function")
        return comb

    def calibrate(
        self,
        benign_logits: np.ndarray,
        fpr_suspicious: float,
        fpr_extraction: float,
        benign_peaks: np.ndarray | None = None,
    ) -> None:
        """Thresholds just above the benign quantiles, so at most the target share of benign is flagged.

        `benign_logits`: one per benign account (its final state). `benign_peaks`, when given: each benign
        account's highest logit over the checkpoints it is scored at with enough evidence. The extraction
        threshold is then set on those, so that at most `fpr_extraction` of honest accounts is *ever*
        called extraction while its traffic is scored again and again (what the policy acts on), not
        only at the end."""
        n = len(benign_logits)
        self.t_suspicious = quantile_above(benign_logits, fpr_suspicious) if n else 0.0
        ext = quantile_above(benign_logits, fpr_extraction) if n else 2.0
        if benign_peaks is not None and len(benign_peaks):
            ext = max(ext, quantile_above(benign_peaks, fpr_extraction))
        self.t_extraction = max(ext, self.t_suspicious + 0.5)
        self.calibration = {"benign_accounts": n, "fpr_suspicious": fpr_suspicious, "fpr_extraction": fpr_extraction}
        if benign_peaks is not None:
            self.calibration["extraction_on"] = "peak over checkpoints"
            self.calibration["benign_peak_accounts"] = len(benign_peaks)

    @property
    def population_reference(self) -> float | None:
        """The population level (POPULATION_QUANTILE of accounts' log-odds) of the deployments the thresholds
        were calibrated on; None for an artefact calibrated before it was recorded (no deployment shift)."""
        pop = self.calibration.get("population")
        return float(pop["level"]) if isinstance(pop, dict) and "level" in pop else None

    def set_population_reference(self, levels: list[float], source: str) -> float:
        """Record the calibration deployments' population levels (one per deployment, each from
        `population_level`); the reference is their median. Returns it."""
        if not levels:
            raise ModelError("no calibration deployment had enough accounts for a population level")
        ref = float(np.median(levels))
        self.calibration["population"] = {
            "level": ref,
            "quantile": POPULATION_QUANTILE,
            "deployments": [round(v, 4) for v in levels],
            "on": source,
        }
        return ref

    def recalibrate_extraction(self, benign_peaks: np.ndarray, fpr_extraction: float, source: str) -> float:
        """Raise (never lower) the extraction threshold so that at most `fpr_extraction` of the given benign
        accounts' peak logits reach it; the suspicious threshold is untouched. Returns the old threshold."""
        old = self.t_extraction
        self.t_extraction = max(old, quantile_above(benign_peaks, fpr_extraction), self.t_suspicious + 0.5)
        if self.t_extraction == old and "extraction_recalibrated" in self.calibration:
            return old  # unchanged: the record of the recalibration that set it stays
        self.calibration["extraction_recalibrated"] = {
            "on": source,
            "benign_accounts": len(benign_peaks),
            "fpr_extraction": fpr_extraction,
            "t_extraction_before": old,
        }
        return old


def population_level(logits: list[float] | np.ndarray) -> float | None:
    """A deployment's population level: the POPULATION_QUANTILE of its accounts' log-odds (accounts with enough
    evidence to be scored on their own), or None with fewer than MIN_POPULATION of them."""
    if len(logits) < MIN_POPULATION:
        return None
    return float(np.quantile(np.asarray(logits, dtype=np.float64), POPULATION_QUANTILE))


@dataclass
class OperatingPoint:
    """Where the trained model's thresholds sit in this deployment.

    The thresholds were set on simulated honest accounts. A deployment whose ordinary accounts (its lower
    quartile, robust to many attackers) score higher than the calibration deployments' did is one the model
    does not describe (shared address pools, an app whose users all share frames): there, the model's
    absolute evidence would flag ordinary users as unusual, so the suspicious threshold rises by the
    difference (the extraction threshold, set on honest peaks far above it, only as far as it must to stay
    above). Never lowered;
    no shift until MIN_POPULATION accounts have enough evidence, or when the artefact has no reference."""

    reference: float | None
    level: float | None = None
    accounts: int = 0

    @property
    def shift(self) -> float:
        if self.reference is None or self.level is None:
            return 0.0
        return max(0.0, self.level - self.reference)

    def update(self, logits: list[float]) -> bool:
        """Set the level from the accounts' current log-odds; True when the shift changed."""
        before = self.shift
        self.accounts = len(logits)
        self.level = population_level(logits)
        return abs(self.shift - before) > 1e-9

    def to_dict(self) -> dict[str, Any]:
        return {
            "shift": round(self.shift, 4),
            "level": None if self.level is None else round(self.level, 4),
            "reference": None if self.reference is None else round(self.reference, 4),
            "accounts": self.accounts,
            "quantile": POPULATION_QUANTILE,
        }


@dataclass
class DetectionModel:
    """The trained artefact: combiners (with and without embedding features) and the prompt classifier.

    A key may also have further combiners beside its primary one (`ensemble`): each was trained on its own
    recipe and calibrated on its own, and the engine scores an account with all of them and takes the highest
    risk (engine.Engine). One recipe cannot always hold two kinds of attacker at once (machine-paced bursts
    and human-paced sweeps: docs/detection.md, round 6); two combiners, each holding one, can."""

    version: str
    combiners: dict[str, Combiner]  # "full" (embedding signals on) and "noembed"
    classifier: dict[str, Any]  # PromptClassifier.to_dict()
    meta: dict[str, Any] = field(default_factory=dict)
    ensemble: dict[str, list[Combiner]] = field(default_factory=dict)  # key -> combiners beside the primary

    @staticmethod
    def _key(with_embeddings: bool) -> str:
        return "full" if with_embeddings else "noembed"

    def combiner(self, with_embeddings: bool) -> Combiner:
        """The primary combiner of a key (the one `distillshield train` fitted)."""
        key = self._key(with_embeddings)
        if key not in self.combiners:
            hint = ("it was trained without embedding signals: analyse with --encoder none, or train one with "
                    "`distillshield train ... --encoder use`") if with_embeddings else "retrain it"  # fmt: skip
            raise ModelError(f"model {self.version} has no '{key}' combiner: {hint}")
        return self.combiners[key]

    def members(self, with_embeddings: bool) -> list[Combiner]:
        """Every combiner the engine scores with for this key: the primary first, then the ensemble's."""
        return [self.combiner(with_embeddings), *self.ensemble.get(self._key(with_embeddings), [])]

    def alongside(self, base: DetectionModel) -> DetectionModel:
        """`base` with this model's combiners added beside each of its own (same key), as one artefact.

        Both must classify prompts the same way: the combiners read features the prompt classifier made, so
        a combiner trained with another classifier would read features it was not trained on."""
        from distillshield.detect.signals.cot import PromptClassifier

        try:
            same = base.classifier == self.classifier or PromptClassifier.from_dict(base.classifier).agrees_with(
                PromptClassifier.from_dict(self.classifier)
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(
                f"cannot compare the prompt classifiers of {base.version} and {self.version}: {exc}"
            ) from None
        if not same:
            raise ModelError(
                f"model {base.version} has another prompt classifier than {self.version}: their combiners read "
                "different features and cannot be joined; retrain both with this version"
            )
        ensemble = {k: list(v) for k, v in base.ensemble.items()}
        for key, comb in self.combiners.items():
            if key in base.combiners:
                ensemble.setdefault(key, []).extend([comb, *self.ensemble.get(key, [])])
        if not any(ensemble.values()):
            raise ModelError(f"models {base.version} and {self.version} share no combiner key (full or noembed)")
        meta = {**base.meta, "ensemble": [*base.meta.get("ensemble", []), {"version": self.version, **self.meta}]}
        return DetectionModel(f"{base.version}+{self.version}", dict(base.combiners), base.classifier, meta, ensemble)

    def to_dict(self) -> dict[str, Any]:
        out = {
            "format": FORMAT,
            "version": self.version,
            "meta": self.meta,
            "combiners": {k: c.to_dict() for k, c in self.combiners.items()},
            "classifier": self.classifier,
        }
        if any(self.ensemble.values()):
            out["ensemble"] = {k: [c.to_dict() for c in v] for k, v in self.ensemble.items() if v}
        return out

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), separators=(",", ":")), encoding="utf-8")

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "model") -> DetectionModel:
        if d.get("format") != FORMAT:
            raise ModelError(
                f"{source}: format {d.get('format')!r}, this version reads {FORMAT!r}; retrain "
                "with `distillshield train`"
            )
        try:
            combiners = {k: Combiner.from_dict(v) for k, v in d["combiners"].items()}
            ensemble = {k: [Combiner.from_dict(c) for c in v] for k, v in d.get("ensemble", {}).items()}
            if set(ensemble) - set(combiners):
                raise ModelError(
                    f"{source}: an ensemble key has no primary combiner: {sorted(set(ensemble) - set(combiners))}"
                )
            return cls(str(d["version"]), combiners, dict(d["classifier"]), dict(d.get("meta", {})), ensemble)
        except (KeyError, TypeError) as exc:
            raise ModelError(f"{source}: missing or bad field {exc}") from None

    @classmethod
    def load(cls, path: str | Path | None = None) -> DetectionModel:
        """A model file, or the default one shipped in the package."""
        if path is None:
            ref = resources.files("distillshield.detect") / "data" / DEFAULT_ARTEFACT
            if not ref.is_file():
                raise ModelError("the package ships no default detection model; run `distillshield train`")
            return cls.from_dict(json.loads(ref.read_text(encoding="utf-8")), f"default model {DEFAULT_ARTEFACT}")
        p = Path(path)
        if not p.is_file():
            raise ModelError(f"model file {p} does not exist")
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ModelError(f"model file {p} is not valid JSON ({exc})") from None
        return cls.from_dict(d, str(p))
