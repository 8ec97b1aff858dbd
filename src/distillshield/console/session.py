"""The console's login session and CSRF tokens.

A session is a signed cookie (itsdangerous), HttpOnly, SameSite=Strict, Secure when the console is
reached over HTTPS. Its key is derived from the admin token's sha256, so rotating the admin token ends
every session, and every gateway replica with the same config accepts the same cookie. The cookie holds
the session's CSRF token; every POST must send it back (form field `csrf_token` or header X-CSRF-Token).
The login form has its own CSRF token, in a short-lived cookie set with the form.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import Request
from starlette.responses import Response

SESSION_COOKIE = "ds_console"
LOGIN_COOKIE = "ds_console_login"
SESSION_MAX_AGE_S = 12 * 3600
LOGIN_MAX_AGE_S = 15 * 60
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"


@dataclass(frozen=True)
class Session:
    csrf: str


class SessionSigner:
    """Signs and reads the session and login cookies with a key derived from the admin token's digest."""

    def __init__(self, admin_digest: str) -> None:
        key = hmac.new(bytes.fromhex(admin_digest), b"distillshield console session v1", hashlib.sha256).hexdigest()
        self._session = URLSafeTimedSerializer(key, salt="console-session")
        self._login = URLSafeTimedSerializer(key, salt="console-login")

    def read(self, request: Request) -> Session | None:
        """The request's session, None when it has none, or one that is forged or expired."""
        raw = request.cookies.get(SESSION_COOKIE)
        if not raw:
            return None
        try:
            data = self._session.loads(raw, max_age=SESSION_MAX_AGE_S)
        except BadSignature:
            return None
        csrf = data.get("csrf") if isinstance(data, dict) else None
        return Session(csrf) if isinstance(csrf, str) and csrf else None

    def start(self, request: Request, response: Response) -> Session:
        session = Session(secrets.token_urlsafe(32))
        _set_cookie(request, response, SESSION_COOKIE, self._session.dumps({"csrf": session.csrf}), SESSION_MAX_AGE_S)
        response.delete_cookie(LOGIN_COOKIE, path=_path(request))
        return session

    def end(self, request: Request, response: Response) -> None:
        response.delete_cookie(SESSION_COOKIE, path=_path(request))

    def new_login_token(self) -> str:
        """A CSRF token for the login form; `set_login_cookie` keeps it in a short-lived cookie of its own."""
        return secrets.token_urlsafe(32)

    def set_login_cookie(self, request: Request, response: Response, token: str) -> None:
        _set_cookie(request, response, LOGIN_COOKIE, self._login.dumps(token), LOGIN_MAX_AGE_S)

    def login_token_matches(self, request: Request, sent: str) -> bool:
        raw = request.cookies.get(LOGIN_COOKIE)
        if not raw or not sent:
            return False
        try:
            expected = self._login.loads(raw, max_age=LOGIN_MAX_AGE_S)
        except BadSignature:
            return False
        return isinstance(expected, str) and hmac.compare_digest(expected, sent)


def csrf_matches(session: Session, request: Request, form: dict[str, str]) -> bool:
    sent = form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER, "")
    return bool(sent) and hmac.compare_digest(session.csrf, sent)


def _path(request: Request) -> str:
    return request.scope.get("root_path") or "/"


def _set_cookie(request: Request, response: Response, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=_path(request),
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="strict",
    )
