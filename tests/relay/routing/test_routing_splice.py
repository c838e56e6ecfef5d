"""shared/splice.py under loop.start_tls: the session delivers to the transport's
current protocol, and feeds a BufferedProtocol through get_buffer/buffer_updated even
when it offers less room than a received chunk. (End to end: the on-prem TLS tests.)"""

from __future__ import annotations

import asyncio
from typing import Any

from shared.splice import ChannelTransport, ProtocolSession


class FakeChannel:
    def __init__(self) -> None:
        self.paused = False

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def close(self) -> None:
        return None


class Plain(asyncio.Protocol):
    def __init__(self) -> None:
        self.got = b""

    def data_received(self, data: bytes) -> None:
        self.got += data


class SmallBuffers(asyncio.BufferedProtocol):
    def __init__(self, room: int) -> None:
        self.room = room
        self.buf = bytearray(room)
        self.got = b""
        self.calls = 0

    def get_buffer(self, sizehint: int) -> Any:
        return self.buf

    def buffer_updated(self, nbytes: int) -> None:
        self.calls += 1
        self.got += bytes(self.buf[:nbytes])


def test_delivery_follows_set_protocol_and_buffered_protocols() -> None:
    session = ProtocolSession()
    session.connection_made(FakeChannel())  # type: ignore[arg-type]
    first = Plain()
    transport = session.attach(first, ("h", 1))
    assert isinstance(transport, ChannelTransport) and transport._start_tls_compatible
    session.data_received(b"one", None)
    buffered = SmallBuffers(room=4)
    transport.set_protocol(buffered)  # what loop.start_tls does
    assert session.protocol is buffered
    session.data_received(b"0123456789", None)
    assert first.got == b"one"
    assert buffered.got == b"0123456789" and buffered.calls == 3
    transport.pause_reading()
    assert not transport.is_reading()
    transport.resume_reading()
    assert transport.is_reading()
