"""/v1/audit: the account's administrative changes, newest first."""

from __future__ import annotations

from aiohttp import web

from relay.api.errors import ApiError
from relay.api.keys import REGISTRY, account_of
from relay.models.api import AuditEventOut, AuditList

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit")
    if raw is None:
        return DEFAULT_LIMIT
    if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise ApiError(
            400,
            "invalid_request",
            "invalid request: limit",
            [{"field": "limit", "message": f"must be an integer from 1 to {MAX_LIMIT}"}],
        )
    return int(raw)


async def list_audit(request: web.Request) -> web.Response:
    account = account_of(request)
    events = await request.app[REGISTRY].list_audit(account.id, limit=_limit(request))
    out = AuditList(
        events=[
            AuditEventOut(
                id=e.id,
                at=e.at,
                actor=e.actor,
                action=e.action,
                target_id=e.target_id,
                details=e.details,
            )
            for e in events
        ]
    )
    return web.json_response(text=out.model_dump_json())


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/v1/audit", list_audit)
