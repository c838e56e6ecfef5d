"""No log line and no exception message carries a token, code, client secret or PKCE
verifier: the whole flow, refreshes and every failure path run with distinctive
values, logs captured (JSON, debug level) through ``shared.logging``.

The values are shaped so the redaction processor cannot recognise them (no
``token=``, no ``Bearer``): a leak would have to be prevented at the source.
"""

from __future__ import annotations

import dataclasses
import io
import json
import time
from collections.abc import Awaitable, Iterator

import aiohttp
import pytest
from aiohttp import web
from oauth_authlib_server import AuthServer, Scripted
from yarl import URL

from relay.models.iclient import IClientIn
from relay.oauth.client import TokenClient
from relay.oauth.errors import OAuthError
from relay.oauth.flow import (
    AuthorizationFlow,
    InMemoryStateStore,
    PendingAuthorization,
    ResolvedClient,
)
from relay.oauth.refresh import InMemoryTokenStore, OAuthTarget, TokenManager
from relay.oauth.signals import StateChange, WebhookConfig, WebhookSender
from relay.oauth.tokens import TokenSet, apply_token
from relay.routing.outgoing import OutgoingRequest

SECRET = "ZZSECRETqv7Kp2"
CLIENT_ID = "zz-client"
PROVIDER_LOGGERS = ("werkzeug", "authlib")


@pytest.fixture
def server() -> Iterator[AuthServer]:
    srv = AuthServer(token_prefix="ZZACCESS", refresh_prefix="ZZREFRESH", code_prefix="ZZCODE")
    with srv.running():
        yield srv


async def test_no_secret_in_logs_or_messages(server: AuthServer, log_capture: io.StringIO) -> None:
    errors: list[str] = []
    async with aiohttp.ClientSession() as http:
        # A real callback endpoint, so the access log sees the code in its URL.
        async def callback(request: web.Request) -> web.Response:
            try:
                pending, tokens = await flow.complete(str(request.url), resolve)
            except OAuthError as exc:
                errors.append(str(exc))
                return web.Response(status=400, text=str(exc))
            await manager.save_authorized(pending.connection_id, tokens)
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_get("/oauth2/callback", callback)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        redirect_uri = f"http://127.0.0.1:{runner.addresses[0][1]}/oauth2/callback"
        server.add_client(CLIENT_ID, SECRET, [redirect_uri])
        iclient = IClientIn.model_validate(
            {
                "name": "leaky?",
                "client_id": CLIENT_ID,
                "client_secret": SECRET,
                "authorization_url": f"{server.base_url}/authorize",
                "token_url": f"{server.base_url}/token",
                "revoke_url": f"{server.base_url}/revoke",
                "client_auth": "basic",
                "valid_domains": ["127.0.0.1"],
            }
        )
        client = TokenClient(http)
        flow = AuthorizationFlow(InMemoryStateStore(), client)
        manager = TokenManager(InMemoryTokenStore(), client)
        target = OAuthTarget("con_leak", iclient)

        async def resolve(pending: PendingAuthorization) -> ResolvedClient:
            return ResolvedClient(iclient)

        async def attempt(coro: Awaitable[object]) -> None:
            try:
                await coro
            except OAuthError as exc:
                errors.append(str(exc))
                errors.append(repr(exc))

        try:
            # The flow, through the callback endpoint; then a replay of the callback.
            url = await flow.begin(
                iclient,
                account_id="acc_1",
                connection_id="con_leak",
                iclient_id="icl_1",
                redirect_uri=redirect_uri,
                scope=["read"],
            )
            async with http.get(url) as resp:
                assert resp.status == 200
                callback_url = str(resp.url)
            async with http.get(callback_url) as resp:
                assert resp.status == 400
            stored = await manager.store.load("con_leak")
            assert stored.tokens is not None
            first = stored.tokens

            # Refresh (rotating), a 401-driven refresh, a token put on a request.
            await manager.store.store(
                "con_leak", dataclasses.replace(first, expires_at=0), stored.version
            )
            refreshed = await manager.access_token(target)
            await manager.refresh_after_auth_error(target, refreshed.version)
            out = OutgoingRequest("GET", URL(f"{server.base_url}/api/me"), "json")
            current = await manager.access_token(target)
            assert current.tokens is not None
            apply_token(out, current.tokens, iclient)
            await attempt(_apply_elsewhere(current.tokens, iclient))

            # Failures whose provider text echoes what we sent.
            now = await manager.store.load("con_leak")
            assert now.tokens is not None
            echo = json.dumps(
                {
                    "error": "invalid_grant",
                    "error_description": (
                        f"refresh {now.tokens.refresh_token} for {CLIENT_ID}:{SECRET} is revoked"
                    ),
                }
            )
            server.script(Scripted(400, echo))
            await manager.store.store(
                "con_leak", dataclasses.replace(now.tokens, expires_at=0), now.version
            )
            await attempt(manager.access_token(target))
            server.script(
                Scripted(401, json.dumps({"error": "invalid_client", "error_description": SECRET})),
                Scripted(503, f"<html>{SECRET}</html>", "text/html"),
                Scripted(200, f"<html>{SECRET}</html>", "text/html"),
            )
            cc = iclient.model_copy(update={"grant_type": "client_credentials"})
            for _ in range(3):
                await attempt(client.client_credentials(cc))
            wrong = iclient.model_copy(update={"client_secret": SECRET + "-wrong"})
            await attempt(client.client_credentials(wrong))
            await attempt(
                client.exchange_code(
                    iclient, code="ZZCODEbogus", redirect_uri=redirect_uri, code_verifier="V" * 43
                )
            )

            # Revocation, and a webhook to nowhere.
            fresh = await _authorize_again(http, flow, iclient, redirect_uri)
            await manager.save_authorized("con_leak", fresh)
            await manager.revoke(target)
            sender = WebhookSender(http, WebhookConfig(attempts=1))
            await sender.deliver(
                f"{server.base_url}/nowhere?key={SECRET}",
                SECRET,
                StateChange("acc_1", "con_leak", "offline", "online"),
            )
        finally:
            await runner.cleanup()

    with server.lock:
        secrets_seen = {SECRET}
        secrets_seen.update(t.access_token for t in server.tokens)
        secrets_seen.update(t.refresh_token for t in server.tokens if t.refresh_token)
        secrets_seen.update(server.codes_issued)
        secrets_seen.update(
            r["form"]["code_verifier"]
            for r in server.token_requests
            if "code_verifier" in r.get("form", {})
        )
    assert len(secrets_seen) >= 8
    # The authorization server's own loggers (werkzeug, authlib's server classes) are
    # the provider's, not the relay's: they are left out.
    lines = [json.loads(line) for line in log_capture.getvalue().splitlines()]
    ours = [line for line in lines if not line.get("logger", "").startswith(PROVIDER_LOGGERS)]
    logs = "\n".join(json.dumps(line) for line in ours)
    assert "oauth_token_refreshed" in logs and "oauth_refresh_failed" in logs
    assert "/oauth2/callback" in logs  # the access log line is there, redacted
    for value in secrets_seen:
        assert value not in logs, f"{value[:10]}... leaked into the logs"
        for message in errors:
            assert value not in message, f"{value[:10]}... leaked into {message!r}"
    assert len(errors) >= 8


async def _apply_elsewhere(tokens: TokenSet, iclient: IClientIn) -> None:
    out = OutgoingRequest("GET", URL("https://elsewhere.example.com/"), "json")
    apply_token(out, tokens, iclient)


async def _authorize_again(
    http: aiohttp.ClientSession, flow: AuthorizationFlow, iclient: IClientIn, redirect_uri: str
) -> TokenSet:
    url = await flow.begin(
        iclient,
        account_id="acc_1",
        connection_id="con_leak",
        iclient_id="icl_1",
        redirect_uri=redirect_uri,
        scope=None,
    )
    async with http.get(url, allow_redirects=False) as resp:
        location = resp.headers["Location"]

    async def resolve(pending: PendingAuthorization) -> ResolvedClient:
        return ResolvedClient(iclient)

    _, tokens = await flow.complete(location, resolve)
    assert tokens.expires_at > time.time()
    return tokens
