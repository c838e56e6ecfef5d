"""The firewall story for real: target and agent in a network namespace of their own,
the relay in the root namespace. The target listens on the namespace's loopback only,
so nothing outside can reach it; the agent dials out to the relay, and the relay
reaches the target through the agent's tunnel."""

from __future__ import annotations

import json
import sys

import pytest
from e2e_harness import (
    E2E_DIR,
    MIB,
    STARTUP_TIMEOUT,
    AgentFactory,
    NetNS,
    Procs,
    RelayFactory,
    client_session,
    connect_fails,
    echo_roundtrip,
    random_roundtrip,
)

pytestmark = [pytest.mark.e2e, pytest.mark.netns, pytest.mark.timeout(90)]


async def test_agent_in_namespace_reaches_target_unreachable_from_outside(
    netns: NetNS, procs: Procs, relay_factory: RelayFactory, agent_factory: AgentFactory
) -> None:
    # The on-premise service: inside the namespace, bound to its loopback only.
    target = await procs.start(
        "target(netns)",
        netns.exec_argv(sys.executable, str(E2E_DIR / "e2e_target.py"), "--host", "127.0.0.1"),
        stdout=True,
    )
    line = await target.wait_stdout(
        lambda x: "target_listening" in x, timeout=STARTUP_TIMEOUT, what="target_listening"
    )
    port = int(json.loads(line)["port"])
    target_addr = f"127.0.0.1:{port}"  # as the agent, inside the namespace, sees it

    # The relay, in the root namespace, listens for agents on the veth's host side.
    relay = await relay_factory(ssh_listen=f"{netns.host_addr}:0", forwards=[target_addr])

    # From outside (this namespace) the target cannot be reached: neither at the
    # namespace's address nor at "127.0.0.1", which here is a different loopback.
    await connect_fails(netns.ns_addr, port)
    await connect_fails("127.0.0.1", port)

    agent = await agent_factory(
        relay, allow=[target_addr], netns=netns.name, relay_address=relay.ssh_address
    )
    info = await relay.wait_sessions(1)
    assert info["sessions"][0]["remote_addr"].startswith(f"{netns.ns_addr}:"), info

    async with client_session() as session:
        await echo_roundtrip(session, relay.forward_url, MIB)
        await random_roundtrip(session, relay.forward_url, MIB)
    assert agent.returncode is None
