"""The endpoints that execute connections: Test connection (unsaved and stored), the
request envelope and the streaming proxy (design section 6). The work is done by
``relay.routing.executor.HttpExecutor``; this module only moves HTTP in and out."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from aiohttp import web

from relay.api.connections import merged_spec, oauth_changed
from relay.api.errors import ApiError, invalid_field, read_json, read_json_model
from relay.api.keys import EXECUTOR, REGISTRY, account_of, request_id_of
from relay.errors import UpstreamError
from relay.models.connection import ConnectionIn, RequestIn
from relay.routing.executor import HttpExecutor
from relay.routing.failures import http_status

_CHUNK = 64 * 1024
# Caller headers that are about the relay, not the upstream: the relay's own bearer
# token above all. (Hop-by-hop headers are dropped by the executor.)
_NOT_FORWARDED = frozenset({"authorization", "host", "expect", "x-request-id"})


def _executor(request: web.Request) -> HttpExecutor:
    executor = request.app.get(EXECUTOR)
    if executor is None:
        raise ApiError(503, "unavailable", "connection execution is not available on this relay")
    return executor


def _api_error(err: UpstreamError) -> ApiError:
    return ApiError(http_status(err.code), err.code, err.message)


async def test_unsaved(request: web.Request) -> web.Response:
    """POST /v1/connections/test: 200 with the TestResult whenever the body is valid."""
    account = account_of(request)
    spec = await read_json_model(request, ConnectionIn)
    # A test must never go through another account's agent.
    await request.app[REGISTRY].check_connection_refs(account.id, spec)
    result = await _executor(request).test(account.id, spec, request_id=request_id_of(request))
    return web.json_response(result.model_dump(mode="json"))


async def test_stored(request: web.Request) -> web.Response:
    """POST /v1/connections/{id}/test: tests, and records the outcome as the state.

    With a body (a JSON merge patch, as for PATCH: ``"********"`` or a left-out secret
    keeps the stored one), tests the saved settings with those changes and records
    nothing: Test connection on an edit form before Save."""
    account = account_of(request)
    executor = _executor(request)
    registry = request.app[REGISTRY]
    stored = await registry.get_connection(request.match_info["id"], account.id)
    if request.can_read_body:
        patch = await read_json(request)
        if not isinstance(patch, dict):
            raise invalid_field("body", "must be a JSON object (a JSON merge patch)")
        spec = merged_spec(stored, patch)
        await registry.check_connection_refs(account.id, spec, stored.id)
        # The stored tokens belong to the saved OAuth settings only.
        same_oauth = not oauth_changed(stored.spec, spec)
        result = await executor.test(
            account.id,
            spec,
            connection_id=stored.id if same_oauth else None,
            request_id=request_id_of(request),
        )
        return web.json_response(result.model_dump(mode="json"))
    result = await executor.test(
        account.id, stored.spec, connection_id=stored.id, request_id=request_id_of(request)
    )
    await executor.record_test(stored.id, result)
    return web.json_response(result.model_dump(mode="json"))


async def execute_request(request: web.Request) -> web.Response:
    """POST /v1/connections/{id}/request: the JSON envelope in and out."""
    account = account_of(request)
    executor = _executor(request)
    stored = await request.app[REGISTRY].get_connection(request.match_info["id"], account.id)
    req = await read_json_model(request, RequestIn)
    try:
        out = await executor.request(
            account.id, stored.id, stored.spec, req, request_id=request_id_of(request)
        )
    except UpstreamError as err:
        raise _api_error(err) from None
    return web.json_response(out.model_dump(mode="json"))


def _relative_uri(request: web.Request, connection_id: str) -> str:
    # The raw (still percent-encoded) path: decoding and re-encoding would change what
    # the upstream sees (%2F, %3F, ...).
    prefix = f"/v1/connections/{connection_id}/proxy"
    raw = request.rel_url.raw_path
    rel = raw[len(prefix) :] if raw.startswith(prefix) else "/" + request.match_info["path"]
    rel = rel or "/"
    query = request.rel_url.raw_query_string
    return f"{rel}?{query}" if query else rel


async def _request_body(request: web.Request) -> AsyncIterator[bytes]:
    async for chunk in request.content.iter_chunked(_CHUNK):
        yield chunk


async def proxy(request: web.Request) -> web.StreamResponse:
    """* /v1/connections/{id}/proxy/{path}: streamed both ways, never buffered whole."""
    account = account_of(request)
    executor = _executor(request)
    connection_id = request.match_info["id"]
    stored = await request.app[REGISTRY].get_connection(connection_id, account.id)
    headers = {k: v for k, v in request.headers.items() if k.lower() not in _NOT_FORWARDED}
    try:
        upstream = await executor.proxy(
            account.id,
            stored.id,
            stored.spec,
            method=request.method,
            relative_uri=_relative_uri(request, connection_id),
            headers=headers,
            body=_request_body(request) if request.body_exists else None,
            request_id=request_id_of(request),
        )
    except UpstreamError as err:
        raise _api_error(err) from None
    try:
        response = web.StreamResponse(status=upstream.status)
        for name, value in upstream.headers:
            response.headers.add(name, value)
        await response.prepare(request)
        async with contextlib.aclosing(upstream.body(_CHUNK)) as chunks:
            async for chunk in chunks:
                await response.write(chunk)
        await response.write_eof()
        return response
    finally:
        await upstream.release()


def setup_execute_routes(app: web.Application) -> None:
    app.router.add_post("/v1/connections/test", test_unsaved)
    app.router.add_post("/v1/connections/{id}/test", test_stored)
    app.router.add_post("/v1/connections/{id}/request", execute_request)
    app.router.add_route("*", "/v1/connections/{id}/proxy", proxy)
    app.router.add_route("*", "/v1/connections/{id}/proxy/{path:.*}", proxy)
