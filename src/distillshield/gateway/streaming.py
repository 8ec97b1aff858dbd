"""An ASGI response for server-sent events that always cleans up.

Starlette's StreamingResponse leaves a half-read body iterator to the garbage collector when the client
goes away, which is how gateways leak concurrency slots on cancelled streams. This response watches
for the disconnect itself, cancels the stream at once, closes the iterator and calls `on_close` on
every path: finished, client gone, upstream failure, server shutdown (which ends the stream with the
protocol's error event, not a bare cut).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Literal

from starlette.types import Receive, Scope, Send

# How a stream's response ended: its body ran out (finished, or an upstream error it reported itself), the
# client went away, or the server cut it (shutdown past its graceful timeout cancels the request).
Ending = Literal["finished", "client", "server"]


class LastChunk(bytes):
    """The body's final bytes: sent with more_body=False, so the end of the chunked body goes out in the
    same write instead of a write (and a send through the server) of its own."""

    __slots__ = ()


class SSEResponse:
    media_type = b"text/event-stream"

    def __init__(
        self,
        chunks: AsyncGenerator[bytes, None],
        headers: dict[str, str],
        on_close: Callable[[Ending], Awaitable[None]],
        *,
        watch_disconnect: bool = True,
        cut_event: bytes | Callable[[], bytes] = b"",
    ) -> None:
        """`watch_disconnect=False` when `chunks` never waits for anything (the upstream's whole stream came
        in its first read): the body then goes out in one LastChunk, and a disconnect only counts before the
        last chunk is handed to `send`, so the watcher could never act; not starting it saves a task, a
        receive() and a cancellation per stream. A body that waits needs the watcher (uvicorn's `send`
        returns without error on a closed connection, so nothing else would notice the client leaving).
        `cut_event`: the protocol's error event, sent as the last bytes when the server cuts the stream (or a
        function that makes it then, for protocols whose events are numbered)."""
        self.chunks = chunks
        self.on_close = on_close
        self.watch_disconnect = watch_disconnect
        self.cut_event = cut_event
        self.raw_headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
        ] + [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        assert task is not None
        client_gone = False
        finished = False

        async def watch_disconnect() -> None:
            nonlocal client_gone
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    if not finished:
                        client_gone = True
                        task.cancel()
                    return

        watcher = asyncio.create_task(watch_disconnect()) if self.watch_disconnect else None
        ending: Ending = "finished"
        started = False
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            started = True
            ended = False
            async for chunk in self.chunks:
                ended = type(chunk) is LastChunk
                if ended:
                    finished = True
                await send({"type": "http.response.body", "body": chunk, "more_body": not ended})
            finished = True
            if not ended:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not client_gone:
                # The server cancelled the request (shutdown past its graceful timeout): tell the client
                # with the protocol's error event rather than cut the connection mid-event, then let the
                # cancellation proceed.
                ending = "server"
                if started and not finished and self.cut_event:
                    cut = self.cut_event if isinstance(self.cut_event, bytes) else self.cut_event()
                    try:
                        await send({"type": "http.response.body", "body": cut, "more_body": False})
                    except (OSError, RuntimeError):
                        pass  # the connection is already gone
                raise
            task.uncancel()
        except OSError:  # writing to a connection the client already closed
            client_gone = True
        finally:
            finished = True
            if client_gone:
                ending = "client"
            if watcher is not None:
                watcher.cancel()
            try:
                await self.chunks.aclose()
            finally:
                await self.on_close(ending)
