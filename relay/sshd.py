"""The relay's SSH endpoint: where agents authenticate and hold their dynamic forward.

Only what the tunnel needs is allowed: password auth (username = agent id, password =
access token), one ``tcpip-forward`` with port 0 per connection, answered with a
virtual listener that binds nothing. Sessions, exec, subsystems, direct-tcpip, agent
and X11 forwarding and ptys are refused by asyncssh's defaults, which we keep.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import socket
import time
from collections.abc import Coroutine
from typing import Any

import asyncssh
import structlog

from relay.errors import ConflictError
from relay.hub import AgentHub, AgentSession
from relay.registry import Registry, SessionInfo
from shared.splice import coalesce_writes
from shared.version import is_outdated

log = structlog.get_logger("relay.sshd")

# AES-GCM first: measured 430-700 MiB/s against 300-380 for chacha20 (field notes).
ENCRYPTION_ALGS = [
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes128-ctr",
    "aes256-ctr",
]
_THROTTLE_WINDOW_S = 60.0
_THROTTLE_MAX_SOURCES = 100_000
_MAX_AUTH_TRIES = 3  # per connection
_VIRTUAL_PORTS = itertools.count(10000)


class AuthThrottle:
    """Counts failed logins per source address over a sliding minute."""

    def __init__(self, max_failures: int, window: float = _THROTTLE_WINDOW_S) -> None:
        self.max_failures = max_failures
        self.window = window
        self._failures: collections.OrderedDict[str, collections.deque[float]] = (
            collections.OrderedDict()
        )

    def _recent(self, source: str, now: float) -> collections.deque[float] | None:
        times = self._failures.get(source)
        if times is None:
            return None
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[source]
            return None
        return times

    def blocked(self, source: str, now: float | None = None) -> bool:
        times = self._recent(source, time.monotonic() if now is None else now)
        return times is not None and len(times) >= self.max_failures

    def failed(self, source: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        times = self._recent(source, now)
        if times is None:
            times = self._failures[source] = collections.deque()
        times.append(now)
        self._failures.move_to_end(source)
        while len(self._failures) > _THROTTLE_MAX_SOURCES:
            self._failures.popitem(last=False)


class VirtualListener(asyncssh.SSHListener):
    """What ``tcpip-forward`` with port 0 gets: a port number and no socket."""

    def __init__(self, port: int) -> None:
        super().__init__()
        self._port = port
        self._closed = asyncio.Event()

    def get_port(self) -> int:
        return self._port

    def close(self) -> None:
        self._closed.set()

    async def wait_closed(self) -> None:
        await self._closed.wait()


def parse_client_version(banner: str) -> tuple[str, str]:
    """``SSH-2.0-onprem-agent_0.1.0 host=web1`` -> ("onprem-agent_0.1.0", "web1")."""
    text = banner.removeprefix("SSH-2.0-")
    software, _, comments = text.partition(" ")
    hostname = ""
    for word in comments.split():
        if word.startswith("host="):
            hostname = word[5:][:253]
    return software[:100], hostname


class _AgentConnection(asyncssh.SSHServer):
    def __init__(self, endpoint: SSHEndpoint, source: str | None = None) -> None:
        self._ep = endpoint
        self._conn: asyncssh.SSHServerConnection | None = None
        self._source = source or "?"
        self._fixed_source = source is not None
        self._agent_id: str | None = None
        self._token_hash: str | None = None
        self._session: AgentSession | None = None
        self._failures = 0

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        coalesce_writes(conn)
        if not self._fixed_source:
            peer = conn.get_extra_info("peername")
            self._source = str(peer[0]) if peer else "?"

    def begin_auth(self, username: str) -> bool:
        if self._ep.throttle.blocked(self._source):
            log.warning("auth_throttled", source=self._source)
            assert self._conn is not None
            # Not NO_MORE_AUTH_METHODS: the client would read that as "token
            # rejected" and our agent would exit instead of backing off.
            self._conn.disconnect(
                asyncssh.DISC_TOO_MANY_CONNECTIONS,
                "too many failed authentications from this address; retry later",
            )
        return True

    def password_auth_supported(self) -> bool:
        return True

    def kbdint_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return False

    def host_based_auth_supported(self) -> bool:
        return False

    def gss_host_based_auth_supported(self) -> bool:
        return False

    async def validate_password(self, username: str, password: str) -> bool:
        token_hash = await self._ep.token_checks.verify(username, password)
        if token_hash is None:
            self._ep.throttle.failed(self._source)
            self._ep.hub.metrics.auth_failures.inc()
            log.warning("auth_failed", agent_id=username[:40], source=self._source)
            self._failures += 1
            if self._failures >= _MAX_AUTH_TRIES and self._conn is not None:
                self._conn.disconnect(
                    asyncssh.DISC_NO_MORE_AUTH_METHODS_AVAILABLE, "too many failed attempts"
                )
            return False
        self._agent_id, self._token_hash = username, token_hash
        return True

    def server_requested(self, listen_host: str, listen_port: int) -> Any:
        conn, agent_id = self._conn, self._agent_id
        if conn is None or agent_id is None or self._token_hash is None:
            return False
        if self._session is not None or listen_port != 0:
            log.warning(
                "forward_refused",
                agent_id=agent_id,
                reason="only one dynamic forward (port 0) per connection",
            )
            return False
        if len(self._ep.hub.sessions(agent_id)) >= self._ep.max_sessions_per_agent:
            log.warning("session_limit", agent_id=agent_id, source=self._source)
            conn.disconnect(asyncssh.DISC_TOO_MANY_CONNECTIONS, "too many sessions for this agent")
            return False
        software, hostname = parse_client_version(conn.get_extra_info("client_version") or "")
        peer = conn.get_extra_info("peername") if not self._fixed_source else None
        session = AgentSession(
            agent_id=agent_id,
            conn=conn,
            listen_host=listen_host,
            listen_port=next(_VIRTUAL_PORTS) % 55535 + 10000,
            token_hash=self._token_hash,
            remote_addr=f"{peer[0]}:{peer[1]}" if peer else self._source,
            client_version=software,
            hostname=hostname,
        )
        self._session = session
        self._ep.hub.add_session(session)
        log.info(
            "session_up",
            agent_id=agent_id,
            session_id=session.id,
            remote=session.remote_addr,
            version=software,
            hostname=hostname,
        )
        if is_outdated(software, self._ep.min_agent_version):
            log.warning(
                "agent_outdated",
                agent_id=agent_id,
                version=software,
                minimum=self._ep.min_agent_version,
            )
        self._ep.presence.opened(self._ep.session_info(session))
        return VirtualListener(session.listen_port)

    def connection_lost(self, exc: Exception | None) -> None:
        session, self._session = self._session, None
        if session is not None and self._ep.hub.remove_session(session):
            log.info(
                "session_down",
                agent_id=session.agent_id,
                session_id=session.id,
                reason=str(exc) if exc else "closed",
            )
            if not self._ep.closing:
                # While stopping, clear_node_sessions forgets them all in one statement.
                self._ep.presence.closed(session.id)


class _TokenChecks:
    """Password checks of concurrent logins in one registry query: after a relay
    restart thousands of agents log in at once, and a query each costs the event
    loop more than the key exchange. A batch goes out when the loop gets to it; the
    next one takes every login that queued meanwhile."""

    def __init__(self, registry: Registry, max_batch: int = 1000) -> None:
        self._registry = registry
        self._max = max_batch
        self._queue: list[tuple[str, str, asyncio.Future[str | None]]] = []
        self._task: asyncio.Task[None] | None = None

    async def verify(self, agent_id: str, token: str) -> str | None:
        """What ``Registry.verify_agent_token`` answers."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[str | None] = loop.create_future()
        self._queue.append((agent_id, token, future))
        if self._task is None:
            self._task = loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._queue:
                await asyncio.sleep(0)  # logins handled in this loop iteration join
                batch, self._queue = self._queue[: self._max], self._queue[self._max :]
                try:
                    results = await self._registry.verify_agent_tokens(
                        [(agent_id, token) for agent_id, token, _ in batch]
                    )
                except Exception as exc:
                    for _, _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, _, future), result in zip(batch, results, strict=True):
                    if not future.done():  # the login may have been given up
                        future.set_result(result)
        finally:
            self._task = None


class _Presence:
    """Writes sessions opened and closed to the registry in batches, one transaction
    per batch, at most every ``delay`` seconds (``agents`` then shows a new session
    that much later)."""

    def __init__(self, endpoint: SSHEndpoint, delay: float = 0.05) -> None:
        self._ep = endpoint
        self._delay = delay
        self._opened: list[SessionInfo] = []
        self._closed: list[str] = []
        self._running = False

    def opened(self, info: SessionInfo) -> None:
        self._opened.append(info)
        self._kick()

    def closed(self, session_id: str) -> None:
        self._closed.append(session_id)
        self._kick()

    def _kick(self) -> None:
        if not self._running:
            self._running = True
            self._ep.spawn(self._drain())

    async def _write_opened(self, opened: list[SessionInfo]) -> None:
        registry = self._ep.registry
        try:
            gone = await registry.sessions_opened(opened)
        except ConflictError:
            # One of them is recorded already (nothing of the batch was): the others
            # one by one.
            for info in opened:
                try:
                    await registry.session_opened(info)
                except Exception as exc:
                    log.error("registry_write_failed", error=f"{type(exc).__name__}: {exc}")
            return
        except Exception as exc:
            log.error("registry_write_failed", error=f"{type(exc).__name__}: {exc}")
            return
        for session_id in gone:
            log.warning("session_not_recorded", session_id=session_id, reason="agent deleted")

    async def _drain(self) -> None:
        registry = self._ep.registry
        try:
            while self._opened or self._closed:
                await asyncio.sleep(self._delay)
                opened, self._opened = self._opened, []
                closed, self._closed = self._closed, []
                if opened:
                    await self._write_opened(opened)
                if closed:
                    try:
                        await registry.sessions_closed(closed)
                    except Exception as exc:
                        log.error("registry_write_failed", error=f"{type(exc).__name__}: {exc}")
        finally:
            self._running = False


class SSHEndpoint:
    """Runs the asyncssh server and the loops that keep sessions honest: token
    re-checks (rotation or deletion drops live sessions) and presence heartbeats."""

    def __init__(
        self,
        *,
        registry: Registry,
        hub: AgentHub,
        host_key: asyncssh.SSHKey,
        node_id: str,
        login_timeout: float = 20.0,
        keepalive_interval: float = 15.0,
        keepalive_count_max: int = 3,
        max_sessions_per_agent: int = 16,
        auth_failures_per_minute: int = 10,
        token_recheck_interval: float = 5.0,
        presence_interval: float = 15.0,
        min_agent_version: str | None = None,
    ) -> None:
        self.registry = registry
        self.hub = hub
        self.host_key = host_key
        self.node_id = node_id
        self.login_timeout = login_timeout
        self.keepalive_interval = keepalive_interval
        self.keepalive_count_max = keepalive_count_max
        self.max_sessions_per_agent = max_sessions_per_agent
        self.throttle = AuthThrottle(auth_failures_per_minute)
        self.token_recheck_interval = token_recheck_interval
        self.presence_interval = presence_interval
        self.min_agent_version = min_agent_version
        self._server: asyncssh.SSHAcceptor | None = None
        self.token_checks = _TokenChecks(registry)
        self.presence = _Presence(self)
        self._closing = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loops: list[asyncio.Task[None]] = []

    @property
    def closing(self) -> bool:
        return self._closing

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.error("registry_write_failed", error=f"{type(exc).__name__}: {exc}")

    def session_info(self, session: AgentSession) -> SessionInfo:
        return SessionInfo(
            id=session.id,
            agent_id=session.agent_id,
            node_id=self.node_id,
            remote_addr=session.remote_addr,
            client_version=session.client_version,
            hostname=session.hostname,
            connected_at=session.connected_at,
            last_seen=session.connected_at,
        )

    def _options(self) -> dict[str, Any]:
        return dict(
            server_host_keys=[self.host_key],
            server_version="onprem-relay",
            encryption_algs=ENCRYPTION_ALGS,
            compression_algs=None,
            login_timeout=self.login_timeout,
            keepalive_interval=self.keepalive_interval,
            keepalive_count_max=self.keepalive_count_max,
            agent_forwarding=False,
            allow_pty=False,
            x11_forwarding=False,
            allow_scp=False,
        )

    async def start(self, host: str, port: int) -> int:
        await self.registry.clear_node_sessions(self.node_id)
        self._server = await asyncssh.listen(
            host or None,
            port,
            server_factory=lambda: _AgentConnection(self),
            backlog=4096,
            reuse_address=True,
            **self._options(),
        )
        self._loops = [
            asyncio.create_task(self._recheck_tokens()),
            asyncio.create_task(self._presence()),
        ]
        bound = self._server.sockets[0].getsockname()[1]
        return int(bound)

    async def _recheck_tokens(self) -> None:
        while True:
            await asyncio.sleep(self.token_recheck_interval)
            sessions = self.hub.sessions()
            if not sessions:
                continue
            try:
                current = await self.registry.agent_token_hashes({s.agent_id for s in sessions})
            except Exception as exc:  # the DB may be briefly away; keep sessions
                log.warning("token_recheck_failed", error=type(exc).__name__)
                continue
            for session in sessions:
                if current.get(session.agent_id) != session.token_hash:
                    session.close("access token rotated or agent deleted")

    async def _presence(self) -> None:
        while True:
            await asyncio.sleep(self.presence_interval)
            ids = [s.id for s in self.hub.sessions()]
            if not ids:
                continue
            try:
                await self.registry.heartbeat(self.node_id, ids)
            except Exception as exc:
                log.warning("presence_failed", error=type(exc).__name__)

    async def accept_socket(self, sock: socket.socket, source: str) -> None:
        """Run the SSH server on an already-connected socket (the WebSocket transport
        hands us one end of a socketpair); ``source`` is the real client address."""
        if self._closing:
            sock.close()
            return
        await asyncssh.run_server(
            sock, server_factory=lambda: _AgentConnection(self, source=source), **self._options()
        )

    def stop_accepting(self) -> None:
        self._closing = True
        if self._server is not None:
            self._server.close()

    async def close(self) -> None:
        self.stop_accepting()
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5)
        await self.registry.clear_node_sessions(self.node_id)
