"""Any OpenAI-compatible model server (vLLM, llama.cpp server, a hosted API) over one pooled aiohttp session.

aiohttp rather than httpx: its connection pool holds up under concurrency (httpx's tops out 5-10x
lower on this kind of load). Streams are passed through chunk by chunk. Failures become UpstreamError
with a message that says what failed: cannot connect (502), too slow (504), broken answer (502),
or the server's own 4xx rejection passed on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import aiohttp
import orjson

from distillshield.config import HttpUpstreamSettings
from distillshield.gateway.errors import UpstreamError
from distillshield.gateway.upstream.base import ChunkBatch, GenRequest

log = logging.getLogger("distillshield.upstream")
_PASSED_4XX = (400, 404, 413, 422)


class HttpUpstream:
    name = "http"

    def __init__(self, cfg: HttpUpstreamSettings) -> None:
        self.cfg = cfg
        self._session: aiohttp.ClientSession | None = None
        self._models: list[str] = list(cfg.models)
        self._headers = {"content-type": "application/json"}
        if cfg.api_key:
            self._headers["authorization"] = f"Bearer {cfg.api_key}"

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=self.cfg.max_connections, ttl_dns_cache=300, keepalive_timeout=30)
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self.cfg.connect_timeout_s, sock_read=self.cfg.read_timeout_s
        )
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=timeout, headers=self._headers, auto_decompress=True
        )
        if not self._models:
            try:
                async with self._session.get(f"{self.cfg.base_url}/models") as resp:
                    data = orjson.loads(await resp.read())
                self._models = [m["id"] for m in data.get("data", []) if isinstance(m, dict) and "id" in m]
            except (TimeoutError, aiohttp.ClientError, orjson.JSONDecodeError, AttributeError) as exc:
                log.warning(
                    "could not list models at %s/models (%s); any model name is passed on",
                    self.cfg.base_url,
                    exc,
                )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def ready(self) -> bool:
        return self._session is not None

    def models(self) -> list[str]:
        return self._models

    def _url(self, req: GenRequest) -> str:
        return f"{self.cfg.base_url}/{'chat/completions' if req.api == 'chat' else 'completions'}"

    def _fail(self, exc: BaseException) -> UpstreamError:
        where = f"the model server at {self.cfg.base_url}"
        if isinstance(exc, asyncio.TimeoutError):
            return UpstreamError(
                504,
                f"the model server did not answer within {self.cfg.read_timeout_s:g} s",
                f"{where} did not answer within {self.cfg.read_timeout_s:g} s",
            )
        if isinstance(exc, aiohttp.ClientConnectorError):
            return UpstreamError(
                502, "cannot connect to the model server", f"cannot connect to {where}: {exc.os_error}"
            )
        return UpstreamError(502, "the model server failed", f"{where} failed: {type(exc).__name__}: {exc}")

    async def _check_status(self, resp: aiohttp.ClientResponse) -> None:
        if resp.status < 400:
            return
        raw = await resp.read()
        try:
            detail = orjson.loads(raw).get("error", {})
            detail = detail.get("message", detail) if isinstance(detail, dict) else detail
        except (orjson.JSONDecodeError, AttributeError):
            detail = raw[:200].decode("utf-8", "replace")
        if resp.status in _PASSED_4XX:
            raise UpstreamError(resp.status, f"the model server rejected the request: {detail}")
        raise UpstreamError(
            502,
            f"the model server failed (HTTP {resp.status})",
            f"the model server at {self.cfg.base_url} returned HTTP {resp.status}: {detail}",
        )

    async def complete(self, req: GenRequest) -> dict[str, Any]:
        return await self._post(self._url(req), req.body)

    async def embed(self, req: GenRequest) -> dict[str, Any]:
        """The body as validated, to the server's /embeddings; its answer as it came (the gateway checks it)."""
        return await self._post(f"{self.cfg.base_url}/embeddings", req.body)

    async def _post(self, url: str, body: dict[str, Any]) -> dict[str, Any]:
        assert self._session is not None, "upstream not started"
        try:
            async with self._session.post(url, data=orjson.dumps(body)) as resp:
                await self._check_status(resp)
                raw = await resp.read()
        except UpstreamError:
            raise
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self._fail(exc) from None
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise UpstreamError(
                502, "the model server answered with invalid JSON", f"{self.cfg.base_url}: invalid JSON: {raw[:200]!r}"
            ) from None
        if not isinstance(data, dict):
            raise UpstreamError(502, "the model server answered with a non-object")
        return data

    async def stream(self, req: GenRequest) -> AsyncIterator[dict[str, Any]]:
        batches = self.stream_batches(req)
        try:
            async for batch in batches:
                for _raw, chunk in batch.chunks:
                    yield chunk
        finally:
            await batches.aclose()

    async def stream_batches(self, req: GenRequest) -> AsyncGenerator[ChunkBatch, None]:
        """The stream's chunks, grouped by the read they arrived in, each with its own JSON bytes."""
        assert self._session is not None, "upstream not started"
        body = dict(req.body)
        body["stream"] = True
        # Ask for the usage chunk so the reservation settles to real numbers; the pipeline drops it
        # again if the client did not ask for it.
        body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        loads = orjson.loads
        try:
            async with self._session.post(self._url(req), data=orjson.dumps(body)) as resp:
                await self._check_status(resp)
                # Lines are split out of whole reads: `async for line in resp.content` awaits once per
                # line (two per event), one of the largest CPU costs of relaying a stream. The chunks of
                # one read go on as one batch, so the gateway writes them to the client at once.
                rest = b""
                while True:
                    data = await resp.content.readany()
                    if data:
                        lines = (rest + data).split(b"\n")
                        rest = lines.pop()  # an incomplete line waits for the next read
                    elif rest:  # end of body: the last line had no newline
                        lines, rest = [rest], b""
                    else:
                        return
                    batch: list[tuple[bytes | None, dict[str, Any]]] = []
                    for line in lines:
                        if not line.startswith(b"data:"):
                            continue
                        payload = line[5:].strip()
                        if payload == b"[DONE]":
                            yield ChunkBatch(batch, last=True)
                            return
                        try:
                            chunk = loads(payload)
                        except orjson.JSONDecodeError:
                            raise UpstreamError(502, "the model server sent a stream chunk that is not JSON") from None
                        if not isinstance(chunk, dict):
                            raise UpstreamError(502, "the model server sent a stream chunk that is not an object")
                        batch.append((payload, chunk))
                    if batch:
                        yield ChunkBatch(batch)
        except UpstreamError:
            raise
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self._fail(exc) from None
