"""The aiohttp application: health, readiness and metrics endpoints."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from relay.hub import AgentHub
from relay.registry import Registry

HUB = web.AppKey("hub", AgentHub)
REGISTRY = web.AppKey("registry", Registry)
SSH_READY = web.AppKey("ssh_ready", dict)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    checks: dict[str, str] = {}
    try:
        await request.app[REGISTRY].ping()
        checks["database"] = "ok"
    except Exception as exc:  # report, never raise: this is a probe
        checks["database"] = f"error: {type(exc).__name__}"
    checks["ssh"] = "ok" if request.app[SSH_READY].get("listening") else "not listening"
    ok = all(v == "ok" for v in checks.values())
    return web.json_response(
        {"status": "ok" if ok else "unavailable", "checks": checks}, status=200 if ok else 503
    )


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[HUB].metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def make_app(hub: AgentHub, registry: Registry, ssh_ready: dict[str, bool]) -> web.Application:
    app = web.Application()
    app[HUB] = hub
    app[REGISTRY] = registry
    app[SSH_READY] = ssh_ready
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app
