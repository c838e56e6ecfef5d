"""What the tunnel's speed-ups must not change: write coalescing keeps order and
delivers a disconnect message; early data (the SOCKS request and the client's first
bytes in one packet, the stream handed over before the SOCKS reply) keeps bytes,
half-close, refusals and the allowlist; batched token checks and presence writes keep
the registry's answers."""

from __future__ import annotations

import asyncio
import hashlib
import os
from datetime import UTC, datetime
from typing import Any

import asyncssh
import pytest
from tunnel_env import TIMEOUT, Relay

from relay.errors import ConflictError, StreamError, TargetNotAllowedError
from relay.registry import SessionInfo
from shared.splice import CoalescingTransport, Pipe, coalesce_writes


class _Recorder(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.events: list[str] = []

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.events.append("close")

    def abort(self) -> None:
        self.events.append("abort")

    def write_eof(self) -> None:
        self.events.append("eof")

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("198.51.100.7", 4242)}.get(name, default)


async def test_writes_of_one_loop_iteration_leave_in_one_send() -> None:
    raw = _Recorder()
    t = CoalescingTransport(raw)
    t.write(b"a")
    t.write(bytearray(b"b"))
    t.writelines([b"c", memoryview(b"d")])
    assert raw.writes == []
    assert t.get_write_buffer_size() == 4
    await asyncio.sleep(0)
    assert raw.writes == [b"abcd"]
    t.write(b"e")
    await asyncio.sleep(0)
    assert raw.writes == [b"abcd", b"e"]
    assert t.get_extra_info("peername") == ("198.51.100.7", 4242)  # delegated


@pytest.mark.parametrize("ending", ["close", "abort", "write_eof"])
async def test_queued_bytes_leave_before_the_transport_ends(ending: str) -> None:
    raw = _Recorder()
    t = CoalescingTransport(raw)
    t.write(b"disconnect message")
    getattr(t, ending)()
    assert raw.writes == [b"disconnect message"]
    assert raw.events == [{"write_eof": "eof"}.get(ending, ending)]
    await asyncio.sleep(0)
    assert raw.writes == [b"disconnect message"]  # not twice


async def test_asyncssh_keeps_its_transport_where_we_wrap_it(
    relay: Relay, start_agent: Any
) -> None:
    """asyncssh 2.24 holds the transport in ``SSHConnection._transport``: if an
    upgrade moves it, coalescing silently stops; this test says so."""
    agent, _ = await start_agent(["127.0.0.1:1"])
    (session,) = relay.hub.sessions(relay.agent_id)
    assert isinstance(session.conn._transport, CoalescingTransport)
    (conn,) = agent._conns
    assert isinstance(conn._transport, CoalescingTransport)
    assert coalesce_writes(conn) is False  # never wrapped twice


async def test_refused_login_still_gets_the_disconnect_reason(relay: Relay) -> None:
    """The relay's MSG_DISCONNECT is queued, then the transport aborted: the agent
    must still read why (it decides between exiting and backing off on it)."""
    with pytest.raises(asyncssh.PermissionDenied):
        async with asyncio.timeout(TIMEOUT):
            await asyncssh.connect(
                "127.0.0.1",
                relay.port,
                username=relay.agent_id,
                password="oat_wrong",
                known_hosts=None,
                client_keys=None,
                agent_path=None,
                preferred_auth=["password"],
                config=[],
            )


class _Collect(Pipe):
    """A stream end that keeps what it receives and how it ended."""

    def __init__(self) -> None:
        super().__init__()
        self.received = bytearray()
        self.eof = asyncio.get_running_loop().create_future()
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.received += data

    def eof_received(self) -> bool:
        if not self.eof.done():
            self.eof.set_result(None)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


async def test_early_data_goes_with_the_request_and_half_close_still_works(
    relay: Relay, start_agent: Any, echo_server: tuple[int, list[int]]
) -> None:
    """The client spoke and half-closed before the stream exists: payload and EOF
    reach the target (which answers only after EOF), the answer comes back."""
    port, accepted = echo_server
    await start_agent([f"127.0.0.1:{port}"])
    payload = os.urandom(100_000)
    taken: list[int] = []

    def early() -> bytes:
        taken.append(1)
        return payload

    async with asyncio.timeout(TIMEOUT):
        transport, proto = await relay.hub.open_connection(
            relay.agent_id, "127.0.0.1", port, _Collect, early_data=early
        )
        transport.write_eof()  # before the agent's SOCKS reply has even arrived
        await proto.eof
    assert taken == [1]
    assert bytes(proto.received) == hashlib.sha256(payload).digest() + payload
    assert accepted == [1]


async def test_early_data_stream_refused_by_the_allowlist(
    relay: Relay, start_agent: Any, echo_server: tuple[int, list[int]]
) -> None:
    """Handed over early, a refused stream closes and says why; nothing is dialled."""
    port, accepted = echo_server
    await start_agent(["127.0.0.1:1"])  # not the echo server
    async with asyncio.timeout(TIMEOUT):
        _, proto = await relay.hub.open_connection(
            relay.agent_id, "127.0.0.1", port, _Collect, early_data=lambda: b"GET / HTTP/1.0\r\n"
        )
        exc = await proto.lost
    assert isinstance(exc, TargetNotAllowedError)
    assert proto.received == b""
    assert accepted == []


async def test_no_early_data_for_a_client_that_is_not_our_agent(
    relay: Relay, start_agent: Any, echo_server: tuple[int, list[int]]
) -> None:
    """A stock OpenSSH client gets the plain SOCKS exchange (RFC 1928: no payload
    before the reply): early_data is not asked for, errors are raised as before."""
    port, _ = echo_server
    await start_agent(["127.0.0.1:1"])
    (session,) = relay.hub.sessions(relay.agent_id)
    session.client_version = "OpenSSH_9.2p1"
    called: list[int] = []

    def early() -> bytes:
        called.append(1)
        return b"x"

    with pytest.raises(TargetNotAllowedError):
        async with asyncio.timeout(TIMEOUT):
            await relay.hub.open_connection(
                relay.agent_id, "127.0.0.1", port, _Collect, early_data=early
            )
    assert called == []


async def test_a_big_upload_right_after_the_early_hand_over(
    relay: Relay, start_agent: Any, echo_server: tuple[int, list[int]]
) -> None:
    """Bytes written after the early hand-over, some while the agent still dials,
    arrive complete and in order; flow control holds (more than the agent keeps
    before it pauses the channel)."""
    port, _ = echo_server
    await start_agent([f"127.0.0.1:{port}"])
    payload = os.urandom(3 * 1024 * 1024)
    async with asyncio.timeout(TIMEOUT):
        transport, proto = await relay.hub.open_connection(
            relay.agent_id, "127.0.0.1", port, _Collect, early_data=lambda: payload[:10]
        )
        transport.write(payload[10:])
        transport.write_eof()
        await proto.eof
    assert bytes(proto.received) == hashlib.sha256(payload).digest() + payload


async def test_stream_errors_are_still_typed_without_early_data(
    relay: Relay, start_agent: Any
) -> None:
    await start_agent(["127.0.0.1:1"])
    with pytest.raises(StreamError):
        async with asyncio.timeout(TIMEOUT):
            await relay.hub.open_connection(relay.agent_id, "127.0.0.1", 2, _Collect)


async def test_batched_token_checks_answer_like_one_by_one(relay: Relay) -> None:
    reg = relay.registry
    account = (await reg.list_accounts())[0]
    other, other_token = await reg.create_agent(account.id, "other")
    attempts = [
        (relay.agent_id, relay.token),
        (relay.agent_id, other_token),
        (other.id, other_token),
        ("agt_missing", relay.token),
        (other.id, "oat_wrong"),
    ]
    batched = await reg.verify_agent_tokens(attempts)
    one_by_one = [await reg.verify_agent_token(a, t) for a, t in attempts]
    assert batched == one_by_one
    assert [b is not None for b in batched] == [True, False, True, False, False]
    checks = relay.endpoint.token_checks
    results = await asyncio.gather(*(checks.verify(a, t) for a, t in attempts))
    assert results == one_by_one


def _info(session_id: str, agent_id: str) -> SessionInfo:
    now = datetime.now(UTC)
    return SessionInfo(
        id=session_id,
        agent_id=agent_id,
        node_id="test",
        remote_addr="127.0.0.1:1",
        client_version="onprem-agent_9.9.9",
        hostname="h",
        connected_at=now,
        last_seen=now,
    )


async def test_batched_presence_writes(relay: Relay) -> None:
    reg = relay.registry
    gone = await reg.sessions_opened(
        [_info("ses_a", relay.agent_id), _info("ses_b", relay.agent_id), _info("ses_c", "agt_x")]
    )
    assert gone == ["ses_c"]
    agent = await reg.get_agent(relay.agent_id)
    assert sorted(s.id for s in agent.sessions) == ["ses_a", "ses_b"]
    assert agent.version == "onprem-agent_9.9.9"
    await reg.sessions_closed(["ses_a", "ses_unknown"])
    assert [s.id for s in (await reg.get_agent(relay.agent_id)).sessions] == ["ses_b"]


async def _recorded_sessions(relay: Relay, want: int) -> list[SessionInfo]:
    """The agent's sessions in the registry once there are ``want`` (written in
    batches, a little after the fact)."""
    for _ in range(int(TIMEOUT / 0.02)):
        sessions = (await relay.registry.get_agent(relay.agent_id)).sessions
        if len(sessions) == want:
            return sessions
        await asyncio.sleep(0.02)
    raise AssertionError(f"never {want} recorded sessions")


async def test_sessions_show_in_the_registry(relay: Relay, start_agent: Any) -> None:
    agent, _ = await start_agent(["127.0.0.1:1"])
    (live,) = relay.hub.sessions(relay.agent_id)
    (recorded,) = await _recorded_sessions(relay, 1)
    assert recorded.id == live.id
    await agent.stop()
    assert await _recorded_sessions(relay, 0) == []


async def test_a_duplicate_in_a_presence_batch_costs_only_itself(relay: Relay) -> None:
    reg = relay.registry
    await reg.sessions_opened([_info("ses_dup", relay.agent_id)])
    with pytest.raises(ConflictError):
        await reg.sessions_opened(
            [_info("ses_new", relay.agent_id), _info("ses_dup", relay.agent_id)]
        )
    assert [s.id for s in (await reg.get_agent(relay.agent_id)).sessions] == ["ses_dup"]
    await relay.endpoint.presence._write_opened(
        [_info("ses_new", relay.agent_id), _info("ses_dup", relay.agent_id)]
    )
    recorded = sorted(s.id for s in (await reg.get_agent(relay.agent_id)).sessions)
    assert recorded == ["ses_dup", "ses_new"]
