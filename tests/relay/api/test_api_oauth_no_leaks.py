"""Neither the database file (with its WAL) nor any log line of the relay holds an OAuth
token, code, state, PKCE verifier, client secret or webhook secret: the whole flow
through the real API, with refreshes, refused callbacks, a failed code exchange whose
error echoes the code, a revoked grant, a webhook, and revocation on delete.

The values are distinctive and shaped so that the log redaction cannot recognise them
(no ``token=``, no ``Bearer``): a leak would have to be prevented at the source."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from oauth_api_env import OAuthEnv, oauth_env, receiver
from yarl import URL

from relay.registry import SecretBox
from tests.relay.oauth.oauth_authlib_server import AuthServer, Scripted

CLIENT_ID = "zz-client"
CLIENT_SECRET = "ZZSECRETqv7Kp2x9"
HOOK_SECRET = "whsec_ZZHOOKmv3Lq8w2"
# The authorization server's own log lines (request lines with codes in them) are the
# provider's business, not the relay's.
PROVIDER_LOGGERS = ("werkzeug", "authlib")


def _db_bytes(db: Path) -> bytes:
    return b"".join(
        Path(str(db) + suffix).read_bytes()
        for suffix in ("", "-wal", "-shm", "-journal")
        if Path(str(db) + suffix).exists()
    )


async def _exercise(env: OAuthEnv, server: AuthServer, states: list[str]) -> None:
    async with receiver(HOOK_SECRET) as hook:
        r = await env.a.call("PUT", "/v1/account/webhook", {"url": hook.url, "secret": HOOK_SECRET})
        assert r.status == 200 and HOOK_SECRET not in r.text
        r = await env.a.post(
            "/v1/iclients",
            {
                "name": "leaky?",
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
                "authorization_url": f"{server.base_url}/authorize",
                "token_url": f"{server.base_url}/token",
                "revoke_url": f"{server.base_url}/revoke",
                "client_auth": "body",
                "valid_domains": ["127.0.0.1"],
            },
        )
        assert r.status == 201 and CLIENT_SECRET not in r.text
        iclient_id = r.json["id"]
        r = await env.a.post(
            "/v1/connections",
            {
                "name": "api",
                "http": {
                    "base_uri": server.base_url,
                    "auth": {"type": "oauth2", "oauth2": {"iclient_id": iclient_id}},
                    "ping": {"relative_uri": "/api/me"},
                },
            },
        )
        cid = r.json["id"]

        async def callback() -> str:
            url = await env.provider_redirect(cid)
            states.append(URL(url).query["state"])
            return url

        # A refused callback: someone else's state with a real code.
        url = await callback()
        page = await env.open_in_browser(str(URL(url).update_query(state="ZZFORGEDSTATE123")))
        assert page.status == 400
        # A failed exchange, the provider echoing the code back in its error.
        url = await callback()
        code = URL(url).query["code"]
        server.script(
            Scripted(400, json.dumps({"error": "invalid_grant", "error_description": f"{code}?"}))
        )
        page = await env.open_in_browser(url)
        assert page.status == 502 and code not in page.text
        # The real thing, then requests, a refresh, a dead grant, a re-authorization.
        assert (await env.open_in_browser(await callback())).status == 200
        assert (await env.a.post(f"/v1/connections/{cid}/request", {})).status == 200
        server.expire_access_tokens()
        r = await env.a.post(f"/v1/connections/{cid}/request", {"relative_uri": "/api/me"})
        assert r.status == 200 and r.json["attempts"] == 2
        server.revoke_everything()
        r = await env.a.post(f"/v1/connections/{cid}/request", {"relative_uri": "/api/me"})
        assert r.status == 409
        assert (await env.open_in_browser(await callback())).status == 200
        await hook.wait_for(2)
        for r in (await env.a.get(f"/v1/connections/{cid}"), await env.a.get("/v1/audit")):
            assert CLIENT_SECRET not in r.text and "ZZACCESS" not in r.text
        assert (await env.a.delete(f"/v1/connections/{cid}")).status == 204
        assert server.revoke_calls == 1


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_no_secret_in_the_database_or_the_logs(
    log_stream: io.StringIO, database_url: str, secret_box: SecretBox
) -> None:
    server = AuthServer(token_prefix="ZZACCESS", refresh_prefix="ZZREFRESH", code_prefix="ZZCODE")
    states: list[str] = []
    async with oauth_env(database_url, secret_box) as env:
        server.add_client(CLIENT_ID, CLIENT_SECRET, [env.callback_url])
        with server.running():
            await _exercise(env, server, states)
        assert env.db_path is not None
        db_path = env.db_path
        during = _db_bytes(db_path)
    after = _db_bytes(db_path)  # the WAL folded into the file at close

    issued = [t[k] for t in server.issued for k in ("access_token", "refresh_token") if k in t]
    verifiers = [r["form"].get("code_verifier") for r in server.token_requests if "form" in r]
    verifiers = [v for v in verifiers if v]
    secrets = [CLIENT_SECRET, HOOK_SECRET, *issued, *server.codes_issued, *states, *verifiers]
    assert len(issued) >= 6 and len(server.codes_issued) == 4 and len(states) == 4
    assert len(verifiers) == 3
    assert b"oauth_tokens" in during  # the right file
    for raw in (during, after):
        for secret in secrets:
            assert secret.encode() not in raw, secret

    lines = [json.loads(line) for line in log_stream.getvalue().splitlines()]
    ours = [
        json.dumps(line)
        for line in lines
        if not str(line.get("logger", "")).startswith(PROVIDER_LOGGERS)
    ]
    events = {line["event"] for line in lines}
    # Logging was on, and saw the interesting paths.
    assert {
        "oauth_callback_refused",
        "oauth_code_exchange_failed",
        "oauth_token_refreshed",
        "oauth_refresh_failed",
        "connection_state_changed",
        "oauth_tokens_revoked",
        "webhook_delivered",
    } <= events
    text = "\n".join(ours)
    for secret in secrets:
        assert secret not in text, secret
