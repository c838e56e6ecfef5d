"""How the agent's SSH byte stream reaches the relay, for locked-down networks.

- ``host:port``: plain TCP (asyncssh connects itself).
- ``host:port`` + ``proxy``: an HTTP CONNECT tunnel through the proxy (Basic
  credentials from the proxy URL), handshake on a non-blocking socket.
- ``wss://relay/v1/tunnel`` (or ``ws://``): the SSH bytes inside WebSocket binary
  messages, optionally through the proxy, trusting ``relay.ca_file`` if given. The
  WebSocket is pumped into one end of a socketpair; asyncssh gets the other end.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
import ssl
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

import aiohttp

from agent.config import AgentConfig
from agent.errors import TransportError
from shared.net import parse_host_port

_MAX_PROXY_REPLY = 16384
_PUMP_CHUNK = 256 * 1024


@dataclass
class RelayLink:
    """What asyncssh should connect over: ``sock`` if set, else ``host``/``port``.
    ``close()`` releases whatever carries the socket (WebSocket pump)."""

    host: str
    port: int
    sock: socket.socket | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _closers: list[aiohttp.ClientSession] = field(default_factory=list)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for session in self._closers:
            await session.close()


def _proxy_parts(proxy: str) -> tuple[str, int, str | None]:
    """``http://user:pass@proxy:3128`` -> (host, port, Basic credentials or None)."""
    parts = urlsplit(proxy)
    if parts.scheme != "http" or not parts.hostname:
        raise TransportError(f"proxy must be an http://host:port URL, got scheme {parts.scheme!r}")
    auth = None
    if parts.username is not None:
        raw = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        auth = base64.b64encode(raw.encode()).decode()
    return parts.hostname, parts.port or 3128, auth


def build_connect_request(host: str, port: int, auth: str | None) -> bytes:
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}"]
    if auth:
        lines.append(f"Proxy-Authorization: Basic {auth}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def parse_connect_reply(head: bytes) -> None:
    """Raise TransportError unless the proxy answered 2xx to CONNECT."""
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise TransportError(f"proxy answered something that is not HTTP: {status_line[:80]!r}")
    code = int(parts[1])
    if code in (401, 407):  # 407 per RFC 9110; some proxies (tinyproxy) answer 401
        raise TransportError(f"proxy requires authentication ({code}): check the proxy credentials")
    if not 200 <= code < 300:
        raise TransportError(f"proxy refused CONNECT: {status_line[:120]}")


async def connect_via_proxy(proxy: str, host: str, port: int, timeout: float) -> socket.socket:
    """A connected socket to ``host:port`` through an HTTP CONNECT proxy."""
    loop = asyncio.get_running_loop()
    phost, pport, auth = _proxy_parts(proxy)
    sock: socket.socket | None = None
    try:
        async with asyncio.timeout(timeout):
            infos = await loop.getaddrinfo(phost, pport, type=socket.SOCK_STREAM)
            family, stype, proto, _, addr = infos[0]
            sock = socket.socket(family, stype, proto)
            sock.setblocking(False)
            await loop.sock_connect(sock, addr)
            await loop.sock_sendall(sock, build_connect_request(host, port, auth))
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = await loop.sock_recv(sock, 4096)
                if not chunk:
                    raise TransportError("proxy closed the connection during CONNECT")
                head += chunk
                if len(head) > _MAX_PROXY_REPLY:
                    raise TransportError("proxy reply to CONNECT is too long")
            header, _, extra = head.partition(b"\r\n\r\n")
            parse_connect_reply(header)
            if extra:
                raise TransportError("proxy sent data before the tunnel was up")
    except TimeoutError:
        if sock is not None:
            sock.close()
        raise TransportError(f"proxy {phost}:{pport} timed out") from None
    except OSError as exc:
        if sock is not None:
            sock.close()
        if isinstance(exc, TransportError):
            raise
        raise TransportError(f"proxy {phost}:{pport}: {exc.strerror or exc}") from None
    sock.setblocking(True)  # asyncssh takes it over
    return sock


def ws_ssl_context(ca_file: str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if ca_file:
        ctx.load_verify_locations(cafile=ca_file)
    return ctx


async def _ws_to_sock(ws: aiohttp.ClientWebSocketResponse, sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    try:
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.BINARY:
                await loop.sock_sendall(sock, msg.data)
            elif msg.type in (aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSE):
                break
    finally:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)


async def _sock_to_ws(sock: socket.socket, ws: aiohttp.ClientWebSocketResponse) -> None:
    loop = asyncio.get_running_loop()
    try:
        while data := await loop.sock_recv(sock, _PUMP_CHUNK):
            await ws.send_bytes(data)
    except (OSError, aiohttp.ClientError, ConnectionError):
        pass
    finally:
        await ws.close()


async def connect_websocket(config: AgentConfig) -> RelayLink:
    url = config.relay.address
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "wss" else 80)
    timeout = aiohttp.ClientTimeout(total=None, connect=config.connect_timeout_s)
    session = aiohttp.ClientSession(timeout=timeout)
    try:
        ws = await session.ws_connect(
            url,
            proxy=config.proxy,
            ssl=ws_ssl_context(config.relay.ca_file) if parts.scheme == "wss" else False,
            max_msg_size=0,
            autoping=True,
            compress=0,
        )
    except aiohttp.WSServerHandshakeError as exc:
        await session.close()
        raise TransportError(f"relay refused the WebSocket upgrade: HTTP {exc.status}") from None
    except (aiohttp.ClientError, OSError, TimeoutError, ssl.SSLError) as exc:
        await session.close()
        raise TransportError(f"cannot open {url}: {type(exc).__name__}: {exc}") from None
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    loop = asyncio.get_running_loop()

    async def pump() -> None:
        try:
            await asyncio.gather(_ws_to_sock(ws, ours), _sock_to_ws(ours, ws))
        finally:
            ours.close()

    link = RelayLink(host, port, sock=theirs)
    link._tasks.append(loop.create_task(pump()))
    link._closers.append(session)
    return link


async def open_link(config: AgentConfig) -> RelayLink:
    """Reach the relay the configured way; raises TransportError or OSError."""
    address = config.relay.address
    if address.startswith(("ws://", "wss://")):
        return await connect_websocket(config)
    host, port = parse_host_port(address, default_port=2222)
    if config.proxy:
        sock = await connect_via_proxy(config.proxy, host, port, config.connect_timeout_s)
        return RelayLink(host, port, sock=sock)
    return RelayLink(host, port)
