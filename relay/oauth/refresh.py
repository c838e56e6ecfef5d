"""Keeping a connection's access token fresh: refresh before expiry (with a leeway) and
after an auth error, one refresh at a time per connection.

Single flight has two layers. Within a process, an ``asyncio.Lock`` per connection:
50 requests on an expired token make one refresh. Across relay processes sharing a
database, a lease in the ``TokenStore``, never a lock held across the provider call
(field notes): the process that wins ``try_lease`` refreshes and writes the new
access and refresh token in one compare-and-set on ``version``; the others wait for
the version to change (or the lease to expire) and re-read.

``TokenStore`` maps to SQL as::

    load:        SELECT tokens, version FROM ... WHERE connection_id = $1
    try_lease:   UPDATE ... SET refresh_owner = $2, lease_until = now() + $3
                 WHERE connection_id = $1 AND (lease_until IS NULL OR lease_until < now()
                 OR refresh_owner = $2) RETURNING version
    store:       UPDATE ... SET tokens = $2, version = version + 1, refresh_owner = NULL,
                 lease_until = NULL WHERE connection_id = $1 AND version = $3
                 RETURNING version   (then NOTIFY)
    wait_for_change: LISTEN, or poll ``version`` until it changes or the timeout ends

Failures are remembered per connection for a backoff window, so a dead provider or a
wrong client secret is asked once per window, not once per request; ``invalid_grant``
clears the stored tokens, so later requests fail at once with ``needs_authorization``
until the user authorizes again.
"""

from __future__ import annotations

import asyncio
import inspect
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from relay.metrics import RelayMetrics
from relay.models.connection import Header, OAuth2Auth
from relay.models.iclient import IClientIn
from relay.oauth.client import TokenClient
from relay.oauth.errors import (
    BadTokenResponseError,
    NeedsAuthorizationError,
    OAuthConfigurationError,
    TokenError,
    TransientTokenError,
)
from relay.oauth.tokens import TokenSet, connection_scope
from relay.routing.policy import backoff_delay
from shared.logging import get_logger

log = get_logger("relay.oauth")

DEFAULT_LEEWAY_S = 60.0  # refresh this long before expiry: clocks drift, requests take time
# Longer than the token client's timeout (30 s), so a lease never expires while its
# owner is still waiting for the provider.
DEFAULT_LEASE_S = 45.0
DEFAULT_WAIT_S = 60.0  # how long a request waits for another process's refresh
DEFAULT_BACKOFF_INITIAL_S = 1.0
DEFAULT_BACKOFF_MAX_S = 300.0
_MAX_STORE_CONFLICTS = 5

RefreshResult = Literal[
    "ok", "needs_authorization", "configuration_error", "transient", "bad_response"
]


@dataclass(frozen=True)
class StoredTokens:
    """A connection's tokens (None: none, or cleared after ``invalid_grant``) and the
    version they were read at."""

    tokens: TokenSet | None
    version: int


class TokenStore(Protocol):
    async def load(self, connection_id: str) -> StoredTokens: ...

    async def try_lease(self, connection_id: str, owner: str, seconds: float) -> int | None:
        """Take (or extend, for the same owner) the refresh lease. The current version
        when taken, None when another owner holds an unexpired lease."""
        ...

    async def release_lease(self, connection_id: str, owner: str) -> None:
        """Give the lease back (after a failed refresh) if ``owner`` holds it."""
        ...

    async def store(
        self, connection_id: str, tokens: TokenSet | None, expected_version: int
    ) -> int | None:
        """Compare-and-set: write ``tokens`` (access and refresh token together) if the
        version is still ``expected_version``, bump it and drop the lease. The new
        version, or None when someone else wrote first."""
        ...

    async def wait_for_change(self, connection_id: str, seen_version: int, timeout: float) -> None:
        """Return when the version differs from ``seen_version``, the lease is given
        back, or ``timeout`` seconds passed, whichever is first (the caller re-reads
        either way)."""
        ...


@dataclass
class _Entry:
    tokens: TokenSet | None = None
    version: int = 0
    lease_owner: str | None = None
    lease_until: float = 0.0
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)


class InMemoryTokenStore:
    """A ``TokenStore`` in memory: tests, and one relay process without a database.
    Several ``TokenManager``s sharing one instance behave like relay processes sharing
    one database."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self.writes = 0  # successful ``store`` calls, for tests

    def _entry(self, connection_id: str) -> _Entry:
        entry = self._entries.get(connection_id)
        if entry is None:
            entry = self._entries[connection_id] = _Entry()
        return entry

    async def load(self, connection_id: str) -> StoredTokens:
        entry = self._entry(connection_id)
        return StoredTokens(entry.tokens, entry.version)

    async def try_lease(self, connection_id: str, owner: str, seconds: float) -> int | None:
        entry = self._entry(connection_id)
        now = self._clock()
        if entry.lease_owner not in (None, owner) and entry.lease_until > now:
            return None
        entry.lease_owner, entry.lease_until = owner, now + seconds
        return entry.version

    async def release_lease(self, connection_id: str, owner: str) -> None:
        entry = self._entry(connection_id)
        if entry.lease_owner == owner:
            entry.lease_owner, entry.lease_until = None, 0.0
            await self._notify(entry)

    async def store(
        self, connection_id: str, tokens: TokenSet | None, expected_version: int
    ) -> int | None:
        entry = self._entry(connection_id)
        if entry.version != expected_version:
            return None
        entry.tokens = tokens
        entry.version += 1
        entry.lease_owner, entry.lease_until = None, 0.0
        self.writes += 1
        await self._notify(entry)
        return entry.version

    async def put(self, connection_id: str, tokens: TokenSet | None) -> int:
        """Write unconditionally (seeding tests)."""
        entry = self._entry(connection_id)
        version = await self.store(connection_id, tokens, entry.version)
        assert version is not None
        return version

    async def wait_for_change(self, connection_id: str, seen_version: int, timeout: float) -> None:
        entry = self._entry(connection_id)
        async with entry.changed:
            try:
                async with asyncio.timeout(timeout):
                    await entry.changed.wait_for(
                        lambda: entry.version != seen_version or entry.lease_owner is None
                    )
            except TimeoutError:
                return

    @staticmethod
    async def _notify(entry: _Entry) -> None:
        async with entry.changed:
            entry.changed.notify_all()


# --- the manager ------------------------------------------------------------------------


@dataclass(frozen=True)
class RefreshConfig:
    leeway_s: float = DEFAULT_LEEWAY_S
    lease_s: float = DEFAULT_LEASE_S
    wait_s: float = DEFAULT_WAIT_S
    backoff_initial_s: float = DEFAULT_BACKOFF_INITIAL_S
    backoff_max_s: float = DEFAULT_BACKOFF_MAX_S


@dataclass(frozen=True)
class OAuthTarget:
    """One connection's OAuth setup, as the manager needs it. ``connection_id`` None:
    an unsaved connection (Test connection before saving): nothing is stored."""

    connection_id: str | None
    iclient: IClientIn = field(repr=False)
    auth: OAuth2Auth | None = None

    @property
    def scope(self) -> str | None:
        return connection_scope(self.iclient, self.auth)

    @property
    def extra_headers(self) -> Iterable[Header]:
        return self.auth.access_token_headers if self.auth is not None else ()


@dataclass(frozen=True)
class TokenEvent:
    """What happened to a connection's tokens. ``state``: the connection state this
    calls for (``needs_authorization`` / ``offline``), or None for no change."""

    connection_id: str
    result: RefreshResult
    message: str | None = None
    state: str | None = None


Listener = Callable[[TokenEvent], Awaitable[None] | None]


@dataclass
class _Failure:
    error: TokenError
    attempts: int
    until: float


def _result_of(exc: TokenError) -> RefreshResult:
    if isinstance(exc, NeedsAuthorizationError):
        return "needs_authorization"
    if isinstance(exc, OAuthConfigurationError):
        return "configuration_error"
    if isinstance(exc, TransientTokenError):
        return "transient"
    if isinstance(exc, BadTokenResponseError):
        return "bad_response"
    return "configuration_error"


def _again(exc: TokenError, retry_after: float) -> TokenError:
    """A fresh copy of a remembered failure (never re-raise one instance from many
    tasks: each raise rewrites its traceback)."""
    if isinstance(exc, TransientTokenError):
        return TransientTokenError(
            exc.message, status=exc.status, error=exc.error, retry_after=retry_after
        )
    return type(exc)(exc.message, status=exc.status, error=exc.error)


class TokenManager:
    """Access tokens for connections, refreshed on time and one at a time.

    ``owner`` names this process in leases (default: random). ``listener`` hears every
    refresh outcome (phase 2: connection state, signals); ``metrics`` counts them in
    ``onprem_relay_oauth_refresh_total{result}``."""

    def __init__(
        self,
        store: TokenStore,
        client: TokenClient,
        *,
        owner: str | None = None,
        config: RefreshConfig | None = None,
        listener: Listener | None = None,
        metrics: RelayMetrics | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.client = client
        self.owner = owner or f"relay-{uuid.uuid4().hex[:12]}"
        self.config = config or RefreshConfig()
        self._listener = listener
        self._metrics = metrics
        self._clock = clock
        self._monotonic = monotonic
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._failures: dict[str, _Failure] = {}

    def _lock(self, connection_id: str) -> asyncio.Lock:
        lock = self._locks.get(connection_id)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[connection_id] = lock
        return lock

    async def access_token(self, target: OAuthTarget) -> StoredTokens:
        """Tokens that are valid for at least the leeway: the stored ones, or fresh
        ones (refresh token, or client credentials) when they are about to expire."""
        if target.connection_id is None:
            return StoredTokens(await self._ephemeral(target), 0)
        return await self._obtain(target, target.connection_id, stale_version=None)

    async def refresh_after_auth_error(
        self, target: OAuthTarget, used_version: int
    ) -> StoredTokens:
        """The upstream rejected the token read at ``used_version``: refresh, unless
        someone already did since (then the newer tokens are returned as they are)."""
        if target.connection_id is None:
            return StoredTokens(await self._ephemeral(target), 0)
        return await self._obtain(target, target.connection_id, stale_version=used_version)

    async def save_authorized(self, connection_id: str, tokens: TokenSet) -> StoredTokens:
        """Store tokens from a completed authorization (replacing whatever was there)
        and forget remembered failures."""
        async with self._lock(connection_id):
            self.forget(connection_id)
            for _ in range(_MAX_STORE_CONFLICTS):
                current = await self.store.load(connection_id)
                version = await self.store.store(connection_id, tokens, current.version)
                if version is not None:
                    return StoredTokens(tokens, version)
        raise TransientTokenError("the tokens changed concurrently too often; try again")

    async def revoke(self, target: OAuthTarget) -> bool:
        """RFC 7009 on connection delete: revoke the refresh token (which ends the grant
        at most providers), else the access token, if the iClient has a revoke URL.
        The stored tokens are cleared first, whatever the provider says. True if the
        provider accepted; a ``TokenError`` if it refused or was unreachable (deleting
        the connection should go on regardless)."""
        if target.connection_id is None:
            return False
        current = await self.discard(target.connection_id)
        return await self.revoke_tokens(target, current.tokens)

    async def discard(self, connection_id: str) -> StoredTokens:
        """Clear the stored tokens (the connection's OAuth settings changed, or it is
        being revoked) and forget remembered failures. Returns what was stored."""
        async with self._lock(connection_id):
            current = await self.store.load(connection_id)
            if current.tokens is not None:
                await self.store.store(connection_id, None, current.version)
            self.forget(connection_id)
        return current

    async def revoke_tokens(self, target: OAuthTarget, tokens: TokenSet | None) -> bool:
        """Ask the provider to revoke ``tokens`` (read before the connection was
        deleted): the refresh token, else the access token. False when there is
        nothing to revoke or no revoke URL; ``TokenError`` when the provider refused."""
        if tokens is None or not target.iclient.revoke_url:
            return False
        token, hint = (
            (tokens.refresh_token, "refresh_token")
            if tokens.refresh_token
            else (tokens.access_token, "access_token")
        )
        await self.client.revoke(target.iclient, token, token_type_hint=hint)
        log.info("oauth_tokens_revoked", connection_id=target.connection_id, hint=hint)
        return True

    def forget(self, connection_id: str) -> None:
        """Drop the remembered failure (the iClient or the connection changed)."""
        self._failures.pop(connection_id, None)

    # -- internals --------------------------------------------------------------------

    async def _ephemeral(self, target: OAuthTarget) -> TokenSet:
        if target.iclient.grant_type != "client_credentials":
            raise NeedsAuthorizationError(
                "save the connection and authorize it before it can send requests"
            )
        return await self.client.client_credentials(
            target.iclient, scope=target.scope, extra_headers=target.extra_headers
        )

    def _usable(self, current: StoredTokens, stale_version: int | None) -> bool:
        if current.tokens is None:
            return False
        if stale_version is not None:
            return current.version != stale_version
        return not current.tokens.expires_within(self.config.leeway_s, now=self._clock())

    async def _obtain(
        self, target: OAuthTarget, cid: str, *, stale_version: int | None
    ) -> StoredTokens:
        deadline = self._monotonic() + self.config.wait_s
        async with self._lock(cid):
            conflicts = 0
            while True:
                current = await self.store.load(cid)
                if self._usable(current, stale_version):
                    return current
                if current.tokens is None and target.iclient.grant_type == "authorization_code":
                    raise NeedsAuthorizationError(
                        "the connection has no OAuth tokens: authorize it"
                    )
                self._raise_if_backing_off(cid)
                leased = await self.store.try_lease(cid, self.owner, self.config.lease_s)
                if leased is None:
                    remaining = deadline - self._monotonic()
                    if remaining <= 0:
                        raise TransientTokenError(
                            "another relay process is refreshing this connection's token "
                            "and has not finished; try again",
                            retry_after=self.config.lease_s,
                        )
                    await self.store.wait_for_change(
                        cid, current.version, min(remaining, self.config.lease_s)
                    )
                    continue
                if leased != current.version:
                    # Written between our read and the lease: re-read under the lease.
                    await self.store.release_lease(cid, self.owner)
                    continue
                stored = await self._refresh_leased(target, cid, current)
                if stored is not None:
                    return stored
                conflicts += 1
                if conflicts >= _MAX_STORE_CONFLICTS:
                    raise TransientTokenError(
                        "the tokens changed concurrently too often; try again"
                    )

    async def _refresh_leased(
        self, target: OAuthTarget, cid: str, current: StoredTokens
    ) -> StoredTokens | None:
        """Ask the provider while holding the lease; store the result. None: the
        compare-and-set lost (someone wrote meanwhile), re-read."""
        try:
            if target.iclient.grant_type == "client_credentials":
                fresh = await self.client.client_credentials(
                    target.iclient, scope=target.scope, extra_headers=target.extra_headers
                )
            else:
                assert current.tokens is not None
                fresh = await self.client.refresh(
                    target.iclient,
                    current.tokens,
                    extra_headers=target.extra_headers,
                )
        except NeedsAuthorizationError as exc:
            # The grant is dead: clear it (only if nobody replaced it meanwhile), so the
            # next requests fail at once instead of asking the provider again.
            if await self.store.store(cid, None, current.version) is None:
                await self.store.release_lease(cid, self.owner)
            self._remember(cid, exc)
            await self._report(cid, exc)
            raise
        except TokenError as exc:
            await self.store.release_lease(cid, self.owner)
            self._remember(cid, exc)
            await self._report(cid, exc)
            raise
        except BaseException:
            await self.store.release_lease(cid, self.owner)
            raise
        version = await self.store.store(cid, fresh, current.version)
        if version is None:
            log.warning("oauth_refresh_store_conflict", connection_id=cid)
            return None
        self.forget(cid)
        await self._emit(TokenEvent(cid, "ok"))
        log.info(
            "oauth_token_refreshed",
            connection_id=cid,
            version=version,
            expires_in=round(fresh.expires_at - self._clock()),
            lifetime_defaulted=fresh.lifetime_defaulted,
        )
        return StoredTokens(fresh, version)

    def _raise_if_backing_off(self, cid: str) -> None:
        failure = self._failures.get(cid)
        if failure is None:
            return
        left = failure.until - self._monotonic()
        if left > 0:
            raise _again(failure.error, left)

    def _remember(self, cid: str, exc: TokenError) -> None:
        previous = self._failures.get(cid)
        attempts = previous.attempts + 1 if previous is not None else 1
        delay = backoff_delay(
            attempts, initial=self.config.backoff_initial_s, maximum=self.config.backoff_max_s
        )
        if isinstance(exc, TransientTokenError) and exc.retry_after is not None:
            delay = min(max(delay, exc.retry_after), self.config.backoff_max_s)
        if isinstance(exc, TransientTokenError):
            exc.retry_after = delay
        self._failures[cid] = _Failure(exc, attempts, self._monotonic() + delay)

    async def _report(self, cid: str, exc: TokenError) -> None:
        result = _result_of(exc)
        log.warning(
            "oauth_refresh_failed",
            connection_id=cid,
            result=result,
            error=exc.error,
            status=exc.status,
            reason=exc.message,
        )
        await self._emit(TokenEvent(cid, result, exc.message, exc.connection_state))

    async def _emit(self, event: TokenEvent) -> None:
        if self._metrics is not None:
            self._metrics.oauth_refresh_total.labels(result=event.result).inc()
        if self._listener is not None:
            outcome = self._listener(event)
            if inspect.isawaitable(outcome):
                await outcome
