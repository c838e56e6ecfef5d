"""Moving bytes between two transports by callbacks, with flow control both ways.

``ChannelTransport`` makes an asyncssh channel look like an asyncio transport, so the
same ``Pipe`` protocol splices TCP<->channel on the agent and on the relay. No task
per stream, no intermediate queue: each ``data_received`` is one ``write`` on the
other side, and a full write buffer pauses reading on the other side.

The transport also works under ``loop.start_tls`` (TLS end to end inside a stream):
start_tls swaps the transport's protocol for an ``SSLProtocol``, which is a
``BufferedProtocol``, so ``ProtocolSession`` always delivers to the transport's
*current* protocol and speaks both protocol flavours.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import asyncssh
import structlog

log = structlog.get_logger("shared.splice")

F = TypeVar("F", bound=Callable[..., Any])


def contained(method: F) -> F:
    """For asyncssh session callbacks: an exception escaping one would make asyncssh
    close the whole SSH connection, every other stream of the session with it. Log
    it and close only this channel."""

    @functools.wraps(method)
    def wrapper(self: ProtocolSession, *args: Any) -> Any:
        try:
            return method(self, *args)
        except Exception as exc:
            log.error("stream_callback_failed", callback=method.__name__, error=repr(exc)[:200])
            if self.chan is not None:
                self.chan.close()
            return False

    return wrapper  # type: ignore[return-value]


class ChannelTransport(asyncio.Transport):
    """An asyncio transport over an open SSH channel."""

    # loop.start_tls refuses transports without this flag; the ones it accepts must
    # honour set_protocol (the session reads the current protocol on every callback),
    # pause/resume_reading and _force_close.
    _start_tls_compatible = True

    def __init__(self, chan: asyncssh.SSHTCPChannel[bytes], peer: tuple[str, int]) -> None:
        super().__init__()
        self._chan = chan
        self._peer = peer
        self.closing = False
        self._reading = True
        self._protocol: asyncio.BaseProtocol | None = None
        info = getattr(chan, "get_extra_info", None)  # (test doubles may lack it)
        transport = getattr(info("connection") if info else None, "_transport", None)
        # Flushed after each write: the channel's packets leave at once, together.
        self._coalescer = transport if isinstance(transport, CoalescingTransport) else None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self._peer
        if name == "sockname":
            return ("0.0.0.0", 0)
        if name == "ssh_channel":
            return self._chan
        return default

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self._protocol is not None
        return self._protocol

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            if self._coalescer is None:
                self._chan.close()
            else:
                with self._coalescer.holding():
                    self._chan.close()

    def abort(self) -> None:
        self.close()

    def _force_close(self, exc: BaseException | None) -> None:
        # What asyncio's SSLProtocol calls on a fatal TLS error or a shutdown timeout.
        self.close()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self.closing and data:
            coalescer = self._coalescer
            if coalescer is not None:
                coalescer.holds += 1
            try:
                self._chan.write(data if isinstance(data, bytes) else bytes(data))
            except OSError:  # the channel closed under us (BrokenPipeError)
                self.close()
            finally:
                if coalescer is not None:
                    coalescer.holds -= 1
                    coalescer.flush()

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def write_eof(self) -> None:
        if not self.closing:
            coalescer = self._coalescer
            if coalescer is not None:
                coalescer.holds += 1
            try:
                self._chan.write_eof()
            except OSError:
                self.close()
            finally:
                if coalescer is not None:
                    coalescer.holds -= 1
                    coalescer.flush()

    def can_write_eof(self) -> bool:
        return True

    def pause_reading(self) -> None:
        self._reading = False
        self._chan.pause_reading()

    def resume_reading(self) -> None:
        self._reading = True
        self._chan.resume_reading()

    def is_reading(self) -> bool:
        return self._reading and not self.closing

    def get_write_buffer_size(self) -> int:
        return int(self._chan.get_write_buffer_size())

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._chan.set_write_buffer_limits(high, low)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (0, 0)


class Pipe(asyncio.Protocol):
    """One end of a splice. Link two with ``link(a, b)``; bytes received by one are
    written to the other's transport. Until linked, received bytes are kept (a client
    may speak before the other side is connected) and reading is paused."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: Pipe | None = None
        self.bytes_in = 0
        self._early: list[bytes] = []
        self._early_eof = False
        self._eof_in = False  # the other end of our transport sent EOF
        self._eof_out = False  # we sent EOF on our transport
        self._closed = asyncio.get_running_loop().create_future()

    @property
    def closed(self) -> asyncio.Future[None]:
        return self._closed

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.bytes_in += len(data)
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.write(data)
        else:
            self._early.append(data)
            if self.transport is not None:
                self.transport.pause_reading()

    def eof_received(self) -> bool:
        self._eof_in = True
        peer = self.peer
        if peer is None or peer.transport is None:
            self._early_eof = True
            return True
        if not peer.transport.can_write_eof():
            return False
        peer._send_eof()
        if self._eof_out and self.transport is not None:
            # Both directions are finished: asyncio would keep a half-closed
            # transport open forever.
            self.transport.close()
        return True

    def _send_eof(self) -> None:
        assert self.transport is not None
        if self._eof_out:
            return
        self._eof_out = True
        try:
            self.transport.write_eof()
        except OSError:
            # The peer reset the connection before asyncio noticed (shutdown() says
            # ENOTCONN): this stream is over, and only this stream.
            self.transport.close()
            return
        if self._eof_in:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._closed.done():
            self._closed.set_result(None)
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.close()

    def pause_writing(self) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.pause_reading()

    def resume_writing(self) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.resume_reading()

    def take_early(self) -> bytes:
        """Hand over what arrived before linking (it is then not sent at ``link``);
        reading stays paused until then."""
        early, self._early = self._early, []
        return early[0] if len(early) == 1 else b"".join(early)

    def flush_early(self) -> None:
        """Send what arrived before linking, and start reading again."""
        assert self.peer is not None and self.peer.transport is not None
        early, self._early = self._early, []
        for chunk in early:
            self.peer.transport.write(chunk)
        if self._early_eof:
            self.eof_received()
        elif self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()


def link(a: Pipe, b: Pipe) -> None:
    a.peer, b.peer = b, a
    a.flush_early()
    b.flush_early()


class ProtocolSession(asyncssh.SSHTCPSession[bytes]):
    """Forwards an asyncssh channel's session callbacks to an asyncio protocol.

    Subclasses handle a handshake first and call ``attach`` when the channel carries
    plain stream bytes."""

    def __init__(self) -> None:
        self.chan: asyncssh.SSHTCPChannel[bytes] | None = None
        self.transport: ChannelTransport | None = None

    @property
    def protocol(self) -> asyncio.Protocol | None:
        """The protocol the channel's bytes go to now: the one ``attach`` got, or what
        ``transport.set_protocol`` replaced it with (``loop.start_tls`` does). Typed
        as ``Protocol`` for the callers that attach one; use ``deliver`` to feed it,
        which also handles a ``BufferedProtocol``."""
        if self.transport is None:
            return None
        return self.transport._protocol  # type: ignore[return-value]

    def connection_made(self, chan: asyncssh.SSHTCPChannel[bytes]) -> None:
        self.chan = chan

    def attach(self, protocol: asyncio.BaseProtocol, peer: tuple[str, int]) -> ChannelTransport:
        assert self.chan is not None
        transport = ChannelTransport(self.chan, peer)
        transport.set_protocol(protocol)
        self.transport = transport
        protocol.connection_made(transport)
        return transport

    def deliver(self, data: bytes) -> None:
        """Hand received bytes to the current protocol, plain or buffered."""
        protocol: asyncio.BaseProtocol | None = self.protocol
        if isinstance(protocol, asyncio.BufferedProtocol):
            view = memoryview(data)
            while view:
                buf = memoryview(protocol.get_buffer(len(view)))
                n = min(len(buf), len(view))
                if n == 0:
                    raise RuntimeError("get_buffer() returned an empty buffer")
                buf[:n] = view[:n]
                protocol.buffer_updated(n)
                view = view[n:]
        elif protocol is not None:
            protocol.data_received(data)  # type: ignore[attr-defined]

    @contained
    def data_received(self, data: bytes, datatype: int | None) -> None:
        self.deliver(data)

    @contained
    def eof_received(self) -> bool:
        if self.protocol is not None:
            return bool(self.protocol.eof_received())
        return False

    @contained
    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.transport.closing = True
        if self.protocol is not None:
            self.protocol.connection_lost(exc)

    @contained
    def pause_writing(self) -> None:
        if self.protocol is not None:
            self.protocol.pause_writing()

    @contained
    def resume_writing(self) -> None:
        if self.protocol is not None:
            self.protocol.resume_writing()


class CoalescingTransport:
    """Wraps the asyncio transport under an SSH connection so that the packets one
    callback writes leave in one ``send()``.

    asyncssh writes each SSH packet, and the ``MSG_IGNORE`` it sends before each one,
    with its own ``transport.write``: two system calls per channel write. Here writes
    are queued and ``flush()`` joins them. Whoever produced them flushes when its
    callback ends (``coalesce_writes`` wraps the connection's ``data_received``;
    ``ChannelTransport`` flushes after each write); anything else (timers, tasks)
    leaves at the start of the next loop iteration, by a ``call_soon`` scheduled with
    the first queued write. Nothing waits longer than that: a later flush would batch
    more, but every hop of a request would wait an extra loop iteration (measured:
    slower). ``close``, ``abort`` and ``write_eof`` flush first (a ``MSG_DISCONNECT``
    written just before an abort still leaves). Everything else is delegated;
    ``get_write_buffer_size`` counts the queued bytes too."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._loop = asyncio.get_running_loop()
        self._queue: list[bytes] = []
        self._queued = 0
        self._scheduled = False
        # >0 while a caller that flushes when it is done is writing: no need for the
        # call_soon fallback (it would cost an extra loop iteration per write).
        self.holds = 0

    @property
    def wrapped(self) -> asyncio.Transport:
        return self._transport

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        self._queue.append(bytes(data) if not isinstance(data, bytes) else data)
        self._queued += len(data)
        if not self._scheduled and not self.holds:
            self._scheduled = True
            self._loop.call_soon(self._flush_soon)

    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        """Writes inside leave together when the block ends."""
        self.holds += 1
        try:
            yield
        finally:
            self.holds -= 1
            self.flush()

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def _flush_soon(self) -> None:
        self._scheduled = False
        self.flush()

    def flush(self) -> None:
        queue = self._queue
        if not queue:
            return
        self._queue = []
        self._queued = 0
        data = queue[0] if len(queue) == 1 else b"".join(queue)
        try:  # noqa: SIM105 (cheaper than contextlib.suppress on this path)
            self._transport.write(data)
        except (ConnectionError, RuntimeError):
            # What asyncssh itself ignores on a direct write (the peer is gone), and
            # writing after close/write_eof: the connection is ending anyway.
            pass

    def get_write_buffer_size(self) -> int:
        return self._queued + self._transport.get_write_buffer_size()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self.flush()
        self._transport.abort()


def coalesce_writes(conn: asyncssh.SSHClientConnection | asyncssh.SSHServerConnection) -> bool:
    """Put a ``CoalescingTransport`` under ``conn`` and flush it after each chunk the
    connection receives (call it from the connection's ``connection_made`` hook).
    asyncssh keeps its transport in ``_transport`` (2.24; ``tests/relay/
    test_perf_tunnel.py`` pins that). Returns False when there is nothing to wrap."""
    transport = getattr(conn, "_transport", None)
    if transport is None or isinstance(transport, CoalescingTransport):
        return False
    coalescer = CoalescingTransport(transport)
    conn._transport = coalescer  # type: ignore[assignment]
    received = conn.data_received

    def data_received(data: bytes, datatype: int | None = None) -> None:
        # The asyncio transport calls the protocol's data_received attribute: the
        # packets written while processing this chunk leave together at its end.
        coalescer.holds += 1
        try:
            received(data, datatype)
        finally:
            coalescer.holds -= 1
            coalescer.flush()

    conn.data_received = data_received  # type: ignore[method-assign]
    return True


def flush_writes(chan: asyncssh.SSHTCPChannel[bytes] | None) -> None:
    """Send what the channel's connection has queued (see ``CoalescingTransport``)."""
    if chan is None:
        return
    conn = chan.get_extra_info("connection")
    transport = getattr(conn, "_transport", None)
    if isinstance(transport, CoalescingTransport):
        transport.flush()
