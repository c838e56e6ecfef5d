"""Loopback TCP listeners that pipe each connection through an agent (benchmarks and
end-to-end tests: ``local_forwards`` in relay.yaml, off by default)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from relay.errors import StreamError
from relay.hub import AgentHub
from shared.net import parse_host_port
from shared.splice import Pipe, link

log = structlog.get_logger("relay.localfwd")


def _remote_side(agent_id: str) -> Callable[[], Pipe]:
    class _RemoteSide(Pipe):
        """The stream's end; says why when the agent refused a stream that was handed
        over early (see ``AgentHub.open_connection``)."""

        def connection_lost(self, exc: Exception | None) -> None:
            if isinstance(exc, StreamError):
                log.info("local_forward_failed", agent_id=agent_id, error=exc.code)
            super().connection_lost(exc)

    return _RemoteSide


class _LocalSide(Pipe):
    def __init__(
        self,
        hub: AgentHub,
        agent_id: str,
        host: str,
        port: int,
        remote_factory: Callable[[], Pipe] = Pipe,
    ) -> None:
        super().__init__()
        self._hub, self._agent_id, self._host, self._port = hub, agent_id, host, port
        self._task: asyncio.Task[None] | None = None
        self._remote_factory = remote_factory

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._task = asyncio.get_running_loop().create_task(self._open())

    async def _open(self) -> None:
        assert self.transport is not None
        try:
            _, remote = await self._hub.open_connection(
                self._agent_id,
                self._host,
                self._port,
                self._remote_factory,
                origin="local-forward",
                early_data=self.take_early,
            )
        except StreamError as exc:
            log.info("local_forward_failed", agent_id=self._agent_id, error=exc.code)
            self.transport.close()
            return
        if self.transport.is_closing():
            assert remote.transport is not None
            remote.transport.close()
            return
        link(self, remote)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
        super().connection_lost(exc)


async def start_local_forward(
    hub: AgentHub, listen: str, agent_id: str, target: str
) -> asyncio.Server:
    lhost, lport = parse_host_port(listen)
    thost, tport = parse_host_port(target)
    loop = asyncio.get_running_loop()
    remote_factory = _remote_side(agent_id)
    return await loop.create_server(
        lambda: _LocalSide(hub, agent_id, thost, tport, remote_factory),
        lhost,
        lport,
        backlog=1024,
    )
