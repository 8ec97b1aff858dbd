"""API errors as values: a status, a message that names the problem, and the shape each API expects."""

from __future__ import annotations

from typing import Any

import orjson

_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "upstream_timeout",
}
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    502: "api_error",
    503: "overloaded_error",
    504: "api_error",
}


class ApiError(Exception):
    """An error the client can act on. `code` is a stable machine-readable string."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers or {}

    def openai_body(self) -> bytes:
        return orjson.dumps(
            {
                "error": {
                    "message": self.message,
                    "type": _OPENAI_TYPES.get(self.status, "api_error"),
                    "param": self.param,
                    "code": self.code,
                }
            }
        )

    def anthropic_body(self) -> bytes:
        err: dict[str, Any] = {
            "type": _ANTHROPIC_TYPES.get(self.status, "api_error"),
            "message": self.message,
        }
        if self.code:
            err["code"] = self.code
        return orjson.dumps({"type": "error", "error": err})


def bad_request(message: str, param: str | None = None, code: str = "invalid_request") -> ApiError:
    return ApiError(400, message, code=code, param=param)


class UpstreamError(Exception):
    """The model server failed: 502 (down, broken answer) or 504 (too slow), or rejected the request
    (a 4xx it returned, passed on). `message` says which to the client and names nothing internal;
    `detail` (the server's address, the OS error, what it answered) is for the audit log and the
    operator's log only."""

    def __init__(self, status: int, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.detail = detail or message

    def to_api_error(self) -> ApiError:
        code = {504: "upstream_timeout", 502: "upstream_error"}.get(self.status, "upstream_rejected")
        return ApiError(self.status, self.message, code=code)
