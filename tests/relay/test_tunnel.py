"""The tunnel in one process: the real relay SSH endpoint and AgentHub, the real agent,
real TCP targets, a real SQLite registry. Security refusals and stream failures."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import pytest
from tunnel_env import TIMEOUT, Relay, agent_config

from agent.daemon import Agent
from agent.errors import AuthRejectedError, HostKeyMismatchError
from relay.errors import (
    AgentOfflineError,
    StreamTimeoutError,
    TargetNotAllowedError,
    TargetRefusedError,
    TargetUnreachableError,
)
from relay.keys import fingerprint
from relay.sshd import AuthThrottle


async def test_stream_carries_1mib_each_way(relay: Relay, start_agent, echo_server) -> None:
    port, accepted = echo_server
    await start_agent([f"127.0.0.1:{port}"])
    payload = os.urandom(1024 * 1024)
    async with asyncio.timeout(TIMEOUT):
        reader, writer = await relay.hub.open_stream(relay.agent_id, "127.0.0.1", port)
        writer.write(payload)
        await writer.drain()
        writer.write_eof()
        answer = await reader.read()
        writer.close()
    assert answer[:32] == hashlib.sha256(payload).digest()
    assert answer[32:] == payload
    assert accepted == [1]


async def test_many_concurrent_streams(relay: Relay, start_agent, echo_server) -> None:
    port, accepted = echo_server
    await start_agent([f"127.0.0.1:{port}"])

    async def one(i: int) -> bool:
        body = os.urandom(1000 + i)
        reader, writer = await relay.hub.open_stream(relay.agent_id, "127.0.0.1", port)
        writer.write(body)
        writer.write_eof()
        answer = await reader.read()
        writer.close()
        return answer == hashlib.sha256(body).digest() + body

    async with asyncio.timeout(TIMEOUT):
        results = await asyncio.gather(*(one(i) for i in range(100)))
    assert all(results)
    assert len(accepted) == 100


async def test_target_outside_allowlist_is_refused_without_dialling(
    relay: Relay, start_agent, echo_server
) -> None:
    port, accepted = echo_server
    await start_agent(["127.0.0.1:1"])
    with pytest.raises(TargetNotAllowedError):
        await relay.hub.open_stream(relay.agent_id, "127.0.0.1", port)
    with pytest.raises(TargetNotAllowedError):
        await relay.hub.open_stream(relay.agent_id, "localhost", port)
    assert accepted == []


async def test_refused_and_unresolvable_targets(relay: Relay, start_agent) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    await start_agent(["*"])
    with pytest.raises(TargetRefusedError):
        await relay.hub.open_stream(relay.agent_id, "127.0.0.1", closed_port)
    with pytest.raises(TargetUnreachableError):
        await relay.hub.open_stream(relay.agent_id, "no-such-host.invalid", 80)


@contextlib.contextmanager
def hanging_target() -> Iterator[int]:
    """A port whose listener never accepts and whose backlog is full: further SYNs are
    dropped, so a dial to it hangs until the dialer's timeout."""
    hang = socket.socket()
    hang.bind(("127.0.0.1", 0))
    hang.listen(0)
    port = hang.getsockname()[1]
    fillers = []
    for _ in range(3):
        c = socket.socket()
        c.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            c.connect(("127.0.0.1", port))
        fillers.append(c)
    try:
        yield port
    finally:
        for c in fillers:
            c.close()
        hang.close()


async def test_hanging_target_times_out_and_leaks_nothing(relay: Relay, start_agent) -> None:
    with hanging_target() as port:
        agent, _ = await start_agent([f"127.0.0.1:{port}"], dial_timeout_s=0.3)
        tasks_before = len(asyncio.all_tasks())
        for _ in range(3):
            with pytest.raises(StreamTimeoutError):
                await relay.hub.open_stream(relay.agent_id, "127.0.0.1", port)
        async with asyncio.timeout(TIMEOUT):
            await agent.stats.idle.wait()
            await relay.hub.wait_idle()
        assert relay.hub.streams_open == 0
        assert agent.stats.open == 0
        assert agent.stats.total.get("timed_out") == 3
        assert len(asyncio.all_tasks()) <= tasks_before


async def test_relay_side_timeout_closes_the_channel(relay: Relay, start_agent) -> None:
    with hanging_target() as port:
        agent, _ = await start_agent([f"127.0.0.1:{port}"], dial_timeout_s=30)
        with pytest.raises(StreamTimeoutError):
            await relay.hub.open_stream(relay.agent_id, "127.0.0.1", port, timeout=0.3)
        async with asyncio.timeout(TIMEOUT):
            await agent.stats.idle.wait()
            await relay.hub.wait_idle()
        assert relay.hub.streams_open == 0


async def test_offline_agent(relay: Relay) -> None:
    with pytest.raises(AgentOfflineError):
        await relay.hub.open_stream(relay.agent_id, "127.0.0.1", 80)


async def test_wrong_token_is_fatal(relay: Relay, start_agent) -> None:
    _, task = await start_agent(["*"], token="oat_" + "x" * 43, wait=False)
    with pytest.raises(AuthRejectedError):
        async with asyncio.timeout(TIMEOUT):
            await task
    assert not relay.hub.is_online(relay.agent_id)


async def test_host_key_mismatch_is_fatal(relay: Relay, tmp_path: Path) -> None:
    other = fingerprint(asyncssh.generate_private_key("ssh-ed25519"))
    cfg = agent_config(relay, ["*"]).model_copy(
        update={"relay": agent_config(relay, []).relay.model_copy(update={"host_key": other})}
    )
    with pytest.raises(HostKeyMismatchError):
        async with asyncio.timeout(TIMEOUT):
            await Agent(cfg, relay.token).run()


@pytest.mark.parametrize("action", ["rotate", "delete"])
async def test_rotated_or_deleted_token_drops_live_session(
    relay: Relay, start_agent, action: str
) -> None:
    _, task = await start_agent(["*"])
    if action == "rotate":
        await relay.registry.rotate_agent_token(relay.agent_id)
    else:
        await relay.registry.delete_agent(relay.agent_id)
    with pytest.raises(AuthRejectedError):
        async with asyncio.timeout(TIMEOUT):
            await task
    assert not relay.hub.is_online(relay.agent_id)


async def test_parallel_sessions_share_streams(relay: Relay, start_agent, echo_server) -> None:
    port, _ = echo_server
    await start_agent([f"127.0.0.1:{port}"], connections=3)
    assert len(relay.hub.sessions(relay.agent_id)) == 3
    streams = [await relay.hub.open_stream(relay.agent_id, "127.0.0.1", port) for _ in range(6)]
    assert sorted(s.streams for s in relay.hub.sessions(relay.agent_id)) == [2, 2, 2]
    for _, writer in streams:
        writer.close()


async def _client(relay: Relay) -> asyncssh.SSHClientConnection:
    return await asyncssh.connect(
        "127.0.0.1",
        relay.port,
        username=relay.agent_id,
        password=relay.token,
        known_hosts=None,
        client_keys=None,
        agent_path=None,
        config=[],
    )


async def test_relay_refuses_everything_but_the_dynamic_forward(relay: Relay) -> None:
    async with asyncio.timeout(TIMEOUT):
        conn = await _client(relay)
        async with conn:
            with pytest.raises(asyncssh.ChannelOpenError):
                await conn.run("id")
            with pytest.raises(asyncssh.ChannelOpenError):
                await conn.create_session(asyncssh.SSHClientSession, term_type="xterm")
            with pytest.raises(asyncssh.ChannelOpenError):
                await conn.start_sftp_client()
            with pytest.raises(asyncssh.ChannelOpenError):  # direct-tcpip
                await conn.open_connection("127.0.0.1", relay.port)
            with pytest.raises(asyncssh.ChannelListenError):  # a real port on the relay
                await conn.forward_remote_port("", 18080, "127.0.0.1", 80)
            listener = await conn.forward_remote_port("localhost", 0, "127.0.0.1", 80)
            assert listener.get_port() != 0
            with pytest.raises(asyncssh.ChannelListenError):  # only one per connection
                await conn.forward_remote_port("localhost", 0, "127.0.0.1", 80)
            # The forward bound nothing on the relay.
            with socket.socket() as s:
                assert s.connect_ex(("127.0.0.1", listener.get_port())) != 0


async def test_failed_logins_are_throttled_per_source(relay: Relay) -> None:
    for _ in range(5):
        with pytest.raises(asyncssh.PermissionDenied):
            await asyncssh.connect(
                "127.0.0.1",
                relay.port,
                username=relay.agent_id,
                password="wrong",
                known_hosts=None,
                client_keys=None,
                agent_path=None,
                config=[],
            )
    # Now even the right token is turned away, without a verdict on it.
    with pytest.raises(asyncssh.DisconnectError) as info:
        await _client(relay)
    assert not isinstance(info.value, asyncssh.PermissionDenied)


def test_auth_throttle_window() -> None:
    t = AuthThrottle(max_failures=2, window=60)
    t.failed("a", now=0)
    assert not t.blocked("a", now=1)
    t.failed("a", now=2)
    assert t.blocked("a", now=3)
    assert not t.blocked("b", now=3)
    assert not t.blocked("a", now=63)


async def test_agent_stop_drains_in_flight_streams(relay: Relay, start_agent) -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    agent, task = await start_agent([f"127.0.0.1:{port}"], drain_timeout_s=30)
    async with asyncio.timeout(TIMEOUT):
        reader, writer = await relay.hub.open_stream(relay.agent_id, "127.0.0.1", port)
        stopping = asyncio.create_task(agent.stop())
        # While draining, the open stream keeps working and new ones are refused.
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
        with pytest.raises(AgentOfflineError):
            await relay.hub.open_stream(relay.agent_id, "127.0.0.1", port)
        assert not stopping.done()
        writer.close()
        await stopping
        await task
    server.close()
    await server.wait_closed()


async def test_local_forward_closes_streams_after_both_eofs(
    relay: Relay, start_agent, echo_server
) -> None:
    from relay.localfwd import start_local_forward

    port, _ = echo_server
    agent, _ = await start_agent([f"127.0.0.1:{port}"])
    server = await start_local_forward(
        relay.hub, "127.0.0.1:0", relay.agent_id, f"127.0.0.1:{port}"
    )
    local_port = server.sockets[0].getsockname()[1]
    try:
        async with asyncio.timeout(TIMEOUT):
            for _ in range(3):
                reader, writer = await asyncio.open_connection("127.0.0.1", local_port)
                writer.write(b"x" * 100_000)
                writer.write_eof()
                answer = await reader.read()
                assert answer[32:] == b"x" * 100_000
                writer.close()
                await writer.wait_closed()
            # Nothing stays half-open on either side.
            await relay.hub.wait_idle()
            await agent.stats.idle.wait()
    finally:
        server.close()
        await server.wait_closed()


async def test_agent_audit_log_health_and_metrics(
    relay: Relay, start_agent, echo_server, tmp_path: Path
) -> None:
    import json

    import aiohttp

    port, _ = echo_server
    audit = tmp_path / "audit.log"
    agent, _ = await start_agent(
        [f"127.0.0.1:{port}"], audit_file=str(audit), health_listen="127.0.0.1:0"
    )
    async with asyncio.timeout(TIMEOUT):
        reader, writer = await relay.hub.open_stream(
            relay.agent_id, "127.0.0.1", port, origin="con_abc/req_123"
        )
        writer.write(b"hello")
        writer.write_eof()
        await reader.read()
        writer.close()
        with pytest.raises(TargetNotAllowedError):
            await relay.hub.open_stream(relay.agent_id, "10.9.9.9", 443, origin="con_abc/req_124")
        await agent.stats.idle.wait()
        async with aiohttp.ClientSession() as http:
            base = f"http://127.0.0.1:{agent.health_port}"
            async with http.get(f"{base}/healthz") as resp:
                assert resp.status == 200
                assert (await resp.json())["status"] == "connected"
            async with http.get(f"{base}/metrics") as resp:
                text = await resp.text()
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [(r["connection_id"], r["request_id"], r["allowed"]) for r in lines] == [
        ("con_abc", "req_123", True),
        ("con_abc", "req_124", False),
    ]
    assert lines[0]["target"] == f"127.0.0.1:{port}"
    assert lines[0]["bytes_in"] == 5 and lines[0]["bytes_out"] == 32 + 5
    assert lines[1]["result"] == "not_allowed"
    assert 'onprem_agent_streams_total{result="ok"} 1.0' in text
    assert "onprem_agent_connected 1.0" in text


def test_default_keepalives_detect_a_dead_peer_within_45_seconds() -> None:
    # asyncssh disconnects after count_max + 1 unanswered keepalives.
    from agent.config import AgentConfig
    from relay.config import SshConfig

    ssh = SshConfig()
    assert (ssh.keepalive_count_max + 1) * ssh.keepalive_interval_s <= 45
    fields = AgentConfig.model_fields
    count = fields["keepalive_count_max"].default
    interval = fields["keepalive_interval_s"].default
    assert (count + 1) * interval <= 45


async def test_clients_resetting_connections_do_not_drop_the_session(
    relay: Relay, start_agent
) -> None:
    from relay.localfwd import start_local_forward

    async def slow_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read(1024)
        writer.write(data * 100)
        writer.write_eof()
        await writer.drain()
        writer.close()

    target = await asyncio.start_server(slow_echo, "127.0.0.1", 0)
    port = target.sockets[0].getsockname()[1]
    await start_agent([f"127.0.0.1:{port}"])
    session_ids = {s.id for s in relay.hub.sessions(relay.agent_id)}
    fwd = await start_local_forward(relay.hub, "127.0.0.1:0", relay.agent_id, f"127.0.0.1:{port}")
    fport = fwd.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(TIMEOUT):
            for i in range(40):
                s = socket.socket()
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.setblocking(False)
                await loop.sock_connect(s, ("127.0.0.1", fport))
                await loop.sock_sendall(s, b"ping")
                if i % 2:
                    await loop.sock_recv(s, 10)
                s.close()  # RST, at varying points of the exchange
            await relay.hub.wait_idle()
            reader, writer = await asyncio.open_connection("127.0.0.1", fport)
            writer.write(b"ok")
            assert await reader.read() == b"ok" * 100
            writer.close()
        assert {s.id for s in relay.hub.sessions(relay.agent_id)} == session_ids
    finally:
        fwd.close()
        target.close()
