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
from relay.models.iclient import IClientIn, IClientList, IClientOut
from relay.models.webhook import AuthorizationOut, WebhookIn, WebhookOut
from shared.version import __version__

OPENAPI_PATH = "/v1/openapi.json"
_REF = "#/components/schemas/{model}"

# (model, mode): request bodies are described as validated, answers as serialized.
_MODELS: list[tuple[type[pydantic.BaseModel], JsonSchemaMode]] = [
    (AgentIn, "validation"),
    (AgentPatch, "validation"),
    (ConnectionIn, "validation"),
    (RequestIn, "validation"),
    (IClientIn, "validation"),
    (WebhookIn, "validation"),
    (AgentOut, "serialization"),
    (AgentCreated, "serialization"),
    (AgentList, "serialization"),
    (AgentToken, "serialization"),
    (ConnectionOut, "serialization"),
    (ConnectionList, "serialization"),
    (TestResult, "serialization"),
    (RequestOut, "serialization"),
    (AuditList, "serialization"),
    (IClientOut, "serialization"),
    (IClientList, "serialization"),
    (WebhookOut, "serialization"),
    (AuthorizationOut, "serialization"),
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
    "IClientIn": {
        "name": "Acme app",
        "grant_type": "authorization_code",
        "client_id": "acme-client-id",
        "client_secret": "acme-client-secret",
        "authorization_url": "https://auth.acme.com/oauth2/authorize",
        "token_url": "https://auth.acme.com/oauth2/token",
        "revoke_url": "https://auth.acme.com/oauth2/revoke",
        "valid_domains": ["api.acme.com"],
    },
    "IClientPatch": {"name": "Acme app (production)", "scope_delimiter": ","},
    "WebhookIn": {"url": "https://hooks.example.com/onprem-relay"},
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
_ICLIENT_ID = _path_param("iclient_id", "An iClient id (`icl_...`)")
_HTML = {"text/html": {"schema": {"type": "string"}}}
_NO_STORE_REDIRECT = {
    "Location": {"description": "Where the browser goes next", "schema": {"type": "string"}}
}
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
    body_required: bool = True,
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
        op["requestBody"] = {"required": body_required, "content": {t: media for t in body_types}}
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
    oauth = ["oauth"]
    iclient_patch: dict[str, Any] = {
        "type": "object",
        "description": (
            "A JSON merge patch (RFC 7396) of the iClient (`IClientIn`). A client_secret "
            'given as "********" or left out keeps the stored one; null removes it.'
        ),
    }
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
                "Test connection, for a saved connection (updates its state); with a body "
                "(a JSON merge patch), tests the saved settings with those changes and "
                "records nothing",
                {
                    **_ok(200, "The test result (ok or not)", "TestResult"),
                    **_errors(400, 404, 503),
                },
                tags=conns,
                body=merge_patch,
                example="ConnectionPatch",
                body_types=("application/merge-patch+json", "application/json"),
                body_required=False,
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
        "/v1/iclients": {
            "get": _op(
                "listIClients",
                "The account's OAuth 2.0 clients (secrets masked)",
                _ok(200, "iClients", "IClientList"),
                tags=oauth,
            ),
            "post": _op(
                "createIClient",
                "Register an OAuth 2.0 client (its secret is write-only)",
                {**_ok(201, "Created", "IClientOut"), **_errors(400)},
                tags=oauth,
                body="IClientIn",
            ),
        },
        "/v1/iclients/{iclient_id}": {
            "parameters": [_ICLIENT_ID],
            "get": _op(
                "getIClient",
                "An iClient (secret masked)",
                {**_ok(200, "The iClient", "IClientOut"), **_errors(404)},
                tags=oauth,
            ),
            "patch": _op(
                "updateIClient",
                "Change an iClient (JSON merge patch)",
                {**_ok(200, "The iClient", "IClientOut"), **_errors(400, 404, 409)},
                tags=oauth,
                body=iclient_patch,
                example="IClientPatch",
                body_types=("application/merge-patch+json", "application/json"),
            ),
            "delete": _op(
                "deleteIClient",
                "Delete an iClient (409 while connections use it)",
                {**_ok(204, "Deleted", None), **_errors(404, 409)},
                tags=oauth,
            ),
        },
        "/v1/connections/{connection_id}/authorize": {
            "parameters": [_CONNECTION_ID],
            "get": _op(
                "authorizeConnection",
                "Start the authorization-code flow: 302 to the provider's consent page",
                {
                    "302": {
                        "description": (
                            "To the provider (state, PKCE S256 challenge, scope, and the "
                            "redirect URI {http.public_url}/oauth2/callback)"
                        ),
                        "headers": _NO_STORE_REDIRECT,
                    },
                    **_ok(
                        200,
                        "With Accept: application/json, the provider URL instead of a 302",
                        "AuthorizationOut",
                    ),
                    **_errors(400, 404, 409, 503),
                },
                tags=oauth,
                params=[
                    {
                        "name": "return_url",
                        "in": "query",
                        "required": False,
                        "description": (
                            "Where the callback sends the browser afterwards (with "
                            "connection_id, result and error added to its query): on "
                            "http.public_url's origin or one of oauth.return_origins; "
                            "at most 2048 characters"
                        ),
                        # No maxLength: a longer value would exceed the HTTP request
                        # line limit before the relay could answer it.
                        "schema": {"type": "string"},
                    }
                ],
            ),
        },
        "/oauth2/callback": {
            "get": _op(
                "oauthCallback",
                "The provider sends the user's browser here (no bearer token; the state "
                "is single use, bound to the connection and valid for 10 minutes)",
                {
                    "200": {
                        "description": "Authorized; the page says whether the test passed",
                        "content": _HTML,
                    },
                    "303": {
                        "description": "Back to the return_url given to /authorize",
                        "headers": _NO_STORE_REDIRECT,
                    },
                    "400": {
                        "description": "Wrong, reused or expired state, or access denied: "
                        "nothing stored",
                        "content": _HTML,
                    },
                    "502": {"description": "The provider refused the code", "content": _HTML},
                },
                tags=oauth,
                public=True,
                params=[
                    {"name": name, "in": "query", "required": False, "schema": {"type": "string"}}
                    for name in ("code", "state", "error", "error_description")
                ],
            ),
        },
        "/v1/account/webhook": {
            "get": _op(
                "getWebhook",
                "The account's connection state-change webhook (url null: none)",
                _ok(200, "The webhook", "WebhookOut"),
                tags=oauth,
            ),
            "put": _op(
                "setWebhook",
                "Set the webhook: signed POSTs (X-Onprem-Signature: t=...,v1=...) when a "
                "connection breaks or recovers",
                {**_ok(200, "The webhook", "WebhookOut"), **_errors(400)},
                tags=oauth,
                body="WebhookIn",
            ),
            "delete": _op(
                "deleteWebhook",
                "Remove the webhook",
                _ok(204, "Removed", None),
                tags=oauth,
            ),
        },
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
                "Agents, OAuth 2.0 clients, HTTP connections and requests through them. "
                "Every answer carries "
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
