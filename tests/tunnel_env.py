"""Helpers for tests that run the tunnel in process (used by tests/conftest.py)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from agent.config import AgentConfig
from relay.hub import AgentHub
from relay.registry import Registry
from relay.sshd import SSHEndpoint

TIMEOUT = 10.0 * float(os.environ.get("ONPREM_TEST_TIMEOUT_FACTOR", "1"))


@dataclass
class Relay:
    registry: Registry
    hub: AgentHub
    endpoint: SSHEndpoint
    port: int
    host_key: str
    account_id: str
    agent_id: str
    token: str


def agent_config(relay: Relay, allow: list[str], **extra: object) -> AgentConfig:
    return AgentConfig.model_validate(
        {
            "relay": {"address": f"127.0.0.1:{relay.port}", "host_key": relay.host_key},
            "agent_id": relay.agent_id,
            "allow": allow,
            "backoff_initial_s": 0.05,
            "backoff_max_s": 0.2,
            "dial_timeout_s": 1.0,
            **extra,
        }
    )
