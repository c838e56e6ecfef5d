"""The relay's registry: accounts, agents, tokens, sessions and audit trail in SQL
(SQLAlchemy async; SQLite by default, PostgreSQL for several relay processes)."""

from relay.registry.connections import (
    InUseError,
    InvalidReferenceError,
    StateUpdate,
    StoredConnection,
)
from relay.registry.info import AccountInfo, AgentInfo, AuditEvent, SessionInfo
from relay.registry.oauth import AccountWebhook, StoredIClient
from relay.registry.secrets import SecretBox, SecretDecryptError
from relay.registry.store import Registry, SchemaError

__all__ = [
    "AccountInfo",
    "AccountWebhook",
    "AgentInfo",
    "AuditEvent",
    "InUseError",
    "InvalidReferenceError",
    "Registry",
    "SchemaError",
    "SecretBox",
    "SecretDecryptError",
    "SessionInfo",
    "StateUpdate",
    "StoredConnection",
    "StoredIClient",
]
