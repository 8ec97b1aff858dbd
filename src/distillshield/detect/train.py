"""Training the detection model: the prompt classifier, then the signal combiner, hardened adversarially.

1. Prompt classifier (CoT elicitation, rubric/grading): a labelled prompt set is built from the
   simulator's phrasings (simulate.text) and hand-written variants as positives, and real benign prompts
   (the reference corpora) and honest client templates as negatives. Templates, not sentences, are split
   into train and held-out, so the reported precision/recall is on phrasings the classifier never saw.
2. Combiner: labelled simulator traffic (dev split only: held-out personas and seeds never tune
   anything) is replayed through the engine; each account's features at each checkpoint are a sample
   (so early, thin evidence is learned too). Thresholds come from out-of-fold benign risks: suspicious
   on the accounts' final states, extraction on their peaks over all checkpoints (Combiner.calibrate).
3. Adversarial rounds: evasive variants of the attack traffic (detect.adversary) are scored by the
   current model (robustness before), added to the training data, and the model is refitted
   (robustness after). The per-round table goes into the artefact's metadata.

Labels are read here and only here: training is the one step that may see ground truth.
"""

from __future__ import annotations

import datetime as dt
import math
import random
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from distillshield.detect.analyze import analyze_records
from distillshield.detect.corpus import LineErrors, classifier_text, read_records
from distillshield.detect.embeddings import Encoder
from distillshield.detect.engine import MIN_EVIDENCE
from distillshield.detect.scoring import Combiner, DetectionModel, population_level
from distillshield.detect.signals.content import NEUTRAL as CONTENT_NEUTRAL
from distillshield.detect.signals.cot import PromptClassifier

EMBEDDING_FEATURES = ("mmd_z", "prada", "topic_entropy", "topic_top", "topic_runs")
# Population-relative content (signals/content.py) flags on its own route in the engine, calibrated on the
# deployment's own traffic; the trees must not learn it from the simulator's content (what the simulator's
# attackers ask is its tell, not the problem's), so it is never a combiner feature.
CONTENT_FEATURES = tuple(CONTENT_NEUTRAL)
Progress = Callable[[str, int, int | None], None]

# Hand-written positives beyond the simulator's phrasings (what real campaigns were reported to send).
EXTRA_COT = (
    "{q}\nExplain your reasoning in detail before giving the answer.",
    "Walk me through your full thought process for this, every step: {q}",
    "{q}\n\nThink out loud. Write down every intermediate step of your reasoning, then the answer.",
    "Please provide a detailed step-by-step derivation. {q}",
    "For the problem below, first write your complete reasoning trace, then the final answer.\n{q}",
    "{q} Show your work.",
    "Reason carefully and show each step of your chain of thought: {q}",
    "Articulate, step by step, the internal reasoning behind this completed response.\nQ: {q}\nResponse: {a}",
    "{q}\n\nLet's work this out in a step by step way to be sure we have the right answer.",
    "Give a rigorous, step-by-step explanation of how to get the answer. {q}",
)
EXTRA_RUBRIC = (
    "Evaluate the following answer on a scale of 1 to 10 for accuracy and helpfulness. Explain the score.\n"
    "Question: {q}\nAnswer: {a}",
    "Act as a reward model. Rate the assistant's reply from 0 to 1 and justify the rating.\n\nUser: {q}\n"
    "Assistant: {a}",
    "Which of these two answers is better? Reply with A or B and a short justification.\nQ: {q}\nA: {a}\nB: {b}",
    "Score this essay using the rubric (content 40%, structure 30%, style 30%) and return JSON.\n{a}",
    "You are an impartial judge. Assess the response for correctness and completeness, output a grade.\n{q}\n{a}",
)
EXTRA_NEGATIVE = (
    "{q}",
    "Can you help me with this? {q}",
    "Translate into French: {q}",
    "Summarise in two sentences: {a}",
    "Write a short poem about {q}",
    "What do you think about this? {q}",
    "Fix the grammar: {a}",
    "Give me a list of ideas for {q}",
    "{q} Keep it short.",
    "Is this correct? {a}",
)

# Ordinary apps' system prompts (round 15): none asks for the model's reasoning, but "answer the customer's question
# using the articles below" and "show the complete code" read as reasoning asks to a classifier trained on harvest
# templates, and an app's system prompt is in every one of its requests (`corpus.classifier_text` reads its first
# 200 characters before the user's turn). Hand-written, not the simulator's: each is joined to real users'
# questions by `classifier_text` itself.
APP_SYSTEM_NEGATIVE = (
    "You are the help-centre assistant of an online store. Answer the customer's question using only the help "
    "articles provided below. If they do not cover it, offer to hand over to a human agent.",
    "You answer employees' questions about company policy. Use only the policy documents in the context. Quote the "
    "relevant section and keep answers under 120 words.",
    "You are a coding assistant inside the user's editor. Answer questions about the code they selected. When you "
    "suggest a change, show the full updated code block.",
    "You are a helpful assistant for a project-management app. Answer questions about the user's tasks and projects "
    "using the data supplied below. Be brief and friendly.",
    "You are an IT helpdesk bot. Answer the user's question from the knowledge base excerpts below; if the excerpts "
    "do not contain the answer, say so and open a ticket.",
    "You are a travel booking assistant. Answer questions about flights, hotels and bookings using the itinerary "
    "provided. Never invent prices or availability.",
    "Answer the user's question based only on the documents retrieved below. Cite the document title after each "
    "sentence. If the documents are not relevant, say you don't know.",
    "You are a shopping assistant. Recommend products from the catalogue below that match what the customer asks "
    "for, with price and a one-line reason.",
    "You are a writing assistant for a marketing team. Rewrite or draft copy as the user asks, in the brand voice "
    "described below. Output only the copy.",
    "You are a SQL helper for analysts. Answer questions about the schema below and write the query they need. Show "
    "the complete query in a code block.",
    "You are the onboarding guide for a banking app. Answer new customers' questions about accounts, cards and fees "
    "using the FAQ below. Do not give financial advice.",
    "You are a patient support agent for a telecom provider. Answer billing and coverage questions using the account "
    "details and articles provided.",
    "You are an assistant for a law firm's intranet. Answer staff questions using only the internal memos provided "
    "and name the memo you relied on.",
    "You summarise documents for busy readers. Answer questions about the document below and keep every answer to "
    "three sentences or fewer.",
    "You are a recipe assistant. Answer cooking questions and suggest recipes using the pantry list the user gives. "
    "Keep instructions short.",
    "You are the assistant of a developer documentation site. Answer questions about the API using the reference "
    "pages below and show a complete code example.",
)


@dataclass
class PromptSet:
    texts: list[str]
    cot: np.ndarray
    rubric: np.ndarray
    heldout: np.ndarray  # True = held-out (templates never trained on)
    sources: dict[str, int] = field(default_factory=dict)


def _fill(template: str, r: random.Random, questions: list[str], answers: list[str]) -> str:
    q = questions[r.randrange(len(questions))][:600]
    a = answers[r.randrange(len(answers))][:400]
    b = answers[r.randrange(len(answers))][:400]
    out = template
    for key, val in (
        ("{q}", q),
        ("{a}", a),
        ("{b}", b),
        ("{ref}", a),
        ("{guess}", "42"),
        ("{doc}", q),
        ("{level}", "high school"),
        ("{lang}", "French"),
        ("{doc_id}", "X-1"),
    ):
        out = out.replace(key, val)
    return out.replace("{{", "{").replace("}}", "}")


def prompt_dataset(seed: int = 0, per_template: int = 12) -> PromptSet:
    """The labelled prompt set; one template in four (by a seeded draw) is held out entirely."""
    from distillshield.detect.reference import reference_texts
    from distillshield.simulate import corpora
    from distillshield.simulate import text as S

    r = random.Random(seed)
    questions = list(reference_texts())
    try:
        questions += [q.question for q in corpora.question_bank("math", seed, 40)]
        questions += [q.question for q in corpora.question_bank("logic", seed, 20)]
    except Exception:  # noqa: BLE001 - the banks are optional (reasoning-gym); the reference suffices
        pass
    answers = [a for _, a in corpora.reference_answers()] or questions
    cot_templates = [t for ts in S.COT_TEMPLATES.values() for t in ts] + list(S.EVAL_TEMPLATES["cot"])
    cot_templates += [t for t in S.STUDENT_ASKS if "step" in t] + list(S.TUTOR_SYSTEM)
    cot_templates += [v for k, v in S.SWEEP_TEMPLATES.items() if k != "agentic"] + [S.HARVEST_TEMPLATES[0]]
    cot_templates += ["{q}" + s for s in S.PARAPHRASE_SLOTS[2] if s] + list(EXTRA_COT)
    rubric_templates = list(S.RUBRIC_TEMPLATES) + list(EXTRA_RUBRIC)
    neg_templates = list(EXTRA_NEGATIVE) + list(S.EVAL_TEMPLATES["plain"]) + list(S.HARVEST_TEMPLATES[1:])
    neg_templates += [t for ts in S.PIPELINE_TEMPLATES.values() for t in ts] + list(S.CODE_ASKS)
    neg_templates += [t for t in S.STUDENT_ASKS if "step" not in t] + list(S.FOLLOW_UPS_EN) + list(S.FOLLOW_UPS_JA)
    neg_templates += [s for s in S.SUPPORT_SYSTEM] + [s for s in S.CHAT_SYSTEM_PROMPTS if s]
    texts: list[str] = []
    cot: list[int] = []
    rub: list[int] = []
    held: list[bool] = []
    for templates, c, b in ((cot_templates, 1, 0), (rubric_templates, 0, 1), (neg_templates, 0, 0)):
        for tpl in templates:
            is_held = r.random() < 0.25
            for _ in range(per_template):
                texts.append(_fill(tpl, r, questions, answers))
                cot.append(c)
                rub.append(b)
                held.append(is_held)
    # Real benign prompts as they are: split by item.
    for q in questions:
        texts.append(q)
        cot.append(0)
        rub.append(0)
        held.append(r.random() < 0.25)
    # Ordinary apps' system prompts, each before real users' questions as the classifier reads a request (its own
    # draws, so that adding them left every example above as it was).
    r_app = random.Random(seed + 1)
    refs = list(reference_texts())
    for system in APP_SYSTEM_NEGATIVE:
        is_held = r_app.random() < 0.25
        for _ in range(per_template):
            texts.append(classifier_text(refs[r_app.randrange(len(refs))][:300], system))
            cot.append(0)
            rub.append(0)
            held.append(is_held)
    sources = {
        "cot_templates": len(cot_templates),
        "rubric_templates": len(rubric_templates),
        "negative_templates": len(neg_templates),
        "real_prompts": len(questions),
        "app_system_prompts": len(APP_SYSTEM_NEGATIVE),
    }
    return PromptSet(texts, np.asarray(cot), np.asarray(rub), np.asarray(held), sources)


def _pr(y: np.ndarray, p: np.ndarray) -> dict[str, float | int]:
    pred = p >= 0.5
    tp = int(np.sum(pred & (y == 1)))
    fp = int(np.sum(pred & (y == 0)))
    fn = int(np.sum(~pred & (y == 1)))
    return {
        "precision": tp / max(tp + fp, 1),
        "recall": tp / max(tp + fn, 1),
        "positives": int(y.sum()),
        "negatives": int((y == 0).sum()),
    }


def train_classifier(seed: int = 0) -> tuple[PromptClassifier, dict[str, Any]]:
    """Fit on the training templates, report precision/recall on the held-out ones, then refit on all."""
    ds = prompt_dataset(seed)
    tr = ~ds.heldout
    texts_tr = [t for t, h in zip(ds.texts, ds.heldout, strict=True) if not h]
    texts_te = [t for t, h in zip(ds.texts, ds.heldout, strict=True) if h]
    clf = PromptClassifier().fit(texts_tr, {"cot": ds.cot[tr], "rubric": ds.rubric[tr]})
    p = clf.predict(texts_te)
    metrics = {
        "heldout": {"cot": _pr(ds.cot[~tr], p["cot"]), "rubric": _pr(ds.rubric[~tr], p["rubric"])},
        "sources": ds.sources,
        "split": "one template in four held out (seeded), real prompts by item",
        "examples_train": int(tr.sum()),
        "examples_heldout": int((~tr).sum()),
    }
    full = PromptClassifier().fit(ds.texts, {"cot": ds.cot, "rubric": ds.rubric})
    return full, metrics


# -- account-level data -----------------------------------------------------------------------------------


def read_labels(records: Iterable[dict[str, Any]]) -> dict[str, tuple[str, str, str | None]]:
    """account -> (kind, persona, split) from the simulator's labels (first record wins)."""
    out: dict[str, tuple[str, str, str | None]] = {}
    for rec in records:
        aid = rec.get("account_id")
        if aid in out or not isinstance(rec.get("label"), str):
            continue
        kind, _, persona = rec["label"].partition(":")
        meta = rec.get("label_meta") or {}
        out[aid] = (kind, meta.get("persona") or persona, meta.get("split"))
    return out


def load_dicts(path: str | Path) -> list[dict[str, Any]]:
    with open(path, "rb") as fh:
        return [orjson.loads(line) for line in fh if line.strip()]


@dataclass
class Samples:
    """Feature rows: one per account checkpoint; `final` marks each account's last row, `n` is the number of
    requests the account had sent at that checkpoint."""

    rows: list[dict[str, float]] = field(default_factory=list)
    y: list[int] = field(default_factory=list)
    account: list[str] = field(default_factory=list)
    final: list[bool] = field(default_factory=list)
    persona: list[str] = field(default_factory=list)
    n: list[int] = field(default_factory=list)

    def extend(self, other: Samples) -> None:
        for name in ("rows", "y", "account", "final", "persona", "n"):
            getattr(self, name).extend(getattr(other, name))


def _null_model(classifier: PromptClassifier) -> DetectionModel:
    comb = Combiner([], 0.0, [])
    return DetectionModel("collecting", {"full": comb, "noembed": comb}, classifier.to_dict())


def _snapshots(
    records: list[dict[str, Any]], model: DetectionModel, encoder: Encoder | None, tag: str
) -> list[tuple[str, int, dict[str, float]]]:
    """Replay records (labels stripped on reading) through the engine: (account, requests, features) at
    every rescore, in order."""
    with tempfile.NamedTemporaryFile(suffix=".jsonl") as tmp:
        for rec in records:
            tmp.write(orjson.dumps(rec) + b"\n")
        tmp.flush()
        errors = LineErrors()
        snaps: list[tuple[str, int, dict[str, float]]] = []

        def hook(engine: Any) -> None:
            engine.snapshots = snaps

        analyze_records(
            read_records(tmp.name, errors),
            model=model,
            encoder=encoder,
            errors=errors,
            on_engine=hook,
            source=tag,
        )
    return snaps


def collect(
    records: list[dict[str, Any]], classifier: PromptClassifier, encoder: Encoder | None, tag: str, split: str = "dev"
) -> Samples:
    """Replay labelled records through the engine and keep every checkpoint's features (dev split only)."""
    labels = read_labels(records)
    snaps = _snapshots(records, _null_model(classifier), encoder, tag)
    out = Samples()
    last: dict[str, int] = {}
    for aid, n, feats in snaps:
        lab = labels.get(aid)
        if lab is None or lab[2] != split:
            continue
        last[aid] = len(out.rows)
        out.rows.append(feats)
        out.y.append(1 if lab[0] == "attack" else 0)
        out.account.append(f"{tag}/{aid}")
        out.final.append(False)
        out.persona.append(f"{lab[0]}:{lab[1]}")
        out.n.append(n)
    for idx in last.values():
        out.final[idx] = True
    return out


def _matrix(s: Samples, features: list[str]) -> np.ndarray:
    return np.asarray([[row.get(f, 0.0) for f in features] for row in s.rows], dtype=np.float64)


def _weights(s: Samples) -> np.ndarray:
    """Each account weighs 1 across its checkpoints, its final state 1 more; classes balanced."""
    counts: dict[str, int] = {}
    for a in s.account:
        counts[a] = counts.get(a, 0) + 1
    w = np.asarray([1.0 / counts[a] + (1.0 if f else 0.0) for a, f in zip(s.account, s.final, strict=True)])
    y = np.asarray(s.y)
    for cls in (0, 1):
        tot = w[y == cls].sum()
        if tot > 0:
            w[y == cls] *= len(w) / (2 * tot)
    return w


def fit_combiner(
    s: Samples, features: list[str], fpr_suspicious: float, fpr_extraction: float, seed: int = 0, folds: int = 4
) -> tuple[Combiner, dict[str, Any]]:
    """Fit on all rows; set thresholds on out-of-fold risks of benign accounts' final states."""
    x = _matrix(s, features)
    y = np.asarray(s.y)
    w = _weights(s)
    accounts = sorted(set(s.account))
    fold_of = {a: i % folds for i, a in enumerate(random.Random(seed).sample(accounts, len(accounts)))}
    fold = np.asarray([fold_of[a] for a in s.account])
    oof = np.full(len(y), np.nan)
    for k in range(folds):
        tr, te = fold != k, fold == k
        if len(set(y[tr])) < 2 or not te.any():
            continue
        c = Combiner.fit(x[tr], y[tr], features, weight=w[tr], seed=seed)
        oof[te] = c.logits(x[te])
    comb = Combiner.fit(x, y, features, weight=w, seed=seed)
    final = np.asarray(s.final)
    benign = final & (y == 0) & ~np.isnan(oof)
    comb.calibrate(oof[benign], fpr_suspicious, fpr_extraction, _benign_peaks(s, oof))
    levels = _population_levels(s, oof)
    if levels:
        comb.set_population_reference(levels, "out-of-fold log-odds of the training files (round 0)")
    attack = final & (y == 1) & ~np.isnan(oof)
    tpr = float(np.mean(oof[attack] >= comb.t_suspicious)) if attack.any() else math.nan
    stats = {
        "rows": len(y),
        "accounts": len(accounts),
        "benign_accounts": int(benign.sum()),
        "attack_accounts": int(attack.sum()),
        "oof_tpr_final": tpr,
        "folds": folds,
    }
    return comb, stats


def _population_levels(s: Samples, logits: np.ndarray) -> list[float]:
    """Each round-0 training file's population level (scoring.OperatingPoint), labels unused: every account's
    final log-odds with at least MIN_EVIDENCE requests. Account keys are "r0/<file>/<account>"."""
    by_file: dict[str, list[float]] = {}
    if len(s.n) != len(s.y):
        return []
    for a, f, n, v in zip(s.account, s.final, s.n, logits, strict=True):
        if f and a.startswith("r0/") and n >= MIN_EVIDENCE and not math.isnan(v):
            by_file.setdefault(a.rsplit("/", 1)[0], []).append(float(v))
    return [lv for lv in map(population_level, by_file.values()) if lv is not None]


def _benign_peaks(s: Samples, logits: np.ndarray) -> np.ndarray | None:
    """Each benign account's highest logit over its checkpoints with at least MIN_EVIDENCE requests (the
    engine does not flag an account on fewer on its own evidence); None when the rows carry no counts."""
    if len(s.n) != len(s.y):
        return None
    peak: dict[str, float] = {}
    for a, yy, n, v in zip(s.account, s.y, s.n, logits, strict=True):
        if yy == 0 and n >= MIN_EVIDENCE and not math.isnan(v):
            peak[a] = max(peak.get(a, -math.inf), float(v))
    return np.asarray(list(peak.values()), dtype=np.float64)


@dataclass
class Trace:
    """One labelled account replayed through a trained model: its logit at each rescore with at least
    MIN_EVIDENCE requests, as (requests so far, logit), and how many requests it sent in all."""

    kind: str
    persona: str
    requests: int = 0
    scores: list[tuple[int, float]] = field(default_factory=list)

    @property
    def peak(self) -> float:
        return max((v for _, v in self.scores), default=-math.inf)

    def after_first(self, threshold: float) -> int:
        """Requests the account sent after it was first scored at or above `threshold` (0: never)."""
        for n, v in self.scores:
            if v >= threshold:
                return self.requests - n
        return 0


def streaming_traces(
    records: list[dict[str, Any]], model: DetectionModel, tag: str, encoder: Encoder | None = None, split: str = "dev"
) -> list[dict[str, Trace]]:
    """Replay labelled traffic with a trained model: a Trace per account of `split`, for each of the model's
    combiners (DetectionModel.members, in that order), from one replay."""
    labels = read_labels(records)
    members = model.members(encoder is not None)
    out: list[dict[str, Trace]] = [{} for _ in members]
    for rec in records:
        lab = labels.get(rec.get("account_id"))
        if lab is not None and lab[2] == split:
            for traces in out:
                t = traces.setdefault(rec["account_id"], Trace(lab[0], lab[1]))
                t.requests += 1
    for aid, n, feats in _snapshots(records, model, encoder, tag):
        if aid not in out[0] or n < MIN_EVIDENCE:
            continue
        for comb, traces in zip(members, out, strict=True):
            traces[aid].scores.append((n, comb.logit(comb.vector(feats))))
    return out


def _robustness(model_comb: Combiner, s: Samples, features: list[str]) -> dict[str, Any]:
    """Share of attack accounts (final state) flagged, and of benign ones, at the model's thresholds."""
    if not s.rows:
        return {}
    x = _matrix(s, features)
    logits = model_comb.logits(x)
    y = np.asarray(s.y)
    final = np.asarray(s.final)
    flagged = logits >= model_comb.t_suspicious
    per: dict[str, list[int]] = {}
    for p, f, fl, yy in zip(s.persona, s.final, flagged, y, strict=True):
        if f and yy == 1:
            per.setdefault(p, [0, 0])
            per[p][0] += int(fl)
            per[p][1] += 1
    return {
        "attack_tpr": float(np.mean(flagged[final & (y == 1)])) if (final & (y == 1)).any() else None,
        "benign_fpr": float(np.mean(flagged[final & (y == 0)])) if (final & (y == 0)).any() else None,
        "per_persona_tpr": {p: k / n for p, (k, n) in sorted(per.items())},
    }


def train(
    traffic: list[Path],
    *,
    encoder: Encoder | None,
    rounds: int = 2,
    seed: int = 0,
    fpr_suspicious: float = 0.001,
    fpr_extraction: float = 0.0002,
    version: str | None = None,
    progress: Progress | None = None,
    machine_pace: bool = True,
) -> DetectionModel:
    """Train a model from labelled traffic files (dev split rows only), with `rounds` adversarial rounds
    (`machine_pace`: half of round 1's evasive attackers send at machine pace, `adversary.evasive`)."""

    def step(msg: str, i: int, n: int | None) -> None:
        if progress is not None:
            progress(msg, i, n)

    clf, clf_metrics = train_classifier(seed)
    datasets = [(p, load_dicts(p)) for p in traffic]
    samples = Samples()
    for i, (p, recs) in enumerate(datasets):
        step("collecting features", i, len(datasets))
        samples.extend(collect(recs, clf, encoder, f"r0/{p.name}"))
    step("collecting features", len(datasets), len(datasets))
    all_features = sorted({k for row in samples.rows for k in row} - set(CONTENT_FEATURES))
    noembed = [f for f in all_features if f not in EMBEDDING_FEATURES]
    comb, stats = fit_combiner(samples, all_features if encoder else noembed, fpr_suspicious, fpr_extraction, seed)
    rounds_report: list[dict[str, Any]] = [{"round": 0, "data": "simulator traffic (dev split)", **stats}]
    for rnd in range(1, rounds + 1):
        evasive = Samples()
        for i, (p, recs) in enumerate(datasets):
            step(f"round {rnd}: evasive variants", i, len(datasets))
            from distillshield.detect.adversary import evasive as make_evasive

            variants = make_evasive(recs, rnd, seed + 100 * rnd + i, pace=machine_pace)
            evasive.extend(collect(variants, clf, encoder, f"r{rnd}/{p.name}"))
        before = _robustness(comb, evasive, comb.features)
        samples.extend(evasive)
        comb, stats = fit_combiner(samples, comb.features, fpr_suspicious, fpr_extraction, seed)
        after = _robustness(comb, evasive, comb.features)
        rounds_report.append(
            {
                "round": rnd,
                "data": "evasive variants: paraphrase, timing jitter, cover traffic, spread over more accounts",
                "before_retrain": before,
                "after_retrain": after,
                **stats,
            }
        )
    combiners = {"full" if encoder else "noembed": comb}
    if encoder is not None:
        combiners["noembed"], ne_stats = fit_combiner(samples, noembed, fpr_suspicious, fpr_extraction, seed)
    now = dt.datetime.now(dt.UTC)
    meta = {
        "created": now.isoformat(timespec="seconds"),
        "encoder": encoder.name if encoder else None,
        "traffic": [str(p) for p in traffic],
        "tuned_on": "dev split only",
        "fpr_targets": {"suspicious": fpr_suspicious, "extraction": fpr_extraction},
        "prompt_classifier": clf_metrics,
        "rounds": rounds_report,
        "machine_pace": machine_pace,
        "seed": seed,
    }
    return DetectionModel(version or now.strftime("%Y.%m.%d-%H%M"), combiners, clf.to_dict(), meta)
