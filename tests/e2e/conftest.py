"""Fixtures of the process-level end-to-end tests: a relay directory made once by the
CLI and copied per test, relays and agents as real subprocesses (killed at teardown,
whatever happened), an in-process HTTP target, and a network namespace."""

from __future__ import annotations

import ipaddress
import os
import secrets
import shutil
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

# The helpers live next to this file (also under --import-mode=importlib).
sys.path.insert(0, str(Path(__file__).resolve().parent))

from e2e_harness import (
    AgentFactory,
    NetNS,
    Proc,
    Procs,
    Relay,
    RelayFactory,
    RelayTemplate,
    make_relay,
    make_template,
    sh,
    start_agent,
)
from e2e_target import Target, start_target

REQUIRE_NETNS = os.environ.get("ONPREM_REQUIRE_NETNS") == "1"


@pytest.fixture(scope="session")
def relay_template(tmp_path_factory: pytest.TempPathFactory) -> RelayTemplate:
    """``onprem-relay init`` + ``accounts create --json`` + ``agents create --json``,
    once per session; every test copies the result (its own DB, config, host key)."""
    return make_template(tmp_path_factory.mktemp("relay-template") / "relay")


@pytest.fixture
async def procs() -> AsyncIterator[Procs]:
    """The test's child processes: all SIGKILLed and reaped at teardown."""
    group = Procs()
    try:
        yield group
    finally:
        # Shown by pytest only when the test failed.
        print(group.report())
        await group.close()


@pytest.fixture
async def target() -> AsyncIterator[Target]:
    """A real HTTP server in the test process on 127.0.0.1:<random>."""
    t = await start_target("127.0.0.1", 0)
    try:
        yield t
    finally:
        await t.close()


@pytest.fixture
def relay_factory(relay_template: RelayTemplate, procs: Procs, tmp_path: Path) -> RelayFactory:
    counter = iter(range(1, 1000))

    async def factory(**kwargs: Any) -> Relay:
        return await make_relay(relay_template, tmp_path / f"relay{next(counter)}", procs, **kwargs)

    return factory


@pytest.fixture
async def relay(relay_factory: RelayFactory, target: Target) -> Relay:
    """A running relay whose one local forward goes to ``target`` via the agent."""
    return await relay_factory(forwards=[target.address])


@pytest.fixture
def agent_factory(procs: Procs, tmp_path: Path) -> AgentFactory:
    counter = iter(range(1, 1000))

    async def factory(relay: Relay, **kwargs: Any) -> Proc:
        n = next(counter)
        kwargs.setdefault("name", f"agent{n}")
        return await start_agent(procs, relay, tmp_path / f"agent{n}", **kwargs)

    return factory


# -- network namespace -------------------------------------------------------------


def _unavailable(reason: str) -> None:
    if REQUIRE_NETNS:
        pytest.fail(f"{reason} (and ONPREM_REQUIRE_NETNS=1 forbids skipping)")
    pytest.skip(reason)


def _free_subnet() -> ipaddress.IPv4Network:
    """A 10.250.X.0/30 not overlapping any address or route of this machine."""
    used: list[ipaddress.IPv4Network] = []
    for cmd in (("ip", "-4", "-o", "addr", "show"), ("ip", "-4", "route", "show", "table", "all")):
        for word in sh(*cmd, check=False).stdout.split():
            try:
                used.append(ipaddress.IPv4Network(word, strict=False))
            except ValueError:
                continue
    for _ in range(200):
        net = ipaddress.IPv4Network(
            f"10.250.{secrets.randbelow(256)}.{4 * secrets.randbelow(64)}/30"
        )
        if not any(net.overlaps(u) for u in used if u.prefixlen > 0):
            return net
    raise RuntimeError("no free 10.250.x.x/30 subnet")


@pytest.fixture
def netns() -> Iterator[NetNS]:
    """A fresh network namespace joined to the root one by a veth pair (a /30 in
    10.250/16), loopback up. Only this machine's own namespaces talk over it.
    Skips without root or ``ip netns`` (fails instead under ONPREM_REQUIRE_NETNS=1)."""
    if os.geteuid() != 0:
        _unavailable("network namespaces need root")
    if shutil.which("ip") is None:
        _unavailable("'ip' (iproute2) is not installed")
    tag = secrets.token_hex(4)
    name = f"onprem-e2e-{tag}"
    host_if, ns_if = f"oe{tag}h", f"oe{tag}n"  # <= 15 characters
    res = sh("ip", "netns", "add", name, check=False)
    if res.returncode != 0:
        _unavailable(f"'ip netns add' failed: {res.stderr.strip()}")
    try:
        net = _free_subnet()
        host_addr, ns_addr = (str(h) for h in net.hosts())
        sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if, "netns", name)
        sh("ip", "addr", "add", f"{host_addr}/30", "dev", host_if)
        sh("ip", "link", "set", host_if, "up")
        sh("ip", "netns", "exec", name, "ip", "addr", "add", f"{ns_addr}/30", "dev", ns_if)
        sh("ip", "netns", "exec", name, "ip", "link", "set", ns_if, "up")
        sh("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up")
        yield NetNS(name, host_if, ns_if, host_addr, ns_addr)
    finally:
        sh("ip", "link", "del", host_if, check=False)  # removes both ends
        sh("ip", "netns", "del", name, check=False)
