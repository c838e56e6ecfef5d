"""OAuth 2.0 endpoints: ``GET /v1/connections/{id}/authorize`` (302 to the provider),
``GET /oauth2/callback`` (no bearer token: the state is the credential), the account's
state-change webhook (``/v1/account/webhook``), and the iClient routes.

The callback answers a browser: a small HTML page (or a redirect to the ``return_url``
given to ``/authorize``), never JSON. Whatever goes wrong with the callback itself
(wrong, reused or expired state; the user said no) is a 400 and stores nothing.
"""

from __future__ import annotations

import html

from aiohttp import web
from yarl import URL

from relay.api import iclients
from relay.api.agents import actor_of
from relay.api.errors import ApiError, invalid_field, read_json_model
from relay.api.keys import CONFIG, EXECUTOR, OAUTH, REGISTRY, account_of, request_id_of
from relay.config import url_origin
from relay.errors import NotFoundError
from relay.models.connection import MASK
from relay.models.iclient import URL_MAX
from relay.models.webhook import AuthorizationOut, WebhookIn, WebhookOut
from relay.oauth.errors import (
    AuthorizationDeniedError,
    CallbackError,
    InvalidStateError,
    TokenError,
)
from relay.oauth.flow import PendingAuthorization, ResolvedClient
from relay.oauth.service import CALLBACK_PATH, OAuthService
from relay.oauth.signals import new_webhook_secret
from relay.oauth.tokens import connection_scope
from relay.registry import AccountWebhook, StoredConnection
from shared.logging import get_logger

log = get_logger("relay.api.oauth")

AUTHORIZE_PATH = "/v1/connections/{connection_id}/authorize"
WEBHOOK_PATH = "/v1/account/webhook"
CALLBACK_ACTOR = "oauth:callback"
# Browser-facing answers: not cached, not framed, and no Referer carrying the code on.
_PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "frame-ancestors 'none'",
}


def install_oauth(app: web.Application, service: OAuthService) -> None:
    """Hand ``service`` to the OAuth endpoints (its owner closes it)."""
    app[OAUTH] = service


def _service(request: web.Request) -> OAuthService:
    service = request.app.get(OAUTH)
    if service is None:
        raise ApiError(503, "unavailable", "OAuth 2.0 is not available on this relay")
    return service


# -- /authorize -----------------------------------------------------------------------


def allowed_return_origins(request: web.Request) -> set[str]:
    config = request.app[CONFIG]
    return {url_origin(config.http.public_url), *config.oauth.return_origins}


def check_return_url(raw: str, allowed: set[str]) -> str:
    """``raw`` if it is an absolute http(s) URL on one of the ``allowed`` origins (so
    the relay is no open redirector); ApiError(400) otherwise."""
    if len(raw) > URL_MAX or any(ord(c) < 33 or ord(c) == 127 for c in raw) or "#" in raw:
        raise invalid_field("return_url", "must be an absolute http(s) URL without a #fragment")
    try:
        origin = url_origin(raw)
    except ValueError:
        raise invalid_field("return_url", "must be an absolute http(s) URL") from None
    if origin not in allowed:
        raise invalid_field(
            "return_url",
            f"must be on {', '.join(sorted(allowed))} (http.public_url or oauth.return_origins)",
        )
    return raw


def _wants_json(request: web.Request) -> bool:
    accept = request.headers.get("Accept", "")
    return "application/json" in accept and "text/html" not in accept


async def authorize(request: web.Request) -> web.StreamResponse:
    account = account_of(request)
    connection_id = request.match_info["connection_id"]
    registry = request.app[REGISTRY]
    stored = await registry.get_connection(connection_id, account.id)
    auth = stored.spec.http.auth
    if auth.type != "oauth2" or auth.oauth2 is None:
        raise ApiError(
            409,
            "conflict",
            f"connection {connection_id} does not use OAuth 2.0 (http.auth.type is "
            f"{auth.type!r}): there is nothing to authorize",
        )
    try:
        iclient = await registry.get_iclient(auth.oauth2.iclient_id, account.id)
    except NotFoundError:
        raise ApiError(
            409,
            "conflict",
            f"the connection's iClient {auth.oauth2.iclient_id} no longer exists",
        ) from None
    if iclient.spec.grant_type != "authorization_code":
        raise ApiError(
            409,
            "conflict",
            f"iClient {iclient.id} uses the client_credentials grant: the relay fetches "
            "its tokens itself, there is nothing to authorize",
        )
    raw_return = request.query.get("return_url")
    return_url = (
        check_return_url(raw_return, allowed_return_origins(request))
        if raw_return is not None
        else None
    )
    service = _service(request)
    url = await service.flow.begin(
        iclient.spec,
        account_id=account.id,
        connection_id=connection_id,
        iclient_id=iclient.id,
        redirect_uri=service.callback_url,
        scope=connection_scope(iclient.spec, auth.oauth2),
        return_url=return_url,
    )
    if _wants_json(request):
        out = AuthorizationOut(
            authorization_url=url,
            redirect_uri=service.callback_url,
            expires_in=int(service.state_store.ttl_s),
        )
        return web.json_response(text=out.model_dump_json(), headers={"Cache-Control": "no-store"})
    raise web.HTTPFound(
        url, headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
    )


# -- the callback -------------------------------------------------------------------------


def page(status: int, title: str, detail: str) -> web.Response:
    """A minimal, self-contained HTML page for the user's browser."""
    body = (
        "<!doctype html>\n<html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width">'
        f"<title>{html.escape(title)}</title></head>"
        '<body style="font-family:sans-serif;max-width:40em;margin:3em auto">'
        f"<h1>{html.escape(title)}</h1><p>{html.escape(detail)}</p>"
        "<p>You can close this window.</p></body></html>\n"
    )
    return web.Response(status=status, text=body, content_type="text/html", headers=_PAGE_HEADERS)


def _back(return_url: str, connection_id: str, result: str, error: str | None) -> web.Response:
    query = {"connection_id": connection_id, "result": result}
    if error:
        query["error"] = error
    target = URL(return_url).extend_query(query)
    return web.Response(status=303, headers={**_PAGE_HEADERS, "Location": str(target)})


async def callback(request: web.Request) -> web.Response:
    """``error=`` first, then the state (single use, bound to the connection), then the
    code exchange, then store, test and set the state."""
    service = request.app.get(OAUTH)
    if service is None:
        # No /authorize could have started a flow here: no state can be valid.
        return page(400, "Authorization failed", "unknown or already used state")
    registry = request.app[REGISTRY]
    resolved: list[tuple[PendingAuthorization, StoredConnection]] = []

    async def resolve(pending: PendingAuthorization) -> ResolvedClient:
        """The connection as it is now: still there, still on the same iClient."""
        try:
            conn = await registry.get_connection(pending.connection_id, pending.account_id)
        except NotFoundError:
            raise InvalidStateError("the connection no longer exists") from None
        auth = conn.spec.http.auth
        if (
            auth.type != "oauth2"
            or auth.oauth2 is None
            or (auth.oauth2.iclient_id != pending.iclient_id)
        ):
            raise CallbackError(
                "the connection's OAuth settings changed during the authorization: start it again"
            )
        try:
            iclient = await service.iclient(pending.account_id, pending.iclient_id)
        except NotFoundError:
            raise CallbackError("the connection's iClient no longer exists") from None
        resolved.append((pending, conn))
        return ResolvedClient(iclient.spec, auth.oauth2.access_token_headers)

    try:
        pending, tokens = await service.flow.complete(str(request.rel_url), resolve)
    except CallbackError as exc:
        log.info("oauth_callback_refused", error=exc.code, reason=exc.message)
        if isinstance(exc, AuthorizationDeniedError) and exc.pending and exc.pending.return_url:
            return _back(exc.pending.return_url, exc.pending.connection_id, "denied", exc.error)
        return page(400, "Authorization failed", exc.message)
    except TokenError as exc:
        # The state was good, the provider would not exchange the code.
        if not resolved:
            raise
        pending, conn = resolved[-1]
        log.warning(
            "oauth_code_exchange_failed", connection_id=conn.id, error=exc.error, reason=exc.message
        )
        if conn.state == "needs_authorization":
            # Still not authorized; say why. (A connection that was authorized before
            # keeps its tokens and its state: nothing was stored.)
            await service.states.set_connection_state(
                conn.id, "needs_authorization", f"the authorization failed: {exc.message}"
            )
        if pending.return_url:
            return _back(pending.return_url, conn.id, "failed", exc.error or exc.code)
        return page(502, "Authorization failed", exc.message)
    conn = resolved[-1][1]
    await service.manager.save_authorized(conn.id, tokens)
    await registry.record_audit(
        pending.account_id,
        CALLBACK_ACTOR,
        "connection.authorized",
        conn.id,
        {"iclient_id": pending.iclient_id, "scope": tokens.scope},
    )
    state, code, reason = await _test_and_record(request, service, pending, conn)
    if pending.return_url:
        return _back(pending.return_url, conn.id, state, code)
    if state == "online":
        return page(200, "Connected", f"{conn.spec.name} is authorized and online.")
    return page(
        200,
        "Authorized, but the connection test failed",
        f"{conn.spec.name} is authorized; its test failed: {reason}",
    )


async def _test_and_record(
    request: web.Request,
    service: OAuthService,
    pending: PendingAuthorization,
    conn: StoredConnection,
) -> tuple[str, str | None, str | None]:
    """Run the connection's test with the new tokens and record the outcome as its
    state: (state, error code, reason)."""
    executor = request.app.get(EXECUTOR)
    if executor is None:
        reason = "authorized; not tested (connection tests are not available on this relay)"
        await service.states.set_connection_state(conn.id, "offline", reason)
        return "offline", "not_tested", reason
    result = await executor.test(
        pending.account_id, conn.spec, connection_id=conn.id, request_id=request_id_of(request)
    )
    await executor.record_test(conn.id, result)
    if result.ok:
        return "online", None, None
    assert result.error is not None
    state = "needs_authorization" if result.error.code == "needs_authorization" else "offline"
    return state, result.error.code, result.error.message


# -- the account's webhook ----------------------------------------------------------------


def _webhook_out(hook: AccountWebhook | None, *, show_secret: bool = False) -> web.Response:
    if hook is None:
        out = WebhookOut()
    else:
        out = WebhookOut(
            url=hook.url,
            secret=hook.secret if show_secret else MASK,
            created_at=hook.created_at,
            updated_at=hook.updated_at,
        )
    return web.json_response(text=out.model_dump_json(), headers={"Cache-Control": "no-store"})


async def get_webhook(request: web.Request) -> web.Response:
    account = account_of(request)
    return _webhook_out(await request.app[REGISTRY].get_webhook(account.id))


async def put_webhook(request: web.Request) -> web.Response:
    """Set the URL (and the secret). Without a secret and none stored, one is made and
    shown in this answer only."""
    account = account_of(request)
    body = await read_json_model(request, WebhookIn)
    registry = request.app[REGISTRY]
    secret = None if body.secret in (None, MASK) else body.secret
    generated = False
    if secret is None and await registry.get_webhook(account.id) is None:
        if body.secret == MASK:
            raise invalid_field("secret", "no stored secret to keep")
        secret, generated = new_webhook_secret(), True
    hook = await registry.set_webhook(account.id, body.url, secret, actor=actor_of(account))
    return _webhook_out(hook, show_secret=generated)


async def delete_webhook(request: web.Request) -> web.Response:
    account = account_of(request)
    await request.app[REGISTRY].delete_webhook(account.id, actor=actor_of(account))
    return web.Response(status=204)


def setup_oauth_routes(app: web.Application) -> None:
    """The iClient CRUD, /authorize, the callback and the webhook settings."""
    iclients.setup_routes(app)
    app.router.add_get(AUTHORIZE_PATH, authorize)
    app.router.add_get(CALLBACK_PATH, callback)
    app.router.add_get(WEBHOOK_PATH, get_webhook)
    app.router.add_put(WEBHOOK_PATH, put_webhook)
    app.router.add_delete(WEBHOOK_PATH, delete_webhook)
