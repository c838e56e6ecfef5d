"""Fixtures of the routing tests: a real relay SSH endpoint + AgentHub + SQLite
registry in process, a real agent, real upstream HTTP servers, and executors."""

from __future__ import annotations

import asyncio
import importlib
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest


def _use_the_real_relay_package() -> None:
    """tests/conftest.py puts tests/ on sys.path, so ``import relay`` can find
    tests/relay first and make ``relay`` a namespace package; its submodules still load
    (through the editable install's finder) except those whose name is also a folder
    under tests/relay: ``relay.routing`` would be this test folder. Make ``relay`` the
    real package again. (A project-level ``pythonpath = ["."]`` would make this moot.)"""
    current = sys.modules.get("relay")
    if current is not None and getattr(current, "__file__", None) is not None:
        return
    root = str(Path(__file__).resolve().parents[3])
    if root not in sys.path:
        sys.path.append(root)
    for name in [n for n in sys.modules if n == "relay" or n.startswith("relay.")]:
        if getattr(sys.modules[name], "__file__", None) is None:
            del sys.modules[name]
    real = importlib.import_module("relay")
    for name, module in list(sys.modules.items()):
        if name.startswith("relay.") and name.count(".") == 1:
            setattr(real, name.split(".", 1)[1], module)


_use_the_real_relay_package()

from routing_harness import CA, TIMEOUT, Upstream  # noqa: E402

from agent.config import AgentConfig  # noqa: E402
from agent.daemon import Agent  # noqa: E402
from relay.hub import AgentHub  # noqa: E402
from relay.keys import fingerprint, load_or_create_host_key  # noqa: E402
from relay.registry import Registry, SecretBox  # noqa: E402
from relay.routing.executor import HttpExecutor  # noqa: E402
from relay.sshd import SSHEndpoint  # noqa: E402


@dataclass
class RelayEnv:
    registry: Registry
    hub: AgentHub
    endpoint: SSHEndpoint
    port: int
    host_key: str
    account_id: str
    api_token: str
    agent_id: str
    agent_token: str


@pytest.fixture
async def relay(tmp_path: Path) -> AsyncIterator[RelayEnv]:
    registry = await Registry.open(
        f"sqlite+aiosqlite:///{tmp_path / 'relay.db'}",
        secrets=SecretBox(SecretBox.generate_key()),
    )
    await registry.upgrade()
    account, api_token = await registry.create_account("acme")
    agent, token = await registry.create_agent(account.id, "erp-agent")
    key = load_or_create_host_key(tmp_path / "host_key")
    hub = AgentHub(open_timeout=3.0)
    endpoint = SSHEndpoint(
        registry=registry,
        hub=hub,
        host_key=key,
        node_id="test",
        keepalive_interval=1.0,
        token_recheck_interval=0.5,
        presence_interval=0.5,
        auth_failures_per_minute=5,
    )
    port = await endpoint.start("127.0.0.1", 0)
    yield RelayEnv(
        registry, hub, endpoint, port, fingerprint(key), account.id, api_token, agent.id, token
    )
    await hub.close(0.5)
    await endpoint.close()
    await registry.close()


StartAgent = Callable[..., Awaitable[Agent]]


@pytest.fixture
async def start_agent(relay: RelayEnv) -> AsyncIterator[StartAgent]:
    started: list[tuple[Agent, asyncio.Task[None]]] = []

    async def start(allow: list[str], **extra: object) -> Agent:
        cfg = AgentConfig.model_validate(
            {
                "relay": {"address": f"127.0.0.1:{relay.port}", "host_key": relay.host_key},
                "agent_id": relay.agent_id,
                "allow": allow,
                "backoff_initial_s": 0.05,
                "backoff_max_s": 0.2,
                "dial_timeout_s": 2.0,
                **extra,
            }
        )
        agent = Agent(cfg, relay.agent_token)
        task = asyncio.create_task(agent.run())
        started.append((agent, task))
        async with asyncio.timeout(TIMEOUT):
            await agent.wait_connected(agent.config.connections)
            await relay.hub.wait_online(relay.agent_id, TIMEOUT)
        return agent

    yield start
    for agent, task in started:
        if not task.done():
            await agent.stop()
            async with asyncio.timeout(TIMEOUT):
                await asyncio.gather(task, return_exceptions=True)


MakeExecutor = Callable[..., HttpExecutor]


@pytest.fixture
async def make_executor(relay: RelayEnv) -> AsyncIterator[MakeExecutor]:
    made: list[HttpExecutor] = []

    def make(**kw: Any) -> HttpExecutor:
        kw.setdefault("deny_private_networks", False)
        kw.setdefault("backoff_initial_s", 0.05)
        kw.setdefault("registry", relay.registry)
        ex = HttpExecutor(hub=relay.hub, **kw)
        made.append(ex)
        return ex

    yield make
    for ex in made:
        await ex.close()


MakeUpstream = Callable[..., Awaitable[Upstream]]


@pytest.fixture
async def make_upstream() -> AsyncIterator[MakeUpstream]:
    made: list[Upstream] = []

    async def make(**kw: Any) -> Upstream:
        up = await Upstream(**kw).start()
        made.append(up)
        return up

    yield make
    for up in made:
        await up.stop()


@pytest.fixture
async def upstream(make_upstream: MakeUpstream) -> Upstream:
    return await make_upstream()


@pytest.fixture(scope="session")
def ca() -> CA:
    return CA.create()
