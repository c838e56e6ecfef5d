"""AgentHub: the live SSH sessions of every agent, and streams opened through them.

A stream is one SSH ``forwarded-tcpip`` channel to the agent's virtual listener with a
SOCKS5 CONNECT inside (greeting and request in one write). Once the agent replies
``succeeded``, the channel is handed to the caller's asyncio protocol through a
``ChannelTransport``, so bytes move by callbacks, with no extra task per stream.
``open_stream`` wraps that in asyncio streams; ``open_connection`` is the
``loop.create_connection``-shaped form that HTTP clients build on.

The hub is the interface the rest of the relay uses to reach an agent: a future
multi-process relay can implement the same methods over another transport.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

import asyncssh
import structlog

from relay.errors import (
    AgentOfflineError,
    AgentProtocolError,
    StreamError,
    StreamTimeoutError,
    TargetNotAllowedError,
    TargetRefusedError,
    TargetUnreachableError,
)
from relay.metrics import RelayMetrics
from shared.socks5 import Reply, Socks5Client, Socks5Error
from shared.splice import ChannelTransport, ProtocolSession, contained

P = TypeVar("P", bound=asyncio.BaseProtocol)

log = structlog.get_logger("relay.hub")

_DEFAULT_OPEN_TIMEOUT = 10.0
_DEFAULT_WINDOW = 2 * 1024 * 1024
_DEFAULT_MAX_PKTSIZE = 32768
_DEFAULT_MAX_CHANNELS = 1024
# The asyncssh client registers its listener only after its forward request returns,
# so the first channel opens may race it ("No such listener"): retry those briefly.
_STARTUP_RETRY_DELAY = 0.02
_STARTUP_RETRY_WINDOW = 2.0

_REPLY_ERRORS: dict[int, type[StreamError]] = {
    Reply.NOT_ALLOWED: TargetNotAllowedError,
    Reply.NETWORK_UNREACHABLE: TargetUnreachableError,
    Reply.HOST_UNREACHABLE: TargetUnreachableError,
    Reply.CONNECTION_REFUSED: TargetRefusedError,
    Reply.TIMED_OUT: StreamTimeoutError,
}


def _reply_error(code: int, agent_id: str, host: str, port: int) -> StreamError:
    target = f"{host}:{port}"
    cls = _REPLY_ERRORS.get(code, StreamError)
    text = {
        TargetNotAllowedError: f"agent {agent_id} does not allow {target}",
        TargetUnreachableError: f"agent {agent_id} cannot reach {target}",
        TargetRefusedError: f"{target} refused the connection (via agent {agent_id})",
        StreamTimeoutError: f"connecting to {target} timed out (via agent {agent_id})",
    }.get(cls, f"agent {agent_id} failed to connect to {target} (SOCKS reply {code:#x})")
    return cls(text)


# The software part of our agent's SSH version banner (``agent.daemon.client_version``).
AGENT_SOFTWARE_PREFIX = "onprem-agent_"


def new_session_id() -> str:
    return "ses_" + secrets.token_hex(10)


@dataclass(eq=False)
class AgentSession:
    """One authenticated SSH connection of an agent that holds a dynamic forward."""

    agent_id: str
    conn: asyncssh.SSHServerConnection
    listen_host: str
    listen_port: int
    token_hash: str
    remote_addr: str
    client_version: str
    hostname: str
    id: str = field(default_factory=new_session_id)
    connected_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    created_monotonic: float = field(default_factory=time.monotonic)
    streams: int = 0

    @property
    def keeps_early_data(self) -> bool:
        """Our agent keeps stream bytes that arrive before its SOCKS reply (RFC 1928
        does not allow them; a stock OpenSSH client is not counted on for it)."""
        return self.client_version.startswith(AGENT_SOFTWARE_PREFIX)

    def close(self, reason: str) -> None:
        log.info("session_dropped", agent_id=self.agent_id, session_id=self.id, reason=reason)
        self.conn.disconnect(asyncssh.DISC_BY_APPLICATION, reason)


class _StreamChannel(ProtocolSession):
    """Relay end of one stream: SOCKS5 handshake first, then the caller's protocol."""

    def __init__(
        self,
        hub: AgentHub,
        session: AgentSession,
        host: str,
        port: int,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        opened: asyncio.Future[tuple[ChannelTransport, asyncio.BaseProtocol]],
        early_data: Callable[[], bytes] | None = None,
    ) -> None:
        super().__init__()
        self._hub = hub
        self._session = session
        self._host = host
        self._port = port
        self._factory = protocol_factory
        self._opened = opened
        self._socks = Socks5Client(host, port)
        # Early mode: the caller's protocol gets the stream as soon as the channel is
        # open; the SOCKS reply is still read (and stripped) before any stream byte.
        self._early_data = early_data
        self._awaiting_reply = True
        self._error: StreamError | None = None
        self._counted = True
        session.streams += 1
        hub._stream_started()

    def _uncount(self) -> None:
        if self._counted:
            self._counted = False
            self._session.streams -= 1
            self._hub._stream_ended()

    def _fail(self, exc: BaseException) -> None:
        if not self._opened.done():
            self._opened.set_exception(exc)
        if self.chan is not None:
            self.chan.close()

    def connection_made(self, chan: asyncssh.SSHTCPChannel[bytes]) -> None:
        super().connection_made(chan)
        if self._early_data is None:
            chan.write(self._socks.initial_bytes())
            return
        # The SOCKS request and what the client has sent so far, in one packet; the
        # agent keeps payload that arrives while it dials.
        chan.write(self._socks.initial_bytes() + self._early_data())
        if self._opened.done():  # the caller gave up meanwhile
            chan.close()
            return
        protocol = self._factory()
        transport = self.attach(protocol, (self._host, self._port))
        self._opened.set_result((transport, protocol))

    def _setup_failed(self, exc: StreamError) -> None:
        if not self._opened.done():
            self._fail(exc)
            return
        # Early mode: the caller has the stream already; it learns why it closes
        # from connection_lost.
        self._error = exc
        if self.chan is not None:
            self.chan.close()

    @contained
    def data_received(self, data: bytes, datatype: int | None) -> None:
        if not self._awaiting_reply:
            self.deliver(data)
            return
        try:
            code = self._socks.receive_data(data)
        except Socks5Error as exc:
            self._setup_failed(
                AgentProtocolError(f"agent {self._session.agent_id} sent bad SOCKS: {exc}")
            )
            return
        if code is None:
            return
        self._awaiting_reply = False
        if code != Reply.SUCCEEDED:
            self._setup_failed(
                _reply_error(int(code), self._session.agent_id, self._host, self._port)
            )
            return
        if self.protocol is None:
            if self._opened.done():  # the caller gave up (timeout, cancel) meanwhile
                self._fail(StreamTimeoutError("abandoned"))
                return
            protocol = self._factory()
            transport = self.attach(protocol, (self._host, self._port))
            self._opened.set_result((transport, protocol))
        if self._socks.leftover:
            self.deliver(self._socks.leftover)

    @contained
    def eof_received(self) -> bool:
        if self._awaiting_reply:
            self._setup_failed(
                AgentProtocolError(f"agent {self._session.agent_id} closed the stream")
            )
            return False
        return super().eof_received()

    @contained
    def connection_lost(self, exc: Exception | None) -> None:
        self._uncount()
        if self.protocol is None:
            self._fail(
                AgentOfflineError(f"agent {self._session.agent_id} closed the stream during setup")
            )
            return
        if self._awaiting_reply and self._error is None:
            self._error = AgentOfflineError(
                f"agent {self._session.agent_id} closed the stream during setup"
            )
        super().connection_lost(exc if exc is not None else self._error)


class AgentHub:
    """Registry of live agent sessions; opens streams through them."""

    def __init__(
        self,
        *,
        metrics: RelayMetrics | None = None,
        open_timeout: float = _DEFAULT_OPEN_TIMEOUT,
        window: int = _DEFAULT_WINDOW,
        max_pktsize: int = _DEFAULT_MAX_PKTSIZE,
        max_channels_per_session: int = _DEFAULT_MAX_CHANNELS,
    ) -> None:
        self.metrics = metrics or RelayMetrics()
        self.open_timeout = open_timeout
        self.window = window
        self.max_pktsize = max_pktsize
        self.max_channels_per_session = max_channels_per_session
        self._sessions: dict[str, list[AgentSession]] = {}
        self._rr = itertools.count()
        self._changed = asyncio.Condition()
        self._streams_open = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False

    # -- sessions ---------------------------------------------------------------

    def sessions(self, agent_id: str | None = None) -> list[AgentSession]:
        if agent_id is not None:
            return list(self._sessions.get(agent_id, ()))
        return [s for group in self._sessions.values() for s in group]

    @property
    def streams_open(self) -> int:
        return self._streams_open

    def _stream_started(self) -> None:
        self._streams_open += 1
        self._idle.clear()
        self.metrics.streams_open.inc()

    async def wait_idle(self) -> None:
        """Until no stream is open (bound it with a timeout)."""
        await self._idle.wait()

    def _stream_ended(self) -> None:
        self._streams_open -= 1
        self.metrics.streams_open.dec()
        if self._streams_open == 0:
            self._idle.set()

    def is_online(self, agent_id: str) -> bool:
        return bool(self._sessions.get(agent_id))

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def add_session(self, session: AgentSession) -> None:
        group = self._sessions.setdefault(session.agent_id, [])
        if not group:
            self.metrics.agents_connected.inc()
        group.append(session)
        self.metrics.agent_sessions.inc()
        asyncio.get_running_loop().create_task(self._notify())

    def remove_session(self, session: AgentSession) -> bool:
        group = self._sessions.get(session.agent_id)
        if not group or session not in group:
            return False
        group.remove(session)
        self.metrics.agent_sessions.dec()
        if not group:
            del self._sessions[session.agent_id]
            self.metrics.agents_connected.dec()
        return True

    def drop_agent(self, agent_id: str, reason: str) -> int:
        """Disconnect every session of ``agent_id`` (token rotated, agent deleted)."""
        group = self._sessions.get(agent_id, [])
        for session in list(group):
            session.close(reason)
        return len(group)

    async def wait_online(self, agent_id: str, timeout: float) -> None:
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: self.is_online(agent_id))

    def _pick(self, agent_id: str, exclude: set[AgentSession]) -> AgentSession:
        group = [s for s in self._sessions.get(agent_id, ()) if s not in exclude]
        if self._closing or not group:
            raise AgentOfflineError(f"agent {agent_id} is not connected")
        # Least loaded first; ties go round-robin so replicas share new streams.
        start = next(self._rr) % len(group)
        rotated = group[start:] + group[:start]
        best = min(rotated, key=lambda s: s.streams)
        if best.streams >= self.max_channels_per_session:
            raise AgentOfflineError(f"agent {agent_id} has no free channel (limit reached)")
        return best

    # -- streams ----------------------------------------------------------------

    async def open_connection(
        self,
        agent_id: str,
        host: str,
        port: int,
        protocol_factory: Callable[[], P],
        *,
        origin: str = "",
        timeout: float | None = None,
        early_data: Callable[[], bytes] | None = None,
    ) -> tuple[ChannelTransport, P]:
        """Like ``loop.create_connection``, through the agent. Raises a ``StreamError``
        subclass saying why it failed (offline, not allowed, refused, timeout...).

        ``early_data``: for a caller that has bytes waiting (a TCP client that spoke
        first) and needs no typed error. When the session is our own agent, which
        keeps payload that arrives while it dials, the stream is handed over as soon
        as the channel is open, one round trip earlier, and ``early_data()`` goes out
        with the SOCKS request in one packet; a refused target then closes the stream
        (the protocol's ``connection_lost`` gets the ``StreamError``). Other clients
        (a stock OpenSSH) get the usual SOCKS exchange first and ``early_data`` is
        not called."""
        started = time.monotonic()
        deadline = started + (self.open_timeout if timeout is None else timeout)
        tried: set[AgentSession] = set()
        while True:
            session = self._pick(agent_id, tried)
            early = early_data if early_data is not None and session.keeps_early_data else None
            try:
                transport, protocol = await self._open_on(
                    session, host, port, protocol_factory, origin, deadline, early
                )
            except AgentOfflineError:
                # That session died under us; another replica may still be alive.
                tried.add(session)
                if not [s for s in self.sessions(agent_id) if s not in tried]:
                    raise
                continue
            self.metrics.stream_open_seconds.observe(time.monotonic() - started)
            return transport, protocol  # type: ignore[return-value]

    async def open_stream(
        self,
        agent_id: str,
        host: str,
        port: int,
        *,
        origin: str = "",
        timeout: float | None = None,
        limit: int = 2**16,
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A reader/writer pair for a TCP connection from the agent to ``host:port``."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=limit, loop=loop)
        transport, protocol = await self.open_connection(
            agent_id,
            host,
            port,
            lambda: asyncio.StreamReaderProtocol(reader, loop=loop),
            origin=origin,
            timeout=timeout,
        )
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        return reader, writer

    async def _open_on(
        self,
        session: AgentSession,
        host: str,
        port: int,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        origin: str,
        deadline: float,
        early_data: Callable[[], bytes] | None = None,
    ) -> tuple[ChannelTransport, asyncio.BaseProtocol]:
        loop = asyncio.get_running_loop()
        retry_until = session.created_monotonic + _STARTUP_RETRY_WINDOW
        while True:
            opened: asyncio.Future[tuple[ChannelTransport, asyncio.BaseProtocol]] = (
                loop.create_future()
            )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise StreamTimeoutError(
                    f"opening a stream to {host}:{port} via agent {session.agent_id} timed out"
                )
            chan: asyncssh.SSHTCPChannel[bytes] | None = None
            try:
                async with asyncio.timeout(remaining):
                    chan, _ = await session.conn.create_connection(
                        functools.partial(
                            _StreamChannel,
                            self,
                            session,
                            host,
                            port,
                            protocol_factory,
                            opened,
                            early_data,
                        ),
                        session.listen_host,
                        session.listen_port,
                        origin[:255],
                        0,
                        window=self.window,
                        max_pktsize=self.max_pktsize,
                    )
                    return await asyncio.shield(opened)
            except TimeoutError:
                if chan is not None:
                    chan.close()
                if not opened.done():
                    opened.cancel()
                raise StreamTimeoutError(
                    f"opening a stream to {host}:{port} via agent {session.agent_id} timed out"
                ) from None
            except asyncssh.ChannelOpenError as exc:
                if "listener" in exc.reason.lower() and time.monotonic() < retry_until:
                    await asyncio.sleep(_STARTUP_RETRY_DELAY)
                    continue
                raise AgentProtocolError(
                    f"agent {session.agent_id} refused the channel: {exc.reason}"
                ) from None
            except (asyncssh.Error, ConnectionError, OSError) as exc:
                if isinstance(exc, StreamError):
                    raise
                raise AgentOfflineError(
                    f"agent {session.agent_id} is not connected ({type(exc).__name__})"
                ) from None
            except asyncio.CancelledError:
                if chan is not None:
                    chan.close()
                raise

    # -- shutdown ---------------------------------------------------------------

    async def close(self, drain_timeout: float) -> None:
        """Refuse new streams, let open ones finish within ``drain_timeout``, then drop
        every session."""
        self._closing = True
        try:
            async with asyncio.timeout(drain_timeout):
                await self._idle.wait()
        except TimeoutError:
            log.warning("drain_timeout", streams_open=self._streams_open)
        for session in self.sessions():
            session.close("relay shutting down")
