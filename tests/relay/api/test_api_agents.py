"""/v1/agents over HTTP: create, list, show, change, delete, rotate; auth and ids."""

from __future__ import annotations

import yaml
from api_helpers import HOST_KEY, Env

from agent.config import AgentConfig

AGENT_KEYS = {
    "id",
    "name",
    "description",
    "status",
    "last_seen",
    "version",
    "outdated",
    "sessions",
    "created_at",
    "updated_at",
}


async def test_create_agent_shows_token_once_and_a_valid_agent_yaml(env: Env) -> None:
    r = await env.a.post("/v1/agents", {"name": "erp-gw", "description": "Plant 1"})
    assert r.status == 201, r.text
    body = r.json
    assert set(body) == AGENT_KEYS | {"token", "host_key", "agent_yaml"}
    assert body["id"].startswith("agt_") and body["token"].startswith("oat_")
    assert body["status"] == "offline" and body["sessions"] == []
    assert body["host_key"] == HOST_KEY
    config = AgentConfig.model_validate(yaml.safe_load(body["agent_yaml"]))
    assert config.agent_id == body["id"]
    assert await env.registry.verify_agent_token(body["id"], body["token"])

    shown = await env.a.get(f"/v1/agents/{body['id']}")
    assert shown.status == 200
    assert set(shown.json) == AGENT_KEYS  # no token, no hash
    assert body["token"] not in shown.text
    listed = await env.a.get("/v1/agents")
    assert [a["id"] for a in listed.json["agents"]] == [body["id"]]


async def test_agent_validation_names_every_bad_field(env: Env) -> None:
    r = await env.a.post("/v1/agents", {"name": "", "description": 5, "colour": "red"})
    assert r.status == 400
    assert r.error["code"] == "invalid_request"
    assert r.fields() == {"name", "description", "colour"}
    r = await env.a.post("/v1/agents", {"name": "bad\x00name"})
    assert r.status == 400 and r.fields() == {"name"}


async def test_duplicate_agent_name_is_409(env: Env) -> None:
    assert (await env.a.post("/v1/agents", {"name": "gw"})).status == 201
    r = await env.a.post("/v1/agents", {"name": "gw"})
    assert r.status == 409 and r.error["code"] == "conflict"
    # Another account may use the same name.
    assert (await env.b.post("/v1/agents", {"name": "gw"})).status == 201


async def test_patch_and_delete_agent(env: Env) -> None:
    agent = (await env.a.post("/v1/agents", {"name": "gw"})).json
    r = await env.a.patch(f"/v1/agents/{agent['id']}", {"description": "new text"})
    assert r.status == 200 and r.json["description"] == "new text" and r.json["name"] == "gw"
    r = await env.a.patch(f"/v1/agents/{agent['id']}", {"name": "gw2"})
    assert r.status == 200 and r.json["name"] == "gw2"
    assert r.json["updated_at"] >= agent["updated_at"]
    other = (await env.a.post("/v1/agents", {"name": "other"})).json
    r = await env.a.patch(f"/v1/agents/{other['id']}", {"name": "gw2"})
    assert r.status == 409
    r = await env.a.patch(f"/v1/agents/{agent['id']}", {"name": " "})
    assert r.status == 400 and r.fields() == {"name"}

    r = await env.a.delete(f"/v1/agents/{agent['id']}")
    assert r.status == 204 and r.text == ""
    assert (await env.a.get(f"/v1/agents/{agent['id']}")).status == 404
    assert (await env.a.delete(f"/v1/agents/{agent['id']}")).status == 404

    actions = [e["action"] for e in (await env.a.get("/v1/audit")).json["events"]]
    assert actions[:4] == ["agent.deleted", "agent.created", "agent.changed", "agent.changed"]
    assert all(
        e["actor"] == f"api:{env.account_a}"
        for e in (await env.a.get("/v1/audit")).json["events"][:4]
    )


async def test_rotate_token_via_api(env: Env) -> None:
    agent = (await env.a.post("/v1/agents", {"name": "gw"})).json
    r = await env.a.post(f"/v1/agents/{agent['id']}/rotate-token")
    assert r.status == 200
    assert set(r.json) == {"id", "token", "sessions_dropped"}
    assert r.json["sessions_dropped"] == 0
    assert not await env.registry.verify_agent_token(agent["id"], agent["token"])
    assert await env.registry.verify_agent_token(agent["id"], r.json["token"])
    events = (await env.a.get("/v1/audit")).json["events"]
    assert events[0]["action"] == "agent.token_rotated"
    assert r.json["token"] not in str(events)
