"""/v1/agents: create, list, show, change, delete agents; rotate their access token."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from relay.api.errors import ApiError, read_json_model
from relay.api.keys import CONFIG, HOST_KEY, HUB, REGISTRY, account_of
from relay.cli import agent_relay_address, render_agent_yaml
from relay.hub import AgentHub
from relay.models.agent import (
    AgentCreated,
    AgentIn,
    AgentList,
    AgentOut,
    AgentPatch,
    AgentSessionOut,
    AgentToken,
)
from relay.registry import AccountInfo, AgentInfo
from shared.version import is_outdated

AGENT_ID = r"{agent_id}"


def actor_of(account: AccountInfo) -> str:
    """Who made a change through the API, for the audit trail. API tokens have no id
    of their own (one per account), so the account stands for its token."""
    return f"api:{account.id}"


def agent_out(agent: AgentInfo, hub: AgentHub, min_version: str | None = None) -> AgentOut:
    """The agent with its sessions: the registry's (every relay process) plus any this
    process holds that the registry has not recorded yet."""
    sessions = [
        AgentSessionOut(
            id=s.id,
            remote_addr=s.remote_addr,
            hostname=s.hostname,
            version=s.client_version,
            node_id=s.node_id,
            connected_at=s.connected_at,
            last_seen=s.last_seen,
        )
        for s in agent.sessions
    ]
    known = {s.id for s in sessions}
    sessions += [
        AgentSessionOut(
            id=s.id,
            remote_addr=s.remote_addr,
            hostname=s.hostname,
            version=s.client_version,
            node_id="",
            connected_at=s.connected_at,
        )
        for s in hub.sessions(agent.id)
        if s.id not in known
    ]
    online = bool(sessions) or hub.is_online(agent.id)
    return AgentOut(
        id=agent.id,
        name=agent.name,
        description=agent.description,
        status="online" if online else "offline",
        last_seen=agent.last_seen,
        version=agent.version,
        outdated=any(is_outdated(s.version, min_version) for s in sessions)
        or (not sessions and is_outdated(agent.version, min_version)),
        sessions=sessions,
        created_at=agent.created_at,
        updated_at=agent.updated_at,
    )


def _json(model: Any, status: int = 200) -> web.Response:
    return web.json_response(text=model.model_dump_json(), status=status)


def _registry_value_error(exc: ValueError) -> ApiError:
    # The registry re-checks names; the models check the same, so this is a backstop.
    return ApiError(400, "invalid_request", str(exc), [{"field": "body", "message": str(exc)}])


async def list_agents(request: web.Request) -> web.Response:
    account = account_of(request)
    hub = request.app[HUB]
    agents = await request.app[REGISTRY].list_agents(account.id)
    minimum = request.app[CONFIG].min_agent_version
    return _json(AgentList(agents=[agent_out(a, hub, minimum) for a in agents]))


async def create_agent(request: web.Request) -> web.Response:
    account = account_of(request)
    body = await read_json_model(request, AgentIn)
    try:
        agent, token = await request.app[REGISTRY].create_agent(
            account.id, body.name, body.description, actor=actor_of(account)
        )
    except ValueError as exc:
        raise _registry_value_error(exc) from None
    config = request.app[CONFIG]
    host_key = request.app[HOST_KEY]
    agent_yaml = render_agent_yaml(agent, account.name, agent_relay_address(config), host_key)
    out = agent_out(agent, request.app[HUB], request.app[CONFIG].min_agent_version)
    created = AgentCreated(
        **out.model_dump(), token=token, host_key=host_key, agent_yaml=agent_yaml
    )
    return _json(created, status=201)


async def get_agent(request: web.Request) -> web.Response:
    account = account_of(request)
    agent = await request.app[REGISTRY].get_agent(request.match_info["agent_id"], account.id)
    return _json(agent_out(agent, request.app[HUB], request.app[CONFIG].min_agent_version))


async def patch_agent(request: web.Request) -> web.Response:
    account = account_of(request)
    agent_id = request.match_info["agent_id"]
    body = await read_json_model(request, AgentPatch)
    try:
        agent = await request.app[REGISTRY].update_agent(
            agent_id,
            account.id,
            name=body.name,
            description=body.description,
            actor=actor_of(account),
        )
    except ValueError as exc:
        raise _registry_value_error(exc) from None
    return _json(agent_out(agent, request.app[HUB], request.app[CONFIG].min_agent_version))


async def delete_agent(request: web.Request) -> web.Response:
    account = account_of(request)
    agent_id = request.match_info["agent_id"]
    await request.app[REGISTRY].delete_agent(agent_id, account.id, actor=actor_of(account))
    request.app[HUB].drop_agent(agent_id, "agent deleted")
    return web.Response(status=204)


async def rotate_token(request: web.Request) -> web.Response:
    account = account_of(request)
    agent_id = request.match_info["agent_id"]
    token = await request.app[REGISTRY].rotate_agent_token(
        agent_id, account.id, actor=actor_of(account)
    )
    # Other relay processes drop theirs when they re-check tokens (ssh.token_recheck).
    dropped = request.app[HUB].drop_agent(agent_id, "access token rotated")
    return _json(AgentToken(id=agent_id, token=token, sessions_dropped=dropped))


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/v1/agents", list_agents)
    app.router.add_post("/v1/agents", create_agent)
    app.router.add_get("/v1/agents/{agent_id}", get_agent)
    app.router.add_patch("/v1/agents/{agent_id}", patch_agent)
    app.router.add_delete("/v1/agents/{agent_id}", delete_agent)
    app.router.add_post("/v1/agents/{agent_id}/rotate-token", rotate_token)
