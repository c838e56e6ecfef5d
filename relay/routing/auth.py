"""The auth step of the request pipeline: one object per request that puts the
connection's credentials on an ``OutgoingRequest`` and gets a say when the upstream
answers with an auth error.

The executor knows only the ``AuthStep`` protocol and an ``AuthStepFactory``. OAuth 2.0
plugs in by handing the executor a factory that returns its own step for
``auth.type == "oauth2"`` (refreshing in ``on_auth_error``) and defers to
``default_auth_step`` for the rest; nothing else changes.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from relay.errors import UpstreamError
from relay.models.connection import BasicAuth, ConnectionIn, TokenAuth
from relay.routing.outgoing import OutgoingRequest, with_query_param


@dataclass(frozen=True)
class AuthContext:
    """Who the step works for (an OAuth step looks its tokens up by these)."""

    account_id: str
    connection_id: str | None
    request_id: str


class AuthStep(Protocol):
    async def apply(self, request: OutgoingRequest) -> None:
        """Add credentials. Raise ``UpstreamError`` (e.g. ``needs_authorization``) when
        there are none to add."""

    async def on_auth_error(self) -> bool:
        """The upstream said the credentials are bad. ``True``: they were refreshed,
        retry once (``apply`` is called again). ``False``: give up (``auth_failed``)."""


AuthStepFactory = Callable[[ConnectionIn, AuthContext], AuthStep]


class NoAuth:
    async def apply(self, request: OutgoingRequest) -> None:
        return None

    async def on_auth_error(self) -> bool:
        return False


class BasicAuthStep:
    def __init__(self, basic: BasicAuth) -> None:
        self._basic = basic

    async def apply(self, request: OutgoingRequest) -> None:
        raw = f"{self._basic.username}:{self._basic.password or ''}".encode()
        request.headers["Authorization"] = "Basic " + base64.b64encode(raw).decode("ascii")
        request.secret_headers.add("authorization")

    async def on_auth_error(self) -> bool:
        return False


def place_token(
    request: OutgoingRequest,
    token: str,
    *,
    location: str,
    header_name: str,
    scheme: str | None,
    param_name: str,
) -> None:
    """Put a token where the connection (or iClient) says: a header with an optional
    scheme, a URL query parameter, or a body field. Shared with OAuth."""
    if location == "header":
        request.headers[header_name] = f"{scheme} {token}" if scheme else token
        request.secret_headers.add(header_name.lower())
    elif location == "url":
        request.url = with_query_param(request.url, param_name, token)
    elif location == "body":
        request.add_body_field(param_name, token)
    else:  # pragma: no cover - the model restricts location
        raise ValueError(f"unknown token location {location!r}")


class TokenAuthStep:
    def __init__(self, token: TokenAuth) -> None:
        self._token = token

    async def apply(self, request: OutgoingRequest) -> None:
        t = self._token
        if not t.token:
            raise UpstreamError("auth_failed", "the connection has no token configured")
        place_token(
            request,
            t.token,
            location=t.location,
            header_name=t.header_name,
            scheme=t.scheme,
            param_name=t.param_name,
        )

    async def on_auth_error(self) -> bool:
        return False


class OAuth2Pending:
    """Stands in for OAuth 2.0 until its issue lands: such a connection cannot send
    requests yet."""

    async def apply(self, request: OutgoingRequest) -> None:
        raise UpstreamError(
            "needs_authorization",
            "this connection uses OAuth 2.0 and has no access token: authorize it first",
        )

    async def on_auth_error(self) -> bool:
        return False


def default_auth_step(spec: ConnectionIn, ctx: AuthContext) -> AuthStep:
    auth = spec.http.auth
    if auth.type == "basic" and auth.basic is not None:
        return BasicAuthStep(auth.basic)
    if auth.type == "token" and auth.token is not None:
        return TokenAuthStep(auth.token)
    if auth.type == "oauth2":
        return OAuth2Pending()
    return NoAuth()
