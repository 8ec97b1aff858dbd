"""Suspect-model audit: was a model trained on our watermarked outputs? (Sander et al. 2024,
"Watermarking makes language models radioactive".)

A student trained on watermarked text learns, a little, to prefer each context's green tokens. Its
own outputs then carry a weak version of the watermark: too weak for one text, visible over many.
The test pools the suspect's outputs, scores each distinct (context, token) pair once (repeated
pairs would count the same draw many times: without de-duplication the test gives false
positives, as Sander et al. show) and reports the exact p-value under the null "this model never
saw text marked with this key". Optionally only pairs whose context occurs in a reference corpus
(what we served the suspected accounts) are scored, which concentrates the test where the student
can have learnt the bias (Sander et al.'s filter).

`query_target` gets the suspect's outputs from an OpenAI-compatible endpoint with probe prompts.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from distillshield.watermark.attribution import Attribution, attribute
from distillshield.watermark.base import Detection, scored_pairs
from distillshield.watermark.keys import WatermarkKey
from distillshield.watermark.schemes import Scheme

# Generic probes: open-ended, varied, so the suspect writes many distinct contexts.
DEFAULT_PROBES = [
    "Write a short story about a lighthouse keeper.",
    "Explain how photosynthesis works.",
    "What are the benefits of regular exercise?",
    "Describe the water cycle for a ten-year-old.",
    "Give me advice on learning a new language.",
    "Explain the difference between weather and climate.",
    "Write a letter to a friend about a recent trip.",
    "What makes a good team leader?",
    "Summarise the causes of the French Revolution.",
    "How does a computer store information?",
    "Describe your ideal weekend.",
    "Explain why the sky is blue.",
    "Write a product description for a reusable water bottle.",
    "What are some tips for better sleep?",
    "Explain what a black hole is.",
    "Describe how to make a simple vegetable soup.",
    "What is the importance of biodiversity?",
    "Write a poem about autumn leaves.",
    "How do vaccines work?",
    "Give three arguments for public libraries.",
    "Explain how a bill becomes a law.",
    "Describe the life cycle of a butterfly.",
    "What should I consider when buying a used car?",
    "Explain the basics of supply and demand.",
    "Write a short dialogue between a teacher and a student.",
    "How do plants adapt to desert environments?",
    "What are the main features of Renaissance art?",
    "Explain what machine learning is in simple terms.",
    "Describe a busy market in the morning.",
    "How can communities reduce plastic waste?",
    "Explain how the heart pumps blood.",
    "Write a motivational message for students before exams.",
]


@dataclass(frozen=True)
class AuditResult:
    detection: Detection
    samples: int
    filtered: bool
    alpha: float

    @property
    def radioactive(self) -> bool:
        return self.detection.scored > 0 and self.detection.p_value < self.alpha

    def as_dict(self) -> dict[str, Any]:
        d = self.detection.as_dict()
        d.update(samples=self.samples, filtered=self.filtered, alpha=self.alpha, radioactive=self.radioactive)
        d.pop("detected", None)
        return d


def _filter(
    contexts: np.ndarray, tokens: np.ndarray, reference: Iterable[Sequence[int]] | None, h: int
) -> tuple[np.ndarray, np.ndarray]:
    if reference is None:
        return contexts, tokens
    ref_ctx, _, _ = scored_pairs(list(reference), h, dedup=True)
    if ref_ctx.size == 0 or contexts.size == 0:
        return contexts[:0], tokens[:0]
    known = {tuple(r) for r in ref_ctx.tolist()}
    keep = np.fromiter((tuple(r) in known for r in contexts.tolist()), dtype=bool, count=contexts.shape[0])
    return contexts[keep], tokens[keep]


def radioactivity_test(
    scheme: Scheme,
    key: WatermarkKey,
    sequences: Iterable[Sequence[int]],
    *,
    reference: Iterable[Sequence[int]] | None = None,
    alpha: float = 1e-3,
) -> AuditResult:
    """The de-duplicated green-token (or Gumbel-score) test over a suspect's outputs, under one key."""
    seqs = [list(s) for s in sequences]
    ctx, tok, seen = scored_pairs(seqs, scheme.context_width, dedup=True)
    ctx, tok = _filter(ctx, tok, reference, scheme.context_width)
    return AuditResult(scheme.score_pairs(key, ctx, tok, seen), len(seqs), reference is not None, alpha)


def radioactivity_attribution(
    scheme: Scheme,
    keys: Sequence[WatermarkKey],
    sequences: Iterable[Sequence[int]],
    *,
    correction: str = "holm",
    alpha: float = 1e-3,
) -> Attribution:
    """The same test under every account key, corrected: whose outputs trained the suspect? Every account is
    named at alpha (no stricter level after the first, unlike a text's attribution): a student distilled by a
    cluster of accounts carries several accounts' marks by design."""
    seqs = [list(s) for s in sequences]
    return attribute(scheme, seqs, keys, correction=correction, alpha=alpha, secondary_alpha=alpha)


def query_target(
    url: str,
    prompts: Sequence[str],
    *,
    model: str | None = None,
    api_key: str | None = None,
    max_tokens: int = 256,
    temperature: float = 1.0,
    samples_per_prompt: int = 1,
    concurrency: int = 4,
    timeout_s: float = 120.0,
    on_done: Callable[[], None] | None = None,
) -> list[str]:
    """Ask an OpenAI-compatible endpoint (base URL ending in /v1) for completions of each probe.

    Raises ValueError with the URL and the server's answer when a call fails.
    """
    base = url.rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise ValueError(f"--target must be an http(s) URL ending in /v1, got {url!r}")
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    if model is None:
        model = _first_model(base, headers, timeout_s)

    def one(prompt: str) -> str:
        body = {
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
            "temperature": temperature,
        }
        req = urllib.request.Request(
            f"{base}/chat/completions", data=json.dumps(body).encode(), headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:  # noqa: S310 - the URL is the user's target
                data = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise ValueError(f"{base}/chat/completions answered {exc.code}: {exc.read()[:200]!r}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise ValueError(f"cannot reach {base}: {getattr(exc, 'reason', exc)}") from None
        finally:
            if on_done is not None:
                on_done()
        try:
            return str(data["choices"][0]["message"]["content"] or "")
        except (KeyError, IndexError, TypeError):
            raise ValueError(f"{base}/chat/completions did not answer in the OpenAI shape") from None

    jobs = [p for p in prompts for _ in range(samples_per_prompt)]
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        return list(pool.map(one, jobs))


def _first_model(base: str, headers: dict[str, str], timeout_s: float) -> str:
    req = urllib.request.Request(f"{base}/models", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:  # noqa: S310 - the user's target
            data = json.loads(resp.read())
        return str(data["data"][0]["id"])
    except (urllib.error.URLError, OSError, KeyError, IndexError, TypeError, ValueError) as exc:
        raise ValueError(f"cannot list models at {base}/models ({exc}); pass --model") from None
