"""The API with the real ``HttpExecutor``: Save & continue, the envelope and the proxy
against a real local HTTP server, in cloud mode and through a real agent; the
connection's secret reaches the upstream and nowhere else."""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from api_helpers import TIMEOUT, Env, make_agent, running_env, ssh_endpoint

from relay.registry import SecretBox
from relay.routing.executor import HttpExecutor

PASSWORD = "upstream-pw-3c4d5e6f"


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[int, list[web.Request]]]:
    """A real HTTP API on 127.0.0.1:0: Basic auth (bob / PASSWORD) on every route."""
    seen: list[web.Request] = []
    good = "Basic " + base64.b64encode(f"bob:{PASSWORD}".encode()).decode()

    @web.middleware
    async def auth(request: web.Request, handler):  # type: ignore[no-untyped-def]
        seen.append(request)
        if request.headers.get("Authorization") != good:
            return web.json_response({"error": "bad credentials"}, status=401)
        return await handler(request)

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def orders(request: web.Request) -> web.Response:
        return web.json_response({"orders": [1, 2], "limit": request.query.get("limit")})

    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=await request.read(), content_type="application/octet-stream")

    app = web.Application(middlewares=[auth])
    app.router.add_get("/api/health", health)
    app.router.add_get("/api/orders", orders)
    app.router.add_post("/api/echo", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield port, seen
    await runner.cleanup()


@pytest.fixture
async def real_env(database_url: str, secret_box: SecretBox) -> AsyncIterator[Env]:
    def make(hub, registry):  # type: ignore[no-untyped-def]
        # The upstream is on loopback: lift the SSRF guard meant for the cloud.
        return HttpExecutor(hub=hub, registry=registry, deny_private_networks=False)

    async with running_env(database_url, secret_box, make) as e:
        yield e


def spec(port: int, password: str = PASSWORD, **extra: object) -> dict[str, object]:
    """A connection to the ``upstream`` API with Basic credentials."""
    return {
        "name": "local",
        "http": {
            "base_uri": f"http://127.0.0.1:{port}/api",
            "auth": {"type": "basic", "basic": {"username": "bob", "password": password}},
            "ping": {"relative_uri": "/health"},
        },
        **extra,
    }


async def test_cloud_connection_end_to_end(
    real_env: Env, upstream: tuple[int, list[web.Request]], log_stream: io.StringIO
) -> None:
    port, seen = upstream
    env = real_env
    r = await env.a.post("/v1/connections", spec(port, "wrong-password"))
    assert r.status == 422, r.text
    assert r.json["test"]["error"]["code"] == "auth_failed"
    assert (await env.a.get("/v1/connections")).json == {"connections": []}

    r = await env.a.post("/v1/connections/test", spec(port))
    assert r.status == 200 and r.json["ok"] is True and r.json["status"] == 200

    r = await env.a.post("/v1/connections", spec(port), headers={"X-Request-Id": "save-1"})
    assert r.status == 201, r.text
    con = r.json
    assert con["state"] == "online"
    cid = con["id"]

    r = await env.a.post(f"/v1/connections/{cid}/test")
    assert r.status == 200 and r.json["ok"] is True

    r = await env.a.post(
        f"/v1/connections/{cid}/request", {"method": "GET", "relative_uri": "/orders?limit=5"}
    )
    assert r.status == 200, r.text
    assert r.json["status"] == 200 and r.json["body"] == {"orders": [1, 2], "limit": "5"}
    assert r.json["route"] == "cloud"

    payload = bytes(range(256)) * 1024
    async with env.a.session.post(
        f"{env.base}/v1/connections/{cid}/proxy/echo",
        data=io.BytesIO(payload),
        headers=env.a.headers({"X-Request-Id": "proxy-1"}),
    ) as resp:
        assert resp.status == 200
        assert resp.headers["X-Request-Id"] == "proxy-1"
        assert await resp.read() == payload
    # The relay's own bearer token never went upstream; the connection's did.
    for request in seen:
        assert env.a.token not in str(request.headers)

    # Change the password to a wrong one: the re-test fails, nothing changes.
    r = await env.a.patch(
        f"/v1/connections/{cid}", {"http": {"auth": {"basic": {"password": "nope"}}}}
    )
    assert r.status == 422
    stored = await env.registry.get_connection(cid, env.account_a)
    assert stored.spec.http.auth.basic.password == PASSWORD  # type: ignore[union-attr]

    logs = log_stream.getvalue()
    assert "save-1" in logs  # log lines carry the request id
    assert PASSWORD not in logs and "wrong-password" not in logs


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_onpremise_connection_through_a_real_agent(
    real_env: Env, upstream: tuple[int, list[web.Request]], tmp_path: Path
) -> None:
    port, _ = upstream
    env = real_env
    async with ssh_endpoint(env, tmp_path) as (ssh_port, host_key):
        agent_json = (await env.a.post("/v1/agents", {"name": "gw"})).json
        body = spec(port, mode="onpremise", agent_id=agent_json["id"])

        # Agent offline: the test fails with agent_offline and nothing is saved.
        r = await env.a.post("/v1/connections", body)
        assert r.status == 422 and r.json["test"]["error"]["code"] == "agent_offline"
        assert r.json["test"]["route"] == "onpremise"

        agent = make_agent(
            ssh_port, host_key, agent_json["id"], agent_json["token"], [f"127.0.0.1:{port}"]
        )
        task = asyncio.create_task(agent.run())
        try:
            async with asyncio.timeout(TIMEOUT):
                await env.hub.wait_online(agent_json["id"], TIMEOUT)
            r = await env.a.post("/v1/connections", body)
            assert r.status == 201, r.text
            cid = r.json["id"]
            r = await env.a.post(f"/v1/connections/{cid}/request", {"relative_uri": "/orders"})
            assert r.status == 200 and r.json["route"] == "onpremise"
            # Account B can neither see nor use it.
            r = await env.b.post(f"/v1/connections/{cid}/request", {"relative_uri": "/orders"})
            assert r.status == 404
            # Deleting closes its pooled stream, so the agent stops without waiting.
            assert (await env.a.delete(f"/v1/connections/{cid}")).status == 204
        finally:
            await agent.stop()
            async with asyncio.timeout(TIMEOUT):
                await asyncio.gather(task, return_exceptions=True)


async def test_testing_unsaved_changes_of_a_saved_connection(
    real_env: Env, upstream: tuple[int, list[web.Request]]
) -> None:
    """Test connection on an edit form: the body is a merge patch over the saved
    settings (the mask keeps the stored password), and nothing is recorded."""
    port, _ = upstream
    env = real_env
    r = await env.a.post("/v1/connections", spec(port))
    assert r.status == 201, r.text
    cid, tested_at = r.json["id"], r.json["last_tested_at"]

    # Only the ping changes; the stored password is kept through the mask.
    r = await env.a.post(
        f"/v1/connections/{cid}/test",
        {
            "http": {
                "ping": {"relative_uri": "/nowhere"},
                "auth": {"basic": {"password": "********"}},
            }
        },
    )
    assert r.status == 200 and r.json["ok"] is False and r.json["status"] == 404, r.text
    r = await env.a.post(
        f"/v1/connections/{cid}/test", {"http": {"ping": {"relative_uri": "/orders"}}}
    )
    assert r.status == 200 and r.json["ok"] is True, r.text
    r = await env.a.post(
        f"/v1/connections/{cid}/test", {"http": {"auth": {"basic": {"password": "wrong"}}}}
    )
    assert r.json["ok"] is False and r.json["error"]["code"] == "auth_failed"

    # Nothing was saved or recorded by those tests.
    r = await env.a.get(f"/v1/connections/{cid}")
    assert r.json["http"]["ping"]["relative_uri"] == "/health"
    assert r.json["state"] == "online" and r.json["last_tested_at"] == tested_at

    # A bad patch is a 400 naming the field, as for PATCH.
    r = await env.a.post(f"/v1/connections/{cid}/test", {"http": {"base_uri": "ftp://x"}})
    assert r.status == 400 and r.json["error"]["details"][0]["field"] == "http.base_uri"
    r = await env.a.post(f"/v1/connections/{cid}/test", [1, 2])
    assert r.status == 400
