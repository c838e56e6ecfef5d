"""Two ``onprem-relay serve`` processes on one PostgreSQL database (skipped without
``ONPREM_TEST_DATABASE_URL``; CI sets it), against the authlib test server: a flow
started at one relay completes at the other (the state lives in the database), and
50 concurrent requests on an expired token, spread over both, make exactly one
refresh at the provider (lease + compare-and-set + NOTIFY across processes)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from api_helpers import TIMEOUT
from yarl import URL

from relay.oauth.sqlstore import SqlTokenStore
from relay.registry import Registry, SecretBox
from tests.relay.oauth.oauth_authlib_server import AuthServer

CLIENT_ID = "relay-client"
CLIENT_SECRET = "relay-secret-value"
PUBLIC_URL = "https://relay.test"  # behind a "load balancer": the test routes callbacks
STARTUP_TIMEOUT = 3 * TIMEOUT  # a Python process on a loaded machine

pytestmark = pytest.mark.postgres


@dataclasses.dataclass
class RelayProcess:
    proc: asyncio.subprocess.Process
    lines: list[str]
    listening: asyncio.Future[dict[str, Any]]
    reader: asyncio.Task[None]
    base: str = ""


async def _start(name: str, config: Path) -> RelayProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONPREM_")}
    env.pop("PYTHONWARNINGS", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "relay",
        "serve",
        "--config",
        str(config),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    lines: list[str] = []
    listening: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

    async def read() -> None:
        # Drained for the whole run: a full pipe would block the relay's logging.
        assert proc.stderr is not None
        async for raw in proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            lines.append(line)
            if '"relay_listening"' in line and not listening.done():
                listening.set_result(json.loads(line))
        if not listening.done():
            listening.set_exception(RuntimeError(f"{name} exited:\n" + "\n".join(lines[-20:])))

    return RelayProcess(proc, lines, listening, asyncio.create_task(read(), name=name))


async def _stop(relay: RelayProcess) -> None:
    if relay.proc.returncode is None:
        relay.proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(TIMEOUT):
                await relay.proc.wait()
        except TimeoutError:
            relay.proc.kill()
            await relay.proc.wait()
    with contextlib.suppress(Exception):
        async with asyncio.timeout(TIMEOUT):
            await relay.reader


@contextlib.asynccontextmanager
async def two_relays(pg_url: str, tmp_path: Path) -> AsyncIterator[list[RelayProcess]]:
    configs = []
    for i in (1, 2):
        path = tmp_path / f"relay{i}.yaml"
        path.write_text(
            yaml.safe_dump(
                {
                    "database_url": pg_url,
                    "secrets_key_file": str(tmp_path / "secrets.key"),
                    "node_id": f"relay-{i}",
                    "http": {"listen": "127.0.0.1:0", "public_url": PUBLIC_URL},
                    "ssh": {
                        "listen": "127.0.0.1:0",
                        "host_key_file": str(tmp_path / f"host_key_{i}"),
                    },
                    "cloud": {"deny_private_networks": False},
                    "log": {"level": "info", "format": "json"},
                }
            )
        )
        configs.append(path)
    relays = [await _start(f"relay-{i}", c) for i, c in enumerate(configs, 1)]
    try:
        async with asyncio.timeout(STARTUP_TIMEOUT):
            for relay in relays:
                relay.base = f"http://127.0.0.1:{(await relay.listening)['http_port']}"
        yield relays
    finally:
        for relay in relays:
            await _stop(relay)
    assert [r.proc.returncode for r in relays] == [0, 0], [r.lines[-5:] for r in relays]


async def test_two_relay_processes_on_postgresql(pg_url: str, tmp_path: Path) -> None:
    key = SecretBox.generate_key()
    key_file = tmp_path / "secrets.key"
    key_file.write_bytes(key + b"\n")
    key_file.chmod(0o600)
    registry = await Registry.open(pg_url, secrets=SecretBox(key))
    await registry.upgrade()
    _, api_token = await registry.create_account("acme")
    server = AuthServer()
    server.add_client(CLIENT_ID, CLIENT_SECRET, [f"{PUBLIC_URL}/oauth2/callback"])
    store = SqlTokenStore(registry)
    try:
        with server.running():
            async with (
                two_relays(pg_url, tmp_path) as (one, two),
                aiohttp.ClientSession(headers={"Authorization": f"Bearer {api_token}"}) as api,
            ):
                async with api.post(
                    f"{one.base}/v1/iclients",
                    json={
                        "name": "authlib test server",
                        "client_id": CLIENT_ID,
                        "client_secret": CLIENT_SECRET,
                        "authorization_url": f"{server.base_url}/authorize",
                        "token_url": f"{server.base_url}/token",
                        "client_auth": "basic",
                        "valid_domains": ["127.0.0.1"],
                    },
                ) as r:
                    assert r.status == 201, await r.text()
                    iclient_id = (await r.json())["id"]
                async with api.post(
                    f"{one.base}/v1/connections",
                    json={
                        "name": "api",
                        "http": {
                            "base_uri": server.base_url,
                            "auth": {"type": "oauth2", "oauth2": {"iclient_id": iclient_id}},
                            "ping": {"relative_uri": "/api/me"},
                        },
                    },
                ) as r:
                    assert r.status == 201, await r.text()
                    cid = (await r.json())["id"]

                # Started at relay 1 ...
                async with api.get(
                    f"{one.base}/v1/connections/{cid}/authorize", allow_redirects=False
                ) as r:
                    assert r.status == 302
                    provider_url = r.headers["Location"]
                async with aiohttp.ClientSession() as browser:
                    async with browser.get(provider_url, allow_redirects=False) as r:
                        callback = URL(r.headers["Location"])
                    assert str(callback).startswith(f"{PUBLIC_URL}/oauth2/callback?")
                    # ... completed at relay 2, where the load balancer sent the browser.
                    local = URL(two.base).with_path(callback.path).with_query(callback.query)
                    async with browser.get(local) as r:
                        assert r.status == 200 and "Connected" in await r.text()

                # The stored token expires; both relays get 25 requests at once.
                current = await store.load(cid)
                assert current.tokens is not None
                stale = dataclasses.replace(current.tokens, expires_at=time.time() - 5)
                assert await store.store(cid, stale, current.version) is not None

                async def call(base: str) -> int:
                    async with api.post(
                        f"{base}/v1/connections/{cid}/request", json={"relative_uri": "/api/me"}
                    ) as r:
                        return r.status

                async with asyncio.timeout(TIMEOUT):
                    statuses = await asyncio.gather(
                        *(call(relay.base) for _ in range(25) for relay in (one, two))
                    )
                assert statuses == [200] * 50
                assert server.token_calls["refresh_token"] == 1
                refreshed = [
                    line for r in (one, two) for line in r.lines if "oauth_token_refreshed" in line
                ]
                assert len(refreshed) == 1
    finally:
        await store.aclose()
        await registry.close()
