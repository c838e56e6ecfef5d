"""/v1/iclients and /v1/account/webhook: validated, secrets write-only and encrypted at
rest, walled off per account, and an iClient in use cannot be deleted."""

from __future__ import annotations

from typing import Any

import pytest
from api_helpers import Env, http_spec

from relay.registry.models import account_webhooks, iclients

SECRET = "icl-secret-5e1f0c2b-DISTINCT"


def iclient(**overrides: Any) -> dict[str, Any]:
    return {
        "name": "Acme app",
        "client_id": "acme-id",
        "client_secret": SECRET,
        "authorization_url": "https://auth.acme.com/authorize",
        "token_url": "https://auth.acme.com/token",
        "valid_domains": ["api.acme.com", "*.acme.io"],
        **overrides,
    }


def oauth_spec(iclient_id: str, name: str = "acme api") -> dict[str, Any]:
    return http_spec(name, auth={"type": "oauth2", "oauth2": {"iclient_id": iclient_id}})


async def test_crud_with_a_write_only_secret(env: Env) -> None:
    r = await env.a.post("/v1/iclients", iclient())
    assert r.status == 201, r.text
    created = r.json
    assert r.headers["Location"] == f"/v1/iclients/{created['id']}"
    assert created["id"].startswith("icl_") and created["client_secret"] == "********"
    assert created["pkce"] is True and created["client_auth"] == "body"
    assert created["token_location"] == "header" and created["header_scheme"] == "Bearer"
    assert (await env.a.get(f"/v1/iclients/{created['id']}")).json == created
    assert (await env.a.get("/v1/iclients")).json == {"iclients": [created]}

    # PATCH is a merge patch; the masked (or absent) secret keeps the stored one, and
    # a GET body can be sent back as it is.
    r = await env.a.patch(f"/v1/iclients/{created['id']}", {**created, "name": "Acme (prod)"})
    assert r.status == 200 and r.json["name"] == "Acme (prod)", r.text
    stored = await env.registry.get_iclient(created["id"], env.account_a)
    assert stored.spec.client_secret == SECRET and stored.version == 2
    r = await env.a.patch(f"/v1/iclients/{created['id']}", {"client_secret": "new-secret"})
    assert r.status == 200 and r.json["client_secret"] == "********"
    stored = await env.registry.get_iclient(created["id"], env.account_a)
    assert stored.spec.client_secret == "new-secret"
    # null removes the secret (a public client, with PKCE).
    r = await env.a.patch(f"/v1/iclients/{created['id']}", {"client_secret": None})
    assert r.status == 200 and r.json["client_secret"] is None
    r = await env.a.patch(f"/v1/iclients/{created['id']}", {"client_secret": "********"})
    assert r.status == 400 and r.fields() == {"client_secret"}

    assert (await env.a.delete(f"/v1/iclients/{created['id']}")).status == 204
    assert (await env.a.get(f"/v1/iclients/{created['id']}")).status == 404
    actions = [e["action"] for e in (await env.a.get("/v1/audit")).json["events"]]
    assert actions[:5] == [
        "iclient.deleted",
        "iclient.changed",
        "iclient.changed",
        "iclient.changed",
        "iclient.created",
    ]
    assert SECRET not in (await env.a.get("/v1/audit")).text


async def test_validation_names_every_bad_field(env: Env) -> None:
    body = iclient(
        grant_type="client_credentials",
        client_secret=None,
        token_url="http://auth.acme.com/token",
        valid_domains=["https://api.acme.com/"],
        token_location="cookie",
        colour="red",
    )
    r = await env.a.post("/v1/iclients", body)
    assert r.status == 400 and r.error["code"] == "invalid_request"
    assert r.fields() >= {
        "client_secret",
        "token_url",
        "valid_domains.0",
        "token_location",
        "colour",
    }
    r = await env.a.post("/v1/iclients", iclient(client_secret="********"))
    assert r.status == 400 and r.fields() == {"client_secret"}
    r = await env.a.post("/v1/iclients", iclient(authorization_url=None))
    assert r.status == 400 and r.fields() == {"authorization_url"}
    made = (await env.a.post("/v1/iclients", iclient())).json
    r = await env.a.patch(f"/v1/iclients/{made['id']}", {"valid_domains": []})
    assert r.status == 400 and r.fields() == {"valid_domains"}
    r = await env.a.patch(f"/v1/iclients/{made['id']}", [1])
    assert r.status == 400
    assert (await env.a.get(f"/v1/iclients/{made['id']}")).json == made


async def test_other_accounts_get_404_and_cannot_use_it(env: Env) -> None:
    made = (await env.a.post("/v1/iclients", iclient())).json
    iid = made["id"]
    for method, path, body in [
        ("GET", f"/v1/iclients/{iid}", None),
        ("PATCH", f"/v1/iclients/{iid}", {"name": "stolen"}),
        ("DELETE", f"/v1/iclients/{iid}", None),
    ]:
        r = await env.b.call(method, path, body)
        assert r.status == 404 and r.error["code"] == "not_found", (method, r.text)
        missing = await env.b.call(method, path.replace(iid, "icl_doesnotexist"), body)
        assert missing.status == 404
    assert (await env.b.get("/v1/iclients")).json == {"iclients": []}
    # B cannot point a connection (or a test) at A's iClient.
    for path in ("/v1/connections", "/v1/connections/test"):
        r = await env.b.post(path, oauth_spec(iid))
        assert r.status == 400 and r.fields() == {"http.auth.oauth2.iclient_id"}, r.text
    assert (await env.a.get(f"/v1/iclients/{iid}")).json == made


async def test_an_iclient_in_use_cannot_be_deleted(env: Env) -> None:
    made = (await env.a.post("/v1/iclients", iclient())).json
    con = (await env.a.post("/v1/connections", oauth_spec(made["id"]))).json
    assert con["state"] == "needs_authorization"
    assert env.executor.calls == []  # authorization_code: nothing to test with yet
    r = await env.a.delete(f"/v1/iclients/{made['id']}")
    assert r.status == 409 and r.error["code"] == "conflict"
    assert r.error["details"] == [{"connection_id": con["id"], "message": "in use"}]
    # Switched to another auth type, the connection no longer uses it.
    r = await env.a.patch(
        f"/v1/connections/{con['id']}",
        {"http": {"auth": {"type": "none"}}},
        params={"verify": "false"},
    )
    assert r.status == 200, r.text
    assert (await env.a.delete(f"/v1/iclients/{made['id']}")).status == 204
    # ... and cannot go back to it.
    r = await env.a.patch(f"/v1/connections/{con['id']}", {"http": {"auth": {"type": "oauth2"}}})
    assert r.status == 400 and r.fields() == {"http.auth.oauth2.iclient_id"}


async def test_client_credentials_connections_are_tested_on_create(env: Env) -> None:
    made = (
        await env.a.post(
            "/v1/iclients", iclient(grant_type="client_credentials", authorization_url=None)
        )
    ).json
    r = await env.a.post("/v1/connections", oauth_spec(made["id"]))
    assert r.status == 201 and r.json["state"] == "online", r.text
    assert len(env.executor.calls) == 1
    env.executor.fail_with("auth_failed", "the token endpoint answered invalid_client")
    r = await env.a.post("/v1/connections", oauth_spec(made["id"], "second"))
    assert r.status == 422 and r.json["test"]["error"]["code"] == "auth_failed"


async def test_authorize_needs_an_authorization_code_connection(env: Env) -> None:
    plain = (await env.a.post("/v1/connections", http_spec("plain"))).json
    r = await env.a.get(f"/v1/connections/{plain['id']}/authorize")
    assert r.status == 409 and "does not use OAuth 2.0" in r.error["message"]
    cc = (
        await env.a.post(
            "/v1/iclients", iclient(grant_type="client_credentials", authorization_url=None)
        )
    ).json
    con = (await env.a.post("/v1/connections", oauth_spec(cc["id"]))).json
    r = await env.a.get(f"/v1/connections/{con['id']}/authorize")
    assert r.status == 409 and "client_credentials" in r.error["message"]
    r = await env.b.get(f"/v1/connections/{con['id']}/authorize")
    assert r.status == 404
    assert (await env.anon.get(f"/v1/connections/{con['id']}/authorize")).status == 401
    code = (await env.a.post("/v1/iclients", iclient())).json
    con = (await env.a.post("/v1/connections", oauth_spec(code["id"], "code"))).json
    # This app runs without OAuth (no OAuthService installed): 503, not a crash.
    r = await env.a.get(f"/v1/connections/{con['id']}/authorize")
    assert r.status == 503 and r.error["code"] == "unavailable"


async def test_webhook_settings(env: Env) -> None:
    assert (await env.a.get("/v1/account/webhook")).json["url"] is None
    # No secret given and none stored: one is made and shown this once.
    r = await env.a.call("PUT", "/v1/account/webhook", {"url": "https://hooks.acme.com/relay"})
    assert r.status == 200, r.text
    generated = r.json["secret"]
    assert generated.startswith("whsec_") and len(generated) > 40
    assert r.json["signature_header"] == "X-Onprem-Signature"
    shown = (await env.a.get("/v1/account/webhook")).json
    assert shown["url"] == "https://hooks.acme.com/relay" and shown["secret"] == "********"
    hook = await env.registry.get_webhook(env.account_a)
    assert hook is not None and hook.secret == generated
    # A new URL keeps the secret; a given secret replaces it (and is not echoed).
    r = await env.a.call(
        "PUT", "/v1/account/webhook", {"url": "https://hooks.acme.com/v2", "secret": "********"}
    )
    assert r.json["secret"] == "********"
    own = "whsec_my-own-secret-of-enough-length"
    r = await env.a.call(
        "PUT", "/v1/account/webhook", {"url": "https://hooks.acme.com/v2", "secret": own}
    )
    assert r.status == 200 and r.json["secret"] == "********"
    hook = await env.registry.get_webhook(env.account_a)
    assert hook is not None and hook.secret == own
    async with env.registry._read() as conn:
        raw = (await conn.execute(account_webhooks.select())).one()
    assert own not in raw.secret and generated not in raw.secret

    for bad in (
        {"url": "http://hooks.acme.com/relay"},  # cleartext, not loopback
        {"url": "ftp://x"},
        {"url": "https://hooks.acme.com", "secret": "short"},
        {"secret": own},
    ):
        r = await env.a.call("PUT", "/v1/account/webhook", bad)
        assert r.status == 400, bad
    # Per account.
    assert (await env.b.get("/v1/account/webhook")).json["url"] is None
    r = await env.b.call(
        "PUT", "/v1/account/webhook", {"url": "https://b.example/h", "secret": "********"}
    )
    assert r.status == 400 and r.fields() == {"secret"}
    assert (await env.a.delete("/v1/account/webhook")).status == 204
    assert (await env.a.get("/v1/account/webhook")).json["url"] is None
    assert (await env.a.delete("/v1/account/webhook")).status == 204


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_the_secret_is_ciphertext_in_the_database(env: Env) -> None:
    await env.a.post("/v1/iclients", iclient())
    async with env.registry._read() as conn:
        row = (await conn.execute(iclients.select())).one()
    assert SECRET not in row.document and "acme-id" in row.document
