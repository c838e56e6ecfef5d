"""The whole authorization-code flow through the real relay API against an authorization
server we did not write: ``oidc-provider-mock`` (PyPI; flask + authlib, in a thread on
port 0). A browser (an aiohttp session without the API token) follows the relay's 302,
submits the mock's consent form as "alice" and lands on the relay's callback; the
connection is then online after its test, answers requests, refreshes, and notices
when the user revokes the grant at the provider.
"""

from __future__ import annotations

import dataclasses
import re
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from authlib.deprecate import AuthlibDeprecationWarning
from oauth_api_env import OAuthEnv, oauth_env

from relay.registry import SecretBox

# oidc-provider-mock 0.3 uses authlib.jose, which authlib deprecates: the mock's
# business, tolerated for the mock only (its server thread shares the filters).
with warnings.catch_warnings():
    warnings.simplefilter("ignore", AuthlibDeprecationWarning)
    from oidc_provider_mock import run_server_in_thread

pytestmark = [
    pytest.mark.filterwarnings("ignore::authlib.deprecate.AuthlibDeprecationWarning"),
    pytest.mark.parametrize("database_url", ["sqlite"], indirect=True),
]

MOCK_AUTH_ERROR_STATUS = 400  # the mock answers a bad bearer token with 400, not 401


@pytest.fixture
def provider() -> Iterator[str]:
    with run_server_in_thread() as server:
        yield f"http://localhost:{server.server_port}"


@pytest.fixture
async def oenv(database_url: str, secret_box: SecretBox) -> AsyncIterator[OAuthEnv]:
    async with oauth_env(database_url, secret_box) as env:
        yield env


async def consent_in_browser(env: OAuthEnv, cid: str) -> tuple[int, str]:
    """Open /authorize's redirect in a browser, consent as alice, land on the relay."""
    start = await env.begin(cid)
    assert start.status == 302
    provider_url = start.headers["Location"]
    async with aiohttp.ClientSession() as browser:
        async with browser.get(provider_url) as page:
            assert page.status == 200
            assert re.search(r'<form method="post"', await page.text())
        async with browser.post(provider_url, data={"sub": "alice"}) as landed:
            assert str(landed.url).startswith(env.callback_url), landed.url
            return landed.status, await landed.text()


async def request(env: OAuthEnv, cid: str) -> Any:
    return await env.a.post(f"/v1/connections/{cid}/request", {"relative_uri": "/userinfo"})


async def test_authorize_use_refresh_and_detect_revocation(provider: str, oenv: OAuthEnv) -> None:
    env = oenv
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{provider}/.well-known/openid-configuration") as resp,
    ):
        discovery = await resp.json()
    r = await env.a.post(
        "/v1/iclients",
        {
            "name": "oidc-provider-mock",
            "client_id": "relay-test-client",
            "client_secret": "relay-test-secret",
            "authorization_url": discovery["authorization_endpoint"],
            "token_url": discovery["token_endpoint"],
            "client_auth": "basic",  # the mock's refresh grant takes only Basic
            "valid_domains": ["localhost"],
        },
    )
    assert r.status == 201, r.text
    r = await env.a.post(
        "/v1/connections",
        {
            "name": "userinfo",
            "http": {
                "base_uri": provider,
                "auth": {
                    "type": "oauth2",
                    "oauth2": {"iclient_id": r.json["id"], "scope": ["profile", "email"]},
                    "fail_status_code": MOCK_AUTH_ERROR_STATUS,
                },
                "ping": {"relative_uri": "/userinfo"},
            },
        },
    )
    assert r.status == 201 and r.json["state"] == "needs_authorization", r.text
    cid = r.json["id"]

    status, page = await consent_in_browser(env, cid)
    assert status == 200 and "Connected" in page, page
    assert (await env.a.get(f"/v1/connections/{cid}")).json["state"] == "online"
    r = await request(env, cid)
    assert r.status == 200 and r.json["body"]["sub"] == "alice", r.text

    # Refresh before expiry: our copy says the token is about to expire.
    store = env.service.manager.store
    before = await store.load(cid)
    assert before.tokens is not None and before.tokens.refresh_token
    stale = dataclasses.replace(before.tokens, expires_at=time.time() + 5)
    assert await store.store(cid, stale, before.version) is not None
    r = await request(env, cid)
    assert r.status == 200 and r.json["attempts"] == 1, r.text
    after = await store.load(cid)
    assert after.tokens is not None
    assert after.tokens.access_token != before.tokens.access_token
    assert after.tokens.refresh_token == before.tokens.refresh_token  # not rotated: kept

    # The user revokes the grant at the provider: the API refuses the token, the
    # refresh says invalid_grant, the connection needs authorization.
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{provider}/users/alice/revoke-tokens") as resp,
    ):
        assert resp.status == 204
    r = await request(env, cid)
    assert r.status == 409 and r.json["error"]["code"] == "needs_authorization", r.text
    shown = (await env.a.get(f"/v1/connections/{cid}")).json
    assert shown["state"] == "needs_authorization" and "invalid_grant" in shown["state_reason"]

    # Authorizing again brings it back.
    status, page = await consent_in_browser(env, cid)
    assert status == 200 and "Connected" in page
    assert (await request(env, cid)).status == 200
