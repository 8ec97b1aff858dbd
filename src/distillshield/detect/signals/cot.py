"""Chain-of-thought elicitation and rubric/grading prompts: a text classifier per request, a rate per account.

The classifier is two logistic regressions over hashed word 1-2-grams (scikit-learn's HashingVectorizer,
so no vocabulary has to ship): one for "show/articulate your reasoning" prompts, one for "grade this
answer against a rubric" prompts. It is trained by `distillshield train` on a labelled prompt set
(simulator phrasings + hand-written variants as positives, real benign prompts as negatives; see
`detect.train.prompt_dataset`) and ships as sparse weights inside the model artefact.
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any

import numpy as np

from distillshield.detect.base import SignalScore

if TYPE_CHECKING:
    from distillshield.detect.corpus import Obs
    from distillshield.detect.engine import Context

N_FEATURES = 2**18
FLAG_AT = 0.5


def _vectorizer() -> Any:
    from sklearn.feature_extraction.text import HashingVectorizer

    return HashingVectorizer(
        n_features=N_FEATURES,
        ngram_range=(1, 2),
        alternate_sign=False,
        norm="l2",
        token_pattern=r"(?u)\b\w+\b",
        dtype=np.float32,
    )


def _pack(coef: np.ndarray, keep: float = 1e-3) -> dict[str, Any]:
    idx = np.flatnonzero(np.abs(coef) > keep).astype(np.int32)
    return {
        "idx": base64.b64encode(idx.tobytes()).decode(),
        "w": base64.b64encode(coef[idx].astype(np.float32).tobytes()).decode(),
    }


def _unpack(d: dict[str, Any]) -> np.ndarray:
    coef = np.zeros(N_FEATURES, dtype=np.float32)
    idx = np.frombuffer(base64.b64decode(d["idx"]), dtype=np.int32)
    coef[idx] = np.frombuffer(base64.b64decode(d["w"]), dtype=np.float32)
    return coef


class PromptClassifier:
    """P(CoT elicitation) and P(rubric/grading) for prompt texts, vectorised over a batch."""

    def __init__(self, heads: dict[str, tuple[np.ndarray, float]] | None = None) -> None:
        self.heads = heads or {}
        self._vec = _vectorizer()

    @property
    def trained(self) -> bool:
        return bool(self.heads)

    def fit(self, texts: list[str], labels: dict[str, np.ndarray], c: float = 4.0) -> PromptClassifier:
        from sklearn.linear_model import LogisticRegression

        x = self._vec.transform(texts)
        for head, y in labels.items():
            lr = LogisticRegression(C=c, max_iter=2000, class_weight="balanced").fit(x, y)
            self.heads[head] = (lr.coef_[0].astype(np.float32), float(lr.intercept_[0]))
        return self

    def predict(self, texts: list[str]) -> dict[str, np.ndarray]:
        if not texts:
            return {h: np.zeros(0) for h in self.heads}
        x = self._vec.transform(texts)
        return {h: 1.0 / (1.0 + np.exp(-(x @ coef + b))) for h, (coef, b) in self.heads.items()}

    def __call__(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(cot, rubric) probabilities; zeros when untrained."""
        if not self.heads:
            z = np.zeros(len(texts))
            return z, z
        p = self.predict(texts)
        return p.get("cot", np.zeros(len(texts))), p.get("rubric", np.zeros(len(texts)))

    def to_dict(self) -> dict[str, Any]:
        return {"n_features": N_FEATURES, "heads": {h: {"b": b, **_pack(w)} for h, (w, b) in self.heads.items()}}

    def agrees_with(self, other: PromptClassifier, tolerance: float = 1e-3) -> bool:
        """The same heads with the same weights, up to `tolerance` (of the largest weight): two fits on the same
        data differ in the last float bits (the solver's summation order), not in what they classify."""
        if self.heads.keys() != other.heads.keys():
            return False
        for h, (w, b) in self.heads.items():
            w2, b2 = other.heads[h]
            scale = max(float(np.abs(w).max(initial=0.0)), abs(b), 1e-9)
            if float(np.abs(w - w2).max(initial=0.0)) > tolerance * scale or abs(b - b2) > tolerance * scale:
                return False
        return True

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PromptClassifier:
        if d.get("n_features") != N_FEATURES:
            raise ValueError(f"prompt classifier has {d.get('n_features')} features, this code expects {N_FEATURES}")
        return cls({h: (_unpack(v), float(v["b"])) for h, v in d.get("heads", {}).items()})


class CotState:
    __slots__ = ("n", "cot_sum", "cot_hits", "rubric_hits", "either_hits", "example")

    def __init__(self) -> None:
        self.n = 0
        self.cot_sum = 0.0
        self.cot_hits = 0
        self.rubric_hits = 0
        self.either_hits = 0  # prompts that are one or the other (a prompt can be both)
        self.example: str | None = None


class CotElicitation:
    """Share of an account's prompts that coerce reasoning traces or use the model as a grader."""

    name = "cot"

    def fit(self, reference: Any) -> CotElicitation:
        return self

    def new_state(self) -> CotState:
        return CotState()

    def update(self, st: CotState, obs: Obs) -> None:
        if obs.cot < 0:
            return  # not classified (not in the account's sample)
        st.n += 1
        st.cot_sum += obs.cot
        if obs.cot >= FLAG_AT:
            st.cot_hits += 1
            if st.example is None and obs.text:
                st.example = obs.text[:100]
        if obs.rubric >= FLAG_AT:
            st.rubric_hits += 1
        if obs.cot >= FLAG_AT or obs.rubric >= FLAG_AT:
            st.either_hits += 1

    def score(self, st: CotState, ctx: Context) -> SignalScore:
        n = max(st.n, 1)
        cot = st.cot_hits / n
        rubric = st.rubric_hits / n
        score = max(cot, rubric)
        parts = []
        if cot >= 0.05:
            parts.append(f"{cot:.0%} of {st.n} sampled prompts ask for the model's step-by-step reasoning")
        if rubric >= 0.05:
            parts.append(f"{rubric:.0%} are rubric/grading prompts")
        detail = "; ".join(parts) or f"few reasoning-elicitation or grading prompts ({cot:.0%}, {rubric:.0%})"
        if st.example and cot >= 0.05:
            detail += f", e.g. {st.example!r}"
        return SignalScore(
            self.name, score, detail, {"cot_rate": cot, "cot_mean": st.cot_sum / n, "rubric_rate": rubric}
        )
