"""Tokens and where they go: the token set a connection holds, scope strings, and
putting the access token on a request (header, URL parameter or body field, per the
iClient), only for hosts in the iClient's ``valid_domains``. Pure: no I/O."""

from __future__ import annotations

import ipaddress
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from relay.models.connection import OAuth2Auth
from relay.models.iclient import IClientIn, normalize_domain
from relay.oauth.errors import TokenDomainError
from relay.routing.auth import place_token
from relay.routing.outgoing import OutgoingRequest


@dataclass(frozen=True)
class TokenSet:
    """What a token endpoint granted. ``expires_at`` is a Unix time, always set: a
    provider that sends no ``expires_in`` gets the configured default lifetime
    (``lifetime_defaulted``), because "no expiry given" does not mean "never expires".
    The secret fields are left out of ``repr``."""

    access_token: str = field(repr=False)
    expires_at: float
    token_type: str = "Bearer"
    refresh_token: str | None = field(default=None, repr=False)
    scope: str | None = None
    lifetime_defaulted: bool = False

    def expires_within(self, seconds: float, *, now: float | None = None) -> bool:
        """True if the token is expired, or will be within ``seconds`` (the leeway)."""
        current = time.time() if now is None else now
        return self.expires_at - seconds <= current

    def keeping(self, previous: TokenSet | None) -> TokenSet:
        """This (new) token set, completed from ``previous``: a refresh response without
        a ``refresh_token`` keeps the old one (RFC 6749 6: the server MAY issue a new
        one), and one without ``scope`` keeps the granted scope."""
        if previous is None:
            return self
        return replace(
            self,
            refresh_token=self.refresh_token or previous.refresh_token,
            scope=self.scope if self.scope is not None else previous.scope,
        )

    def to_dict(self) -> dict[str, Any]:
        """For storage (encrypted as a whole by the registry)."""
        return {
            "access_token": self.access_token,
            "token_type": self.token_type,
            "refresh_token": self.refresh_token,
            "expires_at": self.expires_at,
            "scope": self.scope,
            "lifetime_defaulted": self.lifetime_defaulted,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TokenSet:
        expires_at = float(data["expires_at"])
        if not math.isfinite(expires_at):
            raise ValueError("expires_at must be a finite number")
        return cls(
            access_token=str(data["access_token"]),
            token_type=str(data.get("token_type") or "Bearer"),
            refresh_token=data.get("refresh_token"),
            expires_at=expires_at,
            scope=data.get("scope"),
            lifetime_defaulted=bool(data.get("lifetime_defaulted", False)),
        )


# --- scope ---------------------------------------------------------------------------


def scope_delimiter(iclient: IClientIn, auth: OAuth2Auth | None) -> str:
    """The connection's ``scope_delimiter`` when set, else the iClient's."""
    if auth is not None and auth.scope_delimiter:
        return auth.scope_delimiter
    return iclient.scope_delimiter


def join_scope(scopes: Sequence[str], delimiter: str = " ") -> str | None:
    """``["read", "write"]`` -> ``"read write"`` (or with the provider's delimiter:
    some want ``,`` or ``+``). Empty -> None, so no ``scope`` parameter is sent."""
    items = [s for s in scopes if s]
    return delimiter.join(items) if items else None


def connection_scope(iclient: IClientIn, auth: OAuth2Auth | None) -> str | None:
    """The scope string a connection asks for."""
    if auth is None:
        return None
    return join_scope(auth.scope, scope_delimiter(iclient, auth))


# --- valid domains ---------------------------------------------------------------------


def _normalize_host(host: str) -> str:
    h = host.strip().lower().rstrip(".")
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    try:
        return str(ipaddress.ip_address(h))
    except ValueError:
        pass
    if not h.isascii():
        try:
            h = h.encode("idna").decode("ascii")
        except UnicodeError:
            return h
    return h


def host_allowed(host: str | None, valid_domains: Sequence[str]) -> bool:
    """Whether ``host`` is one of ``valid_domains``: an exact name (or IP address), or
    under a ``*.example.com`` wildcard, at any depth (``a.b.example.com``) but not the
    bare ``example.com``. Case, a trailing dot and IDN spelling do not matter."""
    if not host:
        return False
    h = _normalize_host(host)
    for raw in valid_domains:
        try:
            domain = normalize_domain(raw)
        except ValueError:
            continue  # a bad entry allows nothing
        if domain.startswith("*."):
            if h.endswith(domain[1:]):  # ".example.com": a subdomain, never the bare name
                return True
        elif h == domain:
            return True
    return False


def apply_token(request: OutgoingRequest, tokens: TokenSet, iclient: IClientIn) -> None:
    """Put the access token on ``request`` where the iClient says, if the request's host
    is in ``valid_domains``; otherwise raise ``TokenDomainError`` and leave the
    request untouched."""
    host = request.url.raw_host
    if not host_allowed(host, iclient.valid_domains):
        raise TokenDomainError(
            f"the access token of this iClient may be sent only to "
            f"{', '.join(iclient.valid_domains)}; not sending it to {host or '(no host)'}"
        )
    place_token(
        request,
        tokens.access_token,
        location=iclient.token_location,
        header_name=iclient.header_name,
        scheme=iclient.header_scheme,
        param_name=iclient.param_name,
    )
