"""The agent's optional local HTTP endpoint (``health_listen``): ``/healthz`` answers
200 while at least one session to the relay is up, 503 otherwise; ``/metrics``."""

from __future__ import annotations

from typing import Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from shared.net import parse_host_port
from shared.version import __version__


class _Status(Protocol):
    connected: int
    reconnects: int


STATUS = web.AppKey("status", _Status)
METRICS = web.AppKey("metrics", CollectorRegistry)


async def healthz(request: web.Request) -> web.Response:
    status = request.app[STATUS]
    up = status.connected > 0
    return web.json_response(
        {
            "status": "connected" if up else "disconnected",
            "sessions": status.connected,
            "reconnects": status.reconnects,
            "version": __version__,
        },
        status=200 if up else 503,
    )


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def start_health(listen: str, status: _Status, registry: CollectorRegistry) -> web.AppRunner:
    app = web.Application()
    app[STATUS] = status
    app[METRICS] = registry
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host, port = parse_host_port(listen)
    await web.TCPSite(runner, host, port).start()
    return runner
