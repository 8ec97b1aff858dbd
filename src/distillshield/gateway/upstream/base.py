"""The Upstream protocol: what every model back end offers the gateway.

The gateway speaks OpenAI's chat/completions shapes internally: every upstream takes an OpenAI-format
body and returns an OpenAI-format response (or stream of chunks). The Anthropic endpoint translates
at the edge (protocols/anthropic.py). Embeddings (`embed`) take and return OpenAI's embeddings shapes.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Protocol, runtime_checkable

import numpy as np

# A per-request logits hook: (input token ids, next-token scores) -> scores. Only upstreams that
# run the model in-process (the embedded one) can honour it; the watermark builds on this.
LogitsHook = Callable[[np.ndarray, np.ndarray], np.ndarray]


class ChunkBatch(NamedTuple):
    """Stream chunks that arrived together (in one read from the model server).

    `chunks` pairs each parsed chunk with the upstream's own JSON bytes for it (None when the upstream has
    none, e.g. the embedded model), so the gateway can pass an untouched chunk on without serialising it
    again and write a whole batch to the client at once. `last`: the upstream's stream ends with it.
    """

    chunks: list[tuple[bytes | None, dict[str, Any]]]
    last: bool = False


async def batches_of(chunks: AsyncIterator[dict[str, Any]]) -> AsyncGenerator[ChunkBatch, None]:
    """One-chunk batches for an upstream that only offers `stream` (the embedded model, test doubles)."""
    try:
        async for chunk in chunks:
            yield ChunkBatch([(None, chunk)])
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()


@dataclass
class GenRequest:
    """One generation as the upstream sees it."""

    api: Literal["chat", "completions", "embeddings"]
    body: dict[str, Any]  # OpenAI-format request body, max_tokens already bounded
    model: str
    stream: bool
    max_tokens: int
    prompt_text: str  # the prompt as plain text, for estimates and the audit log
    n: int = 1  # choices to generate (embeddings: the number of inputs)
    logits_hook: LogitsHook | None = None
    account_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Upstream(Protocol):
    """A model server. `stream` yields OpenAI chunk dicts; the last one with usage, when known."""

    name: str

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def ready(self) -> bool: ...

    def models(self) -> list[str]: ...

    async def complete(self, req: GenRequest) -> dict[str, Any]: ...

    def stream(self, req: GenRequest) -> AsyncIterator[dict[str, Any]]: ...

    def stream_batches(self, req: GenRequest) -> AsyncGenerator[ChunkBatch, None]:
        """The same chunks grouped as they arrived, with their raw bytes where the upstream has them (see
        HttpUpstream); what the gateway relays. An upstream with nothing better returns
        `batches_of(self.stream(req))`."""
        ...

    async def embed(self, req: GenRequest) -> dict[str, Any]:
        """An embeddings request (api "embeddings", its body validated by protocols/embeddings.py) -> OpenAI's
        embeddings list, one vector per input in the body's `encoding_format`, with `usage.prompt_tokens`."""
        ...
