"""Agents in the console: the list with live status, Create agent (the token shown
once, with agent.yaml and the install commands), Rotate token and Delete, each
confirmed."""

from __future__ import annotations

import re

from aiohttp import web

from relay.console.web import api, api_failure, fetch, form_of, redirect, render, signed_in

_AGENT_ID = re.compile(r"^agt_[a-z0-9]+$")


def _agent_id(request: web.Request) -> str:
    agent_id = request.match_info["agent_id"]
    if not _AGENT_ID.match(agent_id):
        raise web.HTTPNotFound()
    return agent_id


@signed_in
async def agents_page(request: web.Request) -> web.Response:
    answer = await fetch(request, "/v1/agents")
    return render(request, "agents/list.html", {"agents": answer.body["agents"]})


@signed_in
async def agents_status(request: web.Request) -> web.Response:
    """What the list page's script polls to keep the status dots live."""
    answer = await api(request, "GET", "/v1/agents")
    if not answer.ok:
        return web.json_response({"error": answer.error}, status=answer.status)
    return web.json_response(
        {
            "agents": [
                {
                    "id": a["id"],
                    "status": a["status"],
                    "version": a["version"],
                    "outdated": a["outdated"],
                    "last_seen": a["last_seen"],
                    "sessions": len(a["sessions"]),
                }
                for a in answer.body["agents"]
            ]
        }
    )


@signed_in
async def new_agent_page(request: web.Request) -> web.Response:
    return render(request, "agents/new.html", {"values": {}, "errors": {}})


@signed_in
async def create_agent(request: web.Request) -> web.Response:
    form = await form_of(request)
    values = {"name": form.get("name", "").strip(), "description": form.get("description", "")}
    answer = await api(request, "POST", "/v1/agents", json_body=values)
    if answer.status in (400, 409):
        # 409: the name is taken in this account; it belongs next to the name.
        errors = answer.field_errors() if answer.status == 400 else {}
        if answer.status == 409:
            errors["name"] = str(answer.error.get("message", "this name is taken"))
        return render(
            request,
            "agents/new.html",
            {"values": values, "errors": errors, "message": None},
            status=answer.status,
        )
    if not answer.ok:
        return api_failure(request, answer)
    return render(request, "agents/token.html", {"agent": answer.body, "created": True})


@signed_in
async def confirm_page(request: web.Request) -> web.Response:
    """``/agents/{id}/rotate-token`` and ``/agents/{id}/delete``: say what will happen."""
    agent_id = _agent_id(request)
    answer = await fetch(request, f"/v1/agents/{agent_id}")
    action = request.match_info["action"]
    return render(request, "agents/confirm.html", {"agent": answer.body, "action": action})


@signed_in
async def confirmed(request: web.Request) -> web.Response:
    agent_id = _agent_id(request)
    action = request.match_info["action"]
    if action == "rotate-token":
        answer = await api(request, "POST", f"/v1/agents/{agent_id}/rotate-token")
        if not answer.ok:
            return api_failure(request, answer)
        shown = await fetch(request, f"/v1/agents/{agent_id}")
        agent = {**shown.body, "token": answer.body["token"]}
        return render(
            request,
            "agents/token.html",
            {"agent": agent, "created": False, "dropped": answer.body["sessions_dropped"]},
        )
    answer = await api(request, "DELETE", f"/v1/agents/{agent_id}")
    if answer.status == 409:
        shown = await fetch(request, f"/v1/agents/{agent_id}")
        return render(
            request,
            "agents/confirm.html",
            {"agent": shown.body, "action": action, "in_use": answer.connections_in_use()},
            status=409,
        )
    if not answer.ok:
        return api_failure(request, answer)
    raise redirect("/agents", "agent_deleted")


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/agents", agents_page)
    app.router.add_get("/agents/status.json", agents_status)
    app.router.add_get("/agents/new", new_agent_page)
    app.router.add_post("/agents", create_agent)
    app.router.add_get(r"/agents/{agent_id}/{action:rotate-token|delete}", confirm_page)
    app.router.add_post(r"/agents/{agent_id}/{action:rotate-token|delete}", confirmed)
