"""One stream on the agent: a ``forwarded-tcpip`` channel from the relay carrying a
SOCKS5 CONNECT. Check the target against the allowlist, dial it, reply with the RFC 1928
code, then splice bytes both ways by callbacks."""

from __future__ import annotations

import asyncio
import errno
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import asyncssh
import structlog

from agent.allowlist import Allowlist
from agent.audit import AuditLog
from agent.metrics import AgentMetrics
from shared.socks5 import Reply, Socks5Error, Socks5Server
from shared.splice import Pipe, ProtocolSession, contained, flush_writes, link

log = structlog.get_logger("agent.tunnel")

# Payload that arrives while dialing is kept for the target; past this much, stop
# reading the channel until the target is connected (the relay's flow control).
_MAX_EARLY = 256 * 1024


@dataclass
class StreamStats:
    """Counters shared by every stream of one agent process; feeds the metrics and
    the audit log."""

    metrics: AgentMetrics = field(default_factory=AgentMetrics)
    audit: AuditLog | None = None
    open: int = 0
    total: dict[str, int] = field(default_factory=dict)
    bytes_in: int = 0  # relay -> target
    bytes_out: int = 0  # target -> relay
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.idle.set()

    def started(self) -> None:
        self.open += 1
        self.idle.clear()
        self.metrics.streams_open.inc()

    def ended(
        self,
        *,
        result: str,
        origin: str,
        target: str | None,
        bytes_in: int,
        bytes_out: int,
        duration_ms: float,
    ) -> None:
        self.open -= 1
        self.total[result] = self.total.get(result, 0) + 1
        self.bytes_in += bytes_in
        self.bytes_out += bytes_out
        m = self.metrics
        m.streams_open.dec()
        m.streams_total.labels(result=result).inc()
        m.bytes_total.labels(direction="in").inc(bytes_in)
        m.bytes_total.labels(direction="out").inc(bytes_out)
        if self.audit is not None:
            self.audit.record(
                origin=origin,
                target=target,
                allowed=result not in ("not_allowed", "bad_request", "draining"),
                result=result,
                bytes_in=bytes_in,
                bytes_out=bytes_out,
                duration_ms=duration_ms,
            )
        if self.open == 0:
            self.idle.set()


def dial_error_reply(exc: BaseException) -> Reply:
    """Map a failed dial to the SOCKS5 reply code the relay turns into a typed error."""
    if isinstance(exc, TimeoutError):
        return Reply.TIMED_OUT
    if isinstance(exc, ConnectionRefusedError):
        return Reply.CONNECTION_REFUSED
    if isinstance(exc, socket.gaierror):
        return Reply.HOST_UNREACHABLE
    if isinstance(exc, OSError):
        if exc.errno in (errno.ENETUNREACH, errno.ENETDOWN):
            return Reply.NETWORK_UNREACHABLE
        if exc.errno in (errno.EHOSTUNREACH, errno.EHOSTDOWN):
            return Reply.HOST_UNREACHABLE
        if exc.errno == errno.ETIMEDOUT:
            return Reply.TIMED_OUT
        if exc.errno == errno.ECONNREFUSED:
            return Reply.CONNECTION_REFUSED
    return Reply.GENERAL_FAILURE


class AgentStream(ProtocolSession):
    """Agent end of one channel."""

    def __init__(
        self,
        *,
        allowlist: Allowlist,
        dial_timeout: float,
        stats: StreamStats,
        origin: str,
        accepting: bool = True,
    ) -> None:
        super().__init__()
        self._allow = allowlist
        self._dial_timeout = dial_timeout
        self._stats = stats
        self._origin = origin
        self._accepting = accepting
        self._socks = Socks5Server()
        self._target: str | None = None
        self._pipe = Pipe()  # the channel side of the splice
        self._remote: Pipe | None = None
        self._dial: asyncio.Task[None] | None = None
        self._eof_while_dialing = False
        self._started = time.monotonic()
        self._result = "error"
        self._counted = False

    def connection_made(self, chan: asyncssh.SSHTCPChannel[bytes]) -> None:
        super().connection_made(chan)
        self._stats.started()
        self._counted = True
        if not self._accepting:
            self._result = "draining"
            chan.close()

    def _refuse(self, reply: Reply | None, result: str) -> None:
        self._result = result
        if reply is not None and self.chan is not None:
            self.chan.write(self._socks.reply(reply))
        if self.chan is not None:
            self.chan.close()

    @contained
    def data_received(self, data: bytes, datatype: int | None) -> None:
        if self.protocol is not None:
            self.protocol.data_received(data)
            return
        if self._dial is not None:  # payload before our reply: keep it for the target
            self._socks.leftover += data
            if len(self._socks.leftover) >= _MAX_EARLY and self.chan is not None:
                self.chan.pause_reading()  # resumed once spliced
            return
        try:
            request = self._socks.receive_data(data)
        except Socks5Error as exc:
            out = self._socks.data_to_send()
            if out and self.chan is not None:
                self.chan.write(out)
            log.warning("socks_error", origin=self._origin, error=str(exc))
            self._refuse(exc.reply, "bad_request")
            return
        out = self._socks.data_to_send()
        if out and self.chan is not None:
            self.chan.write(out)
        if request is None:
            return
        self._target = f"{request.host}:{request.port}"
        if not self._allow.allows(request.host, request.port):
            log.warning("stream_refused", origin=self._origin, target=self._target)
            self._refuse(Reply.NOT_ALLOWED, "not_allowed")
            return
        self._dial = asyncio.get_running_loop().create_task(
            self._connect(request.host, request.port)
        )

    async def _connect(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._dial_timeout):
                _, remote = await loop.create_connection(Pipe, host, port)
        except (OSError, TimeoutError) as exc:
            reply = dial_error_reply(exc)
            log.info("dial_failed", origin=self._origin, target=self._target, reply=reply.name)
            self._refuse(reply, reply.name.lower())
            return
        if self.chan is None or self._result == "closed":
            assert remote.transport is not None
            remote.transport.close()
            return
        self._remote = remote
        self._result = "ok"
        self.chan.write(self._socks.reply(Reply.SUCCEEDED))
        flush_writes(self.chan)  # from a task: nothing else would send it before next round
        assert self._target is not None
        self.attach(self._pipe, (host, port))
        if self._socks.leftover:
            self._pipe.data_received(self._socks.leftover)
        if self._eof_while_dialing:
            self._pipe.eof_received()  # kept until linked, like the payload
        link(self._pipe, remote)

    @contained
    def eof_received(self) -> bool:
        if self.protocol is None:
            if self._dial is not None and not self._dial.done():
                # The relay sent its request, maybe payload, and EOF before our
                # reply (a client that half-closes at once): forward it after dialing.
                self._eof_while_dialing = True
                return True
            return False
        return super().eof_received()

    @contained
    def connection_lost(self, exc: Exception | None) -> None:
        if self._dial is not None and not self._dial.done():
            self._dial.cancel()
            self._result = "closed"
        super().connection_lost(exc)
        if self._counted:
            self._counted = False
            fields: dict[str, Any] = {
                "result": self._result,
                "origin": self._origin,
                "target": self._target,
                "bytes_in": self._pipe.bytes_in,
                "bytes_out": self._remote.bytes_in if self._remote is not None else 0,
                "duration_ms": round((time.monotonic() - self._started) * 1000, 1),
            }
            self._stats.ended(**fields)
            log.debug("stream_closed", **fields)
