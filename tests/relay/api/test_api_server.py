"""``relay.server.serve`` wires the API: secrets key, registry, executor, host key;
a connection saved through it is tested by the real executor and stored encrypted."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp import ClientSession, web
from api_helpers import TIMEOUT

import relay.server
from relay.config import RelayConfig
from relay.registry import Registry, SecretBox
from shared.logging import configure_logging


class _Watch(io.StringIO):
    """A log stream that wakes the test when the relay says it is listening."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.loop = loop
        self.listening: asyncio.Future[dict[str, Any]] = loop.create_future()

    def write(self, s: str) -> int:
        for line in s.splitlines():
            if '"relay_listening"' in line and not self.listening.done():
                self.listening.set_result(json.loads(line))
        return super().write(s)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, logging.getLogger("alembic").level)
    yield
    for handler in root.handlers[:]:
        if handler not in saved[0]:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(saved[1])
    logging.getLogger("alembic").setLevel(saved[2])
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


@pytest.fixture
async def upstream() -> AsyncIterator[int]:
    async def health(request: web.Request) -> web.Response:
        ok = request.headers.get("Authorization") == "Bearer upstream-token-9d8c7b"
        return web.json_response({"ok": ok}, status=200 if ok else 401)

    app = web.Application()
    app.router.add_get("/health", health)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield runner.addresses[0][1]
    await runner.cleanup()


async def test_serve_runs_the_api(
    tmp_path: Path, upstream: int, monkeypatch: pytest.MonkeyPatch, restore_logging: None
) -> None:
    config = RelayConfig.model_validate(
        {
            "database_url": "sqlite+aiosqlite:///relay.db",
            "base_dir": str(tmp_path),
            "http": {"listen": "127.0.0.1:0"},
            "ssh": {"listen": "127.0.0.1:0"},
            "cloud": {"deny_private_networks": False},
        }
    )
    registry = await Registry.open(config.database_url, base_dir=str(tmp_path))
    await registry.upgrade()
    _, token = await registry.create_account("acme")
    await registry.close()

    watch = _Watch(asyncio.get_running_loop())
    monkeypatch.setattr(
        relay.server, "configure_logging", lambda level, fmt: configure_logging(level, fmt, watch)
    )
    stop = asyncio.Event()
    task = asyncio.create_task(relay.server.serve(config, stop=stop))
    try:
        await asyncio.wait(
            {watch.listening, task}, timeout=TIMEOUT, return_when=asyncio.FIRST_COMPLETED
        )
        if task.done():
            task.result()  # serve failed: raise why
        listening = watch.listening.result()
        base = f"http://127.0.0.1:{listening['http_port']}"
        auth = {"Authorization": f"Bearer {token}"}
        spec = {
            "name": "local",
            "http": {
                "base_uri": f"http://127.0.0.1:{upstream}",
                "auth": {"type": "token", "token": {"token": "upstream-token-9d8c7b"}},
                "ping": {"relative_uri": "/health"},
            },
        }
        async with ClientSession(headers=auth) as http:
            async with http.post(f"{base}/v1/agents", json={"name": "gw"}) as r:
                agent = await r.json()
                assert r.status == 201
                assert agent["host_key"] == listening["host_key"]
            async with http.post(f"{base}/v1/connections", json=spec) as r:
                assert r.status == 201, await r.text()
                assert (await r.json())["state"] == "online"
            async with http.get(f"{base}/readyz") as r:
                assert r.status == 200
    finally:
        stop.set()
        async with asyncio.timeout(TIMEOUT):
            await task

    # The secrets key was created next to the config, and it is what encrypts.
    key_file = tmp_path / "secrets.key"
    assert key_file.exists() and key_file.stat().st_mode & 0o077 == 0
    registry = await Registry.open(
        config.database_url, base_dir=str(tmp_path), secrets=SecretBox.load_or_create(key_file)
    )
    try:
        account = await registry.get_account_by_name("acme")
        [stored] = await registry.list_connections(account.id)
        assert stored.spec.http.auth.token is not None
        assert stored.spec.http.auth.token.token == "upstream-token-9d8c7b"
    finally:
        await registry.close()
    assert b"upstream-token-9d8c7b" not in (tmp_path / "relay.db").read_bytes()
    assert "upstream-token-9d8c7b" not in watch.getvalue()
