"""Dashboard sign-in: who a browser is, and that its forms came from the dashboard.

A signed-in browser holds a random session id in an HttpOnly, SameSite=Lax cookie; the
store keeps only its SHA-256 hash, the key it stands for and when it expires, so
neither the cookie nor the table ever holds an API key, and revoking the key or
signing out ends the session on the server. Cookies are ``Secure`` when the request
came over HTTPS (uvicorn reads ``X-Forwarded-Proto`` from trusted proxies) or when
``api.secure_cookies`` says TLS ends somewhere that does not tell us.

Forms carry a CSRF token: the sign-in form a double-submitted one (a random value in a
cookie and in the form, which another site can neither read nor set), the sign-out
form one bound to the session (an HMAC of the session id, which only the cookie holds).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from fastapi import Request, Response

from orchestrator.store import ApiKey, Store
from orchestrator.store import sessions as rows

SESSION_COOKIE = "camflow_session"
CSRF_COOKIE = "camflow_csrf"
#: camflow 0.1 kept the raw API key in this cookie: it is cleared wherever it is seen.
LEGACY_COOKIE = "camflow_key"
#: Only the dashboard reads these cookies; the API never takes them.
COOKIE_PATH = "/dashboard"
#: What session ids and login tokens look like (token_urlsafe(32)): anything else is
#: no cookie at all, and is never looked up.
_TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")
_LOGOUT_PURPOSE = b"camflow dashboard sign-out"


def _new_token() -> str:
    return secrets.token_urlsafe(32)


def session_hash(session_id: str) -> str:
    """What the store keeps of a session id (which is 256 random bits: a fast hash
    is as strong as a slow one here)."""
    return hashlib.sha256(session_id.encode()).hexdigest()


def logout_token(session_id: str) -> str:
    return hmac.new(session_id.encode(), _LOGOUT_PURPOSE, hashlib.sha256).hexdigest()


def _matches(expected: str | None, given: str | None) -> bool:
    return bool(expected and given) and hmac.compare_digest(
        str(expected).encode(), str(given).encode()
    )


def _token(value: str | None) -> str | None:
    return value if value and _TOKEN.fullmatch(value) else None


@dataclass(frozen=True)
class DashboardSessions:
    store: Store
    lifetime_seconds: int
    force_secure: bool
    clock: Callable[[], datetime]

    def _secure(self, request: Request) -> bool:
        return self.force_secure or request.url.scheme == "https"

    def _set(
        self,
        response: Response,
        request: Request,
        name: str,
        value: str,
        max_age: int | None = None,
    ) -> None:
        response.set_cookie(
            name,
            value,
            path=COOKIE_PATH,
            httponly=True,
            samesite="lax",
            secure=self._secure(request),
            max_age=max_age,
        )

    def _forget(self, response: Response, request: Request, name: str) -> None:
        response.delete_cookie(
            name, path=COOKIE_PATH, httponly=True, samesite="lax", secure=self._secure(request)
        )

    # --- who is signed in -----------------------------------------------------------

    def _session_id(self, request: Request) -> str | None:
        return _token(request.cookies.get(SESSION_COOKIE))

    def current(self, request: Request) -> ApiKey | None:
        """The live key of this browser's live session, or None."""
        session_id = self._session_id(request)
        if session_id is None:
            return None
        return rows.session_key(self.store, session_hash(session_id), self.clock())

    def sign_in(self, request: Request, response: Response, key: ApiKey) -> None:
        """A new session for ``key`` (never the one the browser brought: a session id
        planted before sign-in must not become a signed-in one)."""
        self.sign_out(request, response)
        session_id = _new_token()
        now = self.clock()
        until = now + timedelta(seconds=self.lifetime_seconds)
        rows.open_session(self.store, session_hash(session_id), key.id, now, until)
        self._set(response, request, SESSION_COOKIE, session_id, max_age=self.lifetime_seconds)
        self._forget(response, request, CSRF_COOKIE)  # used: the next sign-in gets another

    def sign_out(self, request: Request, response: Response) -> None:
        session_id = self._session_id(request)
        if session_id is not None:
            rows.close_session(self.store, session_hash(session_id))
        self._forget(response, request, SESSION_COOKIE)
        self.forget_legacy(request, response)

    def forget_legacy(self, request: Request, response: Response) -> None:
        if LEGACY_COOKIE in request.cookies:
            response.delete_cookie(LEGACY_COOKIE)  # 0.1 set it on path /

    # --- CSRF -----------------------------------------------------------------------

    def login_token(self, request: Request) -> str:
        """The token the sign-in form carries: the browser's own (an open sign-in tab
        and a new one share it), or a new one."""
        return _token(request.cookies.get(CSRF_COOKIE)) or _new_token()

    def keep_login_token(self, request: Request, response: Response, token: str) -> None:
        self._set(response, request, CSRF_COOKIE, token)

    def login_allowed(self, request: Request, form_token: str) -> bool:
        return _matches(_token(request.cookies.get(CSRF_COOKIE)), form_token)

    def logout_token(self, request: Request) -> str | None:
        session_id = self._session_id(request)
        return logout_token(session_id) if session_id else None

    def logout_allowed(self, request: Request, form_token: str) -> bool:
        return _matches(self.logout_token(request), form_token)
