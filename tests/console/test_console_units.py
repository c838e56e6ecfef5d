"""The console's pure parts: the session cookie (encrypted, expiring, tamper-evident),
the CSRF comparison, where sign-in may send the browser, and the connection form <->
API document conversion (secrets kept as the mask, never shown)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from cryptography.fernet import Fernet, InvalidToken

from relay.console.client import ApiAnswer, loopback_base
from relay.console.connections import (
    FIELDS,
    RETYPE,
    connection_doc,
    connection_values,
    form_values,
    split_list,
)
from relay.console.session import COOKIE_NAME, Session, SessionCodec, csrf_ok
from relay.console.web import safe_next
from relay.models.connection import MASK, ConnectionIn
from relay.registry import SecretBox


def _request_with(cookie: str | None) -> web.Request:
    headers = {"Cookie": f"{COOKIE_NAME}={cookie}"} if cookie is not None else {}
    return make_mocked_request("GET", "/console/", headers=headers)


def _cookie_value(codec: SessionCodec, session: Session) -> str:
    response = web.Response()
    codec.save(response, session)
    morsel = response.cookies[COOKIE_NAME]
    assert morsel["httponly"] and morsel["samesite"] == "Lax" and morsel["path"] == "/console"
    return morsel.value


def test_session_round_trip_is_encrypted() -> None:
    codec = SessionCodec(Fernet.generate_key(), secure=False)
    session = Session(csrf="c" * 43, token="oak_secret-token", account="acme")
    value = _cookie_value(codec, session)
    assert "oak_secret-token" not in value and "acme" not in value
    assert codec.load(_request_with(value)) == session


@pytest.mark.parametrize("tamper", ["flip", "other-key", "garbage", "empty", "huge"])
def test_a_session_that_is_not_ours_is_no_session(tamper: str) -> None:
    key = Fernet.generate_key()
    codec = SessionCodec(key, secure=False)
    value = _cookie_value(codec, Session(csrf="x", token="oak_t"))
    forged = {
        "flip": value[:-5] + ("A" if value[-5] != "A" else "B") + value[-4:],
        "other-key": _cookie_value(SessionCodec(Fernet.generate_key(), secure=False), Session("x")),
        "garbage": "not-a-session",
        "empty": "",
        "huge": "A" * 5000,
    }[tamper]
    assert codec.load(_request_with(forged)) is None


def test_sessions_expire() -> None:
    key = Fernet.generate_key()
    old = Fernet(key).encrypt_at_time(b'{"csrf": "x", "token": "oak_t"}', int(time.time()) - 3600)
    assert SessionCodec(key, secure=False, ttl_s=60).load(_request_with(old.decode())) is None
    assert SessionCodec(key, secure=False, ttl_s=7200).load(_request_with(old.decode())) is not None


def test_secure_cookie_when_public_url_is_https() -> None:
    response = web.Response()
    SessionCodec(Fernet.generate_key(), secure=True).save(response, Session.fresh())
    assert response.cookies[COOKIE_NAME]["secure"]


def test_session_key_is_derived_per_purpose() -> None:
    box = SecretBox(SecretBox.generate_key())
    a, b = box.derive_key("onprem-console-session"), box.derive_key("other")
    assert a != b and a == box.derive_key("onprem-console-session")
    Fernet(a)  # a valid Fernet key
    # The derived key cannot read the box's secrets.
    with pytest.raises(InvalidToken):
        Fernet(a).decrypt(box.encrypt("secret").encode())


def test_csrf_comparison() -> None:
    session = Session(csrf="abc")
    assert csrf_ok(session, "abc")
    assert not csrf_ok(session, "abd")
    assert not csrf_ok(session, "")
    assert not csrf_ok(session, None)
    assert not csrf_ok(None, "abc")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/console/agents", "/console/agents"),
        ("/console/connections/con_1?x=1", "/console/connections/con_1?x=1"),
        ("https://evil.example/console/", "/console/connections"),
        ("//evil.example/console/", "/console/connections"),
        ("/console/\\evil", "/console/connections"),
        ("/v1/agents", "/console/connections"),
        (None, "/console/connections"),
    ],
)
def test_sign_in_only_returns_to_console_pages(raw: str | None, expected: str) -> None:
    assert safe_next(raw) == expected


def test_loopback_base() -> None:
    assert loopback_base("0.0.0.0", 8080) == "http://127.0.0.1:8080"
    assert loopback_base("::", 8080) == "http://[::1]:8080"
    assert loopback_base("10.1.2.3", 80) == "http://10.1.2.3:80"


def test_api_answer_field_errors() -> None:
    answer = ApiAnswer(
        400,
        {
            "error": {
                "code": "invalid_request",
                "message": "invalid request",
                "details": [
                    {"field": "http.base_uri", "message": "must be a URL"},
                    {"field": "http.base_uri", "message": "must name a host"},
                    {"field": "name", "message": "too long"},
                ],
            }
        },
    )
    assert answer.field_errors() == {
        "http.base_uri": "must be a URL; must name a host",
        "name": "too long",
    }
    assert ApiAnswer(502, None).error["code"] == "unavailable"


def _form(**fields: str) -> dict[str, str]:
    base = {"name": "ERP", "mode": "cloud", "http.base_uri": "https://erp.example/api"}
    return {**base, **{k.replace("__", "."): v for k, v in fields.items()}}


def test_a_full_form_is_a_valid_document_and_back() -> None:
    form = {
        "name": "ERP orders",
        "mode": "onpremise",
        "agent_id": "agt_abc",
        "http.base_uri": "https://erp.internal:8443/api",
        "http.media_type": "json",
        "http.headers": "Accept: application/json\n\nX-Tenant:  acme ",
        "http.auth.type": "token",
        "http.auth.token.token": "s3cret",
        "http.auth.token.location": "header",
        "http.auth.token.header_name": "X-Api-Key",
        "http.auth.token.scheme": "",
        "http.auth.fail_status_code": "403",
        "http.auth.fail_path": "error.code",
        "http.auth.fail_values": "expired\r\ninvalid, or worse",
        "http.rate_limit.fail_status_code": "503",
        "http.rate_limit.wait_between_requests_ms": "250",
        "http.ping.method": "POST",
        "http.ping.relative_uri": "/ping",
        "http.ping.body": '{"hello": [1, 2]}',
        "http.ping.success_path": "status",
        "http.ping.success_values": "ok\nup",
        "http.ca_pem": "-----BEGIN CERTIFICATE-----\r\nMIIB\r\n-----END CERTIFICATE-----",
        "http.concurrency_level": "4",
        "http.disable_strict_ssl": "on",
        "http.timeout_s": "12.5",
    }
    doc, errors = connection_doc(form)
    assert errors == {}
    spec = ConnectionIn.model_validate(doc)
    assert spec.agent_id == "agt_abc"
    assert [(h.name, h.value) for h in spec.http.headers] == [
        ("Accept", "application/json"),
        ("X-Tenant", "acme"),
    ]
    assert spec.http.auth.token is not None and spec.http.auth.token.scheme is None
    assert spec.http.auth.fail_values == ["expired", "invalid, or worse"]
    assert spec.http.ca_pem is not None and "\r" not in spec.http.ca_pem
    assert spec.http.ping is not None and spec.http.ping.body == {"hello": [1, 2]}
    assert spec.http.ping.success_values == ["ok", "up"]
    assert spec.http.rate_limit.wait_between_requests_ms == 250
    assert spec.http.timeout_s == 12.5 and spec.http.disable_strict_ssl

    shown = spec.model_dump(mode="json")
    shown["http"]["auth"]["token"]["token"] = MASK  # as the API shows it
    values = connection_values(shown)
    assert "http.auth.token.token" not in values  # secrets are never put back in a page
    assert values["http.headers"] == "Accept: application/json\nX-Tenant: acme"
    assert values["http.auth.fail_values"] == "expired\ninvalid, or worse"
    again, errors = connection_doc({**values, "http.auth.token.token": ""}, stored=shown)
    assert errors == {}
    assert again["http"]["auth"]["token"]["token"] == MASK  # empty input: keep the stored one
    assert again["http"]["auth"]["token"]["header_name"] == "X-Api-Key"
    # Saved again unchanged, the document is the same (no drift, no re-test).
    assert (
        ConnectionIn.model_validate(
            {
                **again,
                "http": {
                    **again["http"],
                    "auth": {
                        **again["http"]["auth"],
                        "token": {**again["http"]["auth"]["token"], "token": "s3cret"},
                    },
                },
            }
        )
        == spec
    )


def test_local_errors_before_any_api_call() -> None:
    _, errors = connection_doc(
        _form(
            mode="onpremise",
            http__headers="Accept application/json",
            http__ping__body="{not json",
        )
    )
    assert errors["agent_id"] == "choose the agent that reaches this API"
    assert errors["http.headers"].startswith("line 1:")
    assert errors["http.ping.body"].startswith("not valid JSON")


def test_numbers_that_are_not_numbers_reach_the_api_as_typed() -> None:
    doc, errors = connection_doc(_form(http__concurrency_level="four"))
    assert errors == {} and doc["http"]["concurrency_level"] == "four"


def test_cloud_mode_drops_the_agent_and_only_the_chosen_auth_is_sent() -> None:
    doc, _ = connection_doc(
        _form(agent_id="agt_x", **{"http.auth.type": "basic", "http.auth.basic.username": "u"})
    )
    auth: dict[str, Any] = doc["http"]["auth"]
    assert doc["agent_id"] is None
    assert auth["basic"] == {"username": "u", "password": None}
    assert auth["token"] is None and auth["oauth2"] is None


def test_oauth2_fields() -> None:
    doc, errors = connection_doc(
        _form(
            **{
                "http.auth.type": "oauth2",
                "http.auth.oauth2.iclient_id": "icl_abc",
                "http.auth.oauth2.scope": "read, write  admin",
                "http.auth.oauth2.access_token_headers": "Content-Type: application/json",
            }
        )
    )
    assert errors == {}
    oauth2 = ConnectionIn.model_validate(doc).http.auth.oauth2
    assert oauth2 is not None and oauth2.scope == ["read", "write", "admin"]
    assert oauth2.access_token_headers[0].value == "application/json"


def test_split_list() -> None:
    assert split_list("a, b\n\n c \r\nd") == ["a, b", "c", "d"]
    assert split_list("") == [] and split_list(None) == []


def test_token_scheme_empty_means_none_either_way() -> None:
    doc, _ = connection_doc(_form(**{"http.auth.type": "token", "http.auth.token.token": "t"}))
    spec = ConnectionIn.model_validate(doc)
    assert spec.http.auth.token is not None and spec.http.auth.token.scheme is None


def test_auth_error_fields_kept_with_any_auth_type() -> None:
    """A key sent in a plain header (auth none) still has its auth errors detected:
    saving from the console must not clear them."""
    stored = ConnectionIn.model_validate(
        {
            "name": "n",
            "http": {
                "base_uri": "https://x.example",
                "headers": [{"name": "X-Api-Key", "value": "k"}],
                "auth": {
                    "fail_status_code": 403,
                    "fail_path": "error.code",
                    "fail_values": ["bad"],
                },
            },
        }
    ).model_dump(mode="json")
    doc, errors = connection_doc(connection_values(stored), stored=stored)
    assert errors == {}
    assert ConnectionIn.model_validate(doc) == ConnectionIn.model_validate(stored)


def test_token_fields_start_with_the_api_defaults_on_an_edit_form() -> None:
    stored = ConnectionIn.model_validate(
        {"name": "n", "http": {"base_uri": "https://x.example"}}
    ).model_dump(mode="json")
    values = connection_values(stored)
    assert values["http.auth.token.scheme"] == "Bearer"
    values.update({"http.auth.type": "token", "http.auth.token.token": "t"})
    doc, _ = connection_doc(values, stored=stored)
    token = ConnectionIn.model_validate(doc).http.auth.token
    assert token is not None and token.scheme == "Bearer" and token.header_name == "Authorization"


def test_a_secret_typed_before_the_page_came_back_must_be_typed_again() -> None:
    typed = _form(
        **{
            "http.auth.type": "basic",
            "http.auth.basic.username": "u",
            "http.auth.basic.password": "pw",
        }
    )
    values = form_values(typed)
    assert "http.auth.basic.password" not in values
    assert values[RETYPE] == "http.auth.basic.password"
    stored = {"http": {"auth": {"basic": {"username": "u", "password": MASK}}}}
    # Saved without typing it again: refused, not silently the old (or no) password.
    _, errors = connection_doc({**values, "http.auth.basic.password": ""}, stored=stored)
    assert errors["http.auth.basic.password"].startswith("type it again")
    doc, errors = connection_doc({**values, "http.auth.basic.password": "pw2"}, stored=stored)
    assert errors == {} and doc["http"]["auth"]["basic"]["password"] == "pw2"


def test_errors_on_list_items_sit_on_their_field() -> None:
    details = [
        {"field": "http.headers.0.name", "message": "not a valid HTTP header name"},
        {"field": "http.headers.1.value", "message": "no CR"},
        {"field": "http.auth.oauth2.scope.2", "message": "too long"},
        {"field": "http.base_uri", "message": "must be a URL"},
        {"field": "body", "message": "odd"},
    ]
    answer = ApiAnswer(
        400, {"error": {"code": "invalid_request", "message": "", "details": details}}
    )
    assert answer.errors_on(FIELDS) == {
        "http.headers": "item 1 (name): not a valid HTTP header name; item 2 (value): no CR",
        "http.auth.oauth2.scope": "item 3: too long",
        "http.base_uri": "must be a URL",
        "body": "odd",
    }
