"""Agents' live sessions through the API, with the real SSH endpoint and a real agent:
status and sessions on read; rotating the token drops the session at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from api_helpers import TIMEOUT, Env, make_agent, ssh_endpoint

from agent.errors import AuthRejectedError


@pytest.fixture
async def ssh(env: Env, tmp_path: Path) -> AsyncIterator[tuple[int, str]]:
    async with ssh_endpoint(env, tmp_path) as endpoint:
        yield endpoint


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_sessions_shown_and_rotation_drops_them(env: Env, ssh: tuple[int, str]) -> None:
    port, host_key = ssh
    created = (await env.a.post("/v1/agents", {"name": "gw"})).json
    agent_id = created["id"]
    agent = make_agent(port, host_key, agent_id, created["token"])
    task = asyncio.create_task(agent.run())
    try:
        async with asyncio.timeout(TIMEOUT):
            await env.hub.wait_online(agent_id, TIMEOUT)
        shown = (await env.a.get(f"/v1/agents/{agent_id}")).json
        assert shown["status"] == "online"
        [session] = shown["sessions"]
        assert session["remote_addr"].startswith("127.0.0.1")
        assert session["hostname"] and session["connected_at"]
        listed = (await env.a.get("/v1/agents")).json["agents"]
        assert listed[0]["status"] == "online"

        r = await env.a.post(f"/v1/agents/{agent_id}/rotate-token")
        assert r.status == 200 and r.json["sessions_dropped"] == 1
        # Dropped at once; the agent's old token no longer gets in, so it gives up.
        async with asyncio.timeout(TIMEOUT):
            with pytest.raises(AuthRejectedError):
                await task
        assert env.hub.sessions(agent_id) == []
    finally:
        if not task.done():
            await agent.stop()
            async with asyncio.timeout(TIMEOUT):
                await asyncio.gather(task, return_exceptions=True)

    # The new token works.
    agent2 = make_agent(port, host_key, agent_id, r.json["token"])
    task2 = asyncio.create_task(agent2.run())
    try:
        async with asyncio.timeout(TIMEOUT):
            await env.hub.wait_online(agent_id, TIMEOUT)
        # Deleting the agent drops it too (no connection uses it).
        assert (await env.a.delete(f"/v1/agents/{agent_id}")).status == 204
        async with asyncio.timeout(TIMEOUT):
            with pytest.raises(AuthRejectedError):
                await task2
    finally:
        if not task2.done():
            await agent2.stop()
            async with asyncio.timeout(TIMEOUT):
                await asyncio.gather(task2, return_exceptions=True)
