"""Fault injection shared by benchmarks/reliability_soak.py and the tests: a TCP proxy that can be cut or made
to hang, and a fast OpenAI-compatible mock model server to put behind it.

    python benchmarks/_faults.py upstream --port 9100    # the mock model server, in its own process
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

MODELS = ("fake-model", "mock-model")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TcpProxy:
    """A TCP forwarder (to PostgreSQL, Redis, a model server) that can fail in two ways: `cut()` drops every
    connection and refuses new ones (a server that is down), `hang()` keeps accepting and reading but forwards
    nothing in either direction (a server that hangs). `restore()` ends either; after a hang it also drops the
    connections that were hung, as a restarted server would."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.port = free_port()
        self.target = (target_host, target_port)
        self.loop = asyncio.new_event_loop()
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.hanging = False
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self._call(self._start())

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while data := await r.read(65536):
                if self.hanging:
                    continue  # swallowed: the other side waits for an answer that never comes
                w.write(data)
                await w.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            w.close()

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.writers.add(w)
        if self.hanging:  # accepted, never answered
            try:
                while await r.read(65536):
                    pass
            except (ConnectionError, OSError):
                pass
            return
        try:
            ur, uw = await asyncio.open_connection(*self.target)
        except OSError:
            w.close()
            return
        self.writers.add(uw)
        await asyncio.gather(self._pipe(r, uw), self._pipe(ur, w))

    async def _start(self) -> None:
        if self.server is None:
            self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _drop_all(self) -> None:
        for w in self.writers:
            w.transport.abort()
        self.writers.clear()

    async def _cut(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        await self._drop_all()

    async def _restore(self) -> None:
        if self.hanging:
            self.hanging = False
            await self._drop_all()
        await self._start()

    def cut(self) -> None:
        self._call(self._cut())

    def hang(self) -> None:
        self.hanging = True

    def restore(self) -> None:
        self._call(self._restore())


# -- the mock model server ---------------------------------------------------------------------------------


def serve_upstream(port: int) -> None:
    """An OpenAI-compatible model server (chat and text completions, streamed or not, and /models) that answers
    at once with a short text: the gateway, not the model, is what is measured."""
    import orjson
    from aiohttp import web

    usage = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}

    def chunk(chat: bool, model: str, text: str | None, finish: str | None) -> bytes:
        if chat:
            choice: dict[str, Any] = {"index": 0, "delta": {"content": text} if text else {}, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text or "", "finish_reason": finish}
        obj = "chat.completion.chunk" if chat else "text_completion"
        return b"data: " + orjson.dumps({"id": "c", "object": obj, "created": 0, "model": model,
                                          "choices": [choice]}) + b"\n\n"  # fmt: skip

    async def answer(request: web.Request, chat: bool) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        model = str(body.get("model"))
        if not body.get("stream"):
            if chat:
                choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": "a b c"},
                                          "finish_reason": "stop"}  # fmt: skip
            else:
                choice = {"index": 0, "text": "a b c", "finish_reason": "stop"}
            payload = {"id": "cmpl-mock", "object": "chat.completion" if chat else "text_completion", "created": 0,
                       "model": model, "choices": [choice], "usage": usage}  # fmt: skip
            return web.Response(body=orjson.dumps(payload), content_type="application/json")
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        out = b"".join(chunk(chat, model, t, None) for t in ("a ", "b ", "c")) + chunk(chat, model, None, "stop")
        if (body.get("stream_options") or {}).get("include_usage"):
            tail = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": model, "choices": [],
                    "usage": usage}  # fmt: skip
            out += b"data: " + orjson.dumps(tail) + b"\n\n"
        await resp.write(out + b"data: [DONE]\n\n")
        return resp

    async def chat(request: web.Request) -> web.StreamResponse:
        return await answer(request, True)

    async def completions(request: web.Request) -> web.StreamResponse:
        return await answer(request, False)

    async def models(_request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": m, "object": "model"} for m in MODELS]})

    app = web.Application(client_max_size=64 << 20)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/v1/models", models)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def start_upstream(port: int) -> subprocess.Popen[bytes]:
    """The mock model server in a process of its own (so that it takes no CPU from the load generator's loop)."""
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "upstream", "--port", str(port)])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=1).read()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("the mock model server did not start")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("role", choices=["upstream"])
    ap.add_argument("--port", type=int, required=True)
    serve_upstream(ap.parse_args().port)
