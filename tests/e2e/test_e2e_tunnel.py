"""End to end, as processes: ``onprem-relay serve`` and ``onprem-agent run`` as
subprocesses, a real HTTP target, bytes sent through the relay's loopback
``local_forwards`` listener -> AgentHub.open_stream -> SSH -> agent -> target."""

from __future__ import annotations

import asyncio
import signal
import time

import aiohttp
import pytest
from e2e_harness import (
    MIB,
    RELAY_SETTINGS,
    AgentFactory,
    Proc,
    Relay,
    RelayFactory,
    client_session,
    echo_roundtrip,
    eventually,
    free_port,
    hello,
    random_roundtrip,
)
from e2e_target import Target

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

KEEPALIVE_S = float(RELAY_SETTINGS["ssh"]["keepalive_interval_s"])
KEEPALIVE_COUNT = int(RELAY_SETTINGS["ssh"]["keepalive_count_max"])
# asyncssh disconnects when more than count_max keepalives went unanswered, i.e. after
# (count_max + 1) silent intervals; plus slack for a loaded 2-core machine.
DEAD_PEER_BOUND_S = (KEEPALIVE_COUNT + 1) * KEEPALIVE_S + 3.0


async def test_bytes_arrive_exact_both_ways(
    relay: Relay, agent_factory: AgentFactory, target: Target
) -> None:
    await agent_factory(relay, allow=[target.address])
    base = relay.forward_url
    async with client_session() as session:
        await echo_roundtrip(session, base, MIB)  # 1 MiB up, hash checked by the target
        await random_roundtrip(session, base, MIB)  # 1 MiB down, hash checked here
        # 20 concurrent streams, each its own TCP connection, both directions.
        await asyncio.gather(
            *(
                (echo_roundtrip if i % 2 else random_roundtrip)(session, base, MIB)
                for i in range(20)
            )
        )
    assert target.stats.requests == 22


async def test_agent_comes_back_after_relay_killed_and_restarted(
    relay_factory: RelayFactory, agent_factory: AgentFactory, target: Target
) -> None:
    port = free_port()  # the agent must find the relay again at the same address
    relay = await relay_factory(ssh_listen=f"127.0.0.1:{port}", forwards=[target.address])
    agent = await agent_factory(relay, allow=[target.address])
    async with client_session() as session:
        await echo_roundtrip(session, relay.forward_url, 256 * 1024)

    mark = agent.mark()
    assert relay.proc is not None
    await relay.proc.kill()  # SIGKILL: no goodbye to the agent
    await agent.wait_event("tunnel_down", after=mark, timeout=DEAD_PEER_BOUND_S)

    await relay.start()
    assert relay.ssh_port == port
    await agent.wait_event("tunnel_up", after=mark, timeout=20)
    assert agent.returncode is None, "the agent must reconnect by itself, not exit"
    async with client_session() as session:
        await echo_roundtrip(session, relay.forward_url, MIB)
        await random_roundtrip(session, relay.forward_url, MIB)
    await relay.wait_sessions(1)


async def test_agent_killed_mid_stream(
    relay: Relay, agent_factory: AgentFactory, target: Target
) -> None:
    agent = await agent_factory(relay, allow=[target.address])
    assert relay.proc is not None
    relay_mark = relay.proc.mark()
    chunk = 64 * 1024
    async with client_session(total_timeout=60) as session:
        # ~37 MiB over ~30 s: certainly in flight when the agent dies.
        params = {"chunks": "600", "size": str(chunk), "interval": "0.05"}
        async with session.get(f"{relay.forward_url}/slow", params=params) as resp:
            assert resp.status == 200
            await resp.content.readexactly(chunk)  # the stream is flowing

            killed_at = time.monotonic()
            await agent.kill()
            received = chunk
            with pytest.raises((aiohttp.ClientPayloadError, aiohttp.ClientConnectionError)):
                async with asyncio.timeout(15):  # a hang fails as TimeoutError
                    while data := await resp.content.read(chunk):
                        received += len(data)
            failed_after = time.monotonic() - killed_at
        assert received < 600 * chunk
        assert failed_after < DEAD_PEER_BOUND_S, failed_after

        ev = await relay.proc.wait_event(
            "session_down",
            after=relay_mark,
            where={"agent_id": relay.agent.id},
            timeout=DEAD_PEER_BOUND_S,
        )
        down_after = time.monotonic() - killed_at
        assert down_after < DEAD_PEER_BOUND_S, (down_after, ev)
        await relay.wait_sessions(0)

        # A new stream now fails fast (agent offline), it does not hang.
        started = time.monotonic()
        with pytest.raises(aiohttp.ClientConnectionError):
            async with asyncio.timeout(10):
                await hello(session, relay.forward_url)
        assert time.monotonic() - started < 5

    # The target's end of the dead stream is released too (its writes fail).
    async def target_saw_abort() -> bool:
        return target.stats.slow_aborted == 1

    await eventually(target_saw_abort, timeout=10, what="the target's /slow response aborted")


async def test_frozen_agent_is_dropped_by_keepalive_and_recovers(
    relay: Relay, agent_factory: AgentFactory, target: Target
) -> None:
    """SIGSTOP leaves the TCP connection open but silent: only keepalives can tell."""
    agent = await agent_factory(relay, allow=[target.address])
    assert relay.proc is not None
    relay_mark, agent_mark = relay.proc.mark(), agent.mark()
    stopped_at = time.monotonic()
    agent.signal(signal.SIGSTOP)
    try:
        await relay.proc.wait_event(
            "session_down",
            after=relay_mark,
            where={"agent_id": relay.agent.id},
            timeout=DEAD_PEER_BOUND_S + 5,
        )
        detected_after = time.monotonic() - stopped_at
    finally:
        agent.signal(signal.SIGCONT)
    print(f"frozen agent detected after {detected_after:.2f} s")
    assert detected_after < DEAD_PEER_BOUND_S, detected_after
    # Thawed, the agent finds its session gone and reconnects by itself.
    await agent.wait_event("tunnel_up", after=agent_mark, timeout=20)
    async with client_session() as session:
        await hello(session, relay.forward_url)


async def test_two_replicas_share_streams_and_survive_one_dying(
    relay: Relay, agent_factory: AgentFactory, target: Target
) -> None:
    debug = {"log": {"level": "debug"}}  # agents log stream_closed per stream
    a1 = await agent_factory(relay, allow=[target.address], settings=debug, name="replica1")
    a2 = await agent_factory(relay, allow=[target.address], settings=debug, name="replica2")
    info = await relay.wait_sessions(2)
    assert len({s["id"] for s in info["sessions"]}) == 2

    def served(agent_proc: Proc) -> int:
        return agent_proc.count("stream_closed", where={"result": "ok"})

    async def wait_total(n: int) -> None:
        async def check() -> bool:
            return served(a1) + served(a2) >= n

        await eventually(
            check, timeout=10, what=f"{n} streams logged by the replicas", interval=0.05
        )

    base = relay.forward_url
    async with client_session() as session:
        # One stream after the other (each a new connection): nothing in flight, so
        # the spreading is the hub's choice alone.
        for _ in range(10):
            await hello(session, base)
        await wait_total(10)
        seq = (served(a1), served(a2))
        # And 20 at once.
        await asyncio.gather(*(random_roundtrip(session, base, 64 * 1024) for _ in range(20)))
        await wait_total(30)
        both = (served(a1), served(a2))
        assert seq[0] > 0 and seq[1] > 0, f"sequential streams not spread: {seq}"
        assert both[0] > seq[0] and both[1] > seq[1], f"concurrent streams not spread: {both}"

        # One replica dies: new streams keep working, all through the other one.
        assert relay.proc is not None
        mark = relay.proc.mark()
        await a1.kill()
        await relay.proc.wait_event(
            "session_down", after=mark, where={"agent_id": relay.agent.id}, timeout=10
        )
        before = served(a2)
        for i in range(10):
            await (echo_roundtrip(session, base, 64 * 1024) if i % 2 else hello(session, base))
        await asyncio.gather(*(hello(session, base) for _ in range(10)))

        async def survivor_served_all() -> bool:
            return served(a2) >= before + 20

        await eventually(survivor_served_all, timeout=10, what="survivor logged 20 streams")
    await relay.wait_sessions(1)
