"""The execute endpoints over real HTTP: the relay's own aiohttp app (``make_app``,
with its middlewares) in front of the executor, real upstream servers, a real agent.
Test connection, the request envelope and its error statuses, the streaming proxy,
and the proxy's memory bound with 200 MiB each way."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from routing_harness import TIMEOUT, download_digest, spec, vm_rss_kib
from yarl import URL

from relay.api.app import make_app
from relay.models.connection import ConnectionIn


@dataclass
class Api:
    base: str
    http: aiohttp.ClientSession
    token: str

    def url(self, path: str) -> str:
        return self.base + path

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def post(
        self, path: str, body: Any, headers: dict[str, str] | None = None
    ) -> tuple[int, Any, aiohttp.ClientResponse]:
        all_headers = {**self.auth, **(headers or {})}
        async with self.http.post(self.url(path), json=body, headers=all_headers) as resp:
            return resp.status, await resp.json(), resp


StartApi = Callable[..., Awaitable[Api]]


@pytest.fixture
async def start_api(relay, make_executor) -> AsyncIterator[StartApi]:
    runners: list[web.AppRunner] = []
    sessions: list[aiohttp.ClientSession] = []

    async def start(**executor_kw: Any) -> Api:
        ex = make_executor(**executor_kw)
        app = make_app(
            relay.hub, relay.registry, {"listening": True}, executor=ex, close_executor=False
        )
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        http = aiohttp.ClientSession(auto_decompress=False)
        sessions.append(http)
        return Api(f"http://127.0.0.1:{runner.addresses[0][1]}", http, relay.api_token)

    yield start
    for s in sessions:
        await s.close()
    for r in runners:
        await r.cleanup()


async def save(relay, s: ConnectionIn, state: str = "online") -> str:
    stored = await relay.registry.create_connection(
        relay.account_id, s, state=state, state_reason=None, tested_at=None, actor="test"
    )
    return stored.id


# -- Test connection -------------------------------------------------------------------


async def test_unsaved_test_always_200(start_api, upstream) -> None:
    api = await start_api()
    body = spec(upstream.base, ping={"relative_uri": "/ping"}).model_dump(mode="json")
    status, result, resp = await api.post("/v1/connections/test", body)
    assert status == 200 and result["ok"] is True and result["route"] == "cloud"
    assert resp.headers["X-Request-Id"]
    body["http"]["ping"]["relative_uri"] = "/code/500"
    status, result, _ = await api.post("/v1/connections/test", body)
    assert status == 200 and result["ok"] is False and result["error"]["code"] == "ping_failed"
    status, result, _ = await api.post("/v1/connections/test", {"name": "x"})
    assert status == 400 and result["error"]["code"] == "invalid_request"


async def test_stored_test_records_state(relay, start_api, upstream) -> None:
    api = await start_api()
    cid = await save(relay, spec(upstream.base, ping={"relative_uri": "/code/503"}))
    status, result, _ = await api.post(f"/v1/connections/{cid}/test", None)
    assert status == 200 and result["ok"] is False
    stored = await relay.registry.get_connection(cid, relay.account_id)
    assert stored.state == "offline" and stored.state_reason == "ping answered HTTP 503"
    assert stored.last_tested_at is not None


async def test_other_accounts_connection_is_404(relay, start_api, upstream) -> None:
    api = await start_api()
    cid = await save(relay, spec(upstream.base))
    _, other_token = await relay.registry.create_account("other")
    other = Api(api.base, api.http, other_token)
    for path in (f"/v1/connections/{cid}/test", f"/v1/connections/{cid}/request"):
        status, body, _ = await other.post(path, {})
        assert status == 404, (path, body)
    async with api.http.get(
        api.url(f"/v1/connections/{cid}/proxy/ping"), headers=other.auth
    ) as resp:
        assert resp.status == 404
    assert upstream.seen == []


# -- the envelope -----------------------------------------------------------------------


async def test_request_envelope(relay, start_api, upstream) -> None:
    api = await start_api()
    cid = await save(
        relay, spec(upstream.base + "/", auth={"type": "token", "token": {"token": "up-tok"}})
    )
    status, out, resp = await api.post(
        f"/v1/connections/{cid}/request",
        {
            "method": "POST",
            "relative_uri": "/echo?limit=5",
            "headers": {"X-Trace": "1"},
            "body": {"any": "json"},
        },
        headers={"X-Request-Id": "req_caller_1"},
    )
    assert status == 200, out
    assert out["status"] == 200 and out["route"] == "cloud" and out["attempts"] == 1
    assert out["body"]["query"] == "limit=5"
    assert out["body"]["headers"]["Authorization"] == "Bearer up-tok"  # not the relay token
    assert out["headers"]["X-Upstream"] == "yes"
    assert resp.headers["X-Request-Id"] == "req_caller_1"


async def test_envelope_error_statuses(relay, start_api, start_agent, upstream) -> None:
    api = await start_api(deny_private_networks=True, backoff_initial_s=0.05)
    cases = [
        (
            spec(upstream.base, mode="onpremise", agent_id=relay.agent_id),
            "/ping",
            503,
            "agent_offline",
        ),
        (spec("http://169.254.169.254"), "/latest/meta-data/", 403, "blocked_destination"),
        (
            spec(
                "https://api.example.com",
                auth={"type": "oauth2", "oauth2": {"iclient_id": "icl_x"}},
            ),
            "/",
            409,
            "needs_authorization",
        ),
    ]
    for s, rel, want_status, want_code in cases:
        cid = await save(relay, s)
        status, body, resp = await api.post(f"/v1/connections/{cid}/request", {"relative_uri": rel})
        assert (status, body["error"]["code"]) == (want_status, want_code), body
        assert resp.headers["X-Request-Id"]
    # The rest through the tunnel (loopback servers are fine there: no SSRF guard).
    await start_agent([f"127.0.0.1:{upstream.port}"])
    for http, rel, want_status, want_code in [
        ({"timeout_s": 0.5}, "/hang", 504, "timeout"),
        ({"timeout_s": 0.5}, "/throttle", 429, "rate_limited"),
        ({}, "/code/401", 502, "auth_failed"),
    ]:
        cid = await save(
            relay, spec(upstream.base, mode="onpremise", agent_id=relay.agent_id, **http)
        )
        status, body, _ = await api.post(f"/v1/connections/{cid}/request", {"relative_uri": rel})
        assert (status, body["error"]["code"]) == (want_status, want_code), body
    status, body, _ = await api.post(
        f"/v1/connections/{cid}/request", {"relative_uri": "http://evil/"}
    )
    assert (status, body["error"]["code"]) == (400, "invalid_request")


# -- the proxy --------------------------------------------------------------------------


async def test_proxy_passes_status_headers_and_path(relay, start_api, upstream) -> None:
    api = await start_api()
    cid = await save(
        relay,
        spec(
            upstream.base,
            headers=[{"name": "X-Env", "value": "prod"}],
            auth={"type": "basic", "basic": {"username": "u", "password": "p"}},
        ),
    )
    # encoded=True: send %2F as is (yarl would normalise it to "/" in a query).
    url = URL(api.url(f"/v1/connections/{cid}/proxy/echo?a=1&b=%2F"), encoded=True)
    headers = {
        **api.auth,
        "X-Request-Id": "req_proxy_1",
        "X-Custom": "c",
        "Connection": "keep-alive, X-Drop",
        "X-Drop": "1",
    }
    async with api.http.post(url, data=b"hello", headers=headers) as resp:
        assert resp.status == 200
        assert resp.headers["X-Request-Id"] == "req_proxy_1"
        assert resp.headers["X-Upstream"] == "yes"
        echo = await resp.json()
    assert echo["method"] == "POST" and echo["query"] == "a=1&b=%2F" and echo["body"] == "hello"
    assert echo["headers"]["X-Custom"] == "c" and echo["headers"]["X-Env"] == "prod"
    assert echo["headers"]["Authorization"].startswith("Basic ")  # the connection's, not ours
    assert "X-Drop" not in echo["headers"]
    async with api.http.get(
        api.url(f"/v1/connections/{cid}/proxy/code/418"), headers=api.auth
    ) as resp:
        assert resp.status == 418 and (await resp.json()) == {"code": 418}
        assert (
            "Transfer-Encoding" not in resp.headers
            or resp.headers["Transfer-Encoding"] == "chunked"
        )


async def test_proxy_errors_are_json(relay, start_api) -> None:
    api = await start_api()
    cid = await save(relay, spec("http://127.0.0.1:1", mode="onpremise", agent_id=relay.agent_id))
    async with api.http.get(api.url(f"/v1/connections/{cid}/proxy/x"), headers=api.auth) as resp:
        assert resp.status == 503
        assert (await resp.json())["error"]["code"] == "agent_offline"
        assert resp.headers["X-Request-Id"]


STREAM_BYTES = 200 * 1024 * 1024


async def test_proxy_streams_200mib_each_way_in_bounded_memory(
    relay, start_api, start_agent, upstream
) -> None:
    """200 MiB up and 200 MiB down through relay -> tunnel -> agent -> server, all in
    this process: the process's RSS (relay, agent, client and server together) must
    not grow by 50 MiB."""
    await start_agent([f"127.0.0.1:{upstream.port}"])
    api = await start_api()
    cid = await save(relay, spec(upstream.base, mode="onpremise", agent_id=relay.agent_id))
    proxy = api.url(f"/v1/connections/{cid}/proxy")
    block = os.urandom(256 * 1024)

    async def upload(total: int) -> AsyncIterator[bytes]:
        sent = 0
        while sent < total:
            piece = block[: min(len(block), total - sent)]
            sent += len(piece)
            yield piece

    async def roundtrip(total: int) -> tuple[dict[str, Any], str, int]:
        async with api.http.post(
            proxy + "/upload",
            data=upload(total),
            headers={**api.auth, "Content-Length": str(total)},
        ) as resp:
            assert resp.status == 200
            up = await resp.json()
        digest = hashlib.sha256()
        got = 0
        async with api.http.get(proxy + f"/download?n={total}", headers=api.auth) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Length"] == str(total)
            async for chunk in resp.content.iter_chunked(256 * 1024):
                digest.update(chunk)
                got += len(chunk)
        return up, digest.hexdigest(), got

    await roundtrip(4 * 1024 * 1024)  # warm up: pools, buffers, code paths
    baseline = vm_rss_kib()
    peak = baseline
    done = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, vm_rss_kib())
            await asyncio.sleep(0.05)

    sampler = asyncio.create_task(sample())
    started = time.monotonic()
    try:
        async with asyncio.timeout(6 * TIMEOUT):
            up, down_digest, got = await roundtrip(STREAM_BYTES)
    finally:
        done.set()
        await sampler
    elapsed = time.monotonic() - started
    peak = max(peak, vm_rss_kib())
    expected_up = hashlib.sha256()
    sent = 0
    while sent < STREAM_BYTES:
        piece = block[: min(len(block), STREAM_BYTES - sent)]
        expected_up.update(piece)
        sent += len(piece)
    assert up == {"bytes": STREAM_BYTES, "sha256": expected_up.hexdigest()}
    assert got == STREAM_BYTES and down_digest == download_digest(STREAM_BYTES)
    growth_mib = (peak - baseline) / 1024
    print(f"\nproxy 200 MiB up + 200 MiB down: {elapsed:.1f} s, RSS growth {growth_mib:.1f} MiB")
    assert growth_mib < 50, f"RSS grew by {growth_mib:.1f} MiB"
