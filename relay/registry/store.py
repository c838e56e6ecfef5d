"""The registry: accounts, agents and their tokens, live agent sessions, audit trail.

Every method is one transaction, so a failure never leaves half a change behind.
Tokens exist in clear only in the return value that hands them out; the database
holds their SHA-256 and never sees, logs or audits the token itself.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Hashable,
    Iterator,
    Sequence,
)
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from relay.errors import ConflictError, NotFoundError, RegistryError
from relay.registry import db, migrate
from relay.registry.connections import ConnectionsMixin, InUseError, StoredConnection
from relay.registry.info import AccountInfo, AgentInfo, AuditEvent, SessionInfo
from relay.registry.models import (
    DESCRIPTION_LEN,
    NAME_LEN,
    SHORT_TEXT_LEN,
    accounts,
    agent_sessions,
    agents,
    audit_events,
)
from relay.registry.oauth import OAuthMixin
from relay.registry.secrets import SecretBox
from relay.registry.tokens import (
    ACCOUNT_PREFIX,
    AGENT_PREFIX,
    DUMMY_HASH,
    hash_token,
    hashes_equal,
    new_agent_token,
    new_api_token,
    new_id,
)

# A result row; attribute access is untyped anyway, and Row's generic parameters differ
# between SQLAlchemy 2.0 and 2.1.
_Row = Any
# Keeps IN (...) lists under every backend's bound-parameter limit.
_CHUNK = 500
_REDACTED = "********"
_SENSITIVE_KEY_PARTS = ("token", "secret", "password", "passphrase", "authorization", "cookie")
_SENSITIVE_KEY_ENDS = ("key",)  # api_key, private_key, client_key
# Settings that merely mention a credential (token_url, token_location, iclient_id).
_HARMLESS_KEY_ENDS = ("_id", "_url", "_uri", "_location", "_type", "_name")
_TOKEN_PREFIXES = ("oat_", "oak_")


# pg_advisory_xact_lock key taken by every account creation, so the first-run setup's
# check and insert happen under it ("onprem01" in ASCII).
FIRST_RUN_LOCK = 0x6F6E7072656D3031


class SchemaError(RegistryError):
    """The database is not migrated to the revision this relay needs."""


def _now() -> datetime:
    return datetime.now(UTC)


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for i in range(0, len(items), _CHUNK):
        yield items[i : i + _CHUNK]


def _check_text(
    what: str, value: str, max_len: int, *, allow_empty: bool = False, multiline: bool = False
) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string")
    if not value.strip() and not allow_empty:
        raise ValueError(f"{what} must not be empty")
    if len(value) > max_len:
        raise ValueError(f"{what} is longer than {max_len} characters")
    allowed = "\n\t" if multiline else ""
    if any((ord(c) < 32 or ord(c) == 127) and c not in allowed for c in value):
        raise ValueError(f"{what} must not contain control characters")
    return value


def _clip(value: str) -> str:
    """Peer-supplied strings (SSH banner, hostname) are cut to fit their column."""
    return value[:SHORT_TEXT_LEN]


def _scrub(value: Any, key: str = "") -> Any:
    """Defence in depth: audit details never carry credentials, whoever calls."""
    lowered = key.lower()
    sensitive = any(p in lowered for p in _SENSITIVE_KEY_PARTS) or lowered.endswith(
        _SENSITIVE_KEY_ENDS
    )
    if sensitive and not lowered.endswith(_HARMLESS_KEY_ENDS):
        return _REDACTED
    if isinstance(value, dict):
        return {str(k): _scrub(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    if isinstance(value, str) and value.startswith(_TOKEN_PREFIXES):
        return _REDACTED
    return value


def _session_from_row(row: _Row) -> SessionInfo:
    return SessionInfo(
        id=row.id,
        agent_id=row.agent_id,
        node_id=row.node_id,
        remote_addr=row.remote_addr,
        client_version=row.client_version,
        hostname=row.hostname,
        connected_at=row.connected_at,
        last_seen=row.last_seen,
    )


def _agent_from_row(row: _Row, sessions: list[SessionInfo]) -> AgentInfo:
    return AgentInfo(
        id=row.id,
        account_id=row.account_id,
        name=row.name,
        description=row.description,
        created_at=row.created_at,
        last_seen=row.last_seen,
        version=row.version,
        sessions=sessions,
        updated_at=row.updated_at,
    )


def _account_from_row(row: _Row) -> AccountInfo:
    return AccountInfo(id=row.id, name=row.name, created_at=row.created_at)


_AGENT_COLUMNS = (
    agents.c.id,
    agents.c.account_id,
    agents.c.name,
    agents.c.description,
    agents.c.created_at,
    agents.c.updated_at,
    agents.c.last_seen,
    agents.c.version,
)


# -- read cache -------------------------------------------------------------------
#
# The HTTP API asks for the same two rows on every request: the account behind an
# API token and the connection being called. ``_ReadCache`` keeps positive answers in
# memory, with this invalidation:
# - in this process, immediately: every write transaction (``Registry._write``, which
#   every registry write goes through, of any ``Registry`` object) and every
#   data-changing statement seen on a registry engine outdates every cached entry
#   (one process-wide generation counter); while a write transaction is open
#   nothing is cached, so a read racing a commit is never kept;
# - made by another process (another relay, an ``onprem-relay`` CLI command), after
#   at most ``READ_CACHE_TTL_S``: the age of an entry.
READ_CACHE_TTL_S = 1.0
_READ_CACHE_MAX = 4096
# Statements that change data or schema (anything else: SELECT, BEGIN, PRAGMA...).
_WRITE_VERBS = frozenset(
    {"INSERT", "UPDATE", "DELETE", "REPLACE", "UPSERT", "MERGE", "CREATE", "DROP", "ALTER"}
    | {"TRUNCATE", "COPY", "WITH"}
)


class _Freshness:
    """Process-wide: bumped by every write, so one counter outdates every cache."""

    generation = 0
    writing = 0

    @classmethod
    def bump(cls) -> None:
        cls.generation += 1


def _on_statement(
    conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool
) -> None:
    # Writes that bypass ``Registry._write`` (raw connections, future code) still
    # outdate the caches.
    verb = statement.lstrip()[:8].split(None, 1)
    if verb and verb[0].upper() in _WRITE_VERBS:
        _Freshness.bump()


class _ReadCache:
    """Positive results of hot reads, each valid until the next write in this
    process or for ``ttl`` seconds, whichever comes first. Values must be immutable
    (frozen dataclasses). Concurrent misses for one key share one database read, as
    long as no write came in between."""

    def __init__(self, ttl: float = READ_CACHE_TTL_S, max_entries: int = _READ_CACHE_MAX) -> None:
        self.ttl = ttl
        self._max = max_entries
        self._entries: dict[Hashable, tuple[float, int, Any]] = {}
        self._flights: dict[Hashable, tuple[int, asyncio.Future[Any]]] = {}

    def get(self, key: Hashable) -> Any:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, generation, value = entry
        if generation != _Freshness.generation or expires <= time.monotonic():
            del self._entries[key]
            return None
        return value

    def put(self, key: Hashable, value: Any, generation: int) -> None:
        """Keep ``value`` (read at ``generation``) unless a write started or
        happened since. None is never kept."""
        if (
            value is None
            or self.ttl <= 0
            or _Freshness.writing
            or generation != _Freshness.generation
        ):
            return
        entries = self._entries
        if key not in entries and len(entries) >= self._max:
            # Outdated entries first; if none, the oldest.
            current = _Freshness.generation
            stale = [k for k, e in entries.items() if e[1] != current]
            for k in stale or [next(iter(entries))]:
                del entries[k]
        entries[key] = (time.monotonic() + self.ttl, generation, value)

    async def fetch(self, key: Hashable, load: Callable[[], Awaitable[Any]]) -> Any:
        """The cached value, else what ``load()`` returns (kept if not None)."""
        while True:
            value = self.get(key)
            if value is not None:
                return value
            generation = _Freshness.generation
            flight = self._flights.get(key)
            if flight is None or flight[0] != generation:
                break
            # Someone is reading this key since the last write: wait for that read.
            try:
                return await asyncio.shield(flight[1])
            except asyncio.CancelledError:
                if not flight[1].cancelled():
                    raise  # we were cancelled ourselves
                # The reader was cancelled: read again.
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._flights[key] = (generation, future)
        try:
            value = await load()
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                future.cancel()
            else:
                future.set_exception(exc)
                future.exception()  # waiters get it; never "never retrieved"
            raise
        else:
            future.set_result(value)
            self.put(key, value, generation)
            return value
        finally:
            if self._flights.get(key, (None, None))[1] is future:
                del self._flights[key]

    def clear(self) -> None:
        self._entries.clear()


class Registry(ConnectionsMixin, OAuthMixin):
    """Async access to the registry database. Open with ``await Registry.open(url)``."""

    def __init__(
        self,
        engine: AsyncEngine,
        url: URL,
        *,
        stale_session_after_s: float | None = None,
        secrets: SecretBox | None = None,
    ) -> None:
        self._engine = engine
        self._secrets = secrets
        # Writers take SQLite's write lock at BEGIN (see relay.registry.db).
        self._write_engine = engine.execution_options(**{db.WRITE_OPTION: True})
        self._url = url
        self._stale_after = (
            timedelta(seconds=stale_session_after_s) if stale_session_after_s else None
        )
        self._cache = _ReadCache()
        if not sa.event.contains(engine.sync_engine, "after_cursor_execute", _on_statement):
            sa.event.listen(engine.sync_engine, "after_cursor_execute", _on_statement)

    @classmethod
    async def open(
        cls,
        database_url: str,
        *,
        base_dir: str = ".",
        stale_session_after_s: float | None = None,
        secrets: SecretBox | None = None,
    ) -> Registry:
        """Create the engine (no connection, no migration yet).

        ``stale_session_after_s``: sessions whose ``last_seen`` is older are ignored
        (their relay process died without clearing them); None keeps every session.
        ``secrets``: encrypts and decrypts the secrets of connections; without it the
        connection methods raise ``RegistryError``.
        Raises ``ConfigError`` for a bad or unsupported URL.
        """
        url = db.resolve_url(database_url, base_dir)
        return cls(
            db.create_engine(url),
            url,
            stale_session_after_s=stale_session_after_s,
            secrets=secrets,
        )

    @property
    def url(self) -> str:
        """The database URL without password."""
        return db.display_url(self._url)

    @property
    def sqlite_path(self) -> Path | None:
        if self._url.get_backend_name() != "sqlite" or db.is_memory(self._url):
            return None
        return Path(str(self._url.database))

    async def close(self) -> None:
        await self._engine.dispose()

    async def __aenter__(self) -> Registry:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        async with self._engine.connect() as conn:
            yield conn

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        # Outdate every cached read at the start and again once the transaction has
        # ended (committed or not), and cache nothing in between (see _ReadCache).
        _Freshness.writing += 1
        _Freshness.bump()
        try:
            async with self._write_engine.begin() as conn:
                yield conn
        finally:
            _Freshness.writing -= 1
            _Freshness.bump()

    # -- schema ------------------------------------------------------------------

    async def upgrade(self) -> None:
        """Migrate the database to the newest revision (idempotent)."""
        async with self._write() as conn:
            await conn.run_sync(migrate.upgrade)

    async def schema_revision(self) -> str | None:
        async with self._read() as conn:
            return await conn.run_sync(migrate.current_revision)

    async def check_schema(self) -> None:
        """Raise ``SchemaError`` unless the database is at this relay's revision."""
        path = self.sqlite_path
        # Connecting would create an empty file as a side effect.
        if path is not None and not path.exists():
            raise SchemaError(f"database {path} does not exist: run 'onprem-relay db upgrade'")
        current = await self.schema_revision()
        head = migrate.head_revision()
        if current == head:
            return
        if current is None:
            raise SchemaError(
                f"database {self.url} is not initialised: run 'onprem-relay db upgrade'"
            )
        raise SchemaError(
            f"database {self.url} is at schema revision {current}, this relay needs {head}: "
            "run 'onprem-relay db upgrade' (or upgrade the relay if the database is newer)"
        )

    async def ping(self) -> None:
        async with self._read() as conn:
            await conn.execute(sa.text("SELECT 1"))

    # -- accounts ----------------------------------------------------------------

    async def create_account(
        self, name: str, *, actor: str = "cli", only_first: bool = False
    ) -> tuple[AccountInfo, str]:
        """A new account and its API token (returned once, stored as a hash).
        ``only_first``: only if there is no account at all (first-run setup), checked
        and inserted under one lock across relay processes (ConflictError otherwise)."""
        _check_text("account name", name, NAME_LEN)
        token = new_api_token()
        info = AccountInfo(id=new_id(ACCOUNT_PREFIX), name=name, created_at=_now())
        try:
            async with self._write() as conn:
                # Every account creation takes the lock, so none slips between a
                # first-run check and its insert (SQLite writers are serialized
                # already, BEGIN IMMEDIATE).
                if conn.dialect.name == "postgresql":
                    await conn.execute(
                        sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": FIRST_RUN_LOCK}
                    )
                if only_first and await conn.scalar(sa.select(accounts.c.id).limit(1)):
                    raise ConflictError("the relay has an account already")
                taken = await conn.scalar(sa.select(accounts.c.id).where(accounts.c.name == name))
                if taken is not None:
                    raise ConflictError(f"an account named {name!r} already exists")
                await conn.execute(
                    accounts.insert().values(
                        id=info.id,
                        name=name,
                        api_token_hash=hash_token(token),
                        created_at=info.created_at,
                    )
                )
                await self._audit(conn, info.id, actor, "account.created", info.id, {"name": name})
        except IntegrityError:
            # Lost a race with another process creating the same name.
            raise ConflictError(f"an account named {name!r} already exists") from None
        return info, token

    async def get_account(self, account_id: str) -> AccountInfo:
        async with self._read() as conn:
            row = (await conn.execute(accounts.select().where(accounts.c.id == account_id))).first()
        if row is None:
            raise NotFoundError(f"account {account_id} not found")
        return _account_from_row(row)

    async def get_account_by_name(self, name: str) -> AccountInfo:
        async with self._read() as conn:
            row = (await conn.execute(accounts.select().where(accounts.c.name == name))).first()
        if row is None:
            raise NotFoundError(f"account {name!r} not found")
        return _account_from_row(row)

    async def list_accounts(self) -> list[AccountInfo]:
        async with self._read() as conn:
            rows = await conn.execute(accounts.select().order_by(accounts.c.name))
            return [_account_from_row(r) for r in rows]

    async def authenticate_api_token(self, token: str) -> AccountInfo | None:
        """The account whose API token this is, else None. Answers from memory for
        a token seen within ``READ_CACHE_TTL_S`` (see ``_ReadCache`` for when a
        change is seen); failures are never cached."""
        presented = hash_token(token)

        async def load() -> AccountInfo | None:
            async with self._read() as conn:
                row = (
                    await conn.execute(
                        accounts.select().where(accounts.c.api_token_hash == presented)
                    )
                ).first()
            stored = row.api_token_hash if row is not None else DUMMY_HASH
            if not hashes_equal(stored, presented) or row is None:
                return None
            return _account_from_row(row)

        account: AccountInfo | None = await self._cache.fetch(("api_token", presented), load)
        return account

    # -- connections (the rest is in ConnectionsMixin) ----------------------------

    async def get_connection(
        self, connection_id: str, account_id: str | None = None
    ) -> StoredConnection:
        """``NotFoundError`` if it does not exist or belongs to another account.
        Answers from memory for a connection read within ``READ_CACHE_TTL_S`` (see
        ``_ReadCache``); the result is shared: never change its ``spec``."""
        stored: StoredConnection = await self._cache.fetch(
            ("connection", connection_id, account_id),
            lambda: super(Registry, self).get_connection(connection_id, account_id),
        )
        return stored

    # -- agents ------------------------------------------------------------------

    async def create_agent(
        self, account_id: str, name: str, description: str = "", *, actor: str = "cli"
    ) -> tuple[AgentInfo, str]:
        """A new agent of ``account_id`` and its access token (returned once)."""
        _check_text("agent name", name, NAME_LEN)
        _check_text("description", description, DESCRIPTION_LEN, allow_empty=True, multiline=True)
        token = new_agent_token()
        now = _now()
        info = AgentInfo(
            id=new_id(AGENT_PREFIX),
            account_id=account_id,
            name=name,
            description=description,
            created_at=now,
            last_seen=None,
            version=None,
            sessions=[],
            updated_at=now,
        )
        conflict = f"account {account_id} already has an agent named {name!r}"
        try:
            async with self._write() as conn:
                exists = await conn.scalar(
                    sa.select(accounts.c.id).where(accounts.c.id == account_id)
                )
                if exists is None:
                    raise NotFoundError(f"account {account_id} not found")
                taken = await conn.scalar(
                    sa.select(agents.c.id).where(
                        agents.c.account_id == account_id, agents.c.name == name
                    )
                )
                if taken is not None:
                    raise ConflictError(conflict)
                await conn.execute(
                    agents.insert().values(
                        id=info.id,
                        account_id=account_id,
                        name=name,
                        description=description,
                        token_hash=hash_token(token),
                        created_at=now,
                        updated_at=now,
                    )
                )
                await self._audit(conn, account_id, actor, "agent.created", info.id, {"name": name})
        except IntegrityError:
            raise ConflictError(conflict) from None
        return info, token

    def _live_sessions(self) -> sa.Select[Any]:
        query = agent_sessions.select()
        if self._stale_after is not None:
            query = query.where(agent_sessions.c.last_seen >= _now() - self._stale_after)
        return query.order_by(agent_sessions.c.connected_at, agent_sessions.c.id)

    async def _sessions_by_agent(
        self, conn: AsyncConnection, *, account_id: str | None = None, agent_id: str | None = None
    ) -> dict[str, list[SessionInfo]]:
        query = self._live_sessions()
        if agent_id is not None:
            query = query.where(agent_sessions.c.agent_id == agent_id)
        if account_id is not None:
            query = query.where(
                agent_sessions.c.agent_id.in_(
                    sa.select(agents.c.id).where(agents.c.account_id == account_id)
                )
            )
        out: dict[str, list[SessionInfo]] = {}
        for row in await conn.execute(query):
            out.setdefault(row.agent_id, []).append(_session_from_row(row))
        return out

    async def list_agents(self, account_id: str | None = None) -> list[AgentInfo]:
        query = sa.select(*_AGENT_COLUMNS).order_by(agents.c.created_at, agents.c.id)
        if account_id is not None:
            query = query.where(agents.c.account_id == account_id)
        async with self._read() as conn:
            rows = (await conn.execute(query)).all()
            sessions = await self._sessions_by_agent(conn, account_id=account_id)
        return [_agent_from_row(r, sessions.get(r.id, [])) for r in rows]

    async def get_agent(self, agent_id: str, account_id: str | None = None) -> AgentInfo:
        """The agent; ``NotFoundError`` also when it belongs to another account."""
        async with self._read() as conn:
            row = await self._agent_row(conn, agent_id, account_id)
            sessions = await self._sessions_by_agent(conn, agent_id=agent_id)
        return _agent_from_row(row, sessions.get(agent_id, []))

    async def _agent_row(
        self, conn: AsyncConnection, agent_id: str, account_id: str | None
    ) -> _Row:
        query = sa.select(*_AGENT_COLUMNS).where(agents.c.id == agent_id)
        if account_id is not None:
            query = query.where(agents.c.account_id == account_id)
        row = (await conn.execute(query)).first()
        if row is None:
            raise NotFoundError(f"agent {agent_id} not found")
        return row

    async def rotate_agent_token(
        self, agent_id: str, account_id: str | None = None, *, actor: str = "cli"
    ) -> str:
        """A new access token; the old one stops working at once. Live sessions that
        used it are dropped by their relay (see ``agent_token_hashes``)."""
        token = new_agent_token()
        async with self._write() as conn:
            row = await self._agent_row(conn, agent_id, account_id)
            await conn.execute(
                agents.update()
                .where(agents.c.id == agent_id)
                .values(token_hash=hash_token(token), updated_at=_now())
            )
            await self._audit(
                conn, row.account_id, actor, "agent.token_rotated", agent_id, {"name": row.name}
            )
        return token

    async def update_agent(
        self,
        agent_id: str,
        account_id: str | None = None,
        *,
        name: str | None = None,
        description: str | None = None,
        actor: str = "cli",
    ) -> AgentInfo:
        """Rename or re-describe an agent (None leaves a field as it is)."""
        values: dict[str, Any] = {}
        if name is not None:
            values["name"] = _check_text("agent name", name, NAME_LEN)
        if description is not None:
            values["description"] = _check_text(
                "description", description, DESCRIPTION_LEN, allow_empty=True, multiline=True
            )
        try:
            async with self._write() as conn:
                row = await self._agent_row(conn, agent_id, account_id)
                if name is not None and name != row.name:
                    taken = await conn.scalar(
                        sa.select(agents.c.id).where(
                            agents.c.account_id == row.account_id, agents.c.name == name
                        )
                    )
                    if taken is not None:
                        raise ConflictError(
                            f"account {row.account_id} already has an agent named {name!r}"
                        )
                changed = {k: v for k, v in values.items() if getattr(row, k) != v}
                if changed:
                    await conn.execute(
                        agents.update()
                        .where(agents.c.id == agent_id)
                        .values(**changed, updated_at=_now())
                    )
                    await self._audit(
                        conn,
                        row.account_id,
                        actor,
                        "agent.changed",
                        agent_id,
                        {"name": values.get("name", row.name), "fields": sorted(changed)},
                    )
                row = await self._agent_row(conn, agent_id, account_id)
                sessions = await self._sessions_by_agent(conn, agent_id=agent_id)
        except IntegrityError:
            raise ConflictError(f"an agent named {name!r} already exists") from None
        return _agent_from_row(row, sessions.get(agent_id, []))

    async def delete_agent(
        self, agent_id: str, account_id: str | None = None, *, actor: str = "cli"
    ) -> None:
        """``InUseError`` (a ``ConflictError``) while connections use the agent."""
        async with self._write() as conn:
            row = await self._agent_row(conn, agent_id, account_id)
            users = await self._connections_using_agent(conn, agent_id)
            if users:
                raise InUseError(
                    f"agent {agent_id} is used by connection(s) {', '.join(users)}: "
                    "change or delete them first",
                    users,
                )
            await conn.execute(agent_sessions.delete().where(agent_sessions.c.agent_id == agent_id))
            await conn.execute(agents.delete().where(agents.c.id == agent_id))
            await self._audit(
                conn, row.account_id, actor, "agent.deleted", agent_id, {"name": row.name}
            )

    async def verify_agent_token(self, agent_id: str, token: str) -> str | None:
        """The stored token hash if ``token`` is the agent's current token, else None.

        Costs the same whether or not the agent exists.
        """
        presented = hash_token(token)
        async with self._read() as conn:
            stored = await conn.scalar(
                sa.select(agents.c.token_hash).where(agents.c.id == agent_id)
            )
        matches = hashes_equal(stored if stored is not None else DUMMY_HASH, presented)
        return stored if matches and stored is not None else None

    async def agent_token_hashes(self, agent_ids: Collection[str]) -> dict[str, str]:
        """The current token hash of each of ``agent_ids`` that still exists."""
        ids = sorted(set(agent_ids))
        out: dict[str, str] = {}
        if not ids:
            return out
        async with self._read() as conn:
            for chunk in _chunks(ids):
                rows = await conn.execute(
                    sa.select(agents.c.id, agents.c.token_hash).where(agents.c.id.in_(chunk))
                )
                out.update({r.id: r.token_hash for r in rows})
        return out

    async def verify_agent_tokens(self, attempts: Sequence[tuple[str, str]]) -> list[str | None]:
        """``verify_agent_token`` for many ``(agent_id, token)`` pairs in one query
        (a relay restart makes thousands of agents log in at once): for each, the
        stored token hash if the token is the agent's current one, else None. Each
        comparison costs the same whether or not the agent exists."""
        hashes = await self.agent_token_hashes({agent_id for agent_id, _ in attempts})
        out: list[str | None] = []
        for agent_id, token in attempts:
            presented = hash_token(token)
            stored = hashes.get(agent_id)
            matches = hashes_equal(stored if stored is not None else DUMMY_HASH, presented)
            out.append(stored if matches and stored is not None else None)
        return out

    # -- presence ----------------------------------------------------------------

    async def session_opened(self, session: SessionInfo) -> None:
        """Record a live session; the agent's ``last_seen`` and ``version`` follow it.
        ``NotFoundError`` if the agent was deleted meanwhile."""
        try:
            async with self._write() as conn:
                await self._agent_row(conn, session.agent_id, None)
                await conn.execute(
                    agent_sessions.insert().values(
                        id=session.id,
                        agent_id=session.agent_id,
                        node_id=session.node_id,
                        remote_addr=_clip(session.remote_addr),
                        client_version=_clip(session.client_version),
                        hostname=_clip(session.hostname),
                        connected_at=session.connected_at,
                        last_seen=session.last_seen,
                    )
                )
                await conn.execute(
                    agents.update()
                    .where(agents.c.id == session.agent_id)
                    .values(last_seen=session.last_seen, version=_clip(session.client_version))
                )
        except IntegrityError:
            raise ConflictError(f"session {session.id} is already recorded") from None

    async def session_closed(self, session_id: str) -> None:
        """Forget a session (no-op if unknown); its agent was last seen now."""
        async with self._write() as conn:
            agent_id = await conn.scalar(
                sa.select(agent_sessions.c.agent_id).where(agent_sessions.c.id == session_id)
            )
            if agent_id is None:
                return
            await conn.execute(agent_sessions.delete().where(agent_sessions.c.id == session_id))
            await conn.execute(
                agents.update().where(agents.c.id == agent_id).values(last_seen=_now())
            )

    async def heartbeat(self, node_id: str, session_ids: Collection[str]) -> None:
        """Mark the sessions (held by ``node_id``) and their agents as seen now."""
        ids = sorted(set(session_ids))
        if not ids:
            return
        now = _now()
        async with self._write() as conn:
            for chunk in _chunks(ids):
                mine = sa.and_(agent_sessions.c.node_id == node_id, agent_sessions.c.id.in_(chunk))
                await conn.execute(agent_sessions.update().where(mine).values(last_seen=now))
                await conn.execute(
                    agents.update()
                    .where(agents.c.id.in_(sa.select(agent_sessions.c.agent_id).where(mine)))
                    .values(last_seen=now)
                )

    async def sessions_opened(self, sessions: Sequence[SessionInfo]) -> list[str]:
        """``session_opened`` for many sessions in one transaction. Sessions of agents
        deleted meanwhile are not recorded: returns their ids. ``ConflictError`` (and
        nothing recorded) if one of the sessions is already recorded."""
        if not sessions:
            return []
        agent_ids = sorted({s.agent_id for s in sessions})
        try:
            async with self._write() as conn:
                existing: set[str] = set()
                for chunk in _chunks(agent_ids):
                    existing.update(
                        await conn.scalars(sa.select(agents.c.id).where(agents.c.id.in_(chunk)))
                    )
                kept = [s for s in sessions if s.agent_id in existing]
                if kept:
                    await conn.execute(
                        agent_sessions.insert(),
                        [
                            {
                                "id": s.id,
                                "agent_id": s.agent_id,
                                "node_id": s.node_id,
                                "remote_addr": _clip(s.remote_addr),
                                "client_version": _clip(s.client_version),
                                "hostname": _clip(s.hostname),
                                "connected_at": s.connected_at,
                                "last_seen": s.last_seen,
                            }
                            for s in kept
                        ],
                    )
                    latest = {s.agent_id: s for s in kept}  # the last one of each agent
                    await conn.execute(
                        agents.update()
                        .where(agents.c.id == sa.bindparam("b_id"))
                        .values(last_seen=sa.bindparam("b_seen"), version=sa.bindparam("b_ver")),
                        [
                            {
                                "b_id": s.agent_id,
                                "b_seen": s.last_seen,
                                "b_ver": _clip(s.client_version),
                            }
                            for s in latest.values()
                        ],
                    )
        except IntegrityError:
            raise ConflictError("a session in this batch is already recorded") from None
        return [s.id for s in sessions if s.agent_id not in existing]

    async def sessions_closed(self, session_ids: Collection[str]) -> None:
        """``session_closed`` for many sessions in one transaction."""
        ids = sorted(set(session_ids))
        if not ids:
            return
        now = _now()
        async with self._write() as conn:
            for chunk in _chunks(ids):
                owners = set(
                    await conn.scalars(
                        sa.select(agent_sessions.c.agent_id).where(agent_sessions.c.id.in_(chunk))
                    )
                )
                if not owners:
                    continue
                await conn.execute(agent_sessions.delete().where(agent_sessions.c.id.in_(chunk)))
                await conn.execute(
                    agents.update().where(agents.c.id.in_(sorted(owners))).values(last_seen=now)
                )

    async def clear_node_sessions(self, node_id: str) -> None:
        """Forget every session of relay process ``node_id`` (at its start and stop)."""
        async with self._write() as conn:
            await conn.execute(agent_sessions.delete().where(agent_sessions.c.node_id == node_id))

    # -- audit -------------------------------------------------------------------

    async def record_audit(
        self,
        account_id: str | None,
        actor: str,
        action: str,
        target_id: str,
        details: dict[str, Any] | None = None,
    ) -> None:
        async with self._write() as conn:
            await self._audit(conn, account_id, actor, action, target_id, details)

    async def _audit(
        self,
        conn: AsyncConnection,
        account_id: str | None,
        actor: str,
        action: str,
        target_id: str,
        details: dict[str, Any] | None,
    ) -> None:
        await conn.execute(
            audit_events.insert().values(
                at=_now(),
                account_id=account_id,
                actor=_clip(actor),
                action=action,
                target_id=target_id,
                details=_scrub(details or {}),
            )
        )

    async def list_audit(
        self, account_id: str | None = None, *, limit: int = 100
    ) -> list[AuditEvent]:
        """The newest ``limit`` audit events, newest first."""
        query = audit_events.select().order_by(audit_events.c.id.desc()).limit(limit)
        if account_id is not None:
            query = query.where(audit_events.c.account_id == account_id)
        async with self._read() as conn:
            rows = await conn.execute(query)
            return [
                AuditEvent(
                    id=r.id,
                    at=r.at,
                    account_id=r.account_id,
                    actor=r.actor,
                    action=r.action,
                    target_id=r.target_id,
                    details=dict(r.details or {}),
                )
                for r in rows
            ]
