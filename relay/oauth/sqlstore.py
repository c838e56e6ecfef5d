"""The relay's OAuth stores in the registry database, shared by every relay process on
it: ``SqlTokenStore`` (a ``TokenStore``: tokens, refresh lease, compare-and-set) and
``SqlStateStore`` (a ``StateStore``: pending authorizations, single use).

Waiting for another process's refresh: on PostgreSQL the store ``LISTEN``s for the
``NOTIFY`` each write sends and re-reads when one arrives (and, in case a notification
is lost with its connection, every ``DEFAULT_LISTEN_RECHECK_S``); on SQLite (one host)
it polls the version, starting fast and backing off.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from relay.oauth.flow import (
    DEFAULT_STATE_TTL_S,
    PendingAuthorization,
    check_pending,
    state_key,
)
from relay.oauth.refresh import StoredTokens
from relay.oauth.tokens import TokenSet
from relay.registry import Registry
from relay.registry.oauth import Listener, StoredState
from shared.logging import get_logger

log = get_logger("relay.oauth")

DEFAULT_POLL_INITIAL_S = 0.02
DEFAULT_POLL_MAX_S = 0.5
DEFAULT_LISTEN_RECHECK_S = 1.0
# Unfinished authorizations kept per connection (a user clicking "authorize" again
# and again); the oldest go first.
DEFAULT_MAX_PENDING_PER_CONNECTION = 20


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


class SqlTokenStore:
    """A ``TokenStore`` on the registry. ``aclose()`` it before closing the registry."""

    def __init__(
        self,
        registry: Registry,
        *,
        poll_initial_s: float = DEFAULT_POLL_INITIAL_S,
        poll_max_s: float = DEFAULT_POLL_MAX_S,
        listen_recheck_s: float = DEFAULT_LISTEN_RECHECK_S,
    ) -> None:
        self._registry = registry
        self.poll_initial_s = poll_initial_s
        self.poll_max_s = poll_max_s
        self.listen_recheck_s = listen_recheck_s
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._listener: Listener | None = None
        self._listen_tried = False
        self._listen_lock = asyncio.Lock()
        self._closed = False

    async def load(self, connection_id: str) -> StoredTokens:
        row = await self._registry.load_oauth_tokens(connection_id)
        tokens = TokenSet.from_dict(row.tokens) if row.tokens is not None else None
        return StoredTokens(tokens, row.version)

    async def try_lease(self, connection_id: str, owner: str, seconds: float) -> int | None:
        return await self._registry.lease_oauth_tokens(connection_id, owner, seconds)

    async def release_lease(self, connection_id: str, owner: str) -> None:
        await self._registry.release_oauth_lease(connection_id, owner)
        self._wake(connection_id)

    async def store(
        self, connection_id: str, tokens: TokenSet | None, expected_version: int
    ) -> int | None:
        version = await self._registry.store_oauth_tokens(
            connection_id,
            tokens.to_dict() if tokens is not None else None,
            _utc(tokens.expires_at) if tokens is not None else None,
            expected_version,
        )
        if version is not None:
            self._wake(connection_id)
        return version

    async def wait_for_change(self, connection_id: str, seen_version: int, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        listening = await self._ensure_listener()
        event = asyncio.Event()
        self._waiters.setdefault(connection_id, set()).add(event)
        delay = self.listen_recheck_s if listening else self.poll_initial_s
        try:
            while True:
                # Registered before reading, so a change between the read and the wait
                # still sets the event.
                event.clear()
                row = await self._registry.load_oauth_tokens(connection_id, decrypt=False)
                if row.version != seen_version or row.lease_free:
                    return
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return
                try:
                    async with asyncio.timeout(min(remaining, delay)):
                        await event.wait()
                except TimeoutError:
                    if not listening:
                        delay = min(delay * 2, self.poll_max_s)
        finally:
            waiters = self._waiters.get(connection_id)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._waiters[connection_id]

    def _wake(self, connection_id: str) -> None:
        for event in self._waiters.get(connection_id, ()):
            event.set()

    async def _ensure_listener(self) -> bool:
        if self._listener is not None:
            return True
        if self._listen_tried or self._closed:
            return False
        async with self._listen_lock:
            if not self._listen_tried:
                self._listen_tried = True
                try:
                    self._listener = await self._registry.listen(self._wake)
                except Exception as exc:  # polling still works, only slower
                    log.warning("oauth_listen_failed", error=type(exc).__name__)
        return self._listener is not None

    async def aclose(self) -> None:
        self._closed = True
        listener, self._listener = self._listener, None
        if listener is not None:
            await listener.close()


class SqlStateStore:
    """A ``StateStore`` on the registry: keyed by ``state_key(state)``, the verifier
    encrypted, ``take`` one ``DELETE ... RETURNING``."""

    def __init__(
        self,
        registry: Registry,
        *,
        ttl_s: float = DEFAULT_STATE_TTL_S,
        max_pending_per_connection: int = DEFAULT_MAX_PENDING_PER_CONNECTION,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._registry = registry
        self.ttl_s = ttl_s
        self.max_pending_per_connection = max_pending_per_connection
        self._clock = clock

    async def put(self, state: str, pending: PendingAuthorization) -> None:
        now = self._clock()
        await self._registry.put_oauth_state(
            state_key(state),
            StoredState(
                account_id=pending.account_id,
                connection_id=pending.connection_id,
                iclient_id=pending.iclient_id,
                redirect_uri=pending.redirect_uri,
                code_verifier=pending.code_verifier,
                return_url=pending.return_url,
                created_at=_utc(now),
            ),
            expired_before=_utc(now) - timedelta(seconds=self.ttl_s),
            max_per_connection=self.max_pending_per_connection,
        )

    async def take(
        self,
        state: str,
        *,
        account_id: str | None = None,
        connection_id: str | None = None,
    ) -> PendingAuthorization:
        row = await self._registry.take_oauth_state(state_key(state))
        pending = None
        if row is not None:
            pending = PendingAuthorization(
                account_id=row.account_id,
                connection_id=row.connection_id,
                iclient_id=row.iclient_id,
                redirect_uri=row.redirect_uri,
                code_verifier=row.code_verifier,
                return_url=row.return_url,
                created_at=row.created_at.timestamp(),
            )
        return check_pending(
            pending,
            now=self._clock(),
            ttl_s=self.ttl_s,
            account_id=account_id,
            connection_id=connection_id,
        )
