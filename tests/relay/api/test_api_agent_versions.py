"""Agents older than the relay's min_agent_version are flagged."""

from __future__ import annotations

from datetime import UTC, datetime

from relay.api.agents import agent_out
from relay.hub import AgentHub
from relay.registry import AgentInfo, SessionInfo


def _agent(*versions: str) -> AgentInfo:
    now = datetime.now(UTC)
    sessions = [
        SessionInfo(
            id=f"ses_{i}",
            agent_id="agt_x",
            node_id="n",
            remote_addr="10.0.0.1:5000",
            client_version=v,
            hostname="gw",
            connected_at=now,
            last_seen=now,
        )
        for i, v in enumerate(versions)
    ]
    return AgentInfo(
        id="agt_x",
        account_id="acc_x",
        name="gw",
        description="",
        created_at=now,
        last_seen=now,
        version=versions[0] if versions else "onprem-agent_0.1.0",
        sessions=sessions,
    )


async def test_outdated_flag() -> None:
    hub = AgentHub()
    assert agent_out(_agent("onprem-agent_0.1.0"), hub, "0.2.0").outdated
    assert not agent_out(_agent("onprem-agent_0.2.0"), hub, "0.2.0").outdated
    assert not agent_out(_agent("onprem-agent_0.1.0"), hub, None).outdated
    # One old replica among new ones is enough to flag the agent.
    both = _agent("onprem-agent_0.3.0", "onprem-agent_0.1.0")
    assert agent_out(both, hub, "0.2.0").outdated
    # Offline: judged by the last version seen.
    assert agent_out(_agent(), hub, "0.2.0").outdated
