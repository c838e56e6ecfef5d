"""Cross-cutting API behaviour: request ids, the error format for every kind of error,
public routes, the access log line."""

from __future__ import annotations

import io
import json

from api_helpers import Env, http_spec

from relay.api.app import pick_request_id


def test_pick_request_id() -> None:
    assert pick_request_id("abc-1.2_3") == "abc-1.2_3"
    assert pick_request_id("x" * 100) == "x" * 100
    for bad in (None, "", "x" * 101, "has space", "semi;colon", "ünï", "a\nb", "abc\n"):
        rid = pick_request_id(bad)
        assert rid.startswith("req_") and len(rid) == 24
    assert pick_request_id(None) != pick_request_id(None)


async def test_request_id_on_every_response(env: Env) -> None:
    con = (await env.a.post("/v1/connections", http_spec())).json
    cases = [
        (env.anon, "GET", "/healthz", 200),
        (env.anon, "GET", "/readyz", 200),
        (env.anon, "GET", "/metrics", 200),
        (env.anon, "GET", "/v1/openapi.json", 200),
        (env.anon, "GET", "/v1/agents", 401),
        (env.anon, "GET", "/nowhere", 404),
        (env.a, "GET", "/v1/agents", 200),
        (env.a, "GET", "/v1/agents/agt_none", 404),
        (env.a, "PUT", "/v1/agents", 405),
        (env.a, "POST", "/v1/agents", 400),
        (env.a, "DELETE", f"/v1/connections/{con['id']}", 204),
        (env.a, "GET", "/v1/nowhere", 404),
    ]
    seen = set()
    for api, method, path, status in cases:
        r = await api.call(method, path)
        assert r.status == status, (method, path, r.status, r.text)
        rid = r.headers["X-Request-Id"]
        assert rid.startswith("req_") and rid not in seen
        seen.add(rid)
        r = await api.call(method, path, headers={"X-Request-Id": "mine-42"})
        assert r.headers["X-Request-Id"] == "mine-42"
        r = await api.call(method, path, headers={"X-Request-Id": "bad id!"})
        assert r.headers["X-Request-Id"].startswith("req_")


async def test_streamed_proxy_answer_has_request_id(env: Env) -> None:
    con = (await env.a.post("/v1/connections", http_spec())).json
    r = await env.a.get(f"/v1/connections/{con['id']}/proxy/x", headers={"X-Request-Id": "p-1"})
    assert r.status == 200 and r.text == "proxied"
    assert r.headers["X-Request-Id"] == "p-1"


async def test_router_errors_are_json(env: Env) -> None:
    r = await env.a.get("/v1/nothing")
    assert r.status == 404 and r.error["code"] == "not_found"
    r = await env.anon.get("/nothing")
    assert r.status == 404 and r.error["code"] == "not_found"
    r = await env.a.call("PUT", "/v1/agents")
    assert r.status == 405 and r.error["code"] == "method_not_allowed"
    assert "POST" in r.headers["Allow"]


async def test_unknown_query_parameters_are_refused(env: Env) -> None:
    r = await env.a.get("/v1/agents", params={"secret": "1", "page": "2"})
    assert r.status == 400
    assert r.fields() == {"query.secret", "query.page"}
    r = await env.a.get("/v1/audit", params={"limit": "2"})
    assert r.status == 200 and len(r.json["events"]) == 1
    r = await env.a.get("/v1/audit", params={"limit": "0"})
    assert r.status == 400 and r.fields() == {"limit"}
    # The proxy hands its query string on to the upstream API.
    con = (await env.a.post("/v1/connections", http_spec())).json
    r = await env.a.get(f"/v1/connections/{con['id']}/proxy/x", params={"anything": "1"})
    assert r.status == 200
    assert env.executor.proxied[-1] == (con["id"], "GET", "/x?anything=1")


async def test_unexpected_exception_is_a_bare_500(env: Env, log_stream: io.StringIO) -> None:
    async def explode(*args: object, **kwargs: object) -> None:
        raise RuntimeError("internal detail: /srv/secret-path")

    env.executor.test = explode  # type: ignore[method-assign, assignment]
    r = await env.a.post("/v1/connections", http_spec(), headers={"X-Request-Id": "boom-1"})
    assert r.status == 500
    assert r.error == {
        "code": "internal_error",
        "message": "internal error (request id boom-1)",
        "details": [],
    }
    assert "secret-path" not in r.text and "Traceback" not in r.text
    events = [json.loads(line) for line in log_stream.getvalue().splitlines()]
    [failure] = [e for e in events if e["event"] == "api_internal_error"]
    assert failure["request_id"] == "boom-1"
    assert "RuntimeError" in failure["exception"]


async def test_access_log_line_per_request(env: Env, log_stream: io.StringIO) -> None:
    r = await env.a.get("/v1/agents", headers={"X-Request-Id": "log-1"})
    assert r.status == 200
    events = [json.loads(line) for line in log_stream.getvalue().splitlines()]
    [line] = [e for e in events if e.get("request_id") == "log-1"]
    assert line["event"] == "api_request"
    assert line["status"] == 200 and line["method"] == "GET" and line["path"] == "/v1/agents"
    assert line["account_id"] == env.account_a
    assert "duration_ms" in line


async def test_public_routes(env: Env) -> None:
    assert (await env.anon.get("/healthz")).json == {"status": "ok"}
    ready = await env.anon.get("/readyz")
    assert ready.json["checks"] == {"database": "ok", "ssh": "ok"}
    doc = (await env.anon.get("/v1/openapi.json")).json
    assert doc["openapi"].startswith("3.1")
    # The OAuth callback needs no token either: its state is the credential.
    callback = await env.anon.get("/oauth2/callback")
    assert callback.status != 401 and callback.headers["Content-Type"].startswith("text/html")
