"""/v1/connections: create (Save & continue: test first), list, show, change (JSON
merge patch, re-tested) and delete HTTP connections. Secrets are write-only."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pydantic
from aiohttp import web

from relay.api.agents import actor_of
from relay.api.errors import (
    ApiError,
    TestFailedError,
    invalid_field,
    invalid_request,
    read_json,
    read_json_model,
)
from relay.api.keys import EXECUTOR, OAUTH, REGISTRY, account_of, request_id_of
from relay.api.merge_patch import apply_merge_patch
from relay.models.api import ConnectionList
from relay.models.connection import MASK, ConnectionIn, ConnectionOut
from relay.oauth.errors import TokenError
from relay.registry import AccountInfo, StateUpdate, StoredConnection
from relay.registry.connections import SECRET_PATHS, get_path, set_path
from shared.logging import get_logger

log = get_logger("relay.api.connections")

NOT_TESTED = "not tested"
NEEDS_AUTHORIZATION = "not authorized yet: open /v1/connections/{id}/authorize"
# What PATCH ignores: shown on read, never written (so a GET body can be sent back).
READ_ONLY_FIELDS = frozenset(ConnectionOut.model_fields) - frozenset(ConnectionIn.model_fields)
_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})


def verify_flag(request: web.Request) -> bool:
    """``?verify=false`` saves without testing."""
    raw = request.query.get("verify")
    if raw is None or raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise invalid_field("verify", "must be true or false")


def _json(model: pydantic.BaseModel, status: int = 200, **headers: str) -> web.Response:
    return web.json_response(text=model.model_dump_json(), status=status, headers=headers or None)


def _field(path: tuple[str, ...]) -> str:
    return ".".join(path)


def _reject_masks(spec: ConnectionIn) -> None:
    """On create there is no stored value the mask could stand for."""
    doc = spec.model_dump(mode="json")
    bad = [_field(p) for p in SECRET_PATHS if get_path(doc, p) == MASK]
    if bad:
        raise ApiError(
            400,
            "invalid_request",
            f"invalid request: {', '.join(bad)}",
            [{"field": f, "message": "give the secret itself"} for f in bad],
        )


async def _test_or_fail(
    request: web.Request, account: AccountInfo, spec: ConnectionIn, connection_id: str | None
) -> datetime:
    """Run Test connection; TestFailedError (422) unless it passes. The test time."""
    executor = request.app.get(EXECUTOR)
    if executor is None:
        raise ApiError(503, "unavailable", "connection tests are not available on this relay")
    result = await executor.test(
        account.id, spec, connection_id=connection_id, request_id=request_id_of(request)
    )
    if not result.ok:
        raise TestFailedError(result)
    return datetime.now(UTC)


async def list_connections(request: web.Request) -> web.Response:
    account = account_of(request)
    stored = await request.app[REGISTRY].list_connections(account.id)
    return _json(ConnectionList(connections=[c.to_out() for c in stored]))


async def create_connection(request: web.Request) -> web.Response:
    """Save & continue: test, then save (422 and nothing saved when the test fails)."""
    account = account_of(request)
    verify = verify_flag(request)
    spec = await read_json_model(request, ConnectionIn)
    _reject_masks(spec)
    registry = request.app[REGISTRY]
    # Before testing: a test must never go through another account's agent.
    await registry.check_connection_refs(account.id, spec)
    tested_at: datetime | None = None
    if await _uses_authorization_code(request, account, spec):
        state, reason = "needs_authorization", NEEDS_AUTHORIZATION
    elif not verify:
        state, reason = "offline", NOT_TESTED
    else:
        # client_credentials too: the test fetches a token of its own, stored nowhere.
        tested_at = await _test_or_fail(request, account, spec, None)
        state, reason = "online", None
    stored = await registry.create_connection(
        account.id,
        spec,
        state=state,
        state_reason=reason,
        tested_at=tested_at,
        actor=actor_of(account),
    )
    return _json(stored.to_out(), status=201, Location=f"/v1/connections/{stored.id}")


async def get_connection(request: web.Request) -> web.Response:
    account = account_of(request)
    stored = await request.app[REGISTRY].get_connection(
        request.match_info["connection_id"], account.id
    )
    return _json(stored.to_out())


def merged_spec(stored: StoredConnection, patch: dict[str, Any]) -> ConnectionIn:
    """The stored settings changed by a merge ``patch``; a secret given as ``MASK``
    (or left out) keeps its stored value. ApiError(400) naming every bad field."""
    patch = {k: v for k, v in patch.items() if k not in READ_ONLY_FIELDS}
    current = stored.spec.model_dump(mode="json")
    merged = apply_merge_patch(current, patch)
    missing = []
    for path in SECRET_PATHS:
        if get_path(merged, path) != MASK:
            continue
        kept = get_path(current, path)
        if kept is None:
            missing.append(_field(path))
        else:
            set_path(merged, path, kept)
    try:
        spec = ConnectionIn.model_validate(merged)
    except pydantic.ValidationError as exc:
        error = invalid_request(exc)
        if missing:
            error.details += [{"field": f, "message": "no stored secret to keep"} for f in missing]
        raise error from None
    if missing:
        raise ApiError(
            400,
            "invalid_request",
            f"invalid request: {', '.join(missing)}",
            [{"field": f, "message": "no stored secret to keep"} for f in missing],
        )
    return spec


async def _uses_authorization_code(
    request: web.Request, account: AccountInfo, spec: ConnectionIn
) -> bool:
    """An OAuth 2.0 connection whose iClient needs a user's consent: it cannot be
    tested before ``/authorize`` and the callback. (client_credentials connections
    are tested like any other.) The iClient was checked to be the account's own."""
    auth = spec.http.auth
    if auth.type != "oauth2" or auth.oauth2 is None:
        return False
    iclient = await request.app[REGISTRY].get_iclient(auth.oauth2.iclient_id, account.id)
    return iclient.spec.grant_type == "authorization_code"


def oauth_changed(old: ConnectionIn, new: ConnectionIn) -> bool:
    """The connection's OAuth setup changed: tokens got for the old one are void."""
    was, now = old.http.auth, new.http.auth
    return was.type == "oauth2" and (now.type != "oauth2" or was.oauth2 != now.oauth2)


async def _needs_authorization(
    request: web.Request, account: AccountInfo, old: StoredConnection, new: ConnectionIn
) -> bool:
    """Authorization-code connections need (re-)authorizing when they become OAuth or
    their OAuth settings change; until then they are not tested."""
    if not await _uses_authorization_code(request, account, new):
        return False
    return (
        old.spec.http.auth.type != "oauth2"
        or old.state == "needs_authorization"
        or old.spec.http.auth.oauth2 != new.http.auth.oauth2
    )


async def patch_connection(request: web.Request) -> web.Response:
    account = account_of(request)
    connection_id = request.match_info["connection_id"]
    verify = verify_flag(request)
    registry = request.app[REGISTRY]
    stored = await registry.get_connection(connection_id, account.id)
    patch = await read_json(request)
    if not isinstance(patch, dict):
        raise invalid_field("body", "must be a JSON object (a JSON merge patch)")
    spec = merged_spec(stored, patch)
    if spec == stored.spec:
        return _json(stored.to_out())
    await registry.check_connection_refs(account.id, spec, connection_id)
    tested_at: datetime | None = None
    if await _needs_authorization(request, account, stored, spec):
        state, reason = "needs_authorization", NEEDS_AUTHORIZATION
    elif not verify:
        state, reason = "offline", NOT_TESTED
    else:
        tested_at = await _test_or_fail(request, account, spec, connection_id)
        state, reason = "online", None
    updated = await registry.update_connection(
        connection_id,
        account.id,
        spec,
        actor=actor_of(account),
        expected_version=stored.version,
        state=state,
        state_reason=reason,
        tested_at=tested_at,
    )
    await _forget(request, connection_id)
    service = request.app.get(OAUTH)
    if service is not None:
        if oauth_changed(stored.spec, spec):
            await service.manager.discard(connection_id)
        await service.states.changed(
            StateUpdate(connection_id, account.id, stored.state, state, reason)
        )
    return _json(updated.to_out())


async def delete_connection(request: web.Request) -> web.Response:
    """Delete; an OAuth 2.0 connection's grant is then revoked at the provider (RFC
    7009) when its iClient has a revoke URL. A refused or failed revocation is logged
    and does not undo the delete."""
    account = account_of(request)
    connection_id = request.match_info["connection_id"]
    registry = request.app[REGISTRY]
    service = request.app.get(OAUTH)
    stored = await registry.get_connection(connection_id, account.id)
    auth = stored.spec.http.auth
    grant = None
    if service is not None and auth.type == "oauth2" and auth.oauth2 is not None:
        # Read before the delete, which drops the token row with the connection.
        grant = (await service.manager.store.load(connection_id)).tokens
    await registry.delete_connection(connection_id, account.id, actor=actor_of(account))
    await _forget(request, connection_id)
    if service is not None and grant is not None and auth.oauth2 is not None:
        try:
            target = await service.target(account.id, connection_id, auth.oauth2)
            await service.manager.revoke_tokens(target, grant)
        except TokenError as exc:
            log.warning(
                "oauth_revoke_failed",
                connection_id=connection_id,
                error=exc.error,
                reason=exc.message,
            )
    return web.Response(status=204)


async def _forget(request: web.Request, connection_id: str) -> None:
    """Let the executor drop what it pooled for the old settings, and the token
    manager what it remembered about failures."""
    executor = request.app.get(EXECUTOR)
    if executor is not None:
        await executor.forget(connection_id)
    service = request.app.get(OAUTH)
    if service is not None:
        service.manager.forget(connection_id)


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/v1/connections", list_connections)
    app.router.add_post("/v1/connections", create_connection)
    app.router.add_get("/v1/connections/{connection_id}", get_connection)
    app.router.add_patch("/v1/connections/{connection_id}", patch_connection)
    app.router.add_delete("/v1/connections/{connection_id}", delete_connection)
