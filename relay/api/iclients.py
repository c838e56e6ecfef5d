"""/v1/iclients: the account's OAuth 2.0 clients (design section 6). The client secret
is write-only (``"********"`` on read; on PATCH, ``"********"`` or leaving it out keeps
it); another account's iClient answers 404; deleting one that connections use, 409."""

from __future__ import annotations

from typing import Any

import pydantic
from aiohttp import web

from relay.api.agents import actor_of
from relay.api.errors import invalid_field, invalid_request, read_json, read_json_model
from relay.api.keys import OAUTH, REGISTRY, account_of
from relay.api.merge_patch import apply_merge_patch
from relay.models.connection import MASK
from relay.models.iclient import IClientIn, IClientList, IClientOut
from relay.registry import StoredIClient

READ_ONLY_FIELDS = frozenset(IClientOut.model_fields) - frozenset(IClientIn.model_fields)


def _json(model: pydantic.BaseModel, status: int = 200, **headers: str) -> web.Response:
    return web.json_response(text=model.model_dump_json(), status=status, headers=headers or None)


async def forget_users(request: web.Request, account_id: str, iclient_id: str) -> None:
    """The iClient changed: connections using it get a fresh start (no remembered
    refresh failure holds them back)."""
    service = request.app.get(OAUTH)
    if service is None:
        return
    for connection_id in await request.app[REGISTRY].connections_using_iclient(
        iclient_id, account_id
    ):
        service.manager.forget(connection_id)


async def list_iclients(request: web.Request) -> web.Response:
    account = account_of(request)
    stored = await request.app[REGISTRY].list_iclients(account.id)
    return _json(IClientList(iclients=[s.to_out() for s in stored]))


async def create_iclient(request: web.Request) -> web.Response:
    account = account_of(request)
    spec = await read_json_model(request, IClientIn)
    if spec.client_secret == MASK:
        raise invalid_field("client_secret", "give the secret itself")
    stored = await request.app[REGISTRY].create_iclient(account.id, spec, actor=actor_of(account))
    return _json(stored.to_out(), status=201, Location=f"/v1/iclients/{stored.id}")


async def get_iclient(request: web.Request) -> web.Response:
    account = account_of(request)
    stored = await request.app[REGISTRY].get_iclient(request.match_info["iclient_id"], account.id)
    return _json(stored.to_out())


def merged_spec(stored: StoredIClient, patch: dict[str, Any]) -> IClientIn:
    """The stored iClient changed by a merge ``patch``; ``client_secret`` given as
    ``"********"`` (or left out) keeps the stored one. ApiError(400) naming every bad
    field."""
    patch = {k: v for k, v in patch.items() if k not in READ_ONLY_FIELDS}
    current = stored.spec.model_dump(mode="json")
    merged = apply_merge_patch(current, patch)
    if merged.get("client_secret") == MASK:
        if current.get("client_secret") is None:
            raise invalid_field("client_secret", "no stored secret to keep")
        merged["client_secret"] = current["client_secret"]
    try:
        return IClientIn.model_validate(merged)
    except pydantic.ValidationError as exc:
        raise invalid_request(exc) from None


async def patch_iclient(request: web.Request) -> web.Response:
    account = account_of(request)
    iclient_id = request.match_info["iclient_id"]
    registry = request.app[REGISTRY]
    stored = await registry.get_iclient(iclient_id, account.id)
    patch = await read_json(request)
    if not isinstance(patch, dict):
        raise invalid_field("body", "must be a JSON object (a JSON merge patch)")
    spec = merged_spec(stored, patch)
    if spec == stored.spec:
        return _json(stored.to_out())
    updated = await registry.update_iclient(
        iclient_id, account.id, spec, actor=actor_of(account), expected_version=stored.version
    )
    await forget_users(request, account.id, iclient_id)
    return _json(updated.to_out())


async def delete_iclient(request: web.Request) -> web.Response:
    account = account_of(request)
    iclient_id = request.match_info["iclient_id"]
    await request.app[REGISTRY].delete_iclient(iclient_id, account.id, actor=actor_of(account))
    return web.Response(status=204)


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/v1/iclients", list_iclients)
    app.router.add_post("/v1/iclients", create_iclient)
    app.router.add_get("/v1/iclients/{iclient_id}", get_iclient)
    app.router.add_patch("/v1/iclients/{iclient_id}", patch_iclient)
    app.router.add_delete("/v1/iclients/{iclient_id}", delete_iclient)
