"""The I/O-free parts of OAuth: state, PKCE, the authorization URL, the callback, client
authentication, scope, token responses, error classification and token placement."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from typing import Any
from urllib.parse import parse_qs, parse_qsl, unquote, unquote_plus, urlsplit

import pytest
from authlib.oauth2.rfc6749.util import extract_basic_authorization
from yarl import URL

from relay.models.connection import Header, OAuth2Auth
from relay.models.iclient import IClientIn
from relay.oauth.client import (
    DEFAULT_EXPIRES_IN_S,
    MAX_EXPIRES_IN_S,
    basic_credentials,
    build_revoke_request,
    build_token_request,
    parse_revoke_response,
    parse_token_response,
)
from relay.oauth.errors import (
    AuthorizationDeniedError,
    BadTokenResponseError,
    CallbackError,
    InvalidStateError,
    NeedsAuthorizationError,
    OAuthConfigurationError,
    TokenDomainError,
    TokenError,
    TransientTokenError,
)
from relay.oauth.flow import (
    InMemoryStateStore,
    PendingAuthorization,
    new_code_verifier,
    new_state,
    parse_callback,
    start_authorization,
    state_key,
)
from relay.oauth.tokens import (
    TokenSet,
    apply_token,
    connection_scope,
    host_allowed,
    join_scope,
    scope_delimiter,
)
from relay.routing.outgoing import OutgoingRequest

UNRESERVED = re.compile(r"^[A-Za-z0-9\-._~]+$")


def iclient(**overrides: Any) -> IClientIn:
    doc: dict[str, Any] = {
        "name": "Acme",
        "client_id": "acme-id",
        "client_secret": "acme-secret",
        "authorization_url": "https://auth.acme.com/authorize?audience=api",
        "token_url": "https://auth.acme.com/token",
        "revoke_url": "https://auth.acme.com/revoke",
        "valid_domains": ["api.acme.com", "*.svc.acme.com"],
    }
    doc.update(overrides)
    return IClientIn.model_validate(doc)


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# --- state and PKCE -------------------------------------------------------------------


def test_state_has_at_least_128_random_bits() -> None:
    states = {new_state() for _ in range(200)}
    assert len(states) == 200
    for s in states:
        assert UNRESERVED.match(s)
        assert len(base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))) >= 16


def test_code_verifier_length_and_alphabet() -> None:
    v = new_code_verifier()
    assert 43 <= len(v) <= 128 and UNRESERVED.match(v)
    assert len(new_code_verifier(43)) == 43 and len(new_code_verifier(128)) == 128
    for bad in (42, 129):
        with pytest.raises(ValueError):
            new_code_verifier(bad)
    assert new_code_verifier() != new_code_verifier()


def test_authorization_url_carries_pkce_s256_state_scope_and_exact_redirect_uri() -> None:
    c = iclient(scope_delimiter=",")
    redirect = "https://relay.example.com/oauth2/callback"
    start = start_authorization(c, ["read", "write"], redirect)
    url, state, verifier = start
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == ("https", "auth.acme.com", "/authorize")
    q = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert q["audience"] == "api"  # the iClient's own query survives
    assert q["response_type"] == "code"
    assert q["client_id"] == "acme-id"
    assert q["redirect_uri"] == redirect
    assert q["scope"] == "read,write"
    assert q["state"] == state
    assert q["code_challenge_method"] == "S256"
    assert verifier is not None
    expected = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    assert q["code_challenge"] == expected.rstrip(b"=").decode()
    assert "client_secret" not in q and "acme-secret" not in url
    assert state not in repr(start) and verifier not in repr(start)
    # Every attempt gets its own state and verifier.
    again = start_authorization(c, "read", redirect)
    assert again.state != state and again.code_verifier != verifier


def test_pkce_can_be_turned_off_and_client_credentials_cannot_authorize() -> None:
    start = start_authorization(iclient(pkce=False), None, "https://r.example.com/cb")
    assert start.code_verifier is None
    assert "code_challenge" not in start.url and "scope" not in parse_qs(urlsplit(start.url).query)
    cc = iclient(grant_type="client_credentials", authorization_url=None)
    with pytest.raises(OAuthConfigurationError):
        start_authorization(cc, None, "https://r.example.com/cb")


# --- the callback ------------------------------------------------------------------------


def test_callback_error_is_handled_before_the_code() -> None:
    url = "https://r/cb?code=CODE&state=S1&error=access_denied&error_description=User+said+no"
    with pytest.raises(AuthorizationDeniedError) as info:
        parse_callback(url)
    assert info.value.error == "access_denied"
    assert info.value.description == "User said no"
    assert info.value.state == "S1"
    assert "CODE" not in str(info.value)


def test_callback_needs_one_state_and_one_code() -> None:
    assert parse_callback("https://r/cb?code=C&state=S") == parse_callback(
        "https://r/cb?state=S&code=C&iss=x"
    )
    with pytest.raises(InvalidStateError):
        parse_callback("https://r/cb?code=C")
    with pytest.raises(CallbackError):
        parse_callback("https://r/cb?state=S")
    with pytest.raises(CallbackError):
        parse_callback("https://r/cb?state=S&code=")
    with pytest.raises(CallbackError):
        parse_callback("https://r/cb?state=S&state=T&code=C")
    with pytest.raises(CallbackError):
        parse_callback("https://r/cb?state=S&code=C&code=D")
    params = parse_callback("https://r/cb?code=C%2B1&state=S")
    assert params.code == "C+1"
    assert "C+1" not in repr(params)


def test_callback_error_text_is_cleaned() -> None:
    with pytest.raises(AuthorizationDeniedError) as info:
        parse_callback("https://r/cb?error=bad%0Aline&error_description=" + "x" * 1000)
    assert "\n" not in str(info.value)
    assert len(str(info.value)) < 500


# --- the state store --------------------------------------------------------------------


def pending(**overrides: Any) -> PendingAuthorization:
    values: dict[str, Any] = {
        "account_id": "acc_1",
        "connection_id": "con_1",
        "iclient_id": "icl_1",
        "redirect_uri": "https://r/cb",
        "code_verifier": "v" * 64,
    }
    values.update(overrides)
    return PendingAuthorization(**values)


async def test_state_is_single_use() -> None:
    store = InMemoryStateStore()
    await store.put("S", pending())
    got = await store.take("S")
    assert got.connection_id == "con_1" and got.code_verifier == "v" * 64
    with pytest.raises(InvalidStateError):
        await store.take("S")
    with pytest.raises(InvalidStateError):
        await store.take("never-issued")


async def test_state_expires_after_the_ttl() -> None:
    clock = Clock()
    store = InMemoryStateStore(clock=clock)
    assert store.ttl_s == 600
    await store.put("fresh", pending())
    await store.put("stale", pending())
    clock.now += 599
    assert (await store.take("fresh")).account_id == "acc_1"
    clock.now += 2
    with pytest.raises(InvalidStateError, match="too long"):
        await store.take("stale")
    short = InMemoryStateStore(ttl_s=5, clock=clock)
    await short.put("S", pending())
    clock.now += 6
    with pytest.raises(InvalidStateError):
        await short.take("S")


async def test_state_is_bound_to_account_and_connection_and_burnt_on_mismatch() -> None:
    store = InMemoryStateStore()
    await store.put("S", pending())
    with pytest.raises(InvalidStateError, match="another connection"):
        await store.take("S", account_id="acc_other")
    with pytest.raises(InvalidStateError):  # burnt: the first presentation consumed it
        await store.take("S", account_id="acc_1")
    await store.put("T", pending())
    with pytest.raises(InvalidStateError):
        await store.take("T", connection_id="con_2")
    await store.put("U", pending())
    assert (await store.take("U", account_id="acc_1", connection_id="con_1")).iclient_id == "icl_1"


async def test_state_store_keeps_hashes_and_is_bounded() -> None:
    store = InMemoryStateStore(max_pending=3)
    for s in ("a", "b", "c", "d"):
        await store.put(s, pending(connection_id=f"con_{s}"))
    assert len(store) == 3
    assert "b" not in store._pending and state_key("b") in store._pending
    with pytest.raises(InvalidStateError):
        await store.take("a")  # the oldest was evicted
    assert (await store.take("d")).connection_id == "con_d"


# --- client authentication ---------------------------------------------------------------

RESERVED = [
    ("plain", "secret"),
    ("id:with:colons", "pa:ss"),
    ("per%cent", "100%"),
    ("plus+sign", "a+b=c"),
    ("with space", "two words"),
    ("ünïcødé", "пароль✓"),
    ("slash/and?query&", "#hash@at"),
]


@pytest.mark.parametrize(("client_id", "secret"), RESERVED)
def test_basic_credentials_are_form_urlencoded_per_rfc6749_2_3_1(
    client_id: str, secret: str
) -> None:
    header = basic_credentials(client_id, secret)
    assert header.startswith("Basic ")
    raw = base64.b64decode(header[6:]).decode("ascii")
    user, _, password = raw.partition(":")
    # Decoders of both kinds (form: unquote_plus; percent: unquote) get the originals.
    assert (unquote_plus(user), unquote_plus(password)) == (client_id, secret)
    assert (unquote(user), unquote(password)) == (client_id, secret)
    # And so does the decoder of authlib's own authorization server.
    assert extract_basic_authorization({"Authorization": header}) == (client_id, secret)


def test_token_request_with_basic_auth() -> None:
    req = build_token_request(
        iclient(client_auth="basic"),
        "authorization_code",
        {"code": "C", "redirect_uri": "https://r/cb", "code_verifier": "V" * 43},
    )
    assert req.url == "https://auth.acme.com/token"
    assert req.headers["Authorization"] == basic_credentials("acme-id", "acme-secret")
    assert req.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert req.headers["Accept"] == "application/json"
    form = dict(parse_qsl(req.body.decode()))
    assert form == {
        "grant_type": "authorization_code",
        "redirect_uri": "https://r/cb",
        "code": "C",
        "code_verifier": "V" * 43,
    }
    assert "acme-secret" not in repr(req) and "V" * 43 not in repr(req)


def test_token_request_with_body_auth_and_public_clients() -> None:
    req = build_token_request(iclient(), "refresh_token", {"refresh_token": "R", "scope": None})
    assert "Authorization" not in req.headers
    assert dict(parse_qsl(req.body.decode())) == {
        "grant_type": "refresh_token",
        "refresh_token": "R",
        "client_id": "acme-id",
        "client_secret": "acme-secret",
    }
    public = build_token_request(
        iclient(client_secret=None, client_auth="basic"), "refresh_token", {"refresh_token": "R"}
    )
    assert "Authorization" not in public.headers
    assert dict(parse_qsl(public.body.decode()))["client_id"] == "acme-id"


def test_access_token_header_overrides_json_body() -> None:
    headers: list[Header | tuple[str, str]] = [
        Header(name="Content-Type", value="application/json"),
        ("X-Tenant", "t1"),
    ]
    req = build_token_request(
        iclient(), "client_credentials", {"scope": "a b"}, extra_headers=headers
    )
    assert req.headers["Content-Type"] == "application/json"
    assert req.headers["X-Tenant"] == "t1"
    assert json.loads(req.body) == {
        "grant_type": "client_credentials",
        "scope": "a b",
        "client_id": "acme-id",
        "client_secret": "acme-secret",
    }
    # The override replaces the default header whatever its case.
    form = build_token_request(
        iclient(),
        "client_credentials",
        {},
        extra_headers=[("content-type", "application/x-www-form-urlencoded; charset=utf-8")],
    )
    assert [k for k in form.headers if k.lower() == "content-type"] == ["content-type"]
    assert dict(parse_qsl(form.body.decode()))["grant_type"] == "client_credentials"


def test_revoke_request_per_rfc7009() -> None:
    req = build_revoke_request(iclient(client_auth="basic"), "RT", token_type_hint="refresh_token")
    assert req.url == "https://auth.acme.com/revoke"
    assert dict(parse_qsl(req.body.decode())) == {"token": "RT", "token_type_hint": "refresh_token"}
    assert req.headers["Authorization"].startswith("Basic ")
    with pytest.raises(OAuthConfigurationError):
        build_revoke_request(iclient(revoke_url=None), "RT")


# --- scope ----------------------------------------------------------------------------------


def test_scope_joining_and_delimiter_precedence() -> None:
    assert join_scope(["a", "b"]) == "a b"
    assert join_scope(["a", "b"], ",") == "a,b"
    assert join_scope([]) is None and join_scope([""]) is None
    c = iclient(scope_delimiter="+")
    assert scope_delimiter(c, None) == "+"
    assert scope_delimiter(c, OAuth2Auth(iclient_id="icl_1", scope=["x"])) == "+"
    conn = OAuth2Auth(iclient_id="icl_1", scope=["x", "y"], scope_delimiter=",")
    assert scope_delimiter(c, conn) == ","
    assert connection_scope(c, conn) == "x,y"
    assert connection_scope(c, OAuth2Auth(iclient_id="icl_1")) is None


# --- token responses ----------------------------------------------------------------------


def parse(status: int, body: Any, content_type: str = "application/json", **kw: Any) -> TokenSet:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return parse_token_response(status, content_type, raw, host="auth.acme.com", now=1000.0, **kw)


def test_a_good_token_response() -> None:
    t = parse(
        200,
        {
            "access_token": "A",
            "token_type": "bearer",
            "expires_in": 120,
            "refresh_token": "R",
            "scope": "a b",
        },
    )
    assert (t.access_token, t.token_type, t.refresh_token, t.scope) == ("A", "bearer", "R", "a b")
    assert t.expires_at == 1120.0 and not t.lifetime_defaulted
    assert "access_token" not in repr(t) and "refresh_token" not in repr(t)


@pytest.mark.parametrize("value", [None, 0, -5, "soon", [], True, float("nan")])
def test_missing_or_bad_expires_in_gets_the_default_lifetime(value: Any) -> None:
    body: dict[str, Any] = {"access_token": "A"}
    if value is not None:
        body["expires_in"] = value
    raw = json.dumps(body, allow_nan=True).encode()
    t = parse(200, raw)
    assert t.expires_at == 1000.0 + DEFAULT_EXPIRES_IN_S
    assert t.lifetime_defaulted
    assert t.token_type == "Bearer" and t.refresh_token is None
    custom = parse(200, raw, default_expires_in=60)
    assert custom.expires_at == 1060.0


def test_expires_in_as_string_list_scope_and_clipping() -> None:
    assert parse(200, {"access_token": "A", "expires_in": "30"}).expires_at == 1030.0
    assert (
        parse(200, {"access_token": "A", "expires_in": 10**12}).expires_at
        == 1000 + MAX_EXPIRES_IN_S
    )
    assert parse(200, {"access_token": "A", "scope": ["a", "b"]}).scope == "a b"


def test_form_encoded_token_responses_are_read() -> None:
    t = parse(
        200, b"access_token=A&token_type=bearer&expires_in=60", "application/x-www-form-urlencoded"
    )
    assert t.access_token == "A" and t.expires_at == 1060.0


@pytest.mark.parametrize(
    ("status", "content_type", "body"),
    [
        (200, "text/html", b"<html><body>Login</body></html>"),
        (200, "application/json", b"not json"),
        (200, "application/json", b""),
        (200, "application/json", b"[1, 2]"),
        (200, "application/json", b'{"token_type": "bearer"}'),
        (200, "application/json", b'{"access_token": 42}'),
        (200, "application/json", b'{"access_token": ""}'),
        (200, "", b"\xff\xfe\x00garbage"),
        (404, "text/html", b"<h1>Not Found</h1>"),
        (302, "text/html", b""),
    ],
)
def test_garbage_is_a_bad_token_response(status: int, content_type: str, body: bytes) -> None:
    with pytest.raises(BadTokenResponseError) as info:
        parse(status, body, content_type)
    assert info.value.code == "auth_failed"
    assert info.value.connection_state == "offline"
    assert "auth.acme.com" in str(info.value)


@pytest.mark.parametrize(
    ("status", "body", "kind", "error"),
    [
        (400, {"error": "invalid_grant"}, NeedsAuthorizationError, "invalid_grant"),
        (200, {"error": "invalid_grant"}, NeedsAuthorizationError, "invalid_grant"),
        (401, {"error": "invalid_client"}, OAuthConfigurationError, "invalid_client"),
        (400, {"error": "unauthorized_client"}, OAuthConfigurationError, "unauthorized_client"),
        (400, {"error": "invalid_scope"}, OAuthConfigurationError, "invalid_scope"),
        (200, {"ok": False, "error": "invalid_auth"}, OAuthConfigurationError, "invalid_auth"),
        (200, {"ok": False, "error": "invalid_refresh_token"}, NeedsAuthorizationError, None),
        (200, {"ok": False}, OAuthConfigurationError, "unknown_error"),
        (400, {"error": "temporarily_unavailable"}, TransientTokenError, "temporarily_unavailable"),
        (503, {"error": "invalid_grant"}, TransientTokenError, "invalid_grant"),
        (500, b"<html>Internal error</html>", TransientTokenError, None),
        (502, b"", TransientTokenError, None),
        (429, b"slow down", TransientTokenError, None),
        (401, b"<html>Unauthorized</html>", OAuthConfigurationError, None),
        (403, b"", OAuthConfigurationError, None),
    ],
)
def test_failures_are_classified(
    status: int, body: Any, kind: type[TokenError], error: str | None
) -> None:
    with pytest.raises(kind) as info:
        parse(status, body, "text/html" if isinstance(body, bytes) else "application/json")
    assert type(info.value) is kind
    if error is not None:
        assert info.value.error == error
    assert info.value.status == status


def test_classification_decides_the_connection_state_and_code() -> None:
    assert NeedsAuthorizationError("x").connection_state == "needs_authorization"
    assert NeedsAuthorizationError("x").code == "needs_authorization"
    assert OAuthConfigurationError("x").connection_state == "offline"
    assert TransientTokenError("x").connection_state is None
    assert isinstance(TransientTokenError("x"), ConnectionError)
    assert isinstance(TokenDomainError("x"), PermissionError)
    assert TokenDomainError("x").code == "blocked_destination"


def test_transient_failures_carry_retry_after() -> None:
    with pytest.raises(TransientTokenError) as info:
        parse(503, b"busy", "text/plain", retry_after="7")
    assert info.value.retry_after == 7.0
    with pytest.raises(TransientTokenError) as info:
        parse(503, b"busy", "text/plain")
    assert info.value.retry_after is None


def test_provider_text_is_cleaned_of_secrets() -> None:
    body = {
        "error": "invalid_client",
        "error_description": "bad secret SECRET-VALUE-1 for\ncode CODE-VALUE-2 token=abc "
        + "x" * 500,
    }
    with pytest.raises(OAuthConfigurationError) as info:
        parse(401, body, secrets=("SECRET-VALUE-1", "CODE-VALUE-2"))
    text = str(info.value)
    assert "SECRET-VALUE-1" not in text and "CODE-VALUE-2" not in text
    assert "token=abc" not in text
    assert "\n" not in text and len(text) < 600


def test_revoke_responses() -> None:
    parse_revoke_response(200, "", b"", host="h")
    parse_revoke_response(204, "", b"", host="h")
    with pytest.raises(TransientTokenError):
        parse_revoke_response(503, "", b"", host="h", retry_after="3")
    with pytest.raises(OAuthConfigurationError):
        parse_revoke_response(
            400, "application/json", b'{"error":"unsupported_token_type"}', host="h"
        )
    with pytest.raises(BadTokenResponseError):
        parse_revoke_response(404, "text/html", b"<html/>", host="h")


# --- token sets ---------------------------------------------------------------------------


def test_token_set_keeps_the_old_refresh_token_when_none_comes_back() -> None:
    old = TokenSet("A1", expires_at=10, refresh_token="R1", scope="a")
    new = TokenSet("A2", expires_at=20)
    merged = new.keeping(old)
    assert (merged.access_token, merged.refresh_token, merged.scope) == ("A2", "R1", "a")
    rotated = TokenSet("A3", expires_at=30, refresh_token="R2", scope="b").keeping(old)
    assert (rotated.refresh_token, rotated.scope) == ("R2", "b")
    assert new.keeping(None) is new


def test_token_set_round_trips_and_hides_secrets() -> None:
    t = TokenSet(
        "ACCESS-X", expires_at=1234.5, refresh_token="REFRESH-Y", scope="s", lifetime_defaulted=True
    )
    assert TokenSet.from_dict(json.loads(json.dumps(t.to_dict()))) == t
    assert "ACCESS-X" not in repr(t) and "REFRESH-Y" not in repr(t)
    assert t.expires_within(60, now=1174.5) and not t.expires_within(60, now=1174.0)
    with pytest.raises(ValueError):
        TokenSet.from_dict({"access_token": "A", "expires_at": "inf"})


# --- where the token goes -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("api.acme.com", True),
        ("API.ACME.COM", True),
        ("api.acme.com.", True),
        ("x.svc.acme.com", True),
        ("a.b.svc.acme.com", True),
        ("svc.acme.com", False),
        ("evilsvc.acme.com", False),
        ("api.acme.com.evil.com", False),
        ("acme.com", False),
        ("evil-api.acme.com", False),
        ("", False),
        (None, False),
    ],
)
def test_host_allowed(host: str | None, allowed: bool) -> None:
    assert host_allowed(host, ["api.acme.com", "*.svc.acme.com"]) is allowed


def test_host_allowed_ip_and_idn() -> None:
    assert host_allowed("10.0.0.1", ["10.0.0.1"])
    assert host_allowed("[::1]", ["::1"])
    assert host_allowed("xn--bcher-kva.de", ["bücher.de"])
    assert host_allowed("bücher.de", ["bücher.de"])
    assert not host_allowed("10.0.0.2", ["10.0.0.1"])


def request(url: str, media_type: Any = "json") -> OutgoingRequest:
    return OutgoingRequest(method="POST", url=URL(url), media_type=media_type)


TOKENS = TokenSet("TKN", expires_at=1e12)


def test_token_in_a_header_with_scheme_name_or_none() -> None:
    r = request("https://api.acme.com/v1/orders")
    apply_token(r, TOKENS, iclient())
    assert r.headers["Authorization"] == "Bearer TKN"
    assert "authorization" in r.secret_headers
    r = request("https://api.acme.com/v1")
    apply_token(r, TOKENS, iclient(header_name="X-Api-Token", header_scheme=None))
    assert r.headers["X-Api-Token"] == "TKN"
    r = request("https://api.acme.com/v1")
    apply_token(r, TOKENS, iclient(header_scheme="Token"))
    assert r.headers["Authorization"] == "Token TKN"


def test_token_in_the_url_or_body() -> None:
    r = request("https://api.acme.com/v1?a=1")
    apply_token(r, TOKENS, iclient(token_location="url", param_name="tok"))
    assert r.url.query["tok"] == "TKN" and r.url.query["a"] == "1"
    r = request("https://api.acme.com/v1")
    apply_token(r, TOKENS, iclient(token_location="body", param_name="auth"))
    assert r.body == {"auth": "TKN"} and r.body_has_secret


def test_token_is_not_sent_outside_valid_domains() -> None:
    for url in ("https://evil.com/x", "https://api.acme.com.evil.com/", "https://acme.com/"):
        r = request(url)
        before = (r.url, dict(r.headers), r.body)
        with pytest.raises(TokenDomainError) as info:
            apply_token(r, TOKENS, iclient())
        assert "TKN" not in str(info.value)
        assert str(urlsplit(url).hostname) in str(info.value)
        assert (r.url, dict(r.headers), r.body) == before
