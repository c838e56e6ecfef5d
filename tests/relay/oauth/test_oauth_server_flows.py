"""OAuth against a real authorization server built on authlib's server classes (see
``oauth_authlib_server``): the code flow with PKCE, the callback's state rules,
refresh with and without rotation, single flight, auth-error retry, failure
classification without retry storms, client credentials, revocation."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from conftest import CLIENT_ID, CLIENT_SECRET, REDIRECT_URI
from oauth_authlib_server import AuthServer, Scripted
from tunnel_env import TIMEOUT
from yarl import URL

from relay.metrics import RelayMetrics
from relay.models.connection import Header, HttpAuth, OAuth2Auth
from relay.models.iclient import IClientIn
from relay.oauth.client import TokenClient, TokenClientConfig
from relay.oauth.errors import (
    AuthorizationDeniedError,
    BadTokenResponseError,
    InvalidStateError,
    NeedsAuthorizationError,
    OAuthConfigurationError,
    TokenDomainError,
    TransientTokenError,
)
from relay.oauth.flow import (
    AuthorizationFlow,
    InMemoryStateStore,
    PendingAuthorization,
    ResolvedClient,
    start_authorization,
)
from relay.oauth.refresh import (
    InMemoryTokenStore,
    OAuthTarget,
    RefreshConfig,
    TokenEvent,
    TokenManager,
)
from relay.oauth.step import OAuth2AuthStep
from relay.oauth.tokens import TokenSet
from relay.routing.auth import AuthContext
from relay.routing.outgoing import OutgoingRequest
from relay.routing.policy import is_auth_error

CID = "con_test"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def flow_for(
    token_client: TokenClient, states: InMemoryStateStore | None = None
) -> AuthorizationFlow:
    return AuthorizationFlow(states if states is not None else InMemoryStateStore(), token_client)


async def begin(flow: AuthorizationFlow, iclient: IClientIn, http: aiohttp.ClientSession) -> str:
    """Start the flow and follow it like a browser (the test server consents at once);
    the callback URL the provider redirected to."""
    url = await flow.begin(
        iclient,
        account_id="acc_1",
        connection_id=CID,
        iclient_id="icl_1",
        redirect_uri=REDIRECT_URI,
        scope=["read", "write"],
    )
    async with http.get(url, allow_redirects=False) as resp:
        assert resp.status == 302, await resp.text()
        return resp.headers["Location"]


def resolver(iclient: IClientIn) -> Callable[[PendingAuthorization], Any]:
    async def resolve(pending: PendingAuthorization) -> ResolvedClient:
        assert pending.iclient_id == "icl_1"
        return ResolvedClient(iclient)

    return resolve


async def authorize(
    http: aiohttp.ClientSession, token_client: TokenClient, iclient: IClientIn
) -> TokenSet:
    flow = flow_for(token_client)
    callback = await begin(flow, iclient, http)
    _, tokens = await flow.complete(callback, resolver(iclient))
    return tokens


async def call_api(http: aiohttp.ClientSession, out: OutgoingRequest) -> tuple[int, Any]:
    async with http.request(
        out.method, out.url, headers=out.headers, data=out.encoded_body()
    ) as resp:
        return resp.status, await resp.json()


def api_request(server: AuthServer, path: str = "/api/me") -> OutgoingRequest:
    return OutgoingRequest(method="GET", url=URL(server.base_url + path), media_type="json")


def expired(tokens: TokenSet) -> TokenSet:
    return dataclasses.replace(tokens, expires_at=time.time() - 10)


# --- the authorization code flow -------------------------------------------------------------


async def test_authorization_code_flow_with_pkce(
    auth_server: AuthServer,
    http: aiohttp.ClientSession,
    token_client: TokenClient,
    make_iclient: Callable[..., IClientIn],
) -> None:
    iclient = make_iclient()
    flow = flow_for(token_client)
    callback = await begin(flow, iclient, http)
    assert callback.startswith(REDIRECT_URI + "?")
    code = URL(callback).query["code"]
    with auth_server.lock:
        stored_code = auth_server.codes[code]
    assert stored_code.code_challenge_method == "S256"
    pending, tokens = await flow.complete(callback, resolver(iclient))
    assert pending.connection_id == CID and pending.account_id == "acc_1"
    assert tokens.refresh_token and tokens.scope == "read write"
    assert not tokens.lifetime_defaulted
    request = auth_server.token_requests[-1]
    assert request["form"]["redirect_uri"] == REDIRECT_URI
    assert len(request["form"]["code_verifier"]) == 64
    assert request["headers"]["Authorization"].startswith("Basic ")
    # The access token works at the provider's API.
    out = api_request(auth_server)
    out.headers["Authorization"] = f"Bearer {tokens.access_token}"
    assert (await call_api(http, out))[0] == 200


async def test_the_server_enforces_our_pkce(
    auth_server: AuthServer,
    http: aiohttp.ClientSession,
    token_client: TokenClient,
    make_iclient: Callable[..., IClientIn],
) -> None:
    """A code is useless without the verifier of its own attempt."""
    iclient = make_iclient()
    start = start_authorization(iclient, "read", REDIRECT_URI)
    async with http.get(start.url, allow_redirects=False) as resp:
        code = URL(resp.headers["Location"]).query["code"]
    other = start_authorization(iclient, "read", REDIRECT_URI)
    with pytest.raises(NeedsAuthorizationError) as info:
        await token_client.exchange_code(
            iclient, code=code, redirect_uri=REDIRECT_URI, code_verifier=other.code_verifier
        )
    assert info.value.error == "invalid_grant"
    assert code not in str(info.value)


async def test_wrong_reused_or_expired_state_stores_nothing(
    auth_server: AuthServer,
    http: aiohttp.ClientSession,
    token_client: TokenClient,
    make_iclient: Callable[..., IClientIn],
) -> None:
    iclient = make_iclient()
    clock = Clock()
    states = InMemoryStateStore(clock=clock)
    flow = flow_for(token_client, states)
    callback = await begin(flow, iclient, http)

    wrong = str(URL(callback).update_query(state="forged-state"))
    with pytest.raises(InvalidStateError):
        await flow.complete(wrong, resolver(iclient))
    assert auth_server.total_token_calls == 0

    _, tokens = await flow.complete(callback, resolver(iclient))
    assert tokens.access_token and auth_server.total_token_calls == 1
    with pytest.raises(InvalidStateError):  # reused
        await flow.complete(callback, resolver(iclient))
    assert auth_server.total_token_calls == 1

    late = await begin(flow, iclient, http)
    clock.now += 601
    with pytest.raises(InvalidStateError, match="too long"):
        await flow.complete(late, resolver(iclient))
    assert auth_server.total_token_calls == 1


async def test_denied_authorization_burns_the_state(
    auth_server: AuthServer,
    http: aiohttp.ClientSession,
    token_client: TokenClient,
    make_iclient: Callable[..., IClientIn],
) -> None:
    iclient = make_iclient()
    states = InMemoryStateStore()
    flow = flow_for(token_client, states)
    auth_server.deny_next = True
    callback = await begin(flow, iclient, http)
    assert len(states) == 1
    with pytest.raises(AuthorizationDeniedError) as info:
        await flow.complete(callback, resolver(iclient))
    assert info.value.error == "access_denied"
    assert len(states) == 0
    assert auth_server.total_token_calls == 0


# --- refresh ---------------------------------------------------------------------------------


@pytest.fixture
def events() -> list[TokenEvent]:
    return []


@pytest.fixture
def manager_for(token_client: TokenClient, events: list[TokenEvent]) -> Callable[..., TokenManager]:
    def make(store: InMemoryTokenStore | None = None, **kw: Any) -> TokenManager:
        return TokenManager(
            store or InMemoryTokenStore(), token_client, listener=events.append, **kw
        )

    return make


async def test_refresh_rotation_is_stored_in_one_write(
    auth_server: AuthServer,
    http: aiohttp.ClientSession,
    token_client: TokenClient,
    make_iclient: Callable[..., IClientIn],
    manager_for: Callable[..., TokenManager],
) -> None:
    iclient = make_iclient()
    tokens = await authorize(http, token_client, iclient)
    store = InMemoryTokenStore()
    manager = manager_for(store)
    saved = await manager.save_authorized(CID, expired(tokens))
    writes = store.writes
    target = OAuthTarget(CID, iclient)
    fresh = await manager.access_token(target)
    assert fresh.version == saved.version + 1
    assert store.writes == writes + 1
    assert fresh.tokens is not None
    assert fresh.tokens.access_token != tokens.access_token
    assert fresh.tokens.refresh_token not in (None, tokens.refresh_token)
    assert (await store.load(CID)).tokens == fresh.tokens
    # Rotation revoked the old refresh token at the provider.
    with pytest.raises(NeedsAuthorizationError):
        await token_client.refresh(iclient, tokens)
    # A valid token is served from the store without asking the provider.
    calls = auth_server.total_token_calls
    assert (await manager.access_token(target)).version == fresh.version
    assert auth_server.total_token_calls == calls


async def test_old_refresh_token_kept_when_the_response_has_none(
    auth_server: AuthServer,
    http: aiohttp.ClientSession,
    token_client: TokenClient,
    make_iclient: Callable[..., IClientIn],
    manager_for: Callable[..., TokenManager],
) -> None:
    auth_server.rotate_refresh_tokens = False
    iclient = make_iclient()
    tokens = await authorize(http, token_client, iclient)
    store = InMemoryTokenStore()
    manager = manager_for(store)
    await manager.save_authorized(CID, expired(tokens))
    target = OAuthTarget(CID, iclient)
    first = (await manager.access_token(target)).tokens
    assert first is not None and first.refresh_token == tokens.refresh_token
    assert "refresh_token" not in auth_server.issued[-1]
    await store.put(CID, expired(first))
    second = (await manager.access_token(target)).tokens
    assert second is not None and second.refresh_token == tokens.refresh_token
    assert second.access_token not in (first.access_token, tokens.access_token)


async def test_no_expires_in_gets_the_default_lifetime(
    auth_server: AuthServer, http: aiohttp.ClientSession, make_iclient: Callable[..., IClientIn]
) -> None:
    auth_server.expires_in = 0  # authlib then leaves expires_in out
    iclient = make_iclient(grant_type="client_credentials", authorization_url=None)
    before = time.time()
    tokens = await TokenClient(http).client_credentials(iclient)
    assert tokens.lifetime_defaulted
    assert before + 3600 <= tokens.expires_at <= time.time() + 3600
    short = await TokenClient(http, TokenClientConfig(default_expires_in_s=120)).client_credentials(
        iclient
    )
    assert short.expires_at <= time.time() + 120


async def test_fifty_concurrent_requests_on_an_expired_token_make_one_refresh(
    auth_server: AuthServer,
    http: aiohttp.ClientSession,
    token_client: TokenClient,
    make_iclient: Callable[..., IClientIn],
    manager_for: Callable[..., TokenManager],
) -> None:
    iclient = make_iclient()
    tokens = await authorize(http, token_client, iclient)
    manager = manager_for()
    await manager.save_authorized(CID, expired(tokens))
    target = OAuthTarget(CID, iclient)
    async with asyncio.timeout(TIMEOUT):
        results = await asyncio.gather(*(manager.access_token(target) for _ in range(50)))
    assert auth_server.token_calls["refresh_token"] == 1
    assert len({r.tokens.access_token for r in results if r.tokens}) == 1


async def test_two_relay_processes_sharing_a_store_make_one_refresh(
    auth_server: AuthServer,
    http: aiohttp.ClientSession,
    token_client: TokenClient,
    make_iclient: Callable[..., IClientIn],
) -> None:
    """Two managers = two processes (own locks, own lease owner) over one store = one
    database: the lease and the compare-and-set keep it to one refresh."""
    iclient = make_iclient()
    tokens = await authorize(http, token_client, iclient)
    store = InMemoryTokenStore()
    await store.put(CID, expired(tokens))
    node_a = TokenManager(store, token_client, owner="node-a")
    node_b = TokenManager(store, token_client, owner="node-b")
    target = OAuthTarget(CID, iclient)
    async with asyncio.timeout(TIMEOUT):
        results = await asyncio.gather(
            *(m.access_token(target) for _ in range(25) for m in (node_a, node_b))
        )
    assert auth_server.token_calls["refresh_token"] == 1
    assert len({r.version for r in results}) == 1


async def test_a_lease_left_by_a_dead_process_expires(
    auth_server: AuthServer,
    http: aiohttp.ClientSession,
    token_client: TokenClient,
    make_iclient: Callable[..., IClientIn],
) -> None:
    iclient = make_iclient()
    tokens = await authorize(http, token_client, iclient)
    mono = Clock()
    store = InMemoryTokenStore(clock=mono)
    await store.put(CID, expired(tokens))
    assert await store.try_lease(CID, "dead-node", 45) is not None
    manager = TokenManager(
        store, token_client, config=RefreshConfig(lease_s=45, wait_s=0.0), monotonic=mono
    )
    target = OAuthTarget(CID, iclient)
    with pytest.raises(TransientTokenError, match="another relay process"):
        await manager.access_token(target)
    assert auth_server.token_calls["refresh_token"] == 0
    mono.now += 46
    assert (await manager.access_token(target)).tokens is not None
    assert auth_server.token_calls["refresh_token"] == 1


# --- auth errors from the API ---------------------------------------------------------------


async def _step(manager: TokenManager, iclient: IClientIn) -> OAuth2AuthStep:
    async def resolve(ctx: AuthContext, auth: OAuth2Auth) -> OAuthTarget:
        return OAuthTarget(ctx.connection_id, iclient, auth)

    return OAuth2AuthStep(
        manager, resolve, AuthContext("acc_1", CID, "req_1"), OAuth2Auth(iclient_id="icl_1")
    )


async def test_a_401_refreshes_once_and_retries_once(
    auth_server: AuthServer,
    http: aiohttp.ClientSession,
    token_client: TokenClient,
    make_iclient: Callable[..., IClientIn],
    manager_for: Callable[..., TokenManager],
) -> None:
    iclient = make_iclient()
    tokens = await authorize(http, token_client, iclient)
    manager = manager_for()
    await manager.save_authorized(CID, tokens)
    auth_server.expire_access_tokens()  # the provider says expired; our clock says not yet

    async def one_request() -> int:
        step = await _step(manager, iclient)
        out = api_request(auth_server)
        await step.apply(out)
        status, _ = await call_api(http, out)
        if status == 401 and await step.on_auth_error():
            out = api_request(auth_server)
            await step.apply(out)
            status, _ = await call_api(http, out)
        return status

    async with asyncio.timeout(TIMEOUT):
        statuses = await asyncio.gather(*(one_request() for _ in range(20)))
    assert statuses == [200] * 20
    assert auth_server.token_calls["refresh_token"] == 1


async def test_slack_style_auth_error_in_a_200(
    auth_server: AuthServer,
    http: aiohttp.ClientSession,
    token_client: TokenClient,
    make_iclient: Callable[..., IClientIn],
    manager_for: Callable[..., TokenManager],
) -> None:
    """``200 {"ok": false, "error": "invalid_auth"}`` is an auth error when the
    connection says so (fail_path/fail_values): refresh, retry, succeed."""
    iclient = make_iclient()
    tokens = await authorize(http, token_client, iclient)
    manager = manager_for()
    await manager.save_authorized(CID, tokens)
    auth_server.revoke_access_tokens()  # the refresh token still works
    rules = HttpAuth(fail_path="ok", fail_values=["false"])
    step = await _step(manager, iclient)
    out = api_request(auth_server, "/slack/me")
    await step.apply(out)
    status, body = await call_api(http, out)
    assert (status, body) == (200, {"ok": False, "error": "invalid_auth"})
    assert is_auth_error(rules, status, body)
    assert await step.on_auth_error()
    out = api_request(auth_server, "/slack/me")
    await step.apply(out)
    status, body = await call_api(http, out)
    assert status == 200 and body["ok"] is True
    assert not is_auth_error(rules, status, body)
    assert auth_server.token_calls["refresh_token"] == 1


async def test_the_token_is_never_sent_outside_valid_domains(
    auth_server: AuthServer,
    http: aiohttp.ClientSession,
    token_client: TokenClient,
    make_iclient: Callable[..., IClientIn],
    manager_for: Callable[..., TokenManager],
) -> None:
    iclient = make_iclient(valid_domains=["api.acme.com"])
    tokens = await authorize(http, token_client, iclient)
    manager = manager_for()
    await manager.save_authorized(CID, tokens)
    step = await _step(manager, iclient)
    out = api_request(auth_server)
    with pytest.raises(TokenDomainError) as info:
        await step.apply(out)
    assert "127.0.0.1" in str(info.value) and tokens.access_token not in str(info.value)
    assert "Authorization" not in out.headers


# --- failures ---------------------------------------------------------------------------------


async def test_invalid_grant_needs_authorization_without_a_retry_storm(
    auth_server: AuthServer,
    http: aiohttp.ClientSession,
    token_client: TokenClient,
    make_iclient: Callable[..., IClientIn],
    manager_for: Callable[..., TokenManager],
    events: list[TokenEvent],
) -> None:
    iclient = make_iclient()
    tokens = await authorize(http, token_client, iclient)
    metrics = RelayMetrics()
    manager = manager_for(metrics=metrics)
    await manager.save_authorized(CID, expired(tokens))
    auth_server.revoke_everything()
    target = OAuthTarget(CID, iclient)
    with pytest.raises(NeedsAuthorizationError) as info:
        await manager.access_token(target)
    assert info.value.error == "invalid_grant" and info.value.code == "needs_authorization"
    assert [(e.result, e.state) for e in events] == [("needs_authorization", "needs_authorization")]
    calls = auth_server.total_token_calls
    for _ in range(10):
        with pytest.raises(NeedsAuthorizationError):
            await manager.access_token(target)
    assert auth_server.total_token_calls == calls
    assert (await manager.store.load(CID)).tokens is None
    sample = metrics.registry.get_sample_value(
        "onprem_relay_oauth_refresh_total", {"result": "needs_authorization"}
    )
    assert sample == 1
    # Authorizing again brings it back.
    await manager.save_authorized(CID, await authorize(http, token_client, iclient))
    assert (await manager.access_token(target)).tokens is not None


async def test_invalid_client_is_a_configuration_error_asked_once_per_backoff(
    auth_server: AuthServer,
    http: aiohttp.ClientSession,
    make_iclient: Callable[..., IClientIn],
    manager_for: Callable[..., TokenManager],
    events: list[TokenEvent],
) -> None:
    iclient = make_iclient(
        grant_type="client_credentials", authorization_url=None, client_secret="wrong-secret"
    )
    mono = Clock()
    manager = manager_for(monotonic=mono)
    target = OAuthTarget(CID, iclient)
    for _ in range(5):
        with pytest.raises(OAuthConfigurationError) as info:
            await manager.access_token(target)
        assert info.value.error == "invalid_client"
        assert "wrong-secret" not in str(info.value)
    assert auth_server.total_token_calls == 1
    assert events[0].state == "offline" and events[0].result == "configuration_error"
    mono.now += 1.5
    with pytest.raises(OAuthConfigurationError):
        await manager.access_token(target)
    assert auth_server.total_token_calls == 2


async def test_transient_failures_back_off_then_recover(
    auth_server: AuthServer,
    http: aiohttp.ClientSession,
    make_iclient: Callable[..., IClientIn],
    manager_for: Callable[..., TokenManager],
) -> None:
    iclient = make_iclient(grant_type="client_credentials", authorization_url=None)
    auth_server.script(
        Scripted(
            503, b"<html><h1>503 Service Unavailable</h1></html>", "text/html", {"Retry-After": "7"}
        )
    )
    mono = Clock()
    manager = manager_for(monotonic=mono)
    target = OAuthTarget(CID, iclient)
    with pytest.raises(TransientTokenError) as info:
        await manager.access_token(target)
    assert info.value.status == 503 and info.value.retry_after == 7.0
    mono.now += 5
    with pytest.raises(TransientTokenError) as info:
        await manager.access_token(target)
    assert info.value.retry_after == pytest.approx(2.0)
    assert auth_server.total_token_calls == 1
    mono.now += 3
    assert (await manager.access_token(target)).tokens is not None
    assert auth_server.total_token_calls == 2


@pytest.mark.parametrize(
    "scripted",
    [
        Scripted(200, b"<html>Sign in</html>", "text/html"),
        Scripted(200, b'{"token_type": "bearer"}'),
        Scripted(200, b"{not json"),
        Scripted(400, b"<html>Bad Request</html>", "text/html"),
    ],
)
async def test_garbage_from_the_token_endpoint_is_a_clear_error(
    auth_server: AuthServer,
    http: aiohttp.ClientSession,
    make_iclient: Callable[..., IClientIn],
    scripted: Scripted,
) -> None:
    iclient = make_iclient(grant_type="client_credentials", authorization_url=None)
    auth_server.script(scripted)
    with pytest.raises(BadTokenResponseError) as info:
        await TokenClient(http).client_credentials(iclient)
    assert "127.0.0.1" in str(info.value)
    assert CLIENT_SECRET not in str(info.value)


async def test_unreachable_or_silent_token_endpoints_are_transient(
    http: aiohttp.ClientSession, make_iclient: Callable[..., IClientIn]
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    iclient = make_iclient(
        grant_type="client_credentials",
        authorization_url=None,
        token_url=f"http://127.0.0.1:{closed_port}/token",
    )
    with pytest.raises(TransientTokenError, match="could not be reached"):
        await TokenClient(http).client_credentials(iclient)

    hang = asyncio.Event()

    async def silent(request: web.Request) -> web.Response:
        await hang.wait()
        return web.Response()

    app = web.Application()
    app.router.add_post("/token", silent)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        slow = iclient.model_copy(update={"token_url": f"http://127.0.0.1:{port}/token"})
        client = TokenClient(http, TokenClientConfig(timeout_s=0.2))
        async with asyncio.timeout(TIMEOUT):
            with pytest.raises(TransientTokenError, match="did not answer in time"):
                await client.client_credentials(slow)
    finally:
        hang.set()
        await runner.cleanup()


# --- client credentials, client authentication, JSON token requests -------------------------


async def test_client_credentials_fetched_on_demand_and_cached_until_expiry(
    auth_server: AuthServer,
    make_iclient: Callable[..., IClientIn],
    manager_for: Callable[..., TokenManager],
) -> None:
    iclient = make_iclient(grant_type="client_credentials", authorization_url=None)
    manager = manager_for()
    target = OAuthTarget(CID, iclient)
    first = await manager.access_token(target)
    second = await manager.access_token(target)
    assert first == second and auth_server.token_calls["client_credentials"] == 1
    assert first.tokens is not None
    await manager.store.store(CID, expired(first.tokens), first.version)
    third = await manager.access_token(target)
    assert third.tokens is not None and third.tokens.access_token != first.tokens.access_token
    assert auth_server.token_calls["client_credentials"] == 2
    # An unsaved connection (Test connection) gets a token but stores nothing.
    unsaved = await manager.access_token(OAuthTarget(None, iclient))
    assert unsaved.tokens is not None and auth_server.token_calls["client_credentials"] == 3


@pytest.mark.parametrize("client_auth", ["basic", "body"])
async def test_client_ids_and_secrets_with_reserved_characters(
    auth_server: AuthServer,
    http: aiohttp.ClientSession,
    make_iclient: Callable[..., IClientIn],
    client_auth: str,
) -> None:
    odd_id, odd_secret = "id:with%+ ü&=", "se:cr%et+ ✓/?#"
    auth_server.add_client(odd_id, odd_secret)
    iclient = make_iclient(
        grant_type="client_credentials",
        authorization_url=None,
        client_id=odd_id,
        client_secret=odd_secret,
        client_auth=client_auth,
    )
    tokens = await TokenClient(http).client_credentials(iclient, scope="a b")
    assert tokens.access_token
    found = auth_server.find(tokens.access_token)
    assert found is not None and found.client_id == odd_id and found.scope == "a b"


async def test_access_token_headers_can_make_the_token_request_json(
    auth_server: AuthServer,
    http: aiohttp.ClientSession,
    make_iclient: Callable[..., IClientIn],
) -> None:
    iclient = make_iclient(
        grant_type="client_credentials",
        authorization_url=None,
        token_url=f"{auth_server.base_url}/json/token",
        client_auth="body",
    )
    headers = [
        Header(name="Content-Type", value="application/json"),
        Header(name="X-Tenant", value="t1"),
    ]
    tokens = await TokenClient(http).client_credentials(iclient, extra_headers=headers)
    assert tokens.access_token == "at-json"
    seen = auth_server.token_requests[-1]
    assert seen["json"] == {
        "grant_type": "client_credentials",
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
    }
    assert seen["headers"]["X-Tenant"] == "t1"
    # Without the override the same endpoint gets a form and refuses.
    with pytest.raises(OAuthConfigurationError):
        await TokenClient(http).client_credentials(iclient)


# --- revocation -----------------------------------------------------------------------------


async def test_revoke_on_delete(
    auth_server: AuthServer,
    http: aiohttp.ClientSession,
    token_client: TokenClient,
    make_iclient: Callable[..., IClientIn],
    manager_for: Callable[..., TokenManager],
) -> None:
    iclient = make_iclient()
    tokens = await authorize(http, token_client, iclient)
    manager = manager_for()
    await manager.save_authorized(CID, tokens)
    assert await manager.revoke(OAuthTarget(CID, iclient)) is True
    assert auth_server.revoke_calls == 1
    assert (await manager.store.load(CID)).tokens is None
    with pytest.raises(NeedsAuthorizationError):
        await token_client.refresh(iclient, tokens)
    out = api_request(auth_server)
    out.headers["Authorization"] = f"Bearer {tokens.access_token}"
    assert (await call_api(http, out))[0] == 401
    # Nothing stored, or no revoke URL: nothing to ask.
    assert await manager.revoke(OAuthTarget(CID, iclient)) is False
    no_url = make_iclient(revoke_url=None)
    await manager.save_authorized(CID, await authorize(http, token_client, no_url))
    assert await manager.revoke(OAuthTarget(CID, no_url)) is False
    assert auth_server.revoke_calls == 1


async def test_revoke_with_a_wrong_secret_is_a_configuration_error(
    auth_server: AuthServer,
    http: aiohttp.ClientSession,
    token_client: TokenClient,
    make_iclient: Callable[..., IClientIn],
) -> None:
    iclient = make_iclient()
    tokens = await authorize(http, token_client, iclient)
    wrong = make_iclient(client_secret="not-it")
    with pytest.raises(OAuthConfigurationError):
        assert tokens.refresh_token
        await token_client.revoke(wrong, tokens.refresh_token, token_type_hint="refresh_token")
