"""Connection state changes (online, offline, needs_authorization): written to the
registry, logged, counted in ``onprem_relay_connection_state_changes_total{state}``,
and, when a connection breaks or recovers, signalled to the account's webhook.

``ConnectionStates`` stands between the request pipeline and the registry: the
executor records test outcomes and failures through it (it is the executor's
``ConnectionStore``), the ``TokenManager`` reports refresh failures to it
(``on_token_event``), and the API reports the changes it makes itself (``changed``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.exc import SQLAlchemyError

from relay.errors import NotFoundError, RegistryError
from relay.metrics import RelayMetrics
from relay.oauth.refresh import TokenEvent
from relay.oauth.signals import StateChange, WebhookSender
from relay.registry import Registry, StateUpdate, StoredConnection
from shared.logging import get_logger

log = get_logger("relay.connections")


class ConnectionStates:
    def __init__(
        self,
        registry: Registry,
        *,
        metrics: RelayMetrics | None = None,
        webhooks: WebhookSender | None = None,
    ) -> None:
        self.registry = registry
        self._metrics = metrics
        self._webhooks = webhooks

    # -- the executor's ConnectionStore -------------------------------------------------

    async def get_connection(self, connection_id: str, account_id: str) -> StoredConnection:
        return await self.registry.get_connection(connection_id, account_id)

    async def list_connections_in_state(self, state: str) -> Sequence[StoredConnection]:
        return await self.registry.list_connections_in_state(state)

    async def set_connection_state(
        self,
        connection_id: str,
        state: str,
        reason: str | None,
        *,
        tested_at: datetime | None = None,
    ) -> StateUpdate:
        update = await self.registry.set_connection_state(
            connection_id, state, reason, tested_at=tested_at
        )
        await self.changed(update)
        return update

    # -- reports --------------------------------------------------------------------------

    async def on_token_event(self, event: TokenEvent) -> None:
        """The ``TokenManager``'s listener: a refresh that calls for another state
        (``needs_authorization`` after ``invalid_grant``, ``offline`` after
        ``invalid_client``) is recorded. Never raises: the refresh's own error is what
        the request reports."""
        if event.state is None:
            return
        try:
            await self.set_connection_state(event.connection_id, event.state, event.message)
        except NotFoundError:
            return  # deleted meanwhile
        except (RegistryError, SQLAlchemyError, OSError) as exc:
            log.warning(
                "connection_state_update_failed",
                connection_id=event.connection_id,
                state=event.state,
                error=type(exc).__name__,
            )

    async def changed(self, update: StateUpdate) -> None:
        """Log, count and signal ``update`` if the state changed (a new reason for the
        same state is not a change)."""
        if not update.changed:
            return
        log.info(
            "connection_state_changed",
            connection_id=update.connection_id,
            account_id=update.account_id,
            state=update.state,
            previous_state=update.previous,
            reason=update.reason,
        )
        if self._metrics is not None:
            self._metrics.connection_state_changes_total.labels(state=update.state).inc()
        change = StateChange(
            account_id=update.account_id,
            connection_id=update.connection_id,
            state=update.state,
            previous_state=update.previous,
            reason=update.reason,
        )
        if self._webhooks is None or not change.is_break_or_recovery:
            return
        try:
            hook = await self.registry.get_webhook(update.account_id)
        except (RegistryError, SQLAlchemyError, OSError) as exc:
            log.warning(
                "webhook_lookup_failed",
                connection_id=update.connection_id,
                error=type(exc).__name__,
            )
            return
        if hook is not None:
            self._webhooks.send(hook.url, hook.secret, change)
