"""The authorization-code flow with PKCE S256 (RFC 6749 4.1, RFC 7636, RFC 9700 2.1):
the URL the user is sent to, the pending state that the callback must present, and
the callback itself (``error=`` first, then the state, then the code exchange with the
same redirect URI and the verifier of that attempt).

``StateStore`` is where pending authorizations wait: in memory here (tests, one
process), in the registry's database in the relay. A state is >= 128 random bits
(256 here), used once, expires after ``DEFAULT_STATE_TTL_S``, and is bound to the
account, connection and iClient that started it.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import NamedTuple, Protocol
from urllib.parse import parse_qsl, urlsplit

from relay.models.connection import Header
from relay.models.iclient import IClientIn
from relay.oauth import _authlib
from relay.oauth.client import TokenClient
from relay.oauth.errors import (
    AuthorizationDeniedError,
    CallbackError,
    InvalidStateError,
    OAuthConfigurationError,
)
from relay.oauth.tokens import TokenSet, join_scope
from shared.logging import get_logger, redact_text

log = get_logger("relay.oauth")

DEFAULT_STATE_TTL_S = 600.0  # RFC 6749 4.1.2 recommends codes live <= 10 minutes
DEFAULT_MAX_PENDING = 10_000  # per in-memory store: bounds what unfinished flows cost
STATE_BYTES = 32  # 256 bits (>= 128 required)
VERIFIER_LENGTH = 64  # RFC 7636 4.1: 43..128 characters; 64 of [A-Za-z0-9] = 381 bits
_ERROR_MAX = 64
_DESCRIPTION_MAX = 300


def new_state() -> str:
    return secrets.token_urlsafe(STATE_BYTES)


def new_code_verifier(length: int = VERIFIER_LENGTH) -> str:
    if not 43 <= length <= 128:
        raise ValueError("a PKCE code verifier has 43 to 128 characters (RFC 7636 4.1)")
    return _authlib.generate_token(length)


def state_key(state: str) -> str:
    """What a store keys a pending authorization by: a hash, so a leaked table cannot
    be replayed as callbacks."""
    return hashlib.sha256(state.encode("utf-8", errors="replace")).hexdigest()


class AuthorizationStart(NamedTuple):
    """``url`` to send the user to; ``state`` and ``code_verifier`` to keep until the
    callback (``code_verifier`` is None when the iClient turned PKCE off)."""

    url: str
    state: str
    code_verifier: str | None

    def __repr__(self) -> str:  # the state and the verifier are credentials
        return "AuthorizationStart(url=..., state=********, code_verifier=********)"


def start_authorization(
    iclient: IClientIn,
    scope: str | Sequence[str] | None,
    redirect_uri: str,
    *,
    extra_params: dict[str, str] | None = None,
) -> AuthorizationStart:
    """The authorization request (RFC 6749 4.1.1) with a fresh state and, unless the
    iClient turned it off, a fresh PKCE S256 challenge. A list ``scope`` is joined
    with the iClient's delimiter."""
    if iclient.grant_type != "authorization_code" or not iclient.authorization_url:
        raise OAuthConfigurationError(
            "this iClient uses the client_credentials grant: there is nothing to authorize"
        )
    if scope is not None and not isinstance(scope, str):
        scope = join_scope(scope, iclient.scope_delimiter)
    state = new_state()
    verifier = new_code_verifier() if iclient.pkce else None
    params = dict(extra_params or {})
    if verifier is not None:
        params["code_challenge"] = _authlib.create_s256_code_challenge(verifier)
        params["code_challenge_method"] = "S256"
    url = _authlib.prepare_grant_uri(
        iclient.authorization_url,
        iclient.client_id,
        "code",
        redirect_uri=redirect_uri,
        scope=scope or None,
        state=state,
        **params,
    )
    return AuthorizationStart(url, state, verifier)


# --- the callback ------------------------------------------------------------------------


@dataclass(frozen=True)
class CallbackParams:
    state: str = field(repr=False)
    code: str = field(repr=False)


def _printable(value: str, limit: int) -> str:
    text = redact_text("".join(c for c in value if c.isprintable()))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_callback(url: str) -> CallbackParams:
    """The redirect back from the provider (RFC 6749 4.1.2). ``error=`` is looked at
    first (4.1.2.1): ``AuthorizationDeniedError`` (which carries the state, so the
    pending entry can be burnt). No state -> ``InvalidStateError``; no code ->
    ``CallbackError``. A parameter given twice is refused (RFC 6749 3.1)."""
    pairs = parse_qsl(urlsplit(url).query, keep_blank_values=True)
    seen: dict[str, str] = {}
    for name, value in pairs:
        if name in seen and name in ("state", "code", "error"):
            raise CallbackError(f"the callback has more than one {name!r} parameter")
        seen.setdefault(name, value)
    error = seen.get("error")
    if error is not None:
        code = _printable(error, _ERROR_MAX) or "unknown_error"
        raw_description = seen.get("error_description")
        description = _printable(raw_description, _DESCRIPTION_MAX) if raw_description else None
        raise AuthorizationDeniedError(
            f"the provider did not authorize the connection: {code}"
            + (f" ({description})" if description else ""),
            error=code,
            description=description,
            state=seen.get("state") or None,
        )
    state = seen.get("state")
    if not state:
        raise InvalidStateError("the callback has no state parameter")
    try:
        params = _authlib.parse_authorization_code_response(url)
    except _authlib.OAuth2Error:
        raise CallbackError("the callback has neither a code nor an error") from None
    code = params.get("code", "")
    if not code:
        raise CallbackError("the callback has an empty code")
    return CallbackParams(state=state, code=code)


# --- pending authorizations -------------------------------------------------------------


@dataclass(frozen=True)
class PendingAuthorization:
    """What ``/authorize`` left for the callback. ``created_at`` is set by the store."""

    account_id: str
    connection_id: str
    iclient_id: str
    redirect_uri: str
    code_verifier: str | None = field(default=None, repr=False)
    return_url: str | None = None
    created_at: float = 0.0


class StateStore(Protocol):
    """Pending authorizations by state. ``take`` is atomic and single use: a state is
    gone after its first presentation, whether it was accepted or not."""

    async def put(self, state: str, pending: PendingAuthorization) -> None: ...

    async def take(
        self,
        state: str,
        *,
        account_id: str | None = None,
        connection_id: str | None = None,
    ) -> PendingAuthorization:
        """The pending authorization for ``state``, removed. ``InvalidStateError`` when
        unknown, used, expired, or bound to another account/connection than given."""
        ...


class InMemoryStateStore:
    """A ``StateStore`` in a dict (tests, a single relay process). Keys are hashes."""

    def __init__(
        self,
        *,
        ttl_s: float = DEFAULT_STATE_TTL_S,
        max_pending: int = DEFAULT_MAX_PENDING,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ttl_s = ttl_s
        self.max_pending = max_pending
        self._clock = clock
        self._pending: dict[str, PendingAuthorization] = {}

    def __len__(self) -> int:
        return len(self._pending)

    async def put(self, state: str, pending: PendingAuthorization) -> None:
        now = self._clock()
        self._purge(now)
        while len(self._pending) >= self.max_pending:
            del self._pending[next(iter(self._pending))]  # the oldest
        self._pending[state_key(state)] = replace(pending, created_at=now)

    async def take(
        self,
        state: str,
        *,
        account_id: str | None = None,
        connection_id: str | None = None,
    ) -> PendingAuthorization:
        pending = self._pending.pop(state_key(state), None)
        return check_pending(
            pending,
            now=self._clock(),
            ttl_s=self.ttl_s,
            account_id=account_id,
            connection_id=connection_id,
        )

    def _purge(self, now: float) -> None:
        for key in [k for k, p in self._pending.items() if now - p.created_at > self.ttl_s]:
            del self._pending[key]


def check_pending(
    pending: PendingAuthorization | None,
    *,
    now: float,
    ttl_s: float,
    account_id: str | None = None,
    connection_id: str | None = None,
) -> PendingAuthorization:
    """The rules every ``StateStore.take`` applies to the entry it removed."""
    if pending is None:
        raise InvalidStateError("unknown or already used state: start the authorization again")
    if now - pending.created_at > ttl_s:
        raise InvalidStateError("the authorization took too long: start it again")
    if (account_id is not None and account_id != pending.account_id) or (
        connection_id is not None and connection_id != pending.connection_id
    ):
        raise InvalidStateError("the state belongs to another connection")
    return pending


# --- the whole flow -----------------------------------------------------------------------


class ResolvedClient(NamedTuple):
    """What the callback needs about the connection now (it may have changed since
    ``/authorize``): its iClient (secret in clear) and the token request headers."""

    iclient: IClientIn
    extra_headers: Iterable[Header | tuple[str, str]] = ()


Resolve = Callable[[PendingAuthorization], Awaitable[ResolvedClient]]


class AuthorizationFlow:
    """``begin`` for ``GET /v1/connections/{id}/authorize``; ``complete`` for
    ``GET /oauth2/callback``. Storing the tokens and testing the connection is the
    caller's (it knows the registry)."""

    def __init__(self, states: StateStore, client: TokenClient) -> None:
        self.states = states
        self.client = client

    async def begin(
        self,
        iclient: IClientIn,
        *,
        account_id: str,
        connection_id: str,
        iclient_id: str,
        redirect_uri: str,
        scope: str | Sequence[str] | None,
        return_url: str | None = None,
    ) -> str:
        """The provider URL to redirect the user to."""
        start = start_authorization(iclient, scope, redirect_uri)
        await self.states.put(
            start.state,
            PendingAuthorization(
                account_id=account_id,
                connection_id=connection_id,
                iclient_id=iclient_id,
                redirect_uri=redirect_uri,
                code_verifier=start.code_verifier,
                return_url=return_url,
            ),
        )
        log.info("oauth_authorization_started", connection_id=connection_id, pkce=iclient.pkce)
        return start.url

    async def complete(
        self, callback_url: str, resolve: Resolve
    ) -> tuple[PendingAuthorization, TokenSet]:
        """Check the callback and exchange its code. Raises ``CallbackError``s (HTTP
        400: nothing to store) and ``TokenError``s (the exchange failed)."""
        try:
            params = parse_callback(callback_url)
        except AuthorizationDeniedError as denied:
            state = denied.state
            if state:
                # Burn the pending entry: the attempt is over either way.
                try:
                    pending = await self.states.take(state)
                except InvalidStateError:
                    pass
                else:
                    denied.pending = pending
                    log.info(
                        "oauth_authorization_denied",
                        connection_id=pending.connection_id,
                        error=denied.error,
                    )
            raise
        pending = await self.states.take(params.state)
        resolved = await resolve(pending)
        tokens = await self.client.exchange_code(
            resolved.iclient,
            code=params.code,
            redirect_uri=pending.redirect_uri,
            code_verifier=pending.code_verifier,
            extra_headers=resolved.extra_headers,
        )
        log.info(
            "oauth_authorization_completed",
            connection_id=pending.connection_id,
            has_refresh_token=tokens.refresh_token is not None,
            lifetime_defaulted=tokens.lifetime_defaulted,
        )
        return pending, tokens
