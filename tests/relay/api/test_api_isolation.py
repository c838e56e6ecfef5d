"""Accounts are walled off: another account's ids answer 404 on every route, and its
agents cannot be used in a connection; lists and the audit trail show only one's own."""

from __future__ import annotations

import pytest
from api_helpers import Env, http_spec


async def _a_resources(env: Env) -> tuple[dict, dict, dict]:
    agent = (await env.a.post("/v1/agents", {"name": "gw-a"})).json
    cloud = (await env.a.post("/v1/connections", http_spec("a-cloud"))).json
    onprem = (
        await env.a.post(
            "/v1/connections",
            {**http_spec("a-onprem"), "mode": "onpremise", "agent_id": agent["id"]},
        )
    ).json
    return agent, cloud, onprem


async def test_other_account_gets_404_everywhere(env: Env) -> None:
    agent, cloud, onprem = await _a_resources(env)
    env.executor.calls.clear()
    aid, cid = agent["id"], cloud["id"]
    probes = [
        ("GET", f"/v1/agents/{aid}", None),
        ("PATCH", f"/v1/agents/{aid}", {"name": "stolen"}),
        ("DELETE", f"/v1/agents/{aid}", None),
        ("POST", f"/v1/agents/{aid}/rotate-token", None),
        ("GET", f"/v1/connections/{cid}", None),
        ("PATCH", f"/v1/connections/{cid}", {"name": "stolen"}),
        ("DELETE", f"/v1/connections/{cid}", None),
        ("POST", f"/v1/connections/{cid}/test", None),
        ("POST", f"/v1/connections/{cid}/request", {"method": "GET", "relative_uri": "/"}),
        ("GET", f"/v1/connections/{cid}/proxy/orders", None),
        ("POST", f"/v1/connections/{onprem['id']}/proxy/orders", {"x": 1}),
    ]
    for method, path, body in probes:
        r = await env.b.call(method, path, body)
        assert r.status == 404, (method, path, r.status, r.text)
        assert r.error["code"] == "not_found"
        # The same answer as for an id that does not exist at all.
        missing = path.replace(aid, "agt_doesnotexist").replace(cid, "con_doesnotexist")
        missing = missing.replace(onprem["id"], "con_doesnotexist")
        assert (await env.b.call(method, missing, body)).status == 404

    assert env.executor.calls == [] and env.executor.requests == []
    assert env.executor.proxied == []
    # A's things are untouched.
    assert (await env.a.get(f"/v1/agents/{aid}")).json["name"] == "gw-a"
    assert await env.registry.verify_agent_token(aid, agent["token"])
    assert (await env.a.get(f"/v1/connections/{cid}")).json == cloud
    # ... and A can use them.
    assert (await env.a.post(f"/v1/connections/{cid}/request", {"relative_uri": "/"})).status == 200
    assert (await env.a.get(f"/v1/connections/{cid}/proxy/orders")).text == "proxied"


async def test_other_account_cannot_use_the_agent(env: Env) -> None:
    agent, _, _ = await _a_resources(env)
    env.executor.calls.clear()
    foreign = {**http_spec("b"), "mode": "onpremise", "agent_id": agent["id"]}
    r = await env.b.post("/v1/connections", foreign)
    assert r.status == 400 and r.fields() == {"agent_id"}
    r = await env.b.post("/v1/connections", foreign, params={"verify": "false"})
    assert r.status == 400 and r.fields() == {"agent_id"}
    r = await env.b.post("/v1/connections/test", foreign)
    assert r.status == 400 and r.fields() == {"agent_id"}
    own = (await env.b.post("/v1/connections", http_spec("b"))).json
    r = await env.b.patch(
        f"/v1/connections/{own['id']}", {"mode": "onpremise", "agent_id": agent["id"]}
    )
    assert r.status == 400 and r.fields() == {"agent_id"}
    # Only B's own connection was ever tested, never through A's agent.
    assert all(
        c.account_id == env.account_b and c.spec.agent_id is None for c in env.executor.calls
    )


async def test_lists_and_audit_show_only_own(env: Env) -> None:
    await _a_resources(env)
    assert (await env.b.get("/v1/agents")).json == {"agents": []}
    assert (await env.b.get("/v1/connections")).json == {"connections": []}
    events = (await env.b.get("/v1/audit")).json["events"]
    assert [e["action"] for e in events] == ["account.created"]
    assert len((await env.a.get("/v1/connections")).json["connections"]) == 2


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/agents"),
        ("POST", "/v1/agents"),
        ("GET", "/v1/agents/agt_x"),
        ("PATCH", "/v1/agents/agt_x"),
        ("DELETE", "/v1/agents/agt_x"),
        ("POST", "/v1/agents/agt_x/rotate-token"),
        ("GET", "/v1/connections"),
        ("POST", "/v1/connections"),
        ("POST", "/v1/connections/test"),
        ("GET", "/v1/connections/con_x"),
        ("PATCH", "/v1/connections/con_x"),
        ("DELETE", "/v1/connections/con_x"),
        ("POST", "/v1/connections/con_x/test"),
        ("POST", "/v1/connections/con_x/request"),
        ("GET", "/v1/connections/con_x/proxy/a/b"),
        ("GET", "/v1/audit"),
        ("GET", "/v1/nothing-here"),
    ],
)
async def test_401_without_a_valid_token(env: Env, method: str, path: str) -> None:
    for headers in (
        {},
        {"Authorization": "Bearer oak_wrong"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer " + "x" * 5000},
    ):
        r = await env.anon.call(method, path, headers=headers)
        assert r.status == 401, (method, path, headers, r.status)
        assert r.error["code"] == "unauthorized"
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
        assert r.headers["X-Request-Id"].startswith("req_")
