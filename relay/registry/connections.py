"""HTTP connections in the registry: stored as one JSON document per connection, with
each secret in it (password, token, client key) encrypted on its own by the
``SecretBox``, so the database never holds them in clear.

``ConnectionsMixin`` is part of ``Registry``; it needs the registry opened with
``secrets=SecretBox(...)`` (``RegistryError`` otherwise).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from relay.errors import ConflictError, NotFoundError, RegistryError
from relay.models.connection import MASK, ConnectionIn, ConnectionOut
from relay.registry.models import STATE_REASON_LEN, agents, connections, iclients
from relay.registry.secrets import SecretBox
from relay.registry.tokens import new_id

CONNECTION_PREFIX = "con_"
STATES = ("online", "offline", "needs_authorization")

# Where secrets sit in a connection document. Every non-null value at these paths is
# encrypted before storage and masked on read. Add future secrets (OAuth tokens kept
# in the document) here.
SECRET_PATHS: tuple[tuple[str, ...], ...] = (
    ("http", "auth", "basic", "password"),
    ("http", "auth", "token", "token"),
    ("http", "client_certificate", "key_pem"),
)

# A result row (see relay.registry.store).
_Row = Any


class InvalidReferenceError(RegistryError, ValueError):
    """A connection names an agent or connection that is not the account's own;
    ``field`` is the dotted path of the offending field (``agent_id``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class InUseError(ConflictError):
    """Deleting would leave connections pointing at nothing; ``connection_ids`` names
    them."""

    def __init__(self, message: str, connection_ids: list[str]) -> None:
        super().__init__(message)
        self.connection_ids = connection_ids


def _now() -> datetime:
    return datetime.now(UTC)


def get_path(doc: Any, path: tuple[str, ...]) -> Any:
    """The value at ``path`` in nested dicts, or None when any step is missing."""
    for key in path:
        if not isinstance(doc, dict):
            return None
        doc = doc.get(key)
    return doc


def set_path(doc: Any, path: tuple[str, ...], value: Any) -> None:
    """Set ``path`` if all its parents exist (secrets only live in present sections)."""
    for key in path[:-1]:
        if not isinstance(doc, dict):
            return
        doc = doc.get(key)
    if isinstance(doc, dict) and path[-1] in doc:
        doc[path[-1]] = value


def secret_paths_set(doc: dict[str, Any]) -> Iterator[tuple[str, ...]]:
    for path in SECRET_PATHS:
        if isinstance(get_path(doc, path), str):
            yield path


def mask_secrets(doc: dict[str, Any]) -> dict[str, Any]:
    """A copy of a connection document with every set secret shown as ``MASK``."""
    out: dict[str, Any] = json.loads(json.dumps(doc))
    for path in secret_paths_set(out):
        set_path(out, path, MASK)
    return out


@dataclass(frozen=True)
class StoredConnection:
    """A connection as stored; ``spec`` holds the secrets in clear (decrypted)."""

    id: str
    account_id: str
    spec: ConnectionIn
    state: str
    state_reason: str | None
    last_tested_at: datetime | None
    created_at: datetime
    updated_at: datetime
    version: int

    def to_out(self) -> ConnectionOut:
        """What the API shows: the secrets masked, plus the read-only fields."""
        doc = mask_secrets(self.spec.model_dump(mode="json"))
        return ConnectionOut.model_validate(
            {
                **doc,
                "id": self.id,
                "state": self.state,
                "state_reason": self.state_reason,
                "last_tested_at": self.last_tested_at,
                "created_at": self.created_at,
                "updated_at": self.updated_at,
            }
        )


@dataclass(frozen=True)
class StateUpdate:
    """A connection's state as it was (``previous``) and as it is now."""

    connection_id: str
    account_id: str
    previous: str | None
    state: str
    reason: str | None

    @property
    def changed(self) -> bool:
        return self.previous != self.state


def _clip_reason(reason: str | None) -> str | None:
    return reason[:STATE_REASON_LEN] if reason is not None else None


def _check_state(state: str) -> None:
    if state not in STATES:
        raise ValueError(f"connection state must be one of {', '.join(STATES)}, not {state!r}")


class ConnectionsMixin:
    """Connection storage; mixed into ``Registry`` (which provides the members below)."""

    _secrets: SecretBox | None

    if TYPE_CHECKING:

        def _read(self) -> AbstractAsyncContextManager[AsyncConnection]: ...

        def _write(self) -> AbstractAsyncContextManager[AsyncConnection]: ...

        async def _audit(
            self,
            conn: AsyncConnection,
            account_id: str | None,
            actor: str,
            action: str,
            target_id: str,
            details: dict[str, Any] | None,
        ) -> None: ...

    # -- encryption ----------------------------------------------------------------

    def _box(self) -> SecretBox:
        if self._secrets is None:
            raise RegistryError(
                "the registry was opened without a secrets key: connections are unavailable"
            )
        return self._secrets

    def _encode(self, spec: ConnectionIn) -> str:
        box = self._box()
        doc = spec.model_dump(mode="json")
        for path in secret_paths_set(doc):
            set_path(doc, path, box.encrypt(get_path(doc, path)))
        return json.dumps(doc, separators=(",", ":"), sort_keys=True)

    def _decode(self, document: str) -> ConnectionIn:
        box = self._box()
        doc = json.loads(document)
        for path in secret_paths_set(doc):
            set_path(doc, path, box.decrypt(get_path(doc, path)))
        return ConnectionIn.model_validate(doc)

    def _from_row(self, row: _Row) -> StoredConnection:
        return StoredConnection(
            id=row.id,
            account_id=row.account_id,
            spec=self._decode(row.document),
            state=row.state,
            state_reason=row.state_reason,
            last_tested_at=row.last_tested_at,
            created_at=row.created_at,
            updated_at=row.updated_at,
            version=row.version,
        )

    # -- references ------------------------------------------------------------------

    async def _check_refs(
        self,
        conn: AsyncConnection,
        account_id: str,
        spec: ConnectionIn,
        connection_id: str | None,
    ) -> None:
        if spec.agent_id is not None:
            owner = await conn.scalar(
                sa.select(agents.c.account_id).where(agents.c.id == spec.agent_id)
            )
            if owner != account_id:
                raise InvalidReferenceError("agent_id", f"agent {spec.agent_id} not found")
        lender = spec.http.borrow_concurrency_from
        if lender is not None:
            if lender == connection_id:
                raise InvalidReferenceError(
                    "http.borrow_concurrency_from", "a connection cannot borrow from itself"
                )
            owner = await conn.scalar(
                sa.select(connections.c.account_id).where(connections.c.id == lender)
            )
            if owner != account_id:
                raise InvalidReferenceError(
                    "http.borrow_concurrency_from", f"connection {lender} not found"
                )

    async def check_connection_refs(
        self, account_id: str, spec: ConnectionIn, connection_id: str | None = None
    ) -> None:
        """``InvalidReferenceError`` unless the agent, the connection ``spec`` borrows
        concurrency from and, for ``auth.type: oauth2``, the iClient are the account's
        own (the agent and the lender are checked again when saving)."""
        async with self._read() as conn:
            await self._check_refs(conn, account_id, spec, connection_id)
            auth = spec.http.auth
            if auth.type == "oauth2" and auth.oauth2 is not None:
                iclient_id = auth.oauth2.iclient_id
                owner = await conn.scalar(
                    sa.select(iclients.c.account_id).where(iclients.c.id == iclient_id)
                )
                if owner != account_id:
                    raise InvalidReferenceError(
                        "http.auth.oauth2.iclient_id", f"iClient {iclient_id} not found"
                    )

    # -- CRUD --------------------------------------------------------------------------

    async def create_connection(
        self,
        account_id: str,
        spec: ConnectionIn,
        *,
        state: str,
        state_reason: str | None,
        tested_at: datetime | None,
        actor: str,
    ) -> StoredConnection:
        _check_state(state)
        now = _now()
        stored = StoredConnection(
            id=new_id(CONNECTION_PREFIX),
            account_id=account_id,
            spec=spec,
            state=state,
            state_reason=_clip_reason(state_reason),
            last_tested_at=tested_at,
            created_at=now,
            updated_at=now,
            version=1,
        )
        document = self._encode(spec)
        try:
            async with self._write() as conn:
                await self._check_refs(conn, account_id, spec, None)
                await conn.execute(
                    connections.insert().values(
                        id=stored.id,
                        account_id=account_id,
                        name=spec.name,
                        mode=spec.mode,
                        agent_id=spec.agent_id,
                        document=document,
                        state=state,
                        state_reason=stored.state_reason,
                        last_tested_at=tested_at,
                        created_at=now,
                        updated_at=now,
                        version=1,
                    )
                )
                await self._audit(
                    conn,
                    account_id,
                    actor,
                    "connection.created",
                    stored.id,
                    {"name": spec.name, "mode": spec.mode, "agent_id": spec.agent_id},
                )
        except IntegrityError:
            # The agent was deleted between the check and the insert.
            raise InvalidReferenceError("agent_id", f"agent {spec.agent_id} not found") from None
        return stored

    async def _connection_row(
        self, conn: AsyncConnection, connection_id: str, account_id: str | None
    ) -> _Row:
        query = connections.select().where(connections.c.id == connection_id)
        if account_id is not None:
            query = query.where(connections.c.account_id == account_id)
        row = (await conn.execute(query)).first()
        if row is None:
            raise NotFoundError(f"connection {connection_id} not found")
        return row

    async def get_connection(
        self, connection_id: str, account_id: str | None = None
    ) -> StoredConnection:
        """``NotFoundError`` if it does not exist or belongs to another account."""
        async with self._read() as conn:
            row = await self._connection_row(conn, connection_id, account_id)
        return self._from_row(row)

    async def list_connections(self, account_id: str) -> list[StoredConnection]:
        query = (
            connections.select()
            .where(connections.c.account_id == account_id)
            .order_by(connections.c.created_at, connections.c.id)
        )
        async with self._read() as conn:
            rows = (await conn.execute(query)).all()
        return [self._from_row(r) for r in rows]

    async def list_connections_in_state(self, state: str) -> list[StoredConnection]:
        """Every account's connections in ``state`` (for the background re-test)."""
        query = (
            connections.select()
            .where(connections.c.state == state)
            .order_by(connections.c.created_at, connections.c.id)
        )
        async with self._read() as conn:
            rows = (await conn.execute(query)).all()
        return [self._from_row(r) for r in rows]

    async def update_connection(
        self,
        connection_id: str,
        account_id: str,
        spec: ConnectionIn,
        *,
        actor: str,
        expected_version: int | None = None,
        state: str | None = None,
        state_reason: str | None = None,
        tested_at: datetime | None = None,
    ) -> StoredConnection:
        """Replace the settings (``spec`` is complete, secrets in clear).

        ``expected_version``: ``ConflictError`` if someone changed it meanwhile.
        ``state``: set state, reason and ``tested_at`` in the same transaction (None
        keeps the current state).
        """
        if state is not None:
            _check_state(state)
        document = self._encode(spec)
        now = _now()
        try:
            async with self._write() as conn:
                row = await self._connection_row(conn, connection_id, account_id)
                if expected_version is not None and row.version != expected_version:
                    raise ConflictError(
                        f"connection {connection_id} was changed meanwhile (version "
                        f"{row.version}, expected {expected_version}): read it again"
                    )
                await self._check_refs(conn, account_id, spec, connection_id)
                values: dict[str, Any] = {
                    "name": spec.name,
                    "mode": spec.mode,
                    "agent_id": spec.agent_id,
                    "document": document,
                    "updated_at": now,
                    "version": row.version + 1,
                }
                if state is not None:
                    values.update(
                        state=state,
                        state_reason=_clip_reason(state_reason),
                        last_tested_at=tested_at if tested_at is not None else row.last_tested_at,
                    )
                await conn.execute(
                    connections.update().where(connections.c.id == connection_id).values(**values)
                )
                old = self._decode(row.document)
                changed = sorted(_changed_fields(old, spec))
                await self._audit(
                    conn,
                    account_id,
                    actor,
                    "connection.changed",
                    connection_id,
                    {"name": spec.name, "fields": changed},
                )
                updated = await self._connection_row(conn, connection_id, account_id)
        except IntegrityError:
            raise InvalidReferenceError("agent_id", f"agent {spec.agent_id} not found") from None
        return self._from_row(updated)

    async def delete_connection(self, connection_id: str, account_id: str, *, actor: str) -> None:
        """``InUseError`` while other connections borrow its concurrency budget."""
        async with self._write() as conn:
            row = await self._connection_row(conn, connection_id, account_id)
            borrowers = await self._borrowers(conn, account_id, connection_id)
            if borrowers:
                raise InUseError(
                    f"connection {connection_id} lends its concurrency to "
                    f"{', '.join(borrowers)}: change or delete those first",
                    borrowers,
                )
            await conn.execute(connections.delete().where(connections.c.id == connection_id))
            await self._audit(
                conn, account_id, actor, "connection.deleted", connection_id, {"name": row.name}
            )

    async def _borrowers(
        self, conn: AsyncConnection, account_id: str, connection_id: str
    ) -> list[str]:
        rows = await conn.execute(
            sa.select(connections.c.id, connections.c.document)
            .where(connections.c.account_id == account_id, connections.c.id != connection_id)
            .order_by(connections.c.id)
        )
        # The lender sits inside the document (not a secret): read it without decrypting.
        return [
            r.id
            for r in rows
            if get_path(json.loads(r.document), ("http", "borrow_concurrency_from"))
            == connection_id
        ]

    async def set_connection_state(
        self,
        connection_id: str,
        state: str,
        reason: str | None,
        *,
        tested_at: datetime | None = None,
    ) -> StateUpdate:
        """Record a test outcome (no version bump: the settings did not change).
        ``tested_at`` None keeps the previous ``last_tested_at``. Returns the state
        before and after, read and written in one transaction (so of two processes
        recording the same change, exactly one sees it as a change)."""
        _check_state(state)
        values: dict[str, Any] = {"state": state, "state_reason": _clip_reason(reason)}
        if tested_at is not None:
            values["last_tested_at"] = tested_at
        async with self._write() as conn:
            row = (
                await conn.execute(
                    sa.select(connections.c.account_id, connections.c.state)
                    .where(connections.c.id == connection_id)
                    .with_for_update()
                )
            ).first()
            if row is None:
                raise NotFoundError(f"connection {connection_id} not found")
            await conn.execute(
                connections.update().where(connections.c.id == connection_id).values(**values)
            )
        return StateUpdate(
            connection_id=connection_id,
            account_id=row.account_id,
            previous=row.state,
            state=state,
            reason=values["state_reason"],
        )

    async def connections_using_agent(self, agent_id: str) -> list[str]:
        async with self._read() as conn:
            return await self._connections_using_agent(conn, agent_id)

    async def _connections_using_agent(self, conn: AsyncConnection, agent_id: str) -> list[str]:
        rows = await conn.execute(
            sa.select(connections.c.id)
            .where(connections.c.agent_id == agent_id)
            .order_by(connections.c.id)
        )
        return [r.id for r in rows]


def _changed_fields(old: ConnectionIn, new: ConnectionIn) -> Iterator[str]:
    """Dotted paths of the leaves that differ (names only: values may be secrets)."""

    def walk(a: Any, b: Any, prefix: str) -> Iterator[str]:
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                yield from walk(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else key)
        elif a != b:
            yield prefix

    yield from walk(old.model_dump(mode="json"), new.model_dump(mode="json"), "")
