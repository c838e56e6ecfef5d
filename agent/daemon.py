"""The agent daemon: ``connections`` SSH sessions to the relay, each holding one
dynamic reverse forward (``ssh -R 0``), reconnecting forever with capped, jittered
backoff. Stops only on SIGTERM (draining in-flight streams) or a fatal answer from the
relay: token rejected, host key mismatch."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import asyncssh
import structlog
from aiohttp import web

from agent.allowlist import Allowlist
from agent.audit import AuditLog
from agent.backoff import Backoff
from agent.config import AgentConfig
from agent.errors import AuthRejectedError, FatalError, HostKeyMismatchError
from agent.health import start_health
from agent.metrics import AgentMetrics
from agent.transport import RelayLink, open_link
from agent.tunnel import AgentStream, StreamStats
from shared.splice import coalesce_writes
from shared.version import __version__

log = structlog.get_logger("agent.daemon")

ENCRYPTION_ALGS = [
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes128-ctr",
    "aes256-ctr",
]


class _PinnedHostKey(asyncssh.SSHClient):
    """Accepts exactly the relay host key whose fingerprint is pinned in the config."""

    def __init__(self, fingerprint: str) -> None:
        self._fingerprint = fingerprint
        self.seen: str | None = None

    def connection_made(self, conn: asyncssh.SSHClientConnection) -> None:
        coalesce_writes(conn)

    def validate_host_public_key(self, host: str, addr: str, port: int, key: Any) -> bool:
        self.seen = key.get_fingerprint("sha256")
        return bool(self.seen == self._fingerprint)


def client_version() -> str:
    host = "".join(c for c in os.uname().nodename if c.isalnum() or c in "-._")[:60]
    return f"onprem-agent_{__version__} host={host or 'unknown'}"


async def connect(
    config: AgentConfig, token: str
) -> tuple[asyncssh.SSHClientConnection, RelayLink]:
    """One authenticated SSH connection to the relay, over the configured transport.
    Raises FatalError subclasses for a rejected token or a wrong host key;
    OSError (TransportError included) or asyncssh.Error otherwise. Close the link
    after the connection."""
    link = await open_link(config)
    client = _PinnedHostKey(config.relay.host_key)
    try:
        conn, _ = await asyncssh.create_connection(
            lambda: client,
            link.host,
            link.port,
            sock=link.sock,
            username=config.agent_id,
            password=token,
            known_hosts=([], [], []),  # nothing trusted up front: the callback decides
            client_keys=None,
            agent_path=None,
            preferred_auth=["password"],
            client_version=client_version(),
            encryption_algs=ENCRYPTION_ALGS,
            compression_algs=None,
            connect_timeout=config.connect_timeout_s,
            keepalive_interval=config.keepalive_interval_s,
            keepalive_count_max=config.keepalive_count_max,
            config=[],  # never read ~/.ssh/config: the agent is configured by agent.yaml
        )
    except asyncssh.PermissionDenied:
        await link.close()
        raise AuthRejectedError(
            f"the relay rejected the access token of agent {config.agent_id} "
            "(rotated or deleted? get a new one with 'onprem-relay agents rotate-token')"
        ) from None
    except asyncssh.HostKeyNotVerifiable:
        await link.close()
        raise HostKeyMismatchError(
            f"relay host key {client.seen or '(none)'} does not match the pinned "
            f"{config.relay.host_key}: refusing to talk (check relay.host_key)"
        ) from None
    except BaseException:
        await link.close()
        raise
    return conn, link


def _bound_port(runner: web.AppRunner) -> int | None:
    for site in runner.sites:
        server = getattr(site, "_server", None)
        if isinstance(server, asyncio.Server) and server.sockets:
            return int(server.sockets[0].getsockname()[1])
    return None


class Agent:
    def __init__(self, config: AgentConfig, token: str) -> None:
        self.config = config
        self._token = token
        self.allowlist = Allowlist.parse(config.allow)
        self.metrics = AgentMetrics()
        self.audit = AuditLog(config.audit_file) if config.audit_file else None
        self.stats = StreamStats(metrics=self.metrics, audit=self.audit)
        self.connected = 0
        self.reconnects = 0
        self.health_port: int | None = None
        self._conns: set[asyncssh.SSHClientConnection] = set()
        self._accepting = True
        self._stopping = asyncio.Event()
        self._up = asyncio.Condition()

    def _stream_factory(self, orig_host: str, orig_port: int) -> AgentStream:
        if self.stats.open >= self.config.max_streams:
            log.warning("stream_limit", max_streams=self.config.max_streams)
            accepting = False
        else:
            accepting = self._accepting
        return AgentStream(
            allowlist=self.allowlist,
            dial_timeout=self.config.dial_timeout_s,
            stats=self.stats,
            origin=orig_host[:200],
            accepting=accepting,
        )

    async def wait_connected(self, count: int = 1) -> None:
        async with self._up:
            await self._up.wait_for(lambda: self.connected >= count)

    async def _set_connected(self, delta: int) -> None:
        async with self._up:
            self.connected += delta
            self.metrics.connected.set(self.connected)
            self._up.notify_all()

    def _reconnecting(self) -> None:
        self.reconnects += 1
        self.metrics.reconnects_total.inc()

    async def _session(self, index: int) -> None:
        """Keep session ``index`` up until stopped; raise FatalError to stop the agent."""
        backoff = Backoff(self.config.backoff_initial_s, self.config.backoff_max_s)
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                conn, link = await connect(self.config, self._token)
            except FatalError:
                raise
            except (OSError, asyncssh.Error, TimeoutError) as exc:
                delay = backoff.next_delay()
                log.warning(
                    "relay_unreachable",
                    session=index,
                    error=f"{type(exc).__name__}: {exc}",
                    retry_in_s=round(delay, 2),
                )
                await self._sleep(delay)
                self._reconnecting()
                continue
            self._conns.add(conn)
            try:
                listener = await conn.create_server(self._stream_factory, "localhost", 0)
                await self._set_connected(1)
                try:
                    log.info("tunnel_up", session=index, virtual_port=listener.get_port())
                    await conn.wait_closed()
                finally:
                    await self._set_connected(-1)
                reason = "closed by relay"
            except (OSError, asyncssh.Error) as exc:
                reason = f"{type(exc).__name__}: {exc}"
            finally:
                self._conns.discard(conn)
                conn.close()
                await link.close()
            if self._stopping.is_set():
                return
            if time.monotonic() - started >= self.config.healthy_after_s:
                backoff.reset()
            delay = backoff.next_delay()
            log.warning("tunnel_down", session=index, reason=reason, retry_in_s=round(delay, 2))
            await self._sleep(delay)
            self._reconnecting()

    async def _sleep(self, delay: float) -> None:
        try:
            async with asyncio.timeout(delay):
                await self._stopping.wait()
        except TimeoutError:
            pass

    async def run(self) -> None:
        """Run every session until ``stop()``; a FatalError from any session stops all."""
        health = None
        if self.config.health_listen:
            health = await start_health(self.config.health_listen, self, self.metrics.registry)
            self.health_port = _bound_port(health)
        tasks = [
            asyncio.create_task(self._session(i), name=f"session-{i}")
            for i in range(self.config.connections)
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                exc = task.exception()
                if exc is not None:
                    raise exc
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for conn in list(self._conns):
                conn.close()
            if self.audit is not None:
                self.audit.close()
            if health is not None:
                await health.cleanup()

    async def stop(self) -> None:
        """Refuse new streams, let open ones finish within ``drain_timeout_s``, then
        close the sessions."""
        self._accepting = False
        try:
            async with asyncio.timeout(self.config.drain_timeout_s):
                await self.stats.idle.wait()
        except TimeoutError:
            log.warning("drain_timeout", streams_open=self.stats.open)
        self._stopping.set()
        for conn in list(self._conns):
            conn.close()
