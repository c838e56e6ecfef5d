"""``GET /v1/tunnel``: the agents' SSH byte stream inside a WebSocket, for networks
that allow only HTTPS out. Each WebSocket is pumped into one end of a socketpair and
the SSH endpoint runs on the other end, so authentication and every refusal are
exactly those of the TCP port."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import structlog
from aiohttp import WSMsgType, web

from relay.sshd import SSHEndpoint

log = structlog.get_logger("relay.wstunnel")

_PUMP_CHUNK = 256 * 1024
ENDPOINT = web.AppKey("ssh_endpoint", SSHEndpoint)


async def _ws_to_sock(ws: web.WebSocketResponse, sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    try:
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                await loop.sock_sendall(sock, msg.data)
            else:  # text frames are not part of the protocol
                break
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)


async def _sock_to_ws(sock: socket.socket, ws: web.WebSocketResponse) -> None:
    loop = asyncio.get_running_loop()
    try:
        while data := await loop.sock_recv(sock, _PUMP_CHUNK):
            await ws.send_bytes(data)
    except (OSError, ConnectionError):
        pass
    finally:
        await ws.close()


def client_address(request: web.Request) -> str:
    # Behind a TLS-terminating proxy the socket peer is the proxy; aiohttp's
    # request.remote honours X-Forwarded-For only when the app is set up to trust it.
    return request.remote or "?"


async def tunnel(request: web.Request) -> web.StreamResponse:
    endpoint = request.app[ENDPOINT]
    ws = web.WebSocketResponse(max_msg_size=0, compress=False, autoping=True)
    if not ws.can_prepare(request).ok:
        raise web.HTTPBadRequest(text="WebSocket upgrade required")
    await ws.prepare(request)
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    source = client_address(request)
    server = asyncio.create_task(endpoint.accept_socket(theirs, source))
    try:
        await asyncio.gather(_ws_to_sock(ws, ours), _sock_to_ws(ours, ws))
    finally:
        ours.close()
        if not server.done():
            server.cancel()
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await server
    return ws


def setup_tunnel_route(app: web.Application, endpoint: SSHEndpoint) -> None:
    app[ENDPOINT] = endpoint
    app.router.add_get("/v1/tunnel", tunnel)
