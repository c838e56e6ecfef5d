"""The "on-premise" HTTP service the end-to-end tests reach through the tunnel.

Used in-process (``start_target``) and as a subprocess inside a network namespace
(``python e2e_target.py --host 127.0.0.1``: prints one JSON line with the bound port on
stdout, serves until killed).

Endpoints:
- ``POST /echo``: reads the whole body, answers ``{"sha256": ..., "length": ...}``.
- ``GET /random?n=N``: N random bytes; their SHA-256 in the ``X-Body-SHA256`` header.
- ``GET /slow?chunks=C&size=S&interval=I``: a response streamed as C chunks of S bytes,
  one every I seconds (a long response "in flight" for the agent-killed test).
- ``GET /hello``: a tiny JSON answer.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import sys
from dataclasses import dataclass, field

from aiohttp import web

SHA_HEADER = "X-Body-SHA256"
MAX_BODY = 64 * 1024 * 1024


@dataclass
class TargetStats:
    requests: int = 0
    peers: list[str] = field(default_factory=list)
    slow_started: int = 0
    slow_aborted: int = 0


STATS = web.AppKey("stats", TargetStats)


async def _echo(request: web.Request) -> web.Response:
    _count(request)
    digest = hashlib.sha256()
    length = 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        digest.update(chunk)
        length += len(chunk)
    return web.json_response({"sha256": digest.hexdigest(), "length": length})


async def _random(request: web.Request) -> web.Response:
    _count(request)
    n = int(request.query.get("n", "0"))
    if not 0 <= n <= MAX_BODY:
        raise web.HTTPBadRequest(text="n out of range")
    body = os.urandom(n)
    return web.Response(
        body=body,
        content_type="application/octet-stream",
        headers={SHA_HEADER: hashlib.sha256(body).hexdigest()},
    )


async def _slow(request: web.Request) -> web.StreamResponse:
    stats = _count(request)
    chunks = int(request.query.get("chunks", "100"))
    size = int(request.query.get("size", "65536"))
    interval = float(request.query.get("interval", "0.1"))
    resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    resp.content_length = chunks * size
    await resp.prepare(request)
    stats.slow_started += 1
    try:
        for i in range(chunks):
            await resp.write(os.urandom(size))
            if i + 1 < chunks:
                # Pacing of the response, not synchronisation: the test waits on bytes.
                await asyncio.sleep(interval)
        await resp.write_eof()
    except (ConnectionError, asyncio.CancelledError):
        stats.slow_aborted += 1
        raise
    return resp


async def _hello(request: web.Request) -> web.Response:
    _count(request)
    return web.json_response({"hello": "from inside"})


def _count(request: web.Request) -> TargetStats:
    stats = request.app[STATS]
    stats.requests += 1
    peer = request.transport.get_extra_info("peername") if request.transport else None
    stats.peers.append(f"{peer[0]}:{peer[1]}" if peer else "?")
    return stats


def make_app() -> web.Application:
    app = web.Application(client_max_size=MAX_BODY)
    app[STATS] = TargetStats()
    app.router.add_post("/echo", _echo)
    app.router.add_get("/random", _random)
    app.router.add_get("/slow", _slow)
    app.router.add_get("/hello", _hello)
    return app


@dataclass
class Target:
    host: str
    port: int
    runner: web.AppRunner
    app: web.Application

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def stats(self) -> TargetStats:
        return self.app[STATS]

    async def close(self) -> None:
        await self.runner.cleanup()


async def start_target(host: str = "127.0.0.1", port: int = 0) -> Target:
    app = make_app()
    # A short shutdown timeout: a /slow handler still running at teardown must not
    # hold the test for aiohttp's default 60 s.
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    addresses = runner.addresses
    assert addresses, "the target is not listening"
    bound = addresses[0][1]
    return Target(host=host, port=int(bound), runner=runner, app=app)


async def _main(host: str, port: int) -> None:
    target = await start_target(host, port)
    sys.stdout.write(json.dumps({"event": "target_listening", "port": target.port}) + "\n")
    sys.stdout.flush()
    try:
        await asyncio.Event().wait()  # until killed
    finally:
        await target.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    ns = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(ns.host, ns.port))
