"""Secrets are write-only: never in an answer, the database file (and its WAL) or a
log line; encrypted one by one, and decrypted only with the right key."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from api_helpers import Env, http_spec

from relay.registry import Registry, SecretBox, SecretDecryptError

PASSWORD = "pw-7f3c9a1e-DISTINCT"
TOKEN = "tk-51b2c8d4-DISTINCT"
KEY_PEM = "-----BEGIN PRIVATE KEY-----\nkey-0d9e6f2a-DISTINCT\n-----END PRIVATE KEY-----\n"
CERT_PEM = "-----BEGIN CERTIFICATE-----\ncert\n-----END CERTIFICATE-----\n"
NEW_PASSWORD = "pw-new-88aa77bb-DISTINCT"
SECRETS = (PASSWORD, TOKEN, KEY_PEM, NEW_PASSWORD, "key-0d9e6f2a-DISTINCT")


def _files(db: Path) -> bytes:
    data = b""
    for suffix in ("", "-wal", "-shm", "-journal"):
        p = Path(str(db) + suffix)
        if p.exists():
            data += p.read_bytes()
    return data


async def _create_with_secrets(env: Env) -> None:
    basic = http_spec(
        "basic",
        auth={"type": "basic", "basic": {"username": "u", "password": PASSWORD}},
        client_certificate={"cert_pem": CERT_PEM, "key_pem": KEY_PEM},
    )
    token = http_spec("token", auth={"type": "token", "token": {"token": TOKEN}})
    r1 = await env.a.post("/v1/connections", basic)
    r2 = await env.a.post("/v1/connections", token, params={"verify": "false"})
    assert r1.status == 201 and r2.status == 201
    r3 = await env.a.patch(
        f"/v1/connections/{r1.json['id']}",
        {"http": {"auth": {"basic": {"password": NEW_PASSWORD}}}},
    )
    assert r3.status == 200
    # A failed test (its result is echoed) must not echo secrets either.
    env.executor.fail_with()
    r4 = await env.a.post("/v1/connections", basic)
    assert r4.status == 422
    for r in (r1, r2, r3, r4):
        for secret in SECRETS:
            assert secret not in r.text
    listed = await env.a.get("/v1/connections")
    for secret in SECRETS:
        assert secret not in listed.text
    assert listed.json["connections"][0]["http"]["client_certificate"] == {
        "cert_pem": CERT_PEM,
        "key_pem": "********",
    }
    assert listed.json["connections"][1]["http"]["auth"]["token"]["token"] == "********"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_secrets_absent_from_database_files_and_logs(
    env: Env, log_stream: io.StringIO
) -> None:
    await _create_with_secrets(env)
    assert env.db_path is not None
    raw = _files(env.db_path)
    assert b"connections" in raw  # we are reading the right file
    for secret in SECRETS:
        assert secret.encode() not in raw, secret
    # After a checkpoint too (the WAL folded into the main file).
    await env.registry.close()
    raw = _files(env.db_path)
    for secret in SECRETS:
        assert secret.encode() not in raw, secret
    logs = log_stream.getvalue()
    assert "api_request" in logs  # logging was on
    for secret in SECRETS:
        assert secret not in logs, secret


async def test_stored_documents_hold_ciphertext(env: Env, secret_box: SecretBox) -> None:
    await _create_with_secrets(env)
    from relay.registry.models import connections

    async with env.registry._read() as conn:
        rows = (await conn.execute(connections.select())).all()
    assert len(rows) == 2
    for row in rows:
        for secret in SECRETS:
            assert secret not in row.document


async def test_wrong_key_cannot_read_connections(env: Env, database_url: str) -> None:
    await _create_with_secrets(env)
    other = await Registry.open(database_url, secrets=SecretBox(SecretBox.generate_key()))
    try:
        with pytest.raises(SecretDecryptError):
            await other.list_connections(env.account_a)
    finally:
        await other.close()
