"""Immutable views of registry rows, as handed to the SSH server, hub, API and CLI."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


@dataclass(frozen=True)
class AccountInfo:
    id: str
    name: str
    created_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "created_at": _iso(self.created_at)}


@dataclass(frozen=True)
class SessionInfo:
    """One live SSH session of an agent, held by relay process ``node_id``."""

    id: str
    agent_id: str
    node_id: str
    remote_addr: str
    client_version: str
    hostname: str
    connected_at: datetime
    last_seen: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "agent_id": self.agent_id,
            "node_id": self.node_id,
            "remote_addr": self.remote_addr,
            "client_version": self.client_version,
            "hostname": self.hostname,
            "connected_at": _iso(self.connected_at),
            "last_seen": _iso(self.last_seen),
        }


@dataclass(frozen=True)
class AgentInfo:
    id: str
    account_id: str
    name: str
    description: str
    created_at: datetime
    last_seen: datetime | None
    version: str | None
    sessions: list[SessionInfo] = field(default_factory=list)
    updated_at: datetime | None = None

    @property
    def status(self) -> Literal["online", "offline"]:
        return "online" if self.sessions else "offline"

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "account_id": self.account_id,
            "name": self.name,
            "description": self.description,
            "status": self.status,
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
            "last_seen": _iso(self.last_seen),
            "version": self.version,
            "sessions": [s.to_json() for s in self.sessions],
        }


@dataclass(frozen=True)
class AuditEvent:
    id: int
    at: datetime
    account_id: str | None
    actor: str
    action: str
    target_id: str
    details: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": _iso(self.at),
            "account_id": self.account_id,
            "actor": self.actor,
            "action": self.action,
            "target_id": self.target_id,
            "details": self.details,
        }
