"""The aiohttp application: health, readiness and metrics endpoints, and the REST API
(design section 6) behind request-id, error and bearer-token middlewares."""

from __future__ import annotations

import asyncio
import contextlib
import re
import string
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from secrets import token_bytes
from typing import TYPE_CHECKING

import pydantic
import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from relay.api import agents, audit, connections, openapi
from relay.api.errors import ApiError, http_code, invalid_request
from relay.api.execute import setup_execute_routes
from relay.api.keys import (
    ACCOUNT,
    CONFIG,
    EXECUTOR,
    HOST_KEY,
    HUB,
    REGISTRY,
    REQUEST_ID,
    SECRETS,
    SSH_READY,
)
from relay.api.oauth import setup_oauth_routes
from relay.config import RelayConfig
from relay.errors import ConflictError, NotFoundError, StreamError, UpstreamError
from relay.hub import AgentHub
from relay.registry import InUseError, InvalidReferenceError, Registry, SecretBox
from relay.routing.failures import http_status as upstream_status

if TYPE_CHECKING:
    from relay.routing.executor import HttpExecutor

__all__ = ["HUB", "REGISTRY", "SSH_READY", "make_app"]

log = structlog.get_logger("relay.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

REQUEST_ID_HEADER = "X-Request-Id"
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,100}")
_REQUEST_ID_ALPHABET = string.ascii_letters + string.digits
_REQUEST_ID_LENGTH = 20
# Random byte -> alphabet letter in one ``bytes.translate`` (byte % 62: the first 8
# letters are 5/4 as likely as the others, still ~119 bits per id).
_REQUEST_ID_TABLE = bytes(
    ord(_REQUEST_ID_ALPHABET[i % len(_REQUEST_ID_ALPHABET)]) for i in range(256)
)
# /v1/ routes anyone may call: the API description and (later) the agents' WebSocket
# tunnel, whose agents authenticate inside SSH.
PUBLIC_V1_PATHS = frozenset({"/v1/openapi.json", "/v1/tunnel"})
_PROBE_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
# Longer "tokens" are refused without hashing them.
_MAX_TOKEN_LENGTH = 512


def new_request_id() -> str:
    # One read of the OS random source (20 secrets.choice() calls read it 20 times).
    return "req_" + token_bytes(_REQUEST_ID_LENGTH).translate(_REQUEST_ID_TABLE).decode("ascii")


def pick_request_id(presented: str | None) -> str:
    """The caller's X-Request-Id if it is sane, else a fresh one."""
    if presented is not None and _SANE_REQUEST_ID.fullmatch(presented):
        return presented
    return new_request_id()


# -- middlewares ------------------------------------------------------------------


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost: a request id for the request, its log lines and its answer; one
    access log line per request."""
    rid = pick_request_id(request.headers.get(REQUEST_ID_HEADER))
    request[REQUEST_ID] = rid
    started = time.monotonic()
    status = 500
    with structlog.contextvars.bound_contextvars(request_id=rid):
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:  # redirects pass the error middleware as is
            status = exc.status
            raise
        finally:
            account = request.get(ACCOUNT)
            # Probes come every few seconds: keep them out of the info log.
            emit = log.debug if request.rel_url.path in _PROBE_PATHS else log.info
            emit(
                "api_request",
                method=request.method,
                path=request.rel_url.path,
                status=status,
                duration_ms=round((time.monotonic() - started) * 1000, 1),
                account_id=getattr(account, "id", None),
            )


async def _add_request_id_header(request: web.BaseRequest, response: web.StreamResponse) -> None:
    # on_response_prepare also covers responses that handlers stream themselves.
    rid = request.get(REQUEST_ID)
    if not isinstance(rid, str):
        rid = new_request_id()
        request[REQUEST_ID] = rid
    response.headers[REQUEST_ID_HEADER] = rid


def error_response(error: ApiError) -> web.Response:
    return web.json_response(error.body(), status=error.status, headers=error.headers or None)


def api_error(exc: Exception) -> ApiError:
    """The answer for an exception a handler let through (never the exception's text
    for unexpected ones: it may hold anything)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, pydantic.ValidationError):
        return invalid_request(exc)
    if isinstance(exc, InvalidReferenceError):
        return ApiError(
            400,
            "invalid_request",
            f"invalid request: {exc.field}",
            [{"field": exc.field, "message": exc.message}],
        )
    if isinstance(exc, NotFoundError):
        return ApiError(404, "not_found", str(exc))
    if isinstance(exc, InUseError):
        details = [{"connection_id": c, "message": "in use"} for c in exc.connection_ids]
        return ApiError(409, "conflict", str(exc), details)
    if isinstance(exc, ConflictError):
        return ApiError(409, "conflict", str(exc))
    if isinstance(exc, UpstreamError):
        return ApiError(upstream_status(exc.code), exc.code, exc.message)
    if isinstance(exc, StreamError):
        return ApiError(upstream_status(exc.code), exc.code, str(exc))
    if isinstance(exc, web.HTTPException):
        allow = exc.headers.get("Allow")
        message = exc.reason if exc.status != 404 else "no such resource"
        return ApiError(
            exc.status,
            http_code(exc.status),
            message,
            headers={"Allow": allow} if allow is not None else None,
        )
    return ApiError(500, "internal_error", "internal error")


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error becomes ``{"error": {"code", "message", "details"}}``."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise  # redirects (the OAuth /authorize 302) pass as they are
        error = api_error(exc)
    except Exception as exc:
        error = api_error(exc)
        if error.status >= 500 and error.code == "internal_error":
            log.exception("api_internal_error", method=request.method, path=request.rel_url.path)
            error.message = f"internal error (request id {request.get(REQUEST_ID)})"
    return error_response(error)


def _bearer(request: web.Request) -> str | None:
    value = request.headers.get("Authorization", "")
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > _MAX_TOKEN_LENGTH:
        return None
    return token


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """``Authorization: Bearer <api token>`` on every /v1/ route but the public ones."""
    path = request.rel_url.path
    if not path.startswith("/v1/") or path in PUBLIC_V1_PATHS:
        return await handler(request)
    token = _bearer(request)
    account = await request.app[REGISTRY].authenticate_api_token(token) if token else None
    if account is None:
        raise ApiError(
            401,
            "unauthorized",
            "a valid API token is required (Authorization: Bearer)",
            headers={"WWW-Authenticate": 'Bearer realm="onprem-relay"'},
        )
    request[ACCOUNT] = account
    with structlog.contextvars.bound_contextvars(account_id=account.id):
        return await handler(request)


# Query parameters each operation takes; any other is a 400, like an unknown body
# field. The proxy passes its query string on to the upstream API untouched.
QUERY_PARAMETERS: dict[tuple[str, str], frozenset[str]] = {
    ("POST", "/v1/connections"): frozenset({"verify"}),
    ("PATCH", "/v1/connections/{connection_id}"): frozenset({"verify"}),
    ("GET", "/v1/audit"): frozenset({"limit"}),
    ("GET", "/v1/connections/{connection_id}/authorize"): frozenset({"return_url"}),
}


@web.middleware
async def query_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse query parameters an operation does not take, naming each."""
    resource = request.match_info.route.resource
    canonical = resource.canonical if resource is not None else ""
    if request.rel_url.query and canonical.startswith("/v1/") and "/proxy" not in canonical:
        allowed = QUERY_PARAMETERS.get((request.method, canonical), frozenset())
        unknown = sorted(set(request.rel_url.query) - allowed)
        if unknown:
            raise ApiError(
                400,
                "invalid_request",
                f"invalid request: unknown query parameter(s) {', '.join(map(repr, unknown))}",
                [
                    {"field": f"query.{name}", "message": "unknown query parameter"}
                    for name in unknown
                ],
            )
    return await handler(request)


# -- health -----------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    checks: dict[str, str] = {}
    try:
        await request.app[REGISTRY].ping()
        checks["database"] = "ok"
    except Exception as exc:  # report, never raise: this is a probe
        checks["database"] = f"error: {type(exc).__name__}"
    checks["ssh"] = "ok" if request.app[SSH_READY].get("listening") else "not listening"
    ok = all(v == "ok" for v in checks.values())
    return web.json_response(
        {"status": "ok" if ok else "unavailable", "checks": checks}, status=200 if ok else 503
    )


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[HUB].metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


# -- application --------------------------------------------------------------------


def _executor_ctx(
    executor: HttpExecutor, *, close: bool, reping_interval_s: float | None
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        task = None
        if reping_interval_s is not None:
            task = asyncio.create_task(executor.run_repinger(reping_interval_s))
        yield
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if close:
            await executor.close()

    return ctx


def make_app(
    hub: AgentHub,
    registry: Registry,
    ssh_ready: dict[str, bool],
    *,
    secrets: SecretBox | None = None,
    config: RelayConfig | None = None,
    executor: HttpExecutor | None = None,
    host_key: str = "",
    close_executor: bool = True,
    reping_interval_s: float | None = None,
) -> web.Application:
    """The relay's HTTP application.

    ``executor`` runs connection tests and requests; without it those endpoints answer
    503. The app closes it on cleanup (unless ``close_executor`` is false) and, with
    ``reping_interval_s``, runs its background re-test of offline connections.
    ``host_key``: the SSH host key fingerprint shown to new agents.
    """
    app = web.Application(
        middlewares=[request_id_middleware, error_middleware, auth_middleware, query_middleware],
    )
    app[HUB] = hub
    app[REGISTRY] = registry
    app[SSH_READY] = ssh_ready
    app[CONFIG] = config or RelayConfig()
    app[HOST_KEY] = host_key
    if secrets is not None:
        app[SECRETS] = secrets
    if executor is not None:
        app[EXECUTOR] = executor
        app.cleanup_ctx.append(
            _executor_ctx(executor, close=close_executor, reping_interval_s=reping_interval_s)
        )
    app.on_response_prepare.append(_add_request_id_header)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    openapi.setup_routes(app)
    agents.setup_routes(app)
    # Before the connection routes: /v1/connections/test must not read as an id.
    setup_execute_routes(app)
    connections.setup_routes(app)
    setup_oauth_routes(app)  # iClients, /authorize, /oauth2/callback (public), webhook
    audit.setup_routes(app)
    return app
