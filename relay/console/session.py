"""The console's session: one encrypted cookie (Fernet, with a key derived from the
relay's secrets key) holding the API token the user signed in with and the session's
CSRF token. HttpOnly (no script reads it), SameSite=Lax (sent on the top-level
navigation back from an OAuth provider, not on cross-site subrequests or POSTs),
Secure when the relay's public URL is https. Nothing is kept on the server, so any
relay process sharing the secrets key serves the session, and revoking the API token
ends every session signed in with it (each page calls the API with it)."""

from __future__ import annotations

import asyncio
import hmac
import json
import secrets
from dataclasses import dataclass

from aiohttp import web
from cryptography.fernet import Fernet, InvalidToken

COOKIE_NAME = "onprem_console"
COOKIE_PATH = "/console"
# A signed-in session lasts this long, then the user signs in again.
SESSION_TTL_S = 8 * 3600
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
_MAX_COOKIE = 4096


@dataclass
class Session:
    csrf: str
    token: str | None = None
    account: str | None = None  # the account's name, for the page header

    @property
    def signed_in(self) -> bool:
        return self.token is not None

    @classmethod
    def fresh(cls) -> Session:
        return cls(csrf=secrets.token_urlsafe(32))

    @classmethod
    def signed_in_as(cls, token: str, account: str) -> Session:
        """A new session (and CSRF token) on sign-in: nothing from before carries over."""
        return cls(csrf=secrets.token_urlsafe(32), token=token, account=account)


class SessionCodec:
    def __init__(self, key: bytes, *, secure: bool, ttl_s: int = SESSION_TTL_S) -> None:
        self._fernet = Fernet(key)
        self._secure = secure
        self._ttl_s = ttl_s

    def load(self, request: web.Request) -> Session | None:
        """The request's session, or None when there is none, it expired or it was
        tampered with."""
        raw = request.cookies.get(COOKIE_NAME)
        if not raw or len(raw) > _MAX_COOKIE:
            return None
        try:
            data = json.loads(self._fernet.decrypt(raw.encode("ascii"), ttl=self._ttl_s))
        except (InvalidToken, UnicodeError, ValueError):
            return None
        if not isinstance(data, dict) or not isinstance(data.get("csrf"), str):
            return None
        token, account = data.get("token"), data.get("account")
        return Session(
            csrf=data["csrf"],
            token=token if isinstance(token, str) else None,
            account=account if isinstance(account, str) else None,
        )

    def save(self, response: web.StreamResponse, session: Session) -> None:
        doc = {"csrf": session.csrf, "token": session.token, "account": session.account}
        value = self._fernet.encrypt(json.dumps(doc).encode()).decode("ascii")
        response.set_cookie(
            COOKIE_NAME,
            value,
            path=COOKIE_PATH,
            httponly=True,
            samesite="Lax",
            secure=self._secure,
            max_age=self._ttl_s,
        )

    @staticmethod
    def clear(response: web.StreamResponse) -> None:
        response.del_cookie(COOKIE_NAME, path=COOKIE_PATH)


def csrf_ok(session: Session | None, presented: object) -> bool:
    """Constant-time comparison of the form's (or header's) token with the session's."""
    if session is None or not isinstance(presented, str) or not presented:
        return False
    return hmac.compare_digest(session.csrf.encode(), presented.encode())


class FirstRun:
    """The setup code of this relay process, while it has one."""

    def __init__(self) -> None:
        self.code: str | None = None
        self.lock = asyncio.Lock()

    def start(self) -> str:
        self.code = secrets.token_urlsafe(24)
        return self.code

    def matches(self, presented: str) -> bool:
        code = self.code
        return code is not None and hmac.compare_digest(code.encode(), presented.encode())
