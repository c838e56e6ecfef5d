"""The OpenAPI 3.1 description of the REST API, built from the same pydantic models
that validate requests (served at ``GET /v1/openapi.json``)."""

from __future__ import annotations

import json
from typing import Any

import pydantic
from aiohttp import web
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from relay.models.agent import AgentCreated, AgentIn, AgentList, AgentOut, AgentPatch, AgentToken
from relay.models.api import AuditList, ConnectionList, ErrorBody, TestFailedBody
from relay.models.connection import ConnectionIn, ConnectionOut, RequestIn, RequestOut, TestResult
from shared.version import __version__

OPENAPI_PATH = "/v1/openapi.json"
_REF = "#/components/schemas/{model}"

# (model, mode): request bodies are described as validated, answers as serialized.
_MODELS: list[tuple[type[pydantic.BaseModel], JsonSchemaMode]] = [
    (AgentIn, "validation"),
    (AgentPatch, "validation"),
    (ConnectionIn, "validation"),
    (RequestIn, "validation"),
    (AgentOut, "serialization"),
    (AgentCreated, "serialization"),
    (AgentList, "serialization"),
    (AgentToken, "serialization"),
    (ConnectionOut, "serialization"),
    (ConnectionList, "serialization"),
    (TestResult, "serialization"),
    (RequestOut, "serialization"),
    (AuditList, "serialization"),
    (ErrorBody, "serialization"),
    (TestFailedBody, "serialization"),
]

_ERROR_TEXT = {
    400: "Invalid request: `details` names every bad field",
    401: "No or bad API token",
    403: "The destination is blocked (private network, in cloud mode)",
    404: "No such resource in this account",
    409: "Conflict: in use, or changed meanwhile",
    413: "Body too large",
    422: "The connection test failed; nothing was saved",
    429: "The upstream API kept rate-limiting within the request's deadline",
    502: "The upstream API failed",
    503: "The agent is offline, or the service is unavailable",
    504: "The upstream API or the agent timed out",
}

# One request body example per operation (documentation; the fuzz tests send them too).
EXAMPLES: dict[str, Any] = {
    "AgentIn": {"name": "erp-gateway", "description": "Plant 1, ERP network"},
    "AgentPatch": {"description": "Plant 1, ERP network (rack 4)"},
    "ConnectionIn": {
        "name": "Orders API",
        "mode": "cloud",
        "http": {
            "base_uri": "https://api.example.com/v2",
            "auth": {"type": "token", "token": {"token": "example-token"}},
            "ping": {"method": "GET", "relative_uri": "/health"},
        },
    },
    "ConnectionPatch": {"name": "Orders API (production)", "http": {"timeout_s": 20}},
    "RequestIn": {"method": "GET", "relative_uri": "/orders?limit=5", "headers": {"X-Trace": "1"}},
}

_PROXY_METHODS = ("get", "put", "post", "delete", "options", "head", "patch")


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": _REF.format(model=name)}


def _json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _ok(status: int, description: str, schema_name: str | None) -> dict[str, Any]:
    if schema_name is None:
        return {str(status): {"description": description}}
    return {str(status): {"description": description, "content": _json_content(_ref(schema_name))}}


def _errors(*statuses: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for status in statuses:
        schema = "TestFailedBody" if status == 422 else "ErrorBody"
        out[str(status)] = {
            "description": _ERROR_TEXT[status],
            "content": _json_content(_ref(schema)),
        }
    return out


def _path_param(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string"},
    }


_VERIFY = {
    "name": "verify",
    "in": "query",
    "required": False,
    "description": "false: save without testing (state `offline`, reason `not tested`)",
    "schema": {"type": "boolean", "default": True},
}
_AGENT_ID = _path_param("agent_id", "An agent id (`agt_...`)")
_CONNECTION_ID = _path_param("connection_id", "A connection id (`con_...`)")


def _op(
    op_id: str,
    summary: str,
    responses: dict[str, Any],
    *,
    tags: list[str],
    body: str | dict[str, Any] | None = None,
    example: str | None = None,
    body_types: tuple[str, ...] = ("application/json",),
    params: list[dict[str, Any]] | None = None,
    public: bool = False,
    passthrough: bool = False,
) -> dict[str, Any]:
    op: dict[str, Any] = {"operationId": op_id, "summary": summary, "tags": tags}
    if passthrough:
        op["description"] = (
            "Streams the request to the connection's API and its answer back unchanged "
            "(hop-by-hop headers removed). Errors of the relay itself (401, 404, 502, "
            '503, 504) are JSON: {"error": {"code", "message", "details"}}.'
        )
    if params:
        op["parameters"] = params
    if body is not None:
        schema = _ref(body) if isinstance(body, str) else body
        media: dict[str, Any] = {"schema": schema}
        name = example or (body if isinstance(body, str) else None)
        if name is not None:
            media["example"] = EXAMPLES[name]
        op["requestBody"] = {"required": True, "content": {t: media for t in body_types}}
    # A passthrough answer may be anything the upstream says (a 401 in HTML, say).
    if not public and not passthrough:
        responses = {**_errors(401), **responses}
    if "default" not in responses and not public:
        responses["default"] = {
            "description": "Any other error",
            "content": _json_content(_ref("ErrorBody")),
        }
    op["responses"] = {
        status: {
            **response,
            "headers": {"X-Request-Id": {"$ref": "#/components/headers/RequestId"}},
        }
        for status, response in responses.items()
    }
    if public:
        op["security"] = []
    return op


def _paths() -> dict[str, Any]:
    agents = ["agents"]
    conns = ["connections"]
    merge_patch: dict[str, Any] = {
        "type": "object",
        "description": (
            "A JSON merge patch (RFC 7396) of the connection's settings (`ConnectionIn`). "
            'A secret given as "********" or left out keeps its stored value; '
            "read-only fields are ignored."
        ),
    }
    proxy_ops = {
        method: _op(
            f"proxyConnection{method.capitalize()}",
            "Stream a request to the connection's API (relative path after /proxy/)",
            {
                # Whatever the upstream answers, any status and content type; the
                # relay's own errors (401, 404, 502, ...) are ErrorBody JSON.
                "default": {
                    "description": "The upstream answer (status, headers, body), or an error",
                    "content": {"*/*": {"schema": {}}},
                }
            },
            tags=conns,
            passthrough=True,
            params=[
                _CONNECTION_ID,
                _path_param("path", "The path relative to the connection's base_uri"),
                {
                    "name": "query",
                    "in": "query",
                    "required": False,
                    "description": "Any query parameters: passed on to the upstream API",
                    "style": "form",
                    "explode": True,
                    "schema": {"type": "object", "additionalProperties": {"type": "string"}},
                },
            ],
        )
        for method in _PROXY_METHODS
    }
    return {
        "/healthz": {
            "get": _op(
                "healthz",
                "Liveness",
                {"200": {"description": "The process is up"}},
                tags=["health"],
                public=True,
            )
        },
        "/readyz": {
            "get": _op(
                "readyz",
                "Readiness: database reachable, SSH endpoint listening",
                {"200": {"description": "Ready"}, "503": {"description": "Not ready"}},
                tags=["health"],
                public=True,
            )
        },
        "/metrics": {
            "get": _op(
                "metrics",
                "Prometheus metrics",
                {"200": {"description": "Metrics", "content": {"text/plain": {"schema": {}}}}},
                tags=["health"],
                public=True,
            )
        },
        OPENAPI_PATH: {
            "get": _op(
                "openapi",
                "This document",
                {"200": {"description": "OpenAPI 3.1", "content": _json_content({})}},
                tags=["meta"],
                public=True,
            )
        },
        "/v1/agents": {
            "get": _op(
                "listAgents", "The account's agents", _ok(200, "Agents", "AgentList"), tags=agents
            ),
            "post": _op(
                "createAgent",
                "Create an agent: its access token and agent.yaml are shown only now",
                {**_ok(201, "Created", "AgentCreated"), **_errors(400, 409)},
                tags=agents,
                body="AgentIn",
            ),
        },
        "/v1/agents/{agent_id}": {
            "parameters": [_AGENT_ID],
            "get": _op(
                "getAgent",
                "An agent, its status and live sessions",
                {**_ok(200, "The agent", "AgentOut"), **_errors(404)},
                tags=agents,
            ),
            "patch": _op(
                "updateAgent",
                "Rename or re-describe an agent",
                {**_ok(200, "The agent", "AgentOut"), **_errors(400, 404, 409)},
                tags=agents,
                body="AgentPatch",
            ),
            "delete": _op(
                "deleteAgent",
                "Delete an agent (409 while connections use it) and drop its sessions",
                {**_ok(204, "Deleted", None), **_errors(404, 409)},
                tags=agents,
            ),
        },
        "/v1/agents/{agent_id}/rotate-token": {
            "parameters": [_AGENT_ID],
            "post": _op(
                "rotateAgentToken",
                "Replace the access token; live sessions are dropped at once",
                {**_ok(200, "The new token, shown only now", "AgentToken"), **_errors(404)},
                tags=agents,
            ),
        },
        "/v1/connections": {
            "get": _op(
                "listConnections",
                "The account's connections (secrets masked)",
                _ok(200, "Connections", "ConnectionList"),
                tags=conns,
            ),
            "post": _op(
                "createConnection",
                "Save & continue: test the connection, then save it",
                {
                    **_ok(201, "Saved", "ConnectionOut"),
                    **_errors(400, 422, 503),
                },
                tags=conns,
                body="ConnectionIn",
                params=[_VERIFY],
            ),
        },
        "/v1/connections/test": {
            "post": _op(
                "testUnsavedConnection",
                "Test connection, for settings not saved yet",
                {**_ok(200, "The test result (ok or not)", "TestResult"), **_errors(400, 503)},
                tags=conns,
                body="ConnectionIn",
            ),
        },
        "/v1/connections/{connection_id}": {
            "parameters": [_CONNECTION_ID],
            "get": _op(
                "getConnection",
                "A connection (secrets masked)",
                {**_ok(200, "The connection", "ConnectionOut"), **_errors(404)},
                tags=conns,
            ),
            "patch": _op(
                "updateConnection",
                "Change a connection (JSON merge patch); changed settings are tested again",
                {
                    **_ok(200, "The connection", "ConnectionOut"),
                    **_errors(400, 404, 409, 422, 503),
                },
                tags=conns,
                body=merge_patch,
                example="ConnectionPatch",
                body_types=("application/merge-patch+json", "application/json"),
                params=[_VERIFY],
            ),
            "delete": _op(
                "deleteConnection",
                "Delete a connection (409 while others borrow its concurrency)",
                {**_ok(204, "Deleted", None), **_errors(404, 409)},
                tags=conns,
            ),
        },
        "/v1/connections/{connection_id}/test": {
            "parameters": [_CONNECTION_ID],
            "post": _op(
                "testConnection",
                "Test connection, for a saved connection (updates its state)",
                {**_ok(200, "The test result (ok or not)", "TestResult"), **_errors(404, 503)},
                tags=conns,
            ),
        },
        "/v1/connections/{connection_id}/request": {
            "parameters": [_CONNECTION_ID],
            "post": _op(
                "requestConnection",
                "Send one HTTP request through the connection (JSON envelope in and out)",
                {
                    **_ok(200, "The upstream answer", "RequestOut"),
                    **_errors(400, 403, 404, 409, 429, 502, 503, 504),
                },
                tags=conns,
                body="RequestIn",
            ),
        },
        "/v1/connections/{connection_id}/proxy/{path}": proxy_ops,
        "/v1/audit": {
            "get": _op(
                "listAudit",
                "The account's administrative changes, newest first",
                {**_ok(200, "Audit events", "AuditList"), **_errors(400)},
                tags=["audit"],
                params=[
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": 1000,
                            "default": 100,
                        },
                    }
                ],
            ),
        },
    }


def build_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document (a fresh dict each call)."""
    _, defs = models_json_schema(_MODELS, ref_template=_REF)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "onprem-relay API",
            "version": __version__,
            "description": (
                "Agents, HTTP connections and requests through them. Every answer carries "
                "an X-Request-Id header; errors are "
                '`{"error": {"code", "message", "details"}}`.'
            ),
        },
        "servers": [{"url": "/"}],
        "security": [{"bearerAuth": []}],
        "paths": _paths(),
        "components": {
            "schemas": defs.get("$defs", {}),
            "headers": {
                "RequestId": {
                    "description": (
                        "The request's id: the caller's X-Request-Id if it is sane "
                        "(<= 100 characters of A-Z a-z 0-9 . _ -), else a new one; also "
                        "in every log line about the request"
                    ),
                    "required": True,
                    "schema": {"type": "string", "minLength": 1, "maxLength": 100},
                }
            },
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The account's API token (`oak_...`)",
                }
            },
        },
    }


async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(text=request.app[_DOCUMENT], content_type="application/json")


_DOCUMENT = web.AppKey("openapi_document", str)


def setup_routes(app: web.Application) -> None:
    app[_DOCUMENT] = json.dumps(build_document())
    app.router.add_get(OPENAPI_PATH, openapi_json)
