"""The whole authorization-code flow against an authorization server we did not write:
``oidc-provider-mock`` (PyPI; flask + authlib, run in a thread on port 0).

A browser is played by an aiohttp session: it opens the authorize URL, submits the
mock's consent form for user "alice", and follows the redirect to a real callback
endpoint on port 0 that checks the state and exchanges the code. Then: the token
works at the provider's userinfo endpoint, a refresh, and detection of the user
revoking the grant (the mock's ``/users/<sub>/revoke-tokens``; it has no RFC 7009
endpoint) through an auth error -> refresh -> ``invalid_grant`` -> needs_authorization.
"""

from __future__ import annotations

import dataclasses
import re
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from authlib.deprecate import AuthlibDeprecationWarning
from yarl import URL

from relay.models.connection import HttpAuth, OAuth2Auth
from relay.models.iclient import IClientIn
from relay.oauth.client import TokenClient
from relay.oauth.errors import AuthorizationDeniedError, NeedsAuthorizationError, OAuthError
from relay.oauth.flow import (
    AuthorizationFlow,
    InMemoryStateStore,
    PendingAuthorization,
    ResolvedClient,
)
from relay.oauth.refresh import InMemoryTokenStore, OAuthTarget, TokenEvent, TokenManager
from relay.oauth.step import OAuth2AuthStep
from relay.routing.auth import AuthContext
from relay.routing.outgoing import OutgoingRequest
from relay.routing.policy import is_auth_error

# oidc-provider-mock 0.3 uses authlib.jose, which authlib deprecates in favour of
# joserfc. That is the mock's business, not ours: tolerated for the mock only (at import
# and in its server thread, which shares the process-wide warning filters).
with warnings.catch_warnings():
    warnings.simplefilter("ignore", AuthlibDeprecationWarning)
    from oidc_provider_mock import run_server_in_thread

pytestmark = pytest.mark.filterwarnings("ignore::authlib.deprecate.AuthlibDeprecationWarning")

CONNECTION = "con_mock"
MOCK_AUTH_ERROR_STATUS = 400
AUTH_RULES = HttpAuth(fail_status_code=MOCK_AUTH_ERROR_STATUS)


@pytest.fixture
def provider() -> Iterator[str]:
    with run_server_in_thread() as server:
        yield f"http://localhost:{server.server_port}"


@dataclass
class Relay:
    """The relay's half of the flow: /authorize and /oauth2/callback, in miniature."""

    flow: AuthorizationFlow
    manager: TokenManager
    iclient: IClientIn
    events: list[TokenEvent] = field(default_factory=list)
    callback_url: str = ""
    outcomes: list[str] = field(default_factory=list)


@pytest.fixture
async def relay(provider: str) -> AsyncIterator[Relay]:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{provider}/.well-known/openid-configuration") as resp:
            discovery = await resp.json()
        iclient = IClientIn.model_validate(
            {
                "name": "oidc-provider-mock",
                "client_id": "relay-test-client",
                "client_secret": "relay-test-secret",
                "authorization_url": discovery["authorization_endpoint"],
                "token_url": discovery["token_endpoint"],
                "client_auth": "basic",  # the mock's refresh grant takes only Basic
                "valid_domains": ["localhost"],
            }
        )
        client = TokenClient(http)
        events: list[TokenEvent] = []
        store = InMemoryTokenStore()
        state = Relay(
            flow=AuthorizationFlow(InMemoryStateStore(), client),
            manager=TokenManager(store, client, listener=events.append),
            iclient=iclient,
            events=events,
        )

        async def resolve(pending: PendingAuthorization) -> ResolvedClient:
            return ResolvedClient(iclient)

        async def callback(request: web.Request) -> web.Response:
            try:
                pending, tokens = await state.flow.complete(str(request.url), resolve)
            except OAuthError as exc:
                state.outcomes.append(type(exc).__name__)
                return web.Response(status=400, text=f"Not connected: {exc}")
            await state.manager.save_authorized(pending.connection_id, tokens)
            state.outcomes.append("connected")
            return web.Response(text="Connected. You can close this window.")

        app = web.Application()
        app.router.add_get("/oauth2/callback", callback)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        state.callback_url = f"http://127.0.0.1:{runner.addresses[0][1]}/oauth2/callback"
        try:
            yield state
        finally:
            await runner.cleanup()


async def browser_authorize(relay: Relay, *, deny: bool = False) -> tuple[int, str]:
    """The user's browser: open the provider's page, consent as alice (or deny), land
    on the relay's callback. Returns the callback page's status and text."""
    url = await relay.flow.begin(
        relay.iclient,
        account_id="acc_1",
        connection_id=CONNECTION,
        iclient_id="icl_mock",
        redirect_uri=relay.callback_url,
        scope=["profile", "email"],
    )
    query = URL(url).query
    assert query["code_challenge_method"] == "S256" and query["redirect_uri"] == relay.callback_url
    async with aiohttp.ClientSession() as browser:
        async with browser.get(url) as page:
            assert page.status == 200
            html = await page.text()
        assert re.search(r'<form method="post"', html), html[:500]
        form = {"action": "deny"} if deny else {"sub": "alice"}
        async with browser.post(url, data=form) as landed:  # follows the 302 to the relay
            assert str(landed.url).startswith(relay.callback_url)
            return landed.status, await landed.text()


async def userinfo(provider: str, access_token: str) -> int:
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"{provider}/userinfo", headers={"Authorization": f"Bearer {access_token}"}
        ) as resp,
    ):
        return resp.status


def step_for(relay: Relay) -> OAuth2AuthStep:
    async def resolve(ctx: AuthContext, auth: OAuth2Auth) -> OAuthTarget:
        return OAuthTarget(ctx.connection_id, relay.iclient, auth)

    return OAuth2AuthStep(
        relay.manager,
        resolve,
        AuthContext("acc_1", CONNECTION, "req_1"),
        OAuth2Auth(iclient_id="icl_mock", scope=["profile", "email"]),
    )


async def call_userinfo(provider: str, step: OAuth2AuthStep) -> tuple[int, Any]:
    out = OutgoingRequest(method="GET", url=URL(f"{provider}/userinfo"), media_type="json")
    await step.apply(out)
    async with aiohttp.ClientSession() as http, http.get(out.url, headers=out.headers) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_authorize_refresh_and_detect_revocation(provider: str, relay: Relay) -> None:
    status, page = await browser_authorize(relay)
    assert (status, relay.outcomes) == (200, ["connected"]), page
    stored = await relay.manager.store.load(CONNECTION)
    tokens = stored.tokens
    assert tokens is not None and tokens.refresh_token and tokens.scope
    assert tokens.scope == "profile email"

    # The token works at the provider's API, through the pipeline's auth step.
    step = step_for(relay)
    status, me = await call_userinfo(provider, step)
    assert status == 200 and me["sub"] == "alice"

    # Refresh before expiry: our copy says the token is about to expire.
    await relay.manager.store.store(
        CONNECTION, dataclasses.replace(tokens, expires_at=time.time() + 5), stored.version
    )
    fresh = await relay.manager.access_token(OAuthTarget(CONNECTION, relay.iclient))
    assert fresh.tokens is not None
    assert fresh.tokens.access_token != tokens.access_token
    # This provider does not rotate refresh tokens: the old one is kept.
    assert fresh.tokens.refresh_token == tokens.refresh_token
    assert await userinfo(provider, fresh.tokens.access_token) == 200
    # Replaced at the provider. The mock rejects a bad token with 400 (RFC 6750 says
    # 401): the connection's fail_status_code covers such providers.
    assert await userinfo(provider, tokens.access_token) == MOCK_AUTH_ERROR_STATUS

    # The user revokes the grant at the provider: the API says 401, the refresh says
    # invalid_grant, and the connection needs authorization (no retry storm).
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{provider}/users/alice/revoke-tokens") as resp,
    ):
        assert resp.status == 204
    step = step_for(relay)
    status, body = await call_userinfo(provider, step)
    assert is_auth_error(AUTH_RULES, status, body)
    with pytest.raises(NeedsAuthorizationError) as info:
        await step.on_auth_error()
    assert info.value.error == "invalid_grant"
    assert [e.state for e in relay.events if e.state] == ["needs_authorization"]
    with pytest.raises(NeedsAuthorizationError):
        await step_for(relay).apply(
            OutgoingRequest(method="GET", url=URL(f"{provider}/userinfo"), media_type="json")
        )

    # Authorizing again brings the connection back.
    status, _ = await browser_authorize(relay)
    assert status == 200 and relay.outcomes[-1] == "connected"
    status, me = await call_userinfo(provider, step_for(relay))
    assert status == 200 and me["sub"] == "alice"


async def test_denied_consent_and_replayed_callback(provider: str, relay: Relay) -> None:
    status, page = await browser_authorize(relay, deny=True)
    assert status == 400 and "access_denied" in page
    assert relay.outcomes == [AuthorizationDeniedError.__name__]
    assert (await relay.manager.store.load(CONNECTION)).tokens is None

    # A callback URL replayed after success is refused and stores nothing new.
    status, _ = await browser_authorize(relay)
    assert status == 200
    version = (await relay.manager.store.load(CONNECTION)).version
    async with (
        aiohttp.ClientSession() as browser,
        browser.get(relay.callback_url, params={"code": "replayed", "state": "whatever"}) as resp,
    ):
        assert resp.status == 400
    assert relay.outcomes[-1] == "InvalidStateError"
    assert (await relay.manager.store.load(CONNECTION)).version == version
