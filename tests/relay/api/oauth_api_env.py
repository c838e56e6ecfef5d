"""The relay as ``onprem-relay serve`` wires it, in process, for the OAuth tests: the
real app, the real ``HttpExecutor`` with OAuth auth steps, and ``OAuthService`` on the
registry (SQLite or PostgreSQL), served on a socket bound to 127.0.0.1:0 before the app
is built (so ``http.public_url``, and with it the redirect URI, is known up front).

Also: a user's browser (an aiohttp session of its own, no API token) and a webhook
receiver that checks signatures itself, with HMAC code independent of the relay's.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from api_helpers import TIMEOUT, Api, Response

from relay.api.app import make_app
from relay.api.oauth import install_oauth
from relay.config import RelayConfig
from relay.hub import AgentHub
from relay.metrics import RelayMetrics
from relay.oauth.service import OAuthService
from relay.registry import Registry, SecretBox
from relay.routing.executor import HttpExecutor

__all__ = ["TIMEOUT", "Api", "OAuthEnv", "Receiver", "Response", "oauth_env", "receiver"]


@dataclass
class OAuthEnv:
    registry: Registry
    service: OAuthService
    executor: HttpExecutor
    metrics: RelayMetrics
    base: str  # == http.public_url
    a: Api  # account "acme"
    b: Api  # account "globex"
    account_a: str
    account_b: str
    db_path: Path | None
    session: aiohttp.ClientSession

    @property
    def callback_url(self) -> str:
        return self.service.callback_url

    async def begin(
        self, connection_id: str, *, api: Api | None = None, **params: str
    ) -> aiohttp.ClientResponse:
        """GET /authorize as the API caller would (no redirect followed)."""
        api = api or self.a
        async with self.session.get(
            f"{self.base}/v1/connections/{connection_id}/authorize",
            headers=api.headers(),
            params=params or None,
            allow_redirects=False,
        ) as resp:
            await resp.read()
            return resp

    async def provider_redirect(self, connection_id: str, **params: str) -> str:
        """Start the flow and let the (consenting) authlib test server answer: the
        callback URL it sends the browser to, not yet opened."""
        start = await self.begin(connection_id, **params)
        assert start.status == 302, start.status
        async with (
            aiohttp.ClientSession() as browser,
            browser.get(start.headers["Location"], allow_redirects=False) as resp,
        ):
            assert resp.status == 302, await resp.text()
            location = resp.headers["Location"]
        assert location.startswith(self.callback_url + "?"), location
        return location

    async def open_in_browser(self, url: str, *, follow: bool = True) -> Response:
        async with (
            aiohttp.ClientSession() as browser,
            browser.get(url, allow_redirects=follow) as resp,
        ):
            return await Response.read(resp)

    async def authorize(self, connection_id: str) -> Response:
        """The whole consent round trip; the callback page."""
        return await self.open_in_browser(await self.provider_redirect(connection_id))


def _bound_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@asynccontextmanager
async def oauth_env(
    database_url: str,
    secret_box: SecretBox,
    *,
    deny_private_networks: bool = False,
    oauth: dict[str, Any] | None = None,
) -> AsyncIterator[OAuthEnv]:
    """Accounts "acme" (a) and "globex" (b); ``oauth``: ``oauth:`` config settings."""
    registry = await Registry.open(database_url, secrets=secret_box)
    await registry.upgrade()
    acc_a, token_a = await registry.create_account("acme")
    acc_b, token_b = await registry.create_account("globex")
    sock = _bound_socket()
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    config = RelayConfig.model_validate(
        {
            "http": {"listen": "127.0.0.1:0", "public_url": base},
            "cloud": {"deny_private_networks": deny_private_networks},
            "oauth": oauth or {},
            "node_id": "oauth-test",
        }
    )
    metrics = RelayMetrics()
    hub = AgentHub(metrics=metrics)
    service = OAuthService(registry, config=config, metrics=metrics)
    executor = HttpExecutor(
        hub=hub,
        registry=service.states,
        deny_private_networks=deny_private_networks,
        metrics=metrics,
        auth_steps=service.auth_steps(),
    )
    app = make_app(
        hub, registry, {"listening": True}, secrets=secret_box, config=config, executor=executor
    )
    install_oauth(app, service)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    try:
        async with aiohttp.ClientSession() as session:
            yield OAuthEnv(
                registry=registry,
                service=service,
                executor=executor,
                metrics=metrics,
                base=base,
                a=Api(session, base, token_a),
                b=Api(session, base, token_b),
                account_a=acc_a.id,
                account_b=acc_b.id,
                db_path=registry.sqlite_path,
                session=session,
            )
    finally:
        await runner.cleanup()
        await service.aclose()
        await registry.close()


# -- webhooks ---------------------------------------------------------------------------


@dataclass
class Receiver:
    """A webhook endpoint that accepts only correctly signed deliveries."""

    secret: str = ""
    url: str = ""
    events: list[dict[str, Any]] = field(default_factory=list)
    refused: int = 0
    arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    def check(self, body: bytes, header: str | None) -> bool:
        """``X-Onprem-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>``,
        within 5 minutes."""
        parts = dict(p.split("=", 1) for p in (header or "").split(",") if "=" in p)
        if "t" not in parts or "v1" not in parts or abs(time.time() - int(parts["t"])) > 300:
            return False
        mac = hmac.new(self.secret.encode(), parts["t"].encode() + b"." + body, hashlib.sha256)
        return hmac.compare_digest(mac.hexdigest(), parts["v1"])

    async def wait_for(self, count: int) -> list[dict[str, Any]]:
        """The first ``count`` events' ``data``, once they arrived (bounded wait)."""
        async with asyncio.timeout(TIMEOUT), self.arrived:
            await self.arrived.wait_for(lambda: len(self.events) >= count)
        return [e["data"] for e in self.events[:count]]


@asynccontextmanager
async def receiver(secret: str) -> AsyncIterator[Receiver]:
    rec = Receiver(secret=secret)

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        if not rec.check(body, request.headers.get("X-Onprem-Signature")):
            rec.refused += 1
            return web.Response(status=401)
        async with rec.arrived:
            rec.events.append(json.loads(body))
            rec.arrived.notify_all()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    rec.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    try:
        yield rec
    finally:
        await runner.cleanup()
