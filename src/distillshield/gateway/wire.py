"""Requests that are not valid HTTP: a JSON 400 and an audit row, as for any other bad input.

uvicorn's HTTP parser (httptools) answers a request it cannot parse itself, with a plain-text 400 and no
call into the application, so the gateway would neither audit it nor answer in the API's error shape. This
subclass of uvicorn's own protocol changes only that answer: the same 400 and connection close, a JSON body
(`{"error": {"code": "invalid_http", ...}}`), and a call to the gateway's hook, which writes the audit row.
Hand-written because no server option covers it; it overrides one documented-by-source method of the
protocol class uvicorn accepts as `http=` and leaves parsing to httptools.

A parse error in the middle of a request the application is already serving (a bad chunk size in a chunked
body) is left to the application, which audits that request itself (the client closed before the whole
body): it is not audited twice.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from distillshield.gateway.errors import ApiError

INVALID_HTTP = "the request is not valid HTTP/1.1 (malformed request line, header or body framing)"


def audited_http_protocol(on_invalid: Callable[[str | None, bytes], None]) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol whose 400 for unparseable requests is JSON and calls
    `on_invalid(client_ip, first_bytes)`."""

    class AuditedHttpToolsProtocol(HttpToolsProtocol):
        _first: bytes = b""  # the start of what the client sent on this connection (for the audit row)

        def data_received(self, data: bytes) -> None:
            if not self._first:
                self._first = data[:512]
            super().data_received(data)

        def send_400_response(self, msg: str) -> None:
            serving = self.cycle is not None and not self.cycle.response_complete
            if not serving:
                try:
                    on_invalid(self.client[0] if self.client else None, self._first)
                except Exception:  # noqa: BLE001 - the answer must go out whatever the hook does
                    self.logger.exception("auditing an invalid HTTP request failed")
            body = ApiError(400, INVALID_HTTP, code="invalid_http").openai_body()
            head = [b"HTTP/1.1 400 Bad Request\r\n"]
            for name, value in self.server_state.default_headers:
                head += [name, b": ", value, b"\r\n"]
            head += [
                b"content-type: application/json\r\n",
                b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                b"connection: close\r\n\r\n",
            ]
            self.transport.write(b"".join(head) + body)
            self.transport.close()

    return AuditedHttpToolsProtocol


def uvicorn_http_options(app: Any) -> dict[str, Any]:
    """The `http=` option for serving the gateway app (its invalid-HTTP answers audited)."""
    gateway = app.state.ds.gateway
    return {"http": audited_http_protocol(gateway.audit_invalid_http)}
