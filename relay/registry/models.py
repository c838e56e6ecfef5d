"""The registry's tables (SQLAlchemy Core metadata; Alembic migrations must match it)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

# Deterministic constraint names, so later migrations can refer to them on every backend.
metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

ID_LEN = 32
NAME_LEN = 100
DESCRIPTION_LEN = 1000
HASH_LEN = 64
SHORT_TEXT_LEN = 255
CONNECTION_NAME_LEN = 200
STATE_REASON_LEN = 1000


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the registry; use an aware UTC time")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


accounts = sa.Table(
    "accounts",
    metadata,
    sa.Column("id", sa.String(ID_LEN), primary_key=True),
    sa.Column("name", sa.String(NAME_LEN), nullable=False, unique=True),
    sa.Column("api_token_hash", sa.String(HASH_LEN), nullable=False, unique=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
)

agents = sa.Table(
    "agents",
    metadata,
    sa.Column("id", sa.String(ID_LEN), primary_key=True),
    sa.Column(
        "account_id",
        sa.String(ID_LEN),
        sa.ForeignKey("accounts.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("name", sa.String(NAME_LEN), nullable=False),
    sa.Column("description", sa.String(DESCRIPTION_LEN), nullable=False, server_default=""),
    sa.Column("token_hash", sa.String(HASH_LEN), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    sa.Column("last_seen", UTCDateTime(), nullable=True),
    sa.Column("version", sa.String(SHORT_TEXT_LEN), nullable=True),
    sa.UniqueConstraint("account_id", "name"),
)

agent_sessions = sa.Table(
    "agent_sessions",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column(
        "agent_id",
        sa.String(ID_LEN),
        sa.ForeignKey("agents.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("node_id", sa.String(SHORT_TEXT_LEN), nullable=False, index=True),
    sa.Column("remote_addr", sa.String(SHORT_TEXT_LEN), nullable=False),
    sa.Column("client_version", sa.String(SHORT_TEXT_LEN), nullable=False),
    sa.Column("hostname", sa.String(SHORT_TEXT_LEN), nullable=False),
    sa.Column("connected_at", UTCDateTime(), nullable=False),
    sa.Column("last_seen", UTCDateTime(), nullable=False),
)

# No foreign keys: the audit trail outlives the agents and accounts it talks about.
audit_events = sa.Table(
    "audit_events",
    metadata,
    sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    sa.Column("at", UTCDateTime(), nullable=False),
    sa.Column("account_id", sa.String(ID_LEN), nullable=True, index=True),
    sa.Column("actor", sa.String(SHORT_TEXT_LEN), nullable=False),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("target_id", sa.String(64), nullable=False),
    sa.Column("details", sa.JSON(), nullable=False),
)

# A connection's settings live in ``document`` (JSON text of ``ConnectionIn``, every
# secret in it encrypted on its own); name, mode and agent are copied into columns
# for listing and for the foreign key that keeps an agent in use from being deleted.
connections = sa.Table(
    "connections",
    metadata,
    sa.Column("id", sa.String(ID_LEN), primary_key=True),
    sa.Column(
        "account_id",
        sa.String(ID_LEN),
        sa.ForeignKey("accounts.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("name", sa.String(CONNECTION_NAME_LEN), nullable=False),
    sa.Column("mode", sa.String(16), nullable=False),
    sa.Column(
        "agent_id",
        sa.String(ID_LEN),
        sa.ForeignKey("agents.id", ondelete="RESTRICT"),
        nullable=True,
        index=True,
    ),
    sa.Column("document", sa.Text(), nullable=False),
    sa.Column("state", sa.String(32), nullable=False, index=True),
    sa.Column("state_reason", sa.String(STATE_REASON_LEN), nullable=True),
    sa.Column("last_tested_at", UTCDateTime(), nullable=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    sa.Column("version", sa.Integer(), nullable=False),
)

# -- OAuth 2.0 (migration 0003_oauth) ---------------------------------------------------

URL_LEN = 2048
ICLIENT_NAME_LEN = 200

# An iClient's settings live in ``document`` (JSON text of ``IClientIn``, the client
# secret encrypted on its own); connections name it inside their own document.
iclients = sa.Table(
    "iclients",
    metadata,
    sa.Column("id", sa.String(ID_LEN), primary_key=True),
    sa.Column(
        "account_id",
        sa.String(ID_LEN),
        sa.ForeignKey("accounts.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("name", sa.String(ICLIENT_NAME_LEN), nullable=False),
    sa.Column("document", sa.Text(), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    sa.Column("version", sa.Integer(), nullable=False),
)

# One row per OAuth connection: ``tokens`` is the whole token set (access and refresh
# token together, so one write stores both) encrypted as one value; ``version`` is the
# compare-and-set counter; ``refresh_owner`` / ``lease_until`` the cross-process
# refresh lease. ``expires_at`` is a plain copy, for operators.
oauth_tokens = sa.Table(
    "oauth_tokens",
    metadata,
    sa.Column(
        "connection_id",
        sa.String(ID_LEN),
        sa.ForeignKey("connections.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("tokens", sa.Text(), nullable=True),
    sa.Column("expires_at", UTCDateTime(), nullable=True),
    sa.Column("version", sa.Integer(), nullable=False),
    sa.Column("refresh_owner", sa.String(SHORT_TEXT_LEN), nullable=True),
    sa.Column("lease_until", UTCDateTime(), nullable=True),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
)

# Pending authorizations, keyed by a hash of the state (a leaked table cannot be
# replayed as callbacks); the PKCE verifier encrypted.
oauth_states = sa.Table(
    "oauth_states",
    metadata,
    sa.Column("state_hash", sa.String(HASH_LEN), primary_key=True),
    sa.Column("account_id", sa.String(ID_LEN), nullable=False),
    sa.Column(
        "connection_id",
        sa.String(ID_LEN),
        sa.ForeignKey("connections.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("iclient_id", sa.String(ID_LEN), nullable=False),
    sa.Column("redirect_uri", sa.String(URL_LEN), nullable=False),
    sa.Column("code_verifier", sa.Text(), nullable=True),
    sa.Column("return_url", sa.String(URL_LEN), nullable=True),
    sa.Column("created_at", UTCDateTime(), nullable=False, index=True),
)

# The account's state-change webhook: where to POST, and the HMAC secret (encrypted).
account_webhooks = sa.Table(
    "account_webhooks",
    metadata,
    sa.Column(
        "account_id",
        sa.String(ID_LEN),
        sa.ForeignKey("accounts.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("url", sa.String(URL_LEN), nullable=False),
    sa.Column("secret", sa.Text(), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
)
