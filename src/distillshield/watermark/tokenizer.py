"""Tokenisation for detection: the text must be split into the token ids the model generated.

`Tokenizer` is the small interface detection needs; `LlamaTokenizer` reads the vocabulary of a
GGUF file (llama.cpp with vocab_only=True: 0.3 s, no weights). Other tokenizers (a Hugging Face
tokenizer for a vLLM-served model, say) plug in by implementing `encode`.
"""

from __future__ import annotations

import threading
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Tokenizer(Protocol):
    name: str
    vocab_size: int

    def encode(self, text: str) -> list[int]: ...


class LlamaTokenizer:
    """The tokenizer of a GGUF model (default: the embedded SmolLM2-135M-Instruct)."""

    def __init__(self, model_path: str | Path | None = None) -> None:
        path = model_file(model_path, "tokenizer")
        self.name = path.name
        self._llama = _vocab_only(str(path))
        self.vocab_size = int(self._llama.n_vocab())
        self._lock = threading.Lock()  # one llama.cpp vocabulary object: serialise callers

    def encode(self, text: str) -> list[int]:
        if not text:
            return []
        with self._lock:
            return list(self._llama.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def decode(self, ids: list[int]) -> str:
        with self._lock:
            return self._llama.detokenize(ids).decode("utf-8", errors="replace")


def model_file(model_path: str | Path | None, what: str) -> Path:
    """The GGUF file given, or the embedded model's; FileNotFoundError naming `what` needs it."""
    from distillshield.gateway.upstream.local import default_model_path

    path = Path(model_path) if model_path else default_model_path()
    if not path.is_file():
        raise FileNotFoundError(f"{what} model {path} does not exist")
    return path


@lru_cache(maxsize=4)
def _vocab_only(path: str) -> Any:
    import atexit
    import contextlib
    import os

    from llama_cpp import Llama

    # llama.cpp prints a context warning on stderr even with verbose=False; keep CLI output clean.
    with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):
        llm = Llama(model_path=path, vocab_only=True, verbose=False)
    # Cached for the process: free it while llama_cpp's module is still whole (left to interpreter
    # teardown, its __del__ finds the library's functions already gone and prints a traceback).
    atexit.register(llm.close)
    return llm


@lru_cache(maxsize=4)
def default_tokenizer(model_path: str | None = None) -> LlamaTokenizer:
    """A cached tokenizer for the embedded model (or the GGUF file given)."""
    return LlamaTokenizer(model_path)
