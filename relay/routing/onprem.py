"""An aiohttp connector whose connections are AgentHub streams: ``mode: onpremise``.

aiohttp keeps doing what it is good at (HTTP/1.1, keep-alive pooling, timeouts); only
"open a TCP connection" changes: the host name is not resolved on the relay (on-prem
names mean something only inside the customer's network; the agent resolves them and
its allowlist decides), and the connection is a stream through the agent. For https,
TLS runs end to end inside the stream (``loop.start_tls`` over the ``ChannelTransport``):
the agent splices ciphertext.

This overrides two private ``TCPConnector`` methods (``_resolve_host``,
``_wrap_create_connection``), checked against aiohttp 3.14; the routing tests pin
their signatures so an aiohttp upgrade that changes them fails loudly.
"""

from __future__ import annotations

import asyncio
import contextvars
import socket
import ssl
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp.abc import ResolveResult
from aiohttp.client_proto import ResponseHandler

from relay.errors import StreamError
from relay.hub import AgentHub

if TYPE_CHECKING:
    from aiohttp.client_reqrep import ClientRequest
    from aiohttp.tracing import Trace

# "con_.../req_..." for the channel's originator field (the agent's audit log). The
# connector is shared by every request of a connection, so the request id travels in
# a context variable set by the executor around each request: aiohttp opens
# connections inside the requesting task, which sees it.
stream_origin: contextvars.ContextVar[str] = contextvars.ContextVar(
    "onprem_stream_origin", default=""
)


class _Unused(asyncio.Protocol):
    """Holds the raw stream between its opening and ``start_tls`` taking it over (the
    server does not speak before the client's TLS hello)."""


class OnPremConnector(aiohttp.TCPConnector):
    def __init__(
        self,
        *,
        hub: AgentHub,
        agent_id: str,
        ssl_context: ssl.SSLContext,
        keepalive_timeout: float,
        open_timeout: float | None = None,
        tls_handshake_timeout: float = 30.0,
    ) -> None:
        super().__init__(
            ssl=ssl_context,
            use_dns_cache=False,
            limit=0,
            limit_per_host=0,
            keepalive_timeout=keepalive_timeout,
        )
        self._hub = hub
        self._agent_id = agent_id
        self._open_timeout = open_timeout
        self._tls_handshake_timeout = tls_handshake_timeout

    async def _resolve_host(
        self, host: str, port: int, traces: Sequence[Trace] | None = None
    ) -> list[ResolveResult]:
        # No lookup here: the agent resolves. aiohttp only needs one entry to go on.
        return [
            {
                "hostname": host,
                "host": host,
                "port": port,
                "family": socket.AF_INET,
                "proto": 0,
                "flags": 0,
            }
        ]

    async def _wrap_create_connection(
        self,
        *args: Any,
        addr_infos: Any,
        req: ClientRequest,
        timeout: aiohttp.ClientTimeout,
        client_error: type[Exception] = aiohttp.ClientConnectorError,
        **kwargs: Any,
    ) -> tuple[asyncio.Transport, ResponseHandler]:
        factory = args[0]
        sslcontext: ssl.SSLContext | None = kwargs.get("ssl") or None
        server_hostname: str | None = kwargs.get("server_hostname")
        host = req.url.raw_host or ""
        port = req.port or (443 if sslcontext else 80)
        open_timeout = timeout.sock_connect or timeout.connect or self._open_timeout
        origin = stream_origin.get()
        loop = asyncio.get_running_loop()
        try:
            if sslcontext is None:
                transport, proto = await self._hub.open_connection(
                    self._agent_id, host, port, factory, origin=origin, timeout=open_timeout
                )
                return transport, proto
            raw, _ = await self._hub.open_connection(
                self._agent_id, host, port, _Unused, origin=origin, timeout=open_timeout
            )
            proto = factory()
            try:
                tls = await loop.start_tls(
                    raw,
                    proto,
                    sslcontext,
                    server_hostname=server_hostname or host,
                    ssl_handshake_timeout=timeout.sock_connect or self._tls_handshake_timeout,
                )
            except BaseException:
                raw.close()
                raise
            if tls is None:
                raise client_error(req.connection_key, OSError("the stream closed during TLS"))
            proto.connection_made(tls)
            return tls, proto
        except StreamError as exc:
            raise client_error(req.connection_key, exc) from exc
        except ssl.CertificateError as exc:
            raise aiohttp.ClientConnectorCertificateError(req.connection_key, exc) from exc
        except ssl.SSLError as exc:
            raise aiohttp.ClientConnectorSSLError(req.connection_key, exc) from exc
        except OSError as exc:
            if exc.errno is None and isinstance(exc, TimeoutError):
                raise
            raise client_error(req.connection_key, exc) from exc
