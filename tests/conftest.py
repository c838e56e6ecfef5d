"""Fixtures shared by the whole suite: an in-process relay (real SSH endpoint, AgentHub
and SQLite registry), in-process agents, and a TCP echo target."""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import structlog
from tunnel_env import TIMEOUT, Relay, agent_config

from agent.daemon import Agent
from relay.hub import AgentHub
from relay.keys import fingerprint, load_or_create_host_key
from relay.registry import Registry
from relay.sshd import SSHEndpoint
from shared.logging import configure_logging


@pytest.fixture
async def relay(tmp_path: Path) -> AsyncIterator[Relay]:
    registry = await Registry.open(f"sqlite+aiosqlite:///{tmp_path / 'relay.db'}")
    await registry.upgrade()
    account, _ = await registry.create_account("acme")
    agent, token = await registry.create_agent(account.id, "erp-agent")
    key = load_or_create_host_key(tmp_path / "host_key")
    hub = AgentHub(open_timeout=3.0)
    endpoint = SSHEndpoint(
        registry=registry,
        hub=hub,
        host_key=key,
        node_id="test",
        keepalive_interval=1.0,
        token_recheck_interval=0.2,
        presence_interval=0.5,
        auth_failures_per_minute=5,
    )
    port = await endpoint.start("127.0.0.1", 0)
    yield Relay(registry, hub, endpoint, port, fingerprint(key), account.id, agent.id, token)
    await hub.close(0.5)
    await endpoint.close()
    await registry.close()


@pytest.fixture
async def start_agent(
    relay: Relay,
) -> AsyncIterator[Callable[..., Awaitable[tuple[Agent, asyncio.Task[None]]]]]:
    started: list[tuple[Agent, asyncio.Task[None]]] = []

    async def start(
        allow: list[str], *, token: str | None = None, wait: bool = True, **extra: object
    ) -> tuple[Agent, asyncio.Task[None]]:
        agent = Agent(agent_config(relay, allow, **extra), token or relay.token)
        task = asyncio.create_task(agent.run())
        started.append((agent, task))
        if wait:
            async with asyncio.timeout(TIMEOUT):
                await agent.wait_connected(agent.config.connections)
                await relay.hub.wait_online(relay.agent_id, TIMEOUT)
        return agent, task

    yield start
    for agent, task in started:
        if not task.done():
            await agent.stop()
            async with asyncio.timeout(TIMEOUT):
                await asyncio.gather(task, return_exceptions=True)


@pytest.fixture
async def echo_server() -> AsyncIterator[tuple[int, list[int]]]:
    """A TCP server answering each connection with sha256(all bytes until EOF) + the
    bytes themselves; counts accepted connections."""
    accepted: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        data = await reader.read()
        writer.write(hashlib.sha256(data).digest() + data)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1], accepted
    server.close()
    await server.wait_closed()


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    """Every log line (debug and up, JSON) into a buffer; the global setup restored."""
    root = logging.getLogger()
    saved_handlers = list(root.handlers)
    saved_level = root.level
    saved_asyncssh = logging.getLogger("asyncssh").level
    stream = io.StringIO()
    configure_logging("debug", "json", stream)
    try:
        yield stream
    finally:
        for handler in root.handlers[:]:
            if handler not in saved_handlers:
                root.removeHandler(handler)
                handler.close()
        root.setLevel(saved_level)
        logging.getLogger("asyncssh").setLevel(saved_asyncssh)
        structlog.reset_defaults()
        structlog.contextvars.clear_contextvars()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Browser tests last: Playwright's sync API keeps its own event loop for the rest
    of the session, and pytest-asyncio's tests cannot run after it starts."""
    items.sort(key=lambda item: "page" in getattr(item, "fixturenames", ()))
