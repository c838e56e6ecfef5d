"""Pipe edge cases on real sockets."""

from __future__ import annotations

import asyncio
import socket
import struct

from shared.splice import Pipe


async def test_eof_to_a_reset_peer_closes_only_that_transport() -> None:
    loop = asyncio.get_running_loop()
    made: asyncio.Future[Pipe] = loop.create_future()

    class Server(Pipe):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            made.set_result(self)

    server = await loop.create_server(Server, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.connect(("127.0.0.1", port))
    async with asyncio.timeout(5):
        pipe = await made
    assert pipe.transport is not None
    pipe.transport.pause_reading()  # asyncio has not seen the reset yet
    client.close()  # RST
    pipe._send_eof()  # shutdown() fails with ENOTCONN: must not raise
    assert pipe.transport.is_closing()
    server.close()
    await server.wait_closed()
