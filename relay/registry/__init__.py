"""The relay's registry: accounts, agents, tokens, sessions and audit trail in SQL
(SQLAlchemy async; SQLite by default, PostgreSQL for several relay processes)."""

from relay.registry.connections import (
    InUseError,
    InvalidReferenceError,
    StoredConnection,
)
from relay.registry.info import AccountInfo, AgentInfo, AuditEvent, SessionInfo
from relay.registry.secrets import SecretBox, SecretDecryptError
from relay.registry.store import Registry, SchemaError

__all__ = [
    "AccountInfo",
    "AgentInfo",
    "AuditEvent",
    "InUseError",
    "InvalidReferenceError",
    "Registry",
    "SchemaError",
    "SecretBox",
    "SecretDecryptError",
    "SessionInfo",
    "StoredConnection",
]
