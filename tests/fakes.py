"""Test doubles: an in-process Upstream and a real HTTP OpenAI-compatible mock server."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import numpy as np
import orjson
from aiohttp import web

from distillshield.gateway.protocols.embeddings import embedding_list, input_texts
from distillshield.gateway.upstream.base import ChunkBatch, GenRequest, batches_of

FAKE_DIMS = 8


def fake_vector(text: str) -> np.ndarray:
    """The fake upstream's embedding of `text` before normalisation: FAKE_DIMS numbers from its hash."""
    digest = hashlib.blake2b(text.encode(), digest_size=FAKE_DIMS).digest()
    return np.frombuffer(digest, dtype=np.uint8).astype(np.float32) - 127.5


class FakeUpstream:
    """Answers with `words` (one stream chunk per word); usage = prompt_tokens + one token per word."""

    name = "fake"

    def __init__(
        self, words: int = 8, chunk_delay: float = 0.0, prompt_tokens: int = 10, model: str = "fake-model"
    ) -> None:
        self.words = words
        self.chunk_delay = chunk_delay
        self.prompt_tokens = prompt_tokens
        self.model = model
        self.calls = 0
        self.closed_streams = 0
        self.embed_bodies: list[dict[str, Any]] = []  # the bodies `embed` was given

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def ready(self) -> bool:
        return True

    def models(self) -> list[str]:
        return [self.model]

    def _n(self, req: GenRequest) -> int:
        return min(self.words, req.max_tokens)

    async def complete(self, req: GenRequest) -> dict[str, Any]:
        self.calls += 1
        n = self._n(req)
        text = " ".join(f"w{i}" for i in range(n))
        usage = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": n,
            "total_tokens": self.prompt_tokens + n,
        }
        if req.api == "chat":
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "length",
            }
            return {
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": req.model,
                "choices": [choice],
                "usage": usage,
            }
        return {
            "id": "cmpl-fake",
            "object": "text_completion",
            "created": int(time.time()),
            "model": req.model,
            "choices": [{"index": 0, "text": text, "finish_reason": "length"}],
            "usage": usage,
        }

    def stream_batches(self, req: GenRequest) -> AsyncGenerator[ChunkBatch, None]:
        return batches_of(self.stream(req))

    async def embed(self, req: GenRequest) -> dict[str, Any]:
        """FAKE_DIMS-dimensional vectors that depend on the text only (fake_vector); `prompt_tokens` per input."""
        self.calls += 1
        self.embed_bodies.append(dict(req.body))
        texts = input_texts(req.body)
        vectors = np.stack([fake_vector(t) for t in texts])
        return embedding_list(vectors, req.body, req.model, self.prompt_tokens * len(texts))

    async def stream(self, req: GenRequest) -> AsyncIterator[dict[str, Any]]:
        self.calls += 1
        n = self._n(req)
        try:
            for i in range(n):
                if self.chunk_delay:
                    await asyncio.sleep(self.chunk_delay)
                if req.api == "chat":
                    choice = {"index": 0, "delta": {"content": f"w{i} "}, "finish_reason": None}
                else:
                    choice = {"index": 0, "text": f"w{i} ", "finish_reason": None}
                yield {
                    "id": "x",
                    "object": "chat.completion.chunk",
                    "created": 0,
                    "model": req.model,
                    "choices": [choice],
                }
            last = (
                {"index": 0, "delta": {}, "finish_reason": "length"}
                if req.api == "chat"
                else {"index": 0, "text": "", "finish_reason": "length"}
            )
            yield {
                "id": "x",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": req.model,
                "choices": [last],
            }
            yield {
                "id": "x",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": req.model,
                "choices": [],
                "usage": {
                    "prompt_tokens": self.prompt_tokens,
                    "completion_tokens": n,
                    "total_tokens": self.prompt_tokens + n,
                },
            }
        finally:
            self.closed_streams += 1


class MockOpenAIServer:
    """A real aiohttp server speaking the OpenAI API, in a thread. `delay` makes it slow."""

    def __init__(self, port: int, delay: float = 0.0, status: int = 200) -> None:
        self.port = port
        self.delay = delay
        self.status = status
        self.embed_bodies: list[dict[str, Any]] = []  # the bodies /v1/embeddings received
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.status != 200:
            return web.json_response({"error": {"message": "mock failure"}}, status=self.status)
        usage = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
        if not body.get("stream"):
            return web.json_response(
                {
                    "id": "chatcmpl-mock",
                    "object": "chat.completion",
                    "created": 0,
                    "model": body["model"],
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "a b c"},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": usage,
                }
            )
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        for tok in ("a ", "b ", "c"):
            chunk = {
                "id": "c",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": body["model"],
                "choices": [{"index": 0, "delta": {"content": tok}, "finish_reason": None}],
            }
            await resp.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
        await resp.write(
            b'data: {"id":"c","object":"chat.completion.chunk","created":0,"model":"m","choices":'
            b'[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
        )
        if (body.get("stream_options") or {}).get("include_usage"):
            await resp.write(
                b"data: "
                + orjson.dumps(
                    {
                        "id": "c",
                        "object": "chat.completion.chunk",
                        "created": 0,
                        "model": "m",
                        "choices": [],
                        "usage": usage,
                    }
                )
                + b"\n\n"
            )
        await resp.write(b"data: [DONE]\n\n")
        return resp

    async def _embeddings(self, request: web.Request) -> web.Response:
        """OpenAI's /v1/embeddings: fake_vector of each input, in the body's encoding; 2 tokens per input."""
        body = await request.json()
        self.embed_bodies.append(body)
        if self.status != 200:
            return web.json_response({"error": {"message": "mock failure"}}, status=self.status)
        given = body["input"]
        texts = [given] if isinstance(given, str) else given
        answer = embedding_list(np.stack([fake_vector(t) for t in texts]), body, body["model"], 2 * len(texts))
        return web.json_response(answer)

    async def _models(self, _request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "mock-model", "object": "model"}]})

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_get("/v1/models", self._models)
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        self._loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", self.port).start())
        self._ready.set()
        self._loop.run_forever()

    def start(self) -> MockOpenAIServer:
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        assert self._loop is not None and self._runner is not None
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


class ReasoningUpstream(FakeUpstream):
    """Answers like a reasoning model: a `reasoning_content` field, a <think> block in the text (split
    across stream chunks, the tags cut in two) and logprobs when asked. Keeps each request body seen."""

    REASONING = "Let me work it out: 6 times 7."
    CHUNKS = ("<thi", "nk>secret chain ", "of thought</th", "ink>\n\nThe answer", " is 42.")
    TEXT = "".join(CHUNKS)
    ANSWER = "The answer is 42."

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.bodies: list[dict[str, Any]] = []

    async def complete(self, req: GenRequest) -> dict[str, Any]:
        self.calls += 1
        self.bodies.append(dict(req.body))
        n = int(req.body.get("n") or 1)
        usage = {"prompt_tokens": self.prompt_tokens, "completion_tokens": 12, "total_tokens": self.prompt_tokens + 12}
        lp = {"content": [{"token": "The", "logprob": -0.1, "bytes": None, "top_logprobs": []}]}
        if req.api == "chat":
            choices = [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": self.TEXT, "reasoning_content": self.REASONING},
                    "logprobs": lp if req.body.get("logprobs") else None,
                    "finish_reason": "stop",
                }
                for i in range(n)
            ]
            return {"id": "chatcmpl-r", "object": "chat.completion", "created": int(time.time()),
                    "model": req.model, "choices": choices, "usage": usage}  # fmt: skip
        choices = [{"index": i, "text": self.TEXT, "logprobs": None, "finish_reason": "stop"} for i in range(n)]
        return {"id": "cmpl-r", "object": "text_completion", "created": int(time.time()),
                "model": req.model, "choices": choices, "usage": usage}  # fmt: skip

    async def stream(self, req: GenRequest) -> AsyncIterator[dict[str, Any]]:
        self.calls += 1
        self.bodies.append(dict(req.body))
        base = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": req.model}
        try:
            if req.api == "chat":
                role = {"role": "assistant", "content": ""}
                yield {**base, "choices": [{"index": 0, "delta": role, "finish_reason": None}]}
                for part in ("Let me work it out: ", "6 times 7."):
                    delta = {"reasoning_content": part}
                    yield {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
            for part in self.CHUNKS:
                if self.chunk_delay:
                    await asyncio.sleep(self.chunk_delay)
                choice = (
                    {"index": 0, "delta": {"content": part}, "finish_reason": None}
                    if req.api == "chat"
                    else {"index": 0, "text": part, "finish_reason": None}
                )
                yield {**base, "choices": [choice]}
            last = (
                {"index": 0, "delta": {}, "finish_reason": "stop"}
                if req.api == "chat"
                else {"index": 0, "text": "", "finish_reason": "stop"}
            )
            yield {**base, "choices": [last]}
            usage = {"prompt_tokens": self.prompt_tokens, "completion_tokens": 12}
            yield {**base, "choices": [], "usage": {**usage, "total_tokens": self.prompt_tokens + 12}}
        finally:
            self.closed_streams += 1
