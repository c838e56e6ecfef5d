"""The OpenAPI document: built from the request models, complete (every route, every
documented path served), self-consistent ($refs resolve), with valid examples."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from relay.api.app import make_app
from relay.api.openapi import EXAMPLES, build_document
from relay.hub import AgentHub
from relay.models.agent import AgentIn, AgentPatch
from relay.models.connection import ConnectionIn, RequestIn
from relay.registry import Registry

METHODS = {"get", "put", "post", "delete", "options", "head", "patch"}


def _normalize(path: str) -> str:
    # aiohttp's {id} / {path:.*} and the document's {connection_id} / {path} alike.
    return re.sub(r"\{[^}]+\}", "{}", path)


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


async def _app_routes(tmp_path: Any) -> set[tuple[str, str]]:
    registry = await Registry.open(f"sqlite+aiosqlite:///{tmp_path / 'r.db'}")
    try:
        app = make_app(AgentHub(), registry, {})
        routes = set()
        for route in app.router.routes():
            info = route.resource.get_info() if route.resource else {}
            path = info.get("path") or info.get("formatter", "")
            methods = METHODS if route.method == "*" else {route.method.lower()}
            routes |= {(m, _normalize(path)) for m in methods if m in METHODS}
        return routes
    finally:
        await registry.close()


async def test_every_route_is_documented_and_vice_versa(tmp_path: Any) -> None:
    doc = build_document()
    documented = {
        (method, _normalize(path))
        for path, item in doc["paths"].items()
        for method in item
        if method in METHODS
    }
    served = await _app_routes(tmp_path)
    assert documented <= served
    for method, path in served - documented:
        # aiohttp adds HEAD to every GET; the bare .../proxy (no trailing path) is the
        # same operation as .../proxy/{path}.
        assert (method == "head" and ("get", path) in documented) or path.endswith("/proxy")


def test_refs_resolve_and_security() -> None:
    doc = build_document()
    schemas = doc["components"]["schemas"]
    for ref in _refs(doc):
        kind, name = ref.removeprefix("#/components/").split("/")
        assert name in doc["components"][kind], ref
    assert schemas
    assert doc["openapi"] == "3.1.0"
    assert doc["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    public = {"/healthz", "/readyz", "/metrics", "/v1/openapi.json", "/oauth2/callback"}
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method not in METHODS:
                continue
            if path in public:
                assert op["security"] == []
            else:
                assert "security" not in op  # the global bearerAuth applies
                assert "default" in op["responses"]
            for response in op["responses"].values():
                assert "X-Request-Id" in response["headers"]
    json.dumps(doc)  # serializable as is


def test_schemas_come_from_the_models() -> None:
    schemas = build_document()["components"]["schemas"]
    assert schemas["ConnectionIn"]["additionalProperties"] is False
    assert set(schemas["HttpSettings"]["properties"]) == set(
        ConnectionIn.model_fields["http"].annotation.model_fields  # type: ignore[union-attr]
    )
    assert schemas["ErrorBody"]["required"] == ["error"]
    assert {"ConnectionOut", "TestResult", "RequestIn", "RequestOut", "AgentOut"} <= set(schemas)


@pytest.mark.parametrize(
    ("name", "model"),
    [
        ("ConnectionIn", ConnectionIn),
        ("RequestIn", RequestIn),
        ("AgentIn", AgentIn),
        ("AgentPatch", AgentPatch),
    ],
)
def test_examples_are_valid(name: str, model: Any) -> None:
    model.model_validate(EXAMPLES[name])
