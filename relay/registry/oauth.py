"""OAuth 2.0 in the registry: iClients, each connection's tokens with the refresh lease,
pending authorizations, and the account's state-change webhook.

Everything secret is encrypted by the ``SecretBox`` before it reaches the database: an
iClient's client secret, a connection's whole token set (one value, so access and
refresh token are always written together), a pending authorization's PKCE verifier,
a webhook's signing secret. States are stored by their hash only.

The token methods are the SQL side of ``relay.oauth.refresh.TokenStore`` (see its
docstring): ``lease_oauth_tokens`` is one ``UPDATE ... WHERE lease_until IS NULL OR
lease_until < now ... RETURNING version`` (database time on PostgreSQL, so relay
hosts with skewed clocks agree), ``store_oauth_tokens`` a compare-and-set on
``version``. On PostgreSQL both ``NOTIFY`` ``TOKENS_CHANNEL`` with the connection id
at commit; ``listen`` hands those notifications to a callback.

``OAuthMixin`` is part of ``Registry`` (it needs ``secrets=SecretBox(...)``).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from relay.errors import ConflictError, NotFoundError
from relay.models.iclient import IClientIn, IClientOut
from relay.registry.connections import InUseError, get_path
from relay.registry.models import (
    ICLIENT_NAME_LEN,
    account_webhooks,
    connections,
    iclients,
    oauth_states,
    oauth_tokens,
)
from relay.registry.secrets import SecretBox
from relay.registry.tokens import new_id

ICLIENT_PREFIX = "icl_"
# PostgreSQL NOTIFY channel for token changes; the payload is the connection id.
TOKENS_CHANNEL = "onprem_oauth_tokens"

# A result row (see relay.registry.store).
_Row = Any
Notify = Callable[[str], None]


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class StoredIClient:
    """An iClient as stored; ``spec`` holds the client secret in clear (decrypted)."""

    id: str
    account_id: str
    spec: IClientIn
    created_at: datetime
    updated_at: datetime
    version: int

    def to_out(self) -> IClientOut:
        """What the API shows: the secret masked, plus the read-only fields."""
        return IClientOut.from_stored(
            self.spec, id=self.id, created_at=self.created_at, updated_at=self.updated_at
        )


@dataclass(frozen=True)
class TokenRow:
    """A connection's token row. ``tokens``: the decrypted ``TokenSet.to_dict()`` (None:
    none stored, or not read); ``lease_free``: no unexpired refresh lease."""

    tokens: dict[str, Any] | None
    version: int
    refresh_owner: str | None
    lease_free: bool


@dataclass(frozen=True)
class StoredState:
    """A pending authorization as stored (the verifier decrypted)."""

    account_id: str
    connection_id: str
    iclient_id: str
    redirect_uri: str
    code_verifier: str | None
    return_url: str | None
    created_at: datetime


@dataclass(frozen=True)
class AccountWebhook:
    """Where an account's state-change webhooks go; ``secret`` in clear."""

    account_id: str
    url: str
    secret: str
    created_at: datetime
    updated_at: datetime


class Listener:
    """A PostgreSQL connection held open for ``LISTEN``; ``close()`` gives it back."""

    def __init__(self, close: Callable[[], Awaitable[None]]) -> None:
        self._close = close

    async def close(self) -> None:
        await self._close()


class OAuthMixin:
    """OAuth storage; mixed into ``Registry`` (which provides the members below)."""

    _secrets: SecretBox | None
    _engine: AsyncEngine

    if TYPE_CHECKING:

        def _read(self) -> AbstractAsyncContextManager[AsyncConnection]: ...

        def _write(self) -> AbstractAsyncContextManager[AsyncConnection]: ...

        def _box(self) -> SecretBox: ...

        async def _audit(
            self,
            conn: AsyncConnection,
            account_id: str | None,
            actor: str,
            action: str,
            target_id: str,
            details: dict[str, Any] | None,
        ) -> None: ...

    # -- iClients ------------------------------------------------------------------------

    def _encode_iclient(self, spec: IClientIn) -> str:
        box = self._box()
        doc = spec.model_dump(mode="json")
        if doc.get("client_secret") is not None:
            doc["client_secret"] = box.encrypt(doc["client_secret"])
        return json.dumps(doc, separators=(",", ":"), sort_keys=True)

    def _decode_iclient(self, document: str) -> IClientIn:
        doc = json.loads(document)
        if doc.get("client_secret") is not None:
            doc["client_secret"] = self._box().decrypt(doc["client_secret"])
        return IClientIn.model_validate(doc)

    def _iclient_from_row(self, row: _Row) -> StoredIClient:
        return StoredIClient(
            id=row.id,
            account_id=row.account_id,
            spec=self._decode_iclient(row.document),
            created_at=row.created_at,
            updated_at=row.updated_at,
            version=row.version,
        )

    async def _iclient_row(
        self, conn: AsyncConnection, iclient_id: str, account_id: str | None
    ) -> _Row:
        query = iclients.select().where(iclients.c.id == iclient_id)
        if account_id is not None:
            query = query.where(iclients.c.account_id == account_id)
        row = (await conn.execute(query)).first()
        if row is None:
            raise NotFoundError(f"iClient {iclient_id} not found")
        return row

    async def create_iclient(
        self, account_id: str, spec: IClientIn, *, actor: str
    ) -> StoredIClient:
        now = _now()
        stored = StoredIClient(
            id=new_id(ICLIENT_PREFIX),
            account_id=account_id,
            spec=spec,
            created_at=now,
            updated_at=now,
            version=1,
        )
        document = self._encode_iclient(spec)
        try:
            async with self._write() as conn:
                await conn.execute(
                    iclients.insert().values(
                        id=stored.id,
                        account_id=account_id,
                        name=spec.name[:ICLIENT_NAME_LEN],
                        document=document,
                        created_at=now,
                        updated_at=now,
                        version=1,
                    )
                )
                await self._audit(
                    conn,
                    account_id,
                    actor,
                    "iclient.created",
                    stored.id,
                    {"name": spec.name, "grant_type": spec.grant_type},
                )
        except IntegrityError:
            raise NotFoundError(f"account {account_id} not found") from None
        return stored

    async def get_iclient(self, iclient_id: str, account_id: str | None = None) -> StoredIClient:
        """``NotFoundError`` if it does not exist or belongs to another account."""
        async with self._read() as conn:
            row = await self._iclient_row(conn, iclient_id, account_id)
        return self._iclient_from_row(row)

    async def list_iclients(self, account_id: str) -> list[StoredIClient]:
        query = (
            iclients.select()
            .where(iclients.c.account_id == account_id)
            .order_by(iclients.c.created_at, iclients.c.id)
        )
        async with self._read() as conn:
            rows = (await conn.execute(query)).all()
        return [self._iclient_from_row(r) for r in rows]

    async def update_iclient(
        self,
        iclient_id: str,
        account_id: str,
        spec: IClientIn,
        *,
        actor: str,
        expected_version: int | None = None,
    ) -> StoredIClient:
        """Replace the settings (``spec`` complete, secret in clear). ``ConflictError``
        if ``expected_version`` is given and someone changed it meanwhile."""
        document = self._encode_iclient(spec)
        now = _now()
        async with self._write() as conn:
            row = await self._iclient_row(conn, iclient_id, account_id)
            if expected_version is not None and row.version != expected_version:
                raise ConflictError(
                    f"iClient {iclient_id} was changed meanwhile (version {row.version}, "
                    f"expected {expected_version}): read it again"
                )
            await conn.execute(
                iclients.update()
                .where(iclients.c.id == iclient_id)
                .values(
                    name=spec.name[:ICLIENT_NAME_LEN],
                    document=document,
                    updated_at=now,
                    version=row.version + 1,
                )
            )
            old = self._decode_iclient(row.document)
            changed = sorted(
                k for k in IClientIn.model_fields if getattr(old, k) != getattr(spec, k)
            )
            await self._audit(
                conn,
                account_id,
                actor,
                "iclient.changed",
                iclient_id,
                {"name": spec.name, "fields": changed},
            )
            updated = await self._iclient_row(conn, iclient_id, account_id)
        return self._iclient_from_row(updated)

    async def delete_iclient(self, iclient_id: str, account_id: str, *, actor: str) -> None:
        """``InUseError`` (409) while OAuth connections of the account use it."""
        async with self._write() as conn:
            row = await self._iclient_row(conn, iclient_id, account_id)
            users = await self._iclient_users(conn, account_id, iclient_id)
            if users:
                raise InUseError(
                    f"iClient {iclient_id} is used by connection(s) {', '.join(users)}: "
                    "change or delete them first",
                    users,
                )
            await conn.execute(iclients.delete().where(iclients.c.id == iclient_id))
            await self._audit(
                conn, account_id, actor, "iclient.deleted", iclient_id, {"name": row.name}
            )

    async def connections_using_iclient(self, iclient_id: str, account_id: str) -> list[str]:
        async with self._read() as conn:
            return await self._iclient_users(conn, account_id, iclient_id)

    async def _iclient_users(
        self, conn: AsyncConnection, account_id: str, iclient_id: str
    ) -> list[str]:
        rows = await conn.execute(
            sa.select(connections.c.id, connections.c.document)
            .where(connections.c.account_id == account_id)
            .order_by(connections.c.id)
        )
        # The reference sits inside the document (not a secret): read without decrypting.
        users = []
        for r in rows:
            doc = json.loads(r.document)
            if (
                get_path(doc, ("http", "auth", "type")) == "oauth2"
                and get_path(doc, ("http", "auth", "oauth2", "iclient_id")) == iclient_id
            ):
                users.append(r.id)
        return users

    # -- tokens --------------------------------------------------------------------------

    def _is_postgres(self) -> bool:
        return self._engine.dialect.name == "postgresql"

    def _db_now(self) -> Any:
        """ "Now" for leases: the database's clock on PostgreSQL (several hosts share
        it), this host's on SQLite (one host)."""
        if self._is_postgres():
            return sa.func.now()
        return sa.literal(_now(), oauth_tokens.c.lease_until.type)

    def _lease_free(self) -> Any:
        c = oauth_tokens.c
        return sa.or_(c.lease_until.is_(None), c.lease_until < self._db_now())

    async def _notify(self, conn: AsyncConnection, connection_id: str) -> None:
        if self._is_postgres():
            # Delivered at commit, so listeners re-read committed rows only.
            await conn.execute(sa.select(sa.func.pg_notify(TOKENS_CHANNEL, connection_id)))

    async def _ensure_token_row(self, conn: AsyncConnection, connection_id: str) -> None:
        values = {"connection_id": connection_id, "version": 0, "updated_at": _now()}
        insert: Any
        if self._is_postgres():
            insert = postgresql.insert(oauth_tokens)
        else:
            insert = sqlite.insert(oauth_tokens)
        await conn.execute(
            insert.values(**values).on_conflict_do_nothing(index_elements=["connection_id"])
        )

    async def load_oauth_tokens(self, connection_id: str, *, decrypt: bool = True) -> TokenRow:
        """The connection's token row (``TokenRow(None, 0, None, True)`` if none yet).
        ``decrypt=False`` skips reading the tokens (waiters only watch the version)."""
        c = oauth_tokens.c
        columns = [c.version, c.refresh_owner, self._lease_free().label("lease_free")]
        if decrypt:
            columns.append(c.tokens)
        async with self._read() as conn:
            row = (
                await conn.execute(sa.select(*columns).where(c.connection_id == connection_id))
            ).first()
        if row is None:
            return TokenRow(None, 0, None, True)
        tokens = None
        if decrypt and row.tokens is not None:
            tokens = json.loads(self._box().decrypt(row.tokens))
        return TokenRow(tokens, row.version, row.refresh_owner, bool(row.lease_free))

    async def lease_oauth_tokens(
        self, connection_id: str, owner: str, seconds: float
    ) -> int | None:
        """Take (or extend, for the same owner) the refresh lease for ``seconds``: the
        current version, or None while another owner holds an unexpired lease.
        ``NotFoundError`` if the connection does not exist."""
        c = oauth_tokens.c
        if self._is_postgres():
            until: Any = sa.func.now() + sa.literal(timedelta(seconds=seconds), sa.Interval())
        else:
            until = _now() + timedelta(seconds=seconds)
        try:
            async with self._write() as conn:
                await self._ensure_token_row(conn, connection_id)
                version = await conn.scalar(
                    oauth_tokens.update()
                    .where(
                        c.connection_id == connection_id,
                        sa.or_(self._lease_free(), c.refresh_owner == owner),
                    )
                    .values(refresh_owner=owner, lease_until=until)
                    .returning(c.version)
                )
        except IntegrityError:
            raise NotFoundError(f"connection {connection_id} not found") from None
        return None if version is None else int(version)

    async def release_oauth_lease(self, connection_id: str, owner: str) -> None:
        """Give the lease back if ``owner`` holds it (waiters are notified)."""
        c = oauth_tokens.c
        async with self._write() as conn:
            result = await conn.execute(
                oauth_tokens.update()
                .where(c.connection_id == connection_id, c.refresh_owner == owner)
                .values(refresh_owner=None, lease_until=None)
            )
            if result.rowcount:
                await self._notify(conn, connection_id)

    async def store_oauth_tokens(
        self,
        connection_id: str,
        tokens: dict[str, Any] | None,
        expires_at: datetime | None,
        expected_version: int,
    ) -> int | None:
        """Compare-and-set: write ``tokens`` (encrypted as one value; None clears them)
        if the version is still ``expected_version``, bump it and drop the lease. The
        new version, or None when someone else wrote first. ``NotFoundError`` if the
        connection does not exist."""
        c = oauth_tokens.c
        blob = None if tokens is None else self._box().encrypt(json.dumps(tokens))
        try:
            async with self._write() as conn:
                await self._ensure_token_row(conn, connection_id)
                version = await conn.scalar(
                    oauth_tokens.update()
                    .where(c.connection_id == connection_id, c.version == expected_version)
                    .values(
                        tokens=blob,
                        expires_at=expires_at,
                        version=c.version + 1,
                        refresh_owner=None,
                        lease_until=None,
                        updated_at=_now(),
                    )
                    .returning(c.version)
                )
                if version is not None:
                    await self._notify(conn, connection_id)
        except IntegrityError:
            raise NotFoundError(f"connection {connection_id} not found") from None
        return None if version is None else int(version)

    async def listen(self, callback: Notify) -> Listener | None:
        """On PostgreSQL: call ``callback(connection_id)`` for every token change
        (``NOTIFY``) until the returned listener is closed. None on SQLite (no
        notifications: poll)."""
        if not self._is_postgres():
            return None
        conn = await self._engine.connect()
        try:
            raw = await conn.get_raw_connection()
            driver: Any = raw.driver_connection

            def on_notify(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
                callback(payload)

            await driver.add_listener(TOKENS_CHANNEL, on_notify)
        except BaseException:
            await conn.close()
            raise

        async def close() -> None:
            # Never handed back to the pool: the next user would inherit the LISTEN.
            try:
                await conn.invalidate()
            finally:
                await conn.close()

        return Listener(close)

    # -- pending authorizations --------------------------------------------------------

    async def put_oauth_state(
        self,
        state_hash: str,
        pending: StoredState,
        *,
        expired_before: datetime,
        max_per_connection: int,
    ) -> None:
        """Store a pending authorization; drop expired ones (``created_at`` before
        ``expired_before``) and the connection's oldest beyond ``max_per_connection``.
        ``NotFoundError`` if the connection does not exist."""
        c = oauth_states.c
        verifier = (
            None if pending.code_verifier is None else self._box().encrypt(pending.code_verifier)
        )
        try:
            async with self._write() as conn:
                await conn.execute(oauth_states.delete().where(c.created_at < expired_before))
                keep = (
                    sa.select(c.state_hash)
                    .where(c.connection_id == pending.connection_id)
                    .order_by(c.created_at.desc())
                    .limit(max(0, max_per_connection - 1))
                )
                await conn.execute(
                    oauth_states.delete().where(
                        c.connection_id == pending.connection_id,
                        c.state_hash.not_in(keep.scalar_subquery()),
                    )
                )
                await conn.execute(
                    oauth_states.insert().values(
                        state_hash=state_hash,
                        account_id=pending.account_id,
                        connection_id=pending.connection_id,
                        iclient_id=pending.iclient_id,
                        redirect_uri=pending.redirect_uri,
                        code_verifier=verifier,
                        return_url=pending.return_url,
                        created_at=pending.created_at,
                    )
                )
        except IntegrityError:
            raise NotFoundError(f"connection {pending.connection_id} not found") from None

    async def take_oauth_state(self, state_hash: str) -> StoredState | None:
        """Remove and return the pending authorization (None: unknown or already
        taken). One statement, so a state is taken at most once even by two relay
        processes at the same moment."""
        async with self._write() as conn:
            row = (
                await conn.execute(
                    oauth_states.delete()
                    .where(oauth_states.c.state_hash == state_hash)
                    .returning(*oauth_states.c)
                )
            ).first()
        if row is None:
            return None
        verifier = None if row.code_verifier is None else self._box().decrypt(row.code_verifier)
        return StoredState(
            account_id=row.account_id,
            connection_id=row.connection_id,
            iclient_id=row.iclient_id,
            redirect_uri=row.redirect_uri,
            code_verifier=verifier,
            return_url=row.return_url,
            created_at=row.created_at,
        )

    # -- webhooks ------------------------------------------------------------------------

    async def get_webhook(self, account_id: str) -> AccountWebhook | None:
        async with self._read() as conn:
            row = (
                await conn.execute(
                    account_webhooks.select().where(account_webhooks.c.account_id == account_id)
                )
            ).first()
        if row is None:
            return None
        return AccountWebhook(
            account_id=row.account_id,
            url=row.url,
            secret=self._box().decrypt(row.secret),
            created_at=row.created_at,
            updated_at=row.updated_at,
        )

    async def set_webhook(
        self, account_id: str, url: str, secret: str | None, *, actor: str
    ) -> AccountWebhook:
        """Set the account's webhook. ``secret`` None keeps the stored one
        (``ValueError`` when there is none)."""
        now = _now()
        c = account_webhooks.c
        async with self._write() as conn:
            row = (
                await conn.execute(account_webhooks.select().where(c.account_id == account_id))
            ).first()
            if secret is None:
                if row is None:
                    raise ValueError("the webhook has no secret yet: give one")
                encrypted = row.secret
            else:
                encrypted = self._box().encrypt(secret)
            if row is None:
                await conn.execute(
                    account_webhooks.insert().values(
                        account_id=account_id,
                        url=url,
                        secret=encrypted,
                        created_at=now,
                        updated_at=now,
                    )
                )
                created = now
            else:
                await conn.execute(
                    account_webhooks.update()
                    .where(c.account_id == account_id)
                    .values(url=url, secret=encrypted, updated_at=now)
                )
                created = row.created_at
            await self._audit(
                conn,
                account_id,
                actor,
                "webhook.changed",
                account_id,
                {"host": urlsplit(url).hostname, "rotated": secret is not None},
            )
        plain = secret if secret is not None else self._box().decrypt(encrypted)
        return AccountWebhook(account_id, url, plain, created, now)

    async def delete_webhook(self, account_id: str, *, actor: str) -> bool:
        async with self._write() as conn:
            result = await conn.execute(
                account_webhooks.delete().where(account_webhooks.c.account_id == account_id)
            )
            if result.rowcount:
                await self._audit(conn, account_id, actor, "webhook.deleted", account_id, {})
        return bool(result.rowcount)
