"""Keep-alive pooling: one aiohttp session (and so one connection pool) per connection
and transport configuration, reused by every request of that connection, closed when
the configuration changes, when unused for a while, and on shutdown. Also the
per-connection concurrency budget and request pacing."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

from relay.models.connection import ConnectionIn


def transport_fingerprint(spec: ConnectionIn) -> str:
    """What a pooled session depends on; any change means a new session. (Hashes TLS
    material in memory only; nothing is stored.)"""
    http = spec.http
    parts = {
        "mode": spec.mode,
        "agent_id": spec.agent_id,
        "disable_strict_ssl": http.disable_strict_ssl,
        "ca_pem": http.ca_pem,
        "client_certificate": (
            http.client_certificate.model_dump() if http.client_certificate else None
        ),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


@dataclass(eq=False)
class Lease:
    """A session in use; ``release()`` once (idempotent)."""

    session: aiohttp.ClientSession
    _entry: _Entry | None
    _pool: SessionPool
    _released: bool = False

    async def release(self) -> None:
        if self._released:
            return
        self._released = True
        await self._pool._release(self)


@dataclass(eq=False)
class _Entry:
    fingerprint: str
    session: aiohttp.ClientSession
    # The settings object last seen with this fingerprint: the registry hands out
    # the same object until the connection changes, so an identical object needs no
    # new fingerprint (a JSON dump and a SHA-256 per request otherwise).
    spec: ConnectionIn | None = None
    users: int = 0
    last_used: float = field(default_factory=time.monotonic)
    retired: bool = False


SessionFactory = Callable[[ConnectionIn], aiohttp.ClientSession]


class SessionPool:
    def __init__(self, factory: SessionFactory, *, idle_s: float) -> None:
        self._factory = factory
        self._idle_s = idle_s
        self._entries: dict[str, _Entry] = {}
        self._retired: list[_Entry] = []
        self._closed = False
        # Sweeping walks every entry: do it at most this often, not per request.
        self._sweep_every = min(1.0, idle_s / 10)
        self._next_sweep = 0.0

    def __len__(self) -> int:
        return len(self._entries)

    async def acquire(self, connection_id: str | None, spec: ConnectionIn) -> Lease:
        """A pooled session for a saved connection; a private one (closed on release)
        for an unsaved one (``connection_id`` None)."""
        if self._closed:
            raise RuntimeError("the executor is closed")
        if time.monotonic() >= self._next_sweep:
            await self.sweep()
        if connection_id is None:
            return Lease(self._factory(spec), None, self)
        entry = self._entries.get(connection_id)
        if entry is None or entry.spec is not spec:
            fp = transport_fingerprint(spec)
            if entry is None or entry.fingerprint != fp:
                if entry is not None:
                    entry.retired = True
                    self._retired.append(entry)
                entry = _Entry(fp, self._factory(spec))
                self._entries[connection_id] = entry
            entry.spec = spec
        entry.users += 1
        entry.last_used = time.monotonic()
        return Lease(entry.session, entry, self)

    async def _release(self, lease: Lease) -> None:
        entry = lease._entry
        if entry is None:
            await lease.session.close()
            return
        entry.users -= 1
        entry.last_used = time.monotonic()
        if entry.retired and entry.users == 0:
            self._retired.remove(entry)
            await entry.session.close()

    async def sweep(self) -> None:
        """Close the sessions of connections unused for ``idle_s``."""
        now = time.monotonic()
        self._next_sweep = now + self._sweep_every
        stale = [
            (cid, e)
            for cid, e in self._entries.items()
            if e.users == 0 and now - e.last_used > self._idle_s
        ]
        for cid, e in stale:
            del self._entries[cid]
            await e.session.close()

    async def forget(self, connection_id: str) -> None:
        """The connection was deleted or changed: close its session once idle."""
        entry = self._entries.pop(connection_id, None)
        if entry is None:
            return
        if entry.users == 0:
            await entry.session.close()
        else:
            entry.retired = True
            self._retired.append(entry)

    async def close(self) -> None:
        self._closed = True
        entries = [*self._entries.values(), *self._retired]
        self._entries.clear()
        self._retired.clear()
        await asyncio.gather(*(e.session.close() for e in entries), return_exceptions=True)


class Budgets:
    """Concurrency budgets (one semaphore per budget owner: the connection, or the one
    it borrows from) and pacing (``wait_between_requests_ms``)."""

    def __init__(self) -> None:
        self._semaphores: dict[str, tuple[int, asyncio.Semaphore]] = {}
        self._next_start: dict[str, float] = {}

    def semaphore(self, owner: str, limit: int | None) -> asyncio.Semaphore | None:
        if limit is None:
            return None
        held = self._semaphores.get(owner)
        if held is None or held[0] != limit:
            # A changed limit gets a fresh budget; requests holding the old one finish.
            held = (limit, asyncio.Semaphore(limit))
            self._semaphores[owner] = held
        return held[1]

    def pacing_delay(self, owner: str, wait_s: float, now: float) -> float:
        """Reserve the next start slot: how long to wait before starting."""
        if wait_s <= 0:
            return 0.0
        start = max(now, self._next_start.get(owner, now))
        self._next_start[owner] = start + wait_s
        return start - now
