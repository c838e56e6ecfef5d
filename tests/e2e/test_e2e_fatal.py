"""The only ways the agent stops by itself (design 2.7): the relay rejects its token
(exit 3) or the relay's host key is not the pinned one (exit 4). Each with one clear
line on stderr and no traceback; a rotated or deleted token also drops the live
session at once."""

from __future__ import annotations

import asyncssh
import pytest
from e2e_harness import AgentFactory, Proc, Relay, nonjson_lines
from e2e_target import Target

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

EXIT_TOKEN_REJECTED = 3
EXIT_HOST_KEY_MISMATCH = 4


def one_clear_line(agent: Proc, *words: str) -> str:
    """The agent's stderr holds JSON log lines and exactly one plain line: the reason."""
    text = "\n".join(agent.lines)
    assert "Traceback" not in text, agent.tail()
    plain = nonjson_lines(agent.lines)
    assert len(plain) == 1, f"want one plain line, got {plain}\n{agent.tail()}"
    line = plain[0]
    assert line.startswith("onprem-agent:"), line
    for word in words:
        assert word.lower() in line.lower(), (word, line)
    return line


async def _dropped_and_exits_3(relay: Relay, agent: Proc, admin: list[str]) -> None:
    assert relay.proc is not None
    mark = relay.proc.mark()
    await relay.cli(*admin)
    where = {"agent_id": relay.agent.id}
    # token_recheck_interval_s is 0.5 s in these tests
    await relay.proc.wait_event("session_dropped", after=mark, where=where, timeout=10)
    await relay.proc.wait_event("session_down", after=mark, where=where, timeout=10)
    rc = await agent.wait_exit(timeout=20)
    assert rc == EXIT_TOKEN_REJECTED, agent.tail()
    line = one_clear_line(agent, "token", relay.agent.id)
    assert relay.agent.token not in line
    # It tried once more and stopped: no reconnect loop.
    assert agent.count("tunnel_up") == 1


async def test_rotated_token_drops_session_and_agent_exits_3(
    relay: Relay, agent_factory: AgentFactory, target: Target
) -> None:
    agent = await agent_factory(relay, allow=[target.address])
    await _dropped_and_exits_3(relay, agent, ["agents", "rotate-token", relay.agent.id, "--json"])


async def test_deleted_agent_drops_session_and_agent_exits_3(
    relay: Relay, agent_factory: AgentFactory, target: Target
) -> None:
    agent = await agent_factory(relay, allow=[target.address])
    await _dropped_and_exits_3(relay, agent, ["agents", "delete", relay.agent.id])
    assert await relay.agent_json() is None


async def test_wrong_token_at_start_exits_3(
    relay: Relay, agent_factory: AgentFactory, target: Target
) -> None:
    assert relay.proc is not None
    mark = relay.proc.mark()
    bogus = "oat_" + "A" * 43
    agent = await agent_factory(relay, allow=[target.address], token=bogus, wait_up=False)
    rc = await agent.wait_exit(timeout=20)
    assert rc == EXIT_TOKEN_REJECTED, agent.tail()
    one_clear_line(agent, "token")
    assert relay.proc.count("session_up", after=mark) == 0
    assert relay.proc.count("auth_failed", after=mark) >= 1


async def test_host_key_mismatch_exits_4(
    relay: Relay, agent_factory: AgentFactory, target: Target
) -> None:
    other = asyncssh.generate_private_key("ssh-ed25519").get_fingerprint("sha256")
    assert other != relay.host_key
    assert relay.proc is not None
    mark = relay.proc.mark()
    agent = await agent_factory(relay, allow=[target.address], host_key=other, wait_up=False)
    rc = await agent.wait_exit(timeout=20)
    assert rc == EXIT_HOST_KEY_MISMATCH, agent.tail()
    line = one_clear_line(agent, "host key", other)
    assert relay.host_key in line  # says what it saw, too
    assert agent.count("tunnel_up") == 0
    assert relay.proc.count("session_up", after=mark) == 0
