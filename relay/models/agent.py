"""Agents as the REST API takes and shows them (design section 6)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field, field_validator

from relay.models.connection import Model

NAME_MAX = 100  # relay.registry.models.NAME_LEN
DESCRIPTION_MAX = 1000  # relay.registry.models.DESCRIPTION_LEN


def _no_control(value: str, *, multiline: bool) -> str:
    allowed = "\n\t" if multiline else ""
    if any((ord(c) < 32 or ord(c) == 127) and c not in allowed for c in value):
        raise ValueError("must not contain control characters")
    return value


def _check_name(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return _no_control(value, multiline=False)


class AgentIn(Model):
    """POST /v1/agents."""

    name: str = Field(min_length=1, max_length=NAME_MAX)
    description: str = Field("", max_length=DESCRIPTION_MAX)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _check_name(v)

    @field_validator("description")
    @classmethod
    def _description(cls, v: str) -> str:
        return _no_control(v, multiline=True)


class AgentPatch(Model):
    """PATCH /v1/agents/{id}: the fields given are changed (null or absent: kept)."""

    name: str | None = Field(None, min_length=1, max_length=NAME_MAX)
    description: str | None = Field(None, max_length=DESCRIPTION_MAX)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        return None if v is None else _check_name(v)

    @field_validator("description")
    @classmethod
    def _description(cls, v: str | None) -> str | None:
        return None if v is None else _no_control(v, multiline=True)


class AgentSessionOut(Model):
    """One live SSH session of the agent."""

    id: str
    remote_addr: str
    hostname: str
    version: str
    node_id: str
    connected_at: datetime
    last_seen: datetime | None = None


class AgentOut(Model):
    id: str
    name: str
    description: str
    status: Literal["online", "offline"]
    last_seen: datetime | None
    version: str | None
    # Older than the relay's min_agent_version (any of its sessions).
    outdated: bool = False
    sessions: list[AgentSessionOut]
    created_at: datetime
    updated_at: datetime | None


class AgentCreated(AgentOut):
    """POST /v1/agents: the agent plus what its installer needs, shown only now."""

    token: str
    host_key: str
    agent_yaml: str


class AgentList(Model):
    agents: list[AgentOut]


class AgentToken(Model):
    """POST /v1/agents/{id}/rotate-token: the new token, shown only now."""

    id: str
    token: str
    sessions_dropped: int
