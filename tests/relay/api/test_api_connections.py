"""/v1/connections over HTTP: Save & continue, validation, masking, merge patch,
?verify=false, references to agents and connections, delete rules."""

from __future__ import annotations

from typing import Any

from api_helpers import Env, http_spec

from relay.models.connection import MASK

READ_ONLY = {"id", "state", "state_reason", "last_tested_at", "created_at", "updated_at"}


def basic(password: str = "s3cret-pass", **http: Any) -> dict[str, Any]:
    return http_spec(
        auth={"type": "basic", "basic": {"username": "bob", "password": password}}, **http
    )


async def test_save_and_continue_tests_then_saves(env: Env) -> None:
    r = await env.a.post("/v1/connections", basic(), headers={"X-Request-Id": "trace-1"})
    assert r.status == 201, r.text
    body = r.json
    assert body["id"].startswith("con_")
    assert r.headers["Location"] == f"/v1/connections/{body['id']}"
    assert body["state"] == "online" and body["state_reason"] is None
    assert body["last_tested_at"] is not None
    assert body["http"]["auth"]["basic"] == {"username": "bob", "password": MASK}
    assert "s3cret-pass" not in r.text
    # The executor saw the secret in clear, the account, and the request id.
    [call] = env.executor.calls
    assert call.account_id == env.account_a and call.connection_id is None
    assert call.request_id == "trace-1"
    assert call.spec.http.auth.basic is not None
    assert call.spec.http.auth.basic.password == "s3cret-pass"

    shown = await env.a.get(f"/v1/connections/{body['id']}")
    assert shown.status == 200 and shown.json == body
    listed = await env.a.get("/v1/connections")
    assert listed.json == {"connections": [body]}
    stored = await env.registry.get_connection(body["id"], env.account_a)
    assert stored.spec.http.auth.basic is not None
    assert stored.spec.http.auth.basic.password == "s3cret-pass"
    assert stored.version == 1


async def test_failed_test_is_422_and_saves_nothing(env: Env) -> None:
    env.executor.fail_with("auth_failed", "the API answered 401")
    r = await env.a.post("/v1/connections", basic())
    assert r.status == 422
    assert r.error["code"] == "test_failed"
    assert "401" in r.error["message"]
    assert r.json["test"]["ok"] is False
    assert r.json["test"]["error"] == {"code": "auth_failed", "message": "the API answered 401"}
    assert (await env.a.get("/v1/connections")).json == {"connections": []}
    assert await env.registry.list_connections(env.account_a) == []
    assert not [
        e for e in (await env.a.get("/v1/audit")).json["events"] if "connection" in e["action"]
    ]


async def test_verify_false_saves_without_test(env: Env) -> None:
    env.executor.fail_with()
    r = await env.a.post("/v1/connections", basic(), params={"verify": "false"})
    assert r.status == 201, r.text
    assert r.json["state"] == "offline" and r.json["state_reason"] == "not tested"
    assert r.json["last_tested_at"] is None
    assert env.executor.calls == []
    r = await env.a.post("/v1/connections", basic(), params={"verify": "maybe"})
    assert r.status == 400 and r.fields() == {"verify"}


async def test_oauth2_connection_needs_authorization(env: Env) -> None:
    iclient = await env.a.post(
        "/v1/iclients",
        {
            "name": "acme",
            "client_id": "id",
            "authorization_url": "https://auth.example.com/authorize",
            "token_url": "https://auth.example.com/token",
            "valid_domains": ["api.example.com"],
        },
    )
    assert iclient.status == 201, iclient.text
    spec = http_spec(auth={"type": "oauth2", "oauth2": {"iclient_id": iclient.json["id"]}})
    r = await env.a.post("/v1/connections", spec)
    assert r.status == 201, r.text
    assert r.json["state"] == "needs_authorization"
    assert env.executor.calls == []


async def test_validation_names_every_bad_field(env: Env) -> None:
    body = {
        "name": "",
        "mode": "sideways",
        "http": {
            "base_uri": "ftp://x",
            "headers": [{"name": "Bad Header", "value": "v"}],
            "timeout_s": 0,
            "auth": {"type": "token", "token": {"token": "", "location": "cookie"}},
        },
        "colour": "red",
    }
    r = await env.a.post("/v1/connections", body)
    assert r.status == 400 and r.error["code"] == "invalid_request"
    assert r.fields() >= {
        "name",
        "mode",
        "http.base_uri",
        "http.headers.0.name",
        "http.timeout_s",
        "http.auth.token.token",
        "http.auth.token.location",
        "colour",
    }
    for detail in r.error["details"]:
        assert detail["message"]
    assert env.executor.calls == []


async def test_mode_and_agent_rules(env: Env) -> None:
    r = await env.a.post("/v1/connections", {**http_spec(), "mode": "onpremise"})
    assert r.status == 400 and r.fields() == {"body"}
    assert "agent_id" in r.error["details"][0]["message"]
    r = await env.a.post("/v1/connections", {**http_spec(), "agent_id": "agt_xyz"})
    assert r.status == 400 and "agent_id" in r.error["details"][0]["message"]
    r = await env.a.post(
        "/v1/connections", {**http_spec(), "mode": "onpremise", "agent_id": "agt_nope"}
    )
    assert r.status == 400 and r.fields() == {"agent_id"}

    agent = (await env.a.post("/v1/agents", {"name": "gw"})).json
    r = await env.a.post(
        "/v1/connections", {**http_spec(), "mode": "onpremise", "agent_id": agent["id"]}
    )
    assert r.status == 201 and r.json["agent_id"] == agent["id"]
    assert env.executor.calls[-1].spec.mode == "onpremise"


async def test_malformed_bodies(env: Env) -> None:
    r = await env.a.post(
        "/v1/connections", raw=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert r.status == 400 and r.error["code"] == "invalid_json"
    r = await env.a.post("/v1/connections", raw=b"", headers={"Content-Type": "application/json"})
    assert r.status == 400
    r = await env.a.post("/v1/connections", [1, 2])
    assert r.status == 400 and r.fields() == {"body"}
    r = await env.a.post(
        "/v1/connections", raw=b"\xff\xfe", headers={"Content-Type": "application/json"}
    )
    assert r.status == 400
    r = await env.a.post("/v1/connections", raw=b"x" * (1024 * 1024 + 10))
    assert r.status == 413 and r.error["code"] == "payload_too_large"


async def test_mask_on_create_is_refused(env: Env) -> None:
    r = await env.a.post("/v1/connections", basic(password=MASK))
    assert r.status == 400 and r.fields() == {"http.auth.basic.password"}


async def test_patch_keeps_masked_secrets_and_replaces_new_ones(env: Env) -> None:
    created = (await env.a.post("/v1/connections", basic("first-secret"))).json
    cid = created["id"]
    path = f"/v1/connections/{cid}"

    # Sending back what GET showed (mask, read-only fields and all) changes nothing.
    r = await env.a.patch(path, created)
    assert r.status == 200 and r.json == created
    assert len(env.executor.calls) == 1  # unchanged: not tested again

    # A change with the mask keeps the secret and is tested with it.
    r = await env.a.patch(
        path,
        {"http": {"base_uri": "https://api2.example.com", "auth": {"basic": {"password": MASK}}}},
    )
    assert r.status == 200, r.text
    assert r.json["http"]["base_uri"] == "https://api2.example.com"
    assert r.json["http"]["auth"]["basic"]["password"] == MASK
    assert env.executor.calls[-1].connection_id == cid
    assert env.executor.calls[-1].spec.http.auth.basic.password == "first-secret"  # type: ignore[union-attr]
    stored = await env.registry.get_connection(cid, env.account_a)
    assert stored.spec.http.auth.basic.password == "first-secret"  # type: ignore[union-attr]
    assert stored.version == 2

    # Absent keeps it too; a new value replaces it.
    r = await env.a.patch(path, {"http": {"auth": {"basic": {"password": "second-secret"}}}})
    assert r.status == 200
    stored = await env.registry.get_connection(cid, env.account_a)
    assert stored.spec.http.auth.basic.password == "second-secret"  # type: ignore[union-attr]
    assert "second-secret" not in r.text

    # null removes (merge patch): here the password.
    r = await env.a.patch(path, {"http": {"auth": {"basic": {"password": None}}}})
    assert r.status == 200 and r.json["http"]["auth"]["basic"]["password"] is None

    # The mask with nothing stored is an error.
    r = await env.a.patch(path, {"http": {"auth": {"basic": {"password": MASK}}}})
    assert r.status == 400 and r.fields() == {"http.auth.basic.password"}

    events = [e for e in (await env.a.get("/v1/audit")).json["events"] if e["target_id"] == cid]
    assert [e["action"] for e in events] == ["connection.changed"] * 3 + ["connection.created"]
    assert "http.auth.basic.password" in events[1]["details"]["fields"]
    assert "second-secret" not in str(events)


async def test_patch_failed_test_is_422_and_keeps_old(env: Env) -> None:
    created = (await env.a.post("/v1/connections", basic())).json
    env.executor.fail_with()
    path = f"/v1/connections/{created['id']}"
    r = await env.a.patch(path, {"name": "renamed"})
    assert r.status == 422 and r.json["test"]["ok"] is False
    assert (await env.a.get(path)).json == created
    r = await env.a.patch(path, {"name": "renamed"}, params={"verify": "false"})
    assert r.status == 200
    assert r.json["name"] == "renamed" and r.json["state"] == "offline"
    assert r.json["state_reason"] == "not tested"


async def test_patch_validation(env: Env) -> None:
    created = (await env.a.post("/v1/connections", basic())).json
    path = f"/v1/connections/{created['id']}"
    r = await env.a.patch(path, {"name": None, "http": {"timeout_s": -1, "media_type": "yaml"}})
    assert r.status == 400
    assert r.fields() == {"name", "http.timeout_s", "http.media_type"}
    r = await env.a.patch(path, ["not", "an", "object"])
    assert r.status == 400
    r = await env.a.patch(path, {"mode": "onpremise", "agent_id": "agt_other"})
    assert r.status == 400 and r.fields() == {"agent_id"}


async def test_delete_connection_and_agent_in_use(env: Env) -> None:
    agent = (await env.a.post("/v1/agents", {"name": "gw"})).json
    con = (
        await env.a.post(
            "/v1/connections", {**http_spec(), "mode": "onpremise", "agent_id": agent["id"]}
        )
    ).json
    r = await env.a.delete(f"/v1/agents/{agent['id']}")
    assert r.status == 409 and r.error["code"] == "conflict"
    assert con["id"] in r.error["message"]
    assert r.error["details"][0]["connection_id"] == con["id"]

    assert (await env.a.delete(f"/v1/connections/{con['id']}")).status == 204
    assert (await env.a.get(f"/v1/connections/{con['id']}")).status == 404
    assert (await env.a.delete(f"/v1/connections/{con['id']}")).status == 404
    assert (await env.a.delete(f"/v1/agents/{agent['id']}")).status == 204
    actions = [e["action"] for e in (await env.a.get("/v1/audit")).json["events"]]
    assert actions[:3] == ["agent.deleted", "connection.deleted", "connection.created"]


async def test_borrow_concurrency_must_be_own_connection(env: Env) -> None:
    lender = (await env.a.post("/v1/connections", http_spec("lender"))).json
    foreign = (await env.b.post("/v1/connections", http_spec("foreign"))).json
    r = await env.a.post("/v1/connections", http_spec("x", borrow_concurrency_from=foreign["id"]))
    assert r.status == 400 and r.fields() == {"http.borrow_concurrency_from"}
    r = await env.a.post("/v1/connections", http_spec("x", borrow_concurrency_from="con_nothere"))
    assert r.status == 400
    borrower = (
        await env.a.post("/v1/connections", http_spec("b", borrow_concurrency_from=lender["id"]))
    ).json
    assert borrower["http"]["borrow_concurrency_from"] == lender["id"]
    r = await env.a.patch(
        f"/v1/connections/{lender['id']}", {"http": {"borrow_concurrency_from": lender["id"]}}
    )
    assert r.status == 400 and r.fields() == {"http.borrow_concurrency_from"}
    r = await env.a.delete(f"/v1/connections/{lender['id']}")
    assert r.status == 409 and r.error["details"][0]["connection_id"] == borrower["id"]


async def test_read_only_fields_are_not_writable(env: Env) -> None:
    r = await env.a.post("/v1/connections", {**http_spec(), "id": "con_mine", "state": "online"})
    assert r.status == 400 and r.fields() == {"id", "state"}
    created = (await env.a.post("/v1/connections", http_spec(), params={"verify": "false"})).json
    r = await env.a.patch(f"/v1/connections/{created['id']}", {"state": "online", "id": "con_x"})
    assert r.status == 200 and r.json == created
    assert set(created) >= READ_ONLY
