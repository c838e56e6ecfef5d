"""OAuth 2.0 through the real relay API against the authlib-based test server
(``tests/relay/oauth/oauth_authlib_server.py``): the authorization-code flow from
``/authorize`` to the callback, the callback's state rules, refresh with rotation, a
revoked grant, no ``expires_in``, a Slack-style auth error, 50 concurrent requests on
an expired token, client credentials, revocation on delete, ``return_url``, the SSRF
guard, and the state-change webhook."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
import sqlalchemy as sa
from oauth_api_env import TIMEOUT, OAuthEnv, oauth_env, receiver
from yarl import URL

from relay.oauth.signals import StateChange
from relay.registry import SecretBox
from relay.registry.models import oauth_states
from tests.relay.oauth.oauth_authlib_server import AuthServer, Scripted

CLIENT_ID = "relay-client"
CLIENT_SECRET = "relay-secret-value"
SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
async def oenv(database_url: str, secret_box: SecretBox) -> AsyncIterator[OAuthEnv]:
    async with oauth_env(database_url, secret_box) as env:
        yield env


@pytest.fixture
def server(oenv: OAuthEnv) -> Iterator[AuthServer]:
    srv = AuthServer()
    srv.add_client(CLIENT_ID, CLIENT_SECRET, [oenv.callback_url])
    with srv.running():
        yield srv


def iclient_body(server: AuthServer, **overrides: Any) -> dict[str, Any]:
    return {
        "name": "authlib test server",
        "grant_type": "authorization_code",
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "authorization_url": f"{server.base_url}/authorize",
        "token_url": f"{server.base_url}/token",
        "revoke_url": f"{server.base_url}/revoke",
        "client_auth": "basic",
        "scope_delimiter": " ",
        "valid_domains": ["127.0.0.1"],
        **overrides,
    }


def connection_body(
    server: AuthServer, iclient_id: str, *, ping: str = "/api/me", **http: Any
) -> dict[str, Any]:
    return {
        "name": "acme api",
        "http": {
            "base_uri": server.base_url,
            "auth": {
                "type": "oauth2",
                "oauth2": {"iclient_id": iclient_id, "scope": ["read", "write"]},
                **http.pop("auth", {}),
            },
            "ping": {"relative_uri": ping},
            **http,
        },
    }


async def setup_connection(
    env: OAuthEnv, server: AuthServer, *, iclient: dict[str, Any] | None = None, **conn: Any
) -> str:
    r = await env.a.post("/v1/iclients", iclient or iclient_body(server))
    assert r.status == 201, r.text
    r = await env.a.post("/v1/connections", connection_body(server, r.json["id"], **conn))
    assert r.status == 201, r.text
    return str(r.json["id"])


async def authorized(env: OAuthEnv, server: AuthServer, **conn: Any) -> str:
    cid = await setup_connection(env, server, **conn)
    page = await env.authorize(cid)
    assert page.status == 200 and "Connected" in page.text, page.text
    return cid


async def request(env: OAuthEnv, cid: str, uri: str = "/api/me") -> Any:
    return await env.a.post(f"/v1/connections/{cid}/request", {"relative_uri": uri})


def changes(env: OAuthEnv, state: str) -> float | None:
    return env.metrics.registry.get_sample_value(
        "onprem_relay_connection_state_changes_total", {"state": state}
    )


async def state_of(env: OAuthEnv, cid: str) -> tuple[str, str | None]:
    body = (await env.a.get(f"/v1/connections/{cid}")).json
    return body["state"], body["state_reason"]


# -- the flow ---------------------------------------------------------------------------------


async def test_authorization_code_flow_through_the_api(oenv: OAuthEnv, server: AuthServer) -> None:
    env = oenv
    r = await env.a.post("/v1/iclients", iclient_body(server))
    assert r.status == 201 and r.json["client_secret"] == "********"
    iclient_id = r.json["id"]
    r = await env.a.post("/v1/connections", connection_body(server, iclient_id))
    assert r.status == 201, r.text
    cid = r.json["id"]
    assert r.json["state"] == "needs_authorization"
    assert server.total_token_calls == 0  # saved without a test: nothing to test with yet

    start = await env.begin(cid)
    assert start.status == 302
    assert start.headers["Cache-Control"] == "no-store"
    query = URL(start.headers["Location"]).query
    assert query["redirect_uri"] == f"{env.base}/oauth2/callback"
    assert query["code_challenge_method"] == "S256" and len(query["code_challenge"]) == 43
    assert query["client_id"] == CLIENT_ID and query["scope"] == "read write"
    assert len(query["state"]) >= 43  # >= 256 random bits, base64url

    page = await env.open_in_browser(await env.provider_redirect(cid))
    assert page.status == 200, page.text
    assert page.headers["Content-Type"].startswith("text/html")
    assert page.headers["Cache-Control"] == "no-store"
    assert page.headers["Referrer-Policy"] == "no-referrer"
    assert "Connected" in page.text and "acme api is authorized and online" in page.text
    # The exchange used the same redirect URI and the PKCE verifier.
    [exchange] = [t["form"] for t in server.token_requests]
    assert exchange["redirect_uri"] == env.callback_url and len(exchange["code_verifier"]) == 64

    assert await state_of(env, cid) == ("online", None)
    r = await request(env, cid)
    assert r.status == 200, r.text
    assert r.json["body"] == {"ok": True, "user": "alice", "client": CLIENT_ID}
    assert r.json["attempts"] == 1
    audit = (await env.a.get("/v1/audit")).json["events"]
    assert [e["action"] for e in audit][:3] == [
        "connection.authorized",
        "connection.created",
        "iclient.created",
    ]
    assert audit[0]["actor"] == "oauth:callback"
    # needs_authorization -> online, counted.
    assert changes(env, "online") == 1

    # Deleting the connection revokes the grant at the provider (RFC 7009).
    access = (await env.service.manager.store.load(cid)).tokens
    assert access is not None
    r = await env.a.delete(f"/v1/connections/{cid}")
    assert r.status == 204
    assert server.revoke_calls == 1
    assert server.find(access.access_token).is_revoked()  # type: ignore[union-attr]
    # ... and the iClient, no longer used, can go.
    assert (await env.a.delete(f"/v1/iclients/{iclient_id}")).status == 204


@SQLITE_ONLY
async def test_callback_with_a_wrong_reused_or_expired_state_stores_nothing(
    oenv: OAuthEnv, server: AuthServer
) -> None:
    env = oenv
    cid = await setup_connection(env, server)

    async def nothing_stored() -> None:
        assert (await env.service.manager.store.load(cid)).tokens is None
        assert (await state_of(env, cid))[0] == "needs_authorization"
        assert server.token_calls["authorization_code"] == 0

    # Wrong: a state the relay never issued (with a real, unused code).
    callback = await env.provider_redirect(cid)
    forged = str(URL(callback).update_query(state="x" * 43))
    page = await env.open_in_browser(forged)
    assert page.status == 400 and "unknown or already used state" in page.text
    await nothing_stored()

    # Expired: the user took more than 10 minutes at the provider.
    callback = await env.provider_redirect(cid)
    async with env.registry._write() as conn:
        await conn.execute(
            oauth_states.update().values(created_at=datetime.now(UTC) - timedelta(minutes=11))
        )
    page = await env.open_in_browser(callback)
    assert page.status == 400 and "took too long" in page.text
    await nothing_stored()

    # No state, and the user saying no: refused, nothing stored.
    page = await env.open_in_browser(f"{env.callback_url}?code=abc")
    assert page.status == 400
    server.deny_next = True
    page = await env.open_in_browser(await env.provider_redirect(cid))
    assert page.status == 400 and "access_denied" in page.text
    await nothing_stored()

    # Reused: the callback of a completed authorization, opened again.
    callback = await env.provider_redirect(cid)
    assert (await env.open_in_browser(callback)).status == 200
    stored = await env.service.manager.store.load(cid)
    page = await env.open_in_browser(callback)
    assert page.status == 400 and "unknown or already used state" in page.text
    assert (await env.service.manager.store.load(cid)).version == stored.version
    assert server.token_calls["authorization_code"] == 1
    # Every state was single use: nothing is left pending.
    async with env.registry._read() as conn:
        assert await conn.scalar(sa.select(sa.func.count()).select_from(oauth_states)) == 0


@SQLITE_ONLY
async def test_return_url_and_json_answer(oenv: OAuthEnv, server: AuthServer) -> None:
    env = oenv
    cid = await setup_connection(env, server)
    back = f"{env.base}/console/done?tab=connections"
    callback = await env.provider_redirect(cid, return_url=back)
    page = await env.open_in_browser(callback, follow=False)
    assert page.status == 303
    target = URL(page.headers["Location"])
    assert str(target.with_query(None)) == f"{env.base}/console/done"
    assert dict(target.query) == {"tab": "connections", "connection_id": cid, "result": "online"}

    # Denied at the provider: back too, saying so.
    server.deny_next = True
    page = await env.open_in_browser(
        await env.provider_redirect(cid, return_url=back), follow=False
    )
    assert page.status == 303
    query = URL(page.headers["Location"]).query
    assert (query["result"], query["error"]) == ("denied", "access_denied")

    for bad in ("https://evil.example/steal", "javascript:alert(1)", "/relative", back + "#x"):
        r = await env.begin(cid, return_url=bad)
        assert r.status == 400, bad
    r = await env.a.get(f"/v1/connections/{cid}/authorize", params={"colour": "red"})
    assert r.status == 400

    async with env.session.get(
        f"{env.base}/v1/connections/{cid}/authorize",
        headers=env.a.headers({"Accept": "application/json"}),
    ) as resp:
        body = await resp.json()
    assert resp.status == 200 and body["redirect_uri"] == env.callback_url
    assert body["authorization_url"].startswith(f"{server.base_url}/authorize?")
    assert body["expires_in"] == 600


# -- refresh ------------------------------------------------------------------------------------


@SQLITE_ONLY
async def test_refresh_token_rotation_is_stored_in_one_write(
    oenv: OAuthEnv, server: AuthServer
) -> None:
    env = oenv
    cid = await authorized(env, server)
    before = await env.service.manager.store.load(cid)
    assert before.tokens is not None and before.tokens.refresh_token
    server.expire_access_tokens()  # the provider says expired; our clock says not yet

    r = await request(env, cid)
    assert r.status == 200 and r.json["attempts"] == 2, r.text
    assert server.token_calls["refresh_token"] == 1
    after = await env.service.manager.store.load(cid)
    assert after.version == before.version + 1  # access and refresh token: one write
    assert after.tokens is not None and after.tokens.refresh_token
    assert after.tokens.refresh_token != before.tokens.refresh_token
    assert after.tokens.access_token != before.tokens.access_token
    # The rotated-out refresh token is dead at the provider: only the stored one works.
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{server.base_url}/token",
            data={"grant_type": "refresh_token", "refresh_token": before.tokens.refresh_token},
            headers={"Authorization": aiohttp.encode_basic_auth(CLIENT_ID, CLIENT_SECRET)},
        ) as resp,
    ):
        assert resp.status == 400 and (await resp.json())["error"] == "invalid_grant"
    assert (await request(env, cid)).json["attempts"] == 1


@SQLITE_ONLY
async def test_revoked_grant_needs_authorization_without_a_retry_storm_and_signals(
    oenv: OAuthEnv, server: AuthServer
) -> None:
    env = oenv
    cid = await authorized(env, server)
    async with receiver("whsec_test-receiver-secret") as hook:
        r = await env.a.call("PUT", "/v1/account/webhook", {"url": hook.url, "secret": hook.secret})
        assert r.status == 200 and r.json["secret"] == "********"
        server.revoke_everything()  # the user removed the app at the provider

        r = await request(env, cid)
        assert r.status == 409 and r.json["error"]["code"] == "needs_authorization", r.text
        assert server.token_calls["refresh_token"] == 1
        state, reason = await state_of(env, cid)
        assert state == "needs_authorization" and "invalid_grant" in (reason or "")
        [broke] = await hook.wait_for(1)
        assert broke["connection_id"] == cid and broke["account_id"] == env.account_a
        assert (broke["previous_state"], broke["state"]) == ("online", "needs_authorization")

        # No retry storm: the dead grant is not asked again.
        for _ in range(10):
            assert (await request(env, cid)).status == 409
        assert server.token_calls["refresh_token"] == 1

        # The user authorizes again: online, and the recovery is signalled.
        page = await env.authorize(cid)
        assert page.status == 200 and "Connected" in page.text
        assert (await request(env, cid)).status == 200
        events = await hook.wait_for(2)
        assert (events[1]["previous_state"], events[1]["state"]) == (
            "needs_authorization",
            "online",
        )
        assert hook.refused == 0 and len(hook.events) == 2


@SQLITE_ONLY
async def test_no_expires_in_gets_the_configured_default_lifetime(
    database_url: str, secret_box: SecretBox
) -> None:
    async with oauth_env(database_url, secret_box, oauth={"default_expires_in_s": 1234}) as env:
        server = AuthServer()
        server.add_client(CLIENT_ID, CLIENT_SECRET, [env.callback_url])
        server.expires_in = 0  # authlib then leaves expires_in out
        with server.running():
            cid = await authorized(env, server)
            assert "expires_in" not in server.issued[-1]
            tokens = (await env.service.manager.store.load(cid)).tokens
            assert tokens is not None and tokens.lifetime_defaulted
            assert time.time() + 1200 < tokens.expires_at <= time.time() + 1234
            assert (await request(env, cid)).status == 200


@SQLITE_ONLY
async def test_slack_style_auth_error_in_a_200_refreshes_once_and_retries_once(
    oenv: OAuthEnv, server: AuthServer
) -> None:
    env = oenv
    cid = await authorized(
        env, server, auth={"fail_path": "ok", "fail_values": ["false"]}, ping="/slack/me"
    )
    server.revoke_access_tokens()  # {"ok": false, "error": "invalid_auth"} with a 200
    r = await request(env, cid, "/slack/me")
    assert r.status == 200, r.text
    assert r.json["body"] == {"ok": True, "user": "alice"} and r.json["attempts"] == 2
    assert server.token_calls["refresh_token"] == 1
    # Refreshed and still refused (the provider hands out a token its API does not
    # take): auth_failed after exactly one refresh and one retry.
    calls = server.total_token_calls
    server.revoke_access_tokens()
    server.script(Scripted(200, '{"access_token": "unknown-to-the-api", "token_type": "Bearer"}'))
    r = await request(env, cid, "/slack/me")
    assert r.status == 502 and r.json["error"]["code"] == "auth_failed", r.text
    assert server.total_token_calls == calls + 1
    assert (await state_of(env, cid))[0] == "offline"


@SQLITE_ONLY
async def test_fifty_concurrent_requests_on_an_expired_token_make_one_refresh(
    oenv: OAuthEnv, server: AuthServer
) -> None:
    env = oenv
    cid = await authorized(env, server)
    store = env.service.manager.store
    current = await store.load(cid)
    assert current.tokens is not None
    expired = dataclasses.replace(current.tokens, expires_at=time.time() - 5)
    assert await store.store(cid, expired, current.version) is not None

    async with asyncio.timeout(TIMEOUT):
        results = await asyncio.gather(*(request(env, cid) for _ in range(50)))
    assert [r.status for r in results] == [200] * 50
    assert server.token_calls["refresh_token"] == 1


# -- client credentials ---------------------------------------------------------------------


@SQLITE_ONLY
async def test_client_credentials_connection_is_tested_on_create(
    oenv: OAuthEnv, server: AuthServer
) -> None:
    env = oenv
    body = iclient_body(server, grant_type="client_credentials", authorization_url=None)
    iclient = (await env.a.post("/v1/iclients", body)).json
    r = await env.a.post("/v1/connections", connection_body(server, iclient["id"]))
    assert r.status == 201 and r.json["state"] == "online", r.text
    assert server.token_calls["client_credentials"] == 1  # the test's own token
    cid = r.json["id"]
    assert (await env.service.manager.store.load(cid)).tokens is None  # stored nowhere
    # Requests fetch a token on demand and keep it until it expires.
    for _ in range(3):
        r = await request(env, cid)
        assert r.status == 200 and r.json["body"]["client"] == CLIENT_ID
    assert server.token_calls["client_credentials"] == 2
    r = await env.begin(cid)
    assert r.status == 409  # nothing to authorize

    # A wrong secret: Save & continue answers 422 and saves nothing.
    bad = (
        await env.a.post(
            "/v1/iclients", {**body, "name": "wrong secret", "client_secret": "not-the-secret"}
        )
    ).json
    r = await env.a.post("/v1/connections", connection_body(server, bad["id"]))
    assert r.status == 422 and r.json["test"]["error"]["code"] == "auth_failed", r.text
    assert len((await env.a.get("/v1/connections")).json["connections"]) == 1


@SQLITE_ONLY
async def test_broken_client_secret_goes_offline_and_recovers_with_signals(
    oenv: OAuthEnv, server: AuthServer
) -> None:
    env = oenv
    body = iclient_body(server, grant_type="client_credentials", authorization_url=None)
    iclient = (await env.a.post("/v1/iclients", body)).json
    cid = (await env.a.post("/v1/connections", connection_body(server, iclient["id"]))).json["id"]
    assert (await request(env, cid)).status == 200
    async with receiver("whsec_another-receiver-secret") as hook:
        await env.a.call("PUT", "/v1/account/webhook", {"url": hook.url, "secret": hook.secret})
        # The provider rotates the client secret and drops the tokens it issued.
        server.clients[CLIENT_ID].client_secret = "rotated-secret"
        server.revoke_access_tokens()
        r = await env.a.post(f"/v1/connections/{cid}/test")
        assert r.json["ok"] is False and r.json["error"]["code"] == "auth_failed", r.text
        state, reason = await state_of(env, cid)
        assert state == "offline" and "invalid_client" in (reason or "")
        [broke] = await hook.wait_for(1)
        assert (broke["previous_state"], broke["state"]) == ("online", "offline")
        # The user puts the new secret into the iClient: the next test passes.
        r = await env.a.patch(f"/v1/iclients/{iclient['id']}", {"client_secret": "rotated-secret"})
        assert r.status == 200 and r.json["client_secret"] == "********"
        r = await env.a.post(f"/v1/connections/{cid}/test")
        assert r.json["ok"] is True, r.text
        events = await hook.wait_for(2)
        assert (events[1]["previous_state"], events[1]["state"]) == ("offline", "online")
    assert changes(env, "offline") == 1 and changes(env, "online") == 1


# -- the SSRF guard ---------------------------------------------------------------------------


@SQLITE_ONLY
async def test_the_ssrf_guard_keeps_token_and_webhook_requests_off_loopback(
    database_url: str, secret_box: SecretBox
) -> None:
    async with oauth_env(
        database_url, secret_box, deny_private_networks=True, oauth={"webhook_attempts": 1}
    ) as env:
        server = AuthServer()
        server.add_client(CLIENT_ID, CLIENT_SECRET, [env.callback_url])
        with server.running():
            body = iclient_body(server, grant_type="client_credentials", authorization_url=None)
            iclient = (await env.a.post("/v1/iclients", body)).json
            spec = connection_body(server, iclient["id"])
            r = await env.a.post("/v1/connections/test", spec)
            assert r.json["ok"] is False and r.json["error"]["code"] == "auth_failed"
            assert "127.0.0.1 is not an allowed destination" in r.json["error"]["message"]
            assert server.total_token_calls == 0
            # "localhost" resolves to loopback: refused by the guarded resolver.
            spec_named = connection_body(
                server, iclient["id"], base_uri=server.base_url.replace("127.0.0.1", "localhost")
            )
            named = iclient_body(
                server,
                grant_type="client_credentials",
                authorization_url=None,
                token_url=server.base_url.replace("127.0.0.1", "localhost") + "/token",
            )
            iclient2 = (await env.a.post("/v1/iclients", named)).json
            spec_named["http"]["auth"]["oauth2"]["iclient_id"] = iclient2["id"]
            r = await env.a.post("/v1/connections/test", spec_named)
            assert (
                r.json["ok"] is False and "not an allowed destination" in r.json["error"]["message"]
            )
            assert server.total_token_calls == 0

        async with receiver("whsec_guarded-receiver-secret") as hook:
            change = StateChange(env.account_a, "con_x", "offline", "online", reason="test")
            assert await env.service.webhooks.deliver(hook.url, hook.secret, change) is False
            assert hook.events == [] and hook.refused == 0
