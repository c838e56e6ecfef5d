"""The pure parts of routing, without sockets: paths (JSON and XML), classification
(auth errors, rate limits, Retry-After, backoff, ping verdicts), URL building, body
encoding, envelope shaping, error mapping, and the pins on aiohttp's private API."""

from __future__ import annotations

import inspect
import ssl
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import aiohttp
import pytest
from yarl import URL

from relay.errors import TargetNotAllowedError, UpstreamError
from relay.models.connection import HttpAuth, Ping, RateLimit
from relay.routing import paths, policy
from relay.routing.bodies import envelope_body, envelope_headers, parse_for_paths
from relay.routing.failures import code_for_test_result, http_status, to_upstream_error
from relay.routing.outgoing import (
    InvalidRequestError,
    OutgoingRequest,
    drop_hop_by_hop,
    encode_value,
    join_url,
)
from relay.routing.ssrf import BlockedDestinationError

XML = b"""<?xml version="1.0"?>
<r:envelope xmlns:r="urn:r" xmlns="urn:default">
  <status code="E42">failed</status>
  <errors><error>one</error><error>two</error></errors>
</r:envelope>"""


# -- paths ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("errors.0.code", ["E1"]),
        ("$.errors[0].code", ["E1"]),
        ("errors.1.code", ["E2"]),
        ("errors.-1.code", ["E2"]),
        ("errors.2.code", []),
        ("ok", ["true"]),
        ("n", ["401"]),
        ("f", ["1.5"]),
        ("nothing", ["null"]),
        ("tags", ["a", "b"]),
        ("obj", ['{"k":"v"}']),
        ("missing.deeper", []),
        ("ok.deeper", []),
    ],
)
def test_json_paths(path: str, expected: list[str]) -> None:
    doc = {
        "errors": [{"code": "E1"}, {"code": "E2"}],
        "ok": True,
        "n": 401,
        "f": 1.5,
        "nothing": None,
        "tags": ["a", "b"],
        "obj": {"k": "v"},
    }
    assert paths.json_values(doc, path) == expected


def test_bad_json_path() -> None:
    with pytest.raises(paths.PathError):
        paths.json_values({}, "a..b")


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/envelope/status", ["failed"]),
        ("/r:envelope/status", ["failed"]),
        ("/*/status/@code", ["E42"]),
        ("status/@code", ["E42"]),
        ("//status/text()", ["failed"]),
        ("//error", ["one", "two"]),
        ("errors/error[2]", ["two"]),
        ("status[@code='E42']", ["failed"]),
        ("/other/status", []),
        ("//nothing", []),
    ],
)
def test_xml_paths(path: str, expected: list[str]) -> None:
    root = paths.parse_xml(XML)
    assert paths.xml_values(root, path) == expected


def test_xml_root_predicate_is_refused_clearly() -> None:
    with pytest.raises(paths.PathError):
        paths.xml_values(paths.parse_xml(XML), "/envelope[1]/status")


def test_xml_entities_are_not_fetched() -> None:
    doc = b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><r>&x;</r>'
    with pytest.raises(Exception):  # noqa: B017 - expat refuses undefined external entities
        paths.parse_xml(doc)


# -- policy --------------------------------------------------------------------------


def test_auth_error_by_status_and_path() -> None:
    default = HttpAuth()
    assert policy.is_auth_error(default, 401, None)
    assert not policy.is_auth_error(default, 403, None)
    override = HttpAuth(fail_status_code=403)
    assert policy.is_auth_error(override, 403, None)
    assert not policy.is_auth_error(override, 401, None)
    by_path = HttpAuth(fail_path="error.code", fail_values=["EXPIRED", "REVOKED"])
    assert policy.is_auth_error(by_path, 200, {"error": {"code": "EXPIRED"}})
    assert not policy.is_auth_error(by_path, 200, {"error": {"code": "OTHER"}})
    assert not policy.is_auth_error(by_path, 200, {"data": 1})
    presence = HttpAuth(fail_path="error")
    assert policy.is_auth_error(presence, 200, {"error": "anything"})
    assert not policy.is_auth_error(presence, 200, {"error": None})
    xml = HttpAuth(fail_path="//status/@code", fail_values=["E42"])
    assert policy.is_auth_error(xml, 200, paths.parse_xml(XML))


def test_rate_limit_detection() -> None:
    assert policy.is_rate_limited(RateLimit(), 429, None)
    assert not policy.is_rate_limited(RateLimit(), 503, None)
    assert policy.is_rate_limited(RateLimit(fail_status_code=503), 503, None)
    in_body = RateLimit(fail_path="fault.code", fail_values=["THROTTLED"])
    assert policy.is_rate_limited(in_body, 200, {"fault": {"code": "THROTTLED"}})
    assert not policy.is_rate_limited(in_body, 200, "plain text")


def test_retry_after_forms() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert policy.parse_retry_after("120", now=now) == 120
    assert policy.parse_retry_after(" 0 ", now=now) == 0
    assert policy.parse_retry_after("-5", now=now) == 0
    date = format_datetime(now + timedelta(seconds=30), usegmt=True)
    assert policy.parse_retry_after(date, now=now) == 30
    past = format_datetime(now - timedelta(seconds=30), usegmt=True)
    assert policy.parse_retry_after(past, now=now) == 0
    for junk in (None, "", "soon", "nan", "inf"):
        assert policy.parse_retry_after(junk, now=now) is None


def test_rate_limit_wait_within_deadline() -> None:
    kw = {"backoff_initial": 0.5, "backoff_max": 8.0, "retry_after_max": 60.0}
    assert policy.rate_limit_wait("2", attempt=1, remaining=10, **kw) == 2
    assert policy.rate_limit_wait("20", attempt=1, remaining=10, **kw) is None  # past deadline
    assert policy.rate_limit_wait("90", attempt=1, remaining=300, **kw) is None  # over the cap
    assert [policy.rate_limit_wait(None, attempt=a, remaining=100, **kw) for a in (1, 2, 3, 6)] == [
        0.5,
        1.0,
        2.0,
        8.0,
    ]
    assert policy.rate_limit_wait(None, attempt=3, remaining=1.5, **kw) is None


def test_ping_verdicts() -> None:
    plain = Ping()
    assert policy.ping_verdict(plain, 204, None).ok
    v = policy.ping_verdict(plain, 503, None)
    assert not v.ok and v.message == "ping answered HTTP 503"
    success = Ping(success_path="status", success_values=["up"])
    assert policy.ping_verdict(success, 200, {"status": "up"}).ok
    v = policy.ping_verdict(success, 200, {"status": "down"})
    assert not v.ok and v.message is not None and "'down'" in v.message
    assert not policy.ping_verdict(success, 500, {"status": "up"}).ok
    fail = Ping(fail_path="errors.0", error_path="errors.0.message")
    v = policy.ping_verdict(fail, 200, {"errors": [{"message": "bad key"}]})
    assert not v.ok and v.message == "bad key"
    assert policy.ping_verdict(fail, 200, {"errors": []}).ok


# -- URLs and bodies -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base", "rel", "expected"),
    [
        ("https://h/api", "/orders?limit=5", "https://h/api/orders?limit=5"),
        ("https://h/api/", "orders", "https://h/api/orders"),
        ("https://h", "/", "https://h/"),
        ("https://h/api?v=2", "/x?y=1", "https://h/api/x?v=2&y=1"),
        ("https://h/api", "/a/./b/../c", "https://h/api/a/c"),
        ("https://h:8443/api", "/a%2Fb", "https://h:8443/api/a%2Fb"),
        ("https://h/api", "/x#frag", "https://h/api/x"),
        ("https://h/api", "/a b?q=%2F&r=a b&s=100%", "https://h/api/a%20b?q=%2F&r=a%20b&s=100%25"),
        ("https://h/", "/ü?q=ä", "https://h/%C3%BC?q=%C3%A4"),
    ],
)
def test_join_url(base: str, rel: str, expected: str) -> None:
    assert str(join_url(base, rel)) == expected


@pytest.mark.parametrize(
    "rel",
    [
        "http://evil/x",
        "//evil/x",
        "HTTPS://evil",
        "javascript:alert(1)",
        "/../x",
        "/a/../../x",
        "/a\r\nHost: x",
        "\\\\evil",
    ],
)
def test_join_url_refuses_escapes(rel: str) -> None:
    with pytest.raises(InvalidRequestError):
        join_url("https://h/api", rel)


def test_token_in_url_keeps_the_query_as_given() -> None:
    from relay.routing.outgoing import with_query_param

    url = join_url("https://h/api", "/x?a=%2F&access_token=old&b=c+d")
    assert str(with_query_param(url, "access_token", "t/+=")) == (
        "https://h/api/x?a=%2F&b=c+d&access_token=t%2F%2B%3D"
    )


def test_body_encoding_and_token_in_body() -> None:
    assert encode_value({"a": 1}, "json") == ("json", {"a": 1})
    assert encode_value("raw <x/>", "xml") == ("raw", b"raw <x/>")
    assert encode_value({"a": 1, "b": "x y"}, "urlencoded") == ("form", [("a", "1"), ("b", "x y")])
    with pytest.raises(InvalidRequestError):
        encode_value({"a": 1}, "xml")
    req = OutgoingRequest("POST", URL("https://h/"), "urlencoded", body_kind="raw", body=b"a=1")
    req.add_body_field("access_token", "t")
    assert req.encoded_body() == b"a=1&access_token=t" and req.body_has_secret
    req = OutgoingRequest("GET", URL("https://h/"), "json")
    req.add_body_field("tok", "t")
    assert req.encoded_body() == b'{"tok":"t"}'
    with pytest.raises(InvalidRequestError):
        OutgoingRequest(
            "POST", URL("https://h/"), "xml", body_kind="raw", body=b"<a/>"
        ).add_body_field("t", "x")


def test_envelope_shaping() -> None:
    assert envelope_body(b'{"a":1}', "application/json") == {"body": {"a": 1}}
    assert envelope_body(b'{"a":1}', "application/problem+json; charset=utf-8") == {
        "body": {"a": 1}
    }
    assert envelope_body(b"<a/>", "application/xml") == {"body_text": "<a/>"}
    assert envelope_body(b"caf\xe9", "text/plain; charset=latin-1") == {"body_text": "café"}
    assert envelope_body(b"\xff\x00", "application/octet-stream") == {"body_base64": "/wA="}
    assert envelope_body(b"", "application/json") == {}
    headers = envelope_headers(
        drop_hop_by_hop({"Connection": "x-private", "X-Private": "1", "Keep-Alive": "5", "A": "1"})
    )
    assert headers == {"A": "1"}
    assert envelope_headers(
        [("Set-Cookie", "a=1"), ("set-cookie", "b=2"), ("Content-Length", "3")]
    ) == {"Set-Cookie": "a=1, b=2"}
    assert parse_for_paths(b"not json", "application/json", "json") == "not json"
    assert parse_for_paths(b'{"a":1}', "", "json") == {"a": 1}


# -- error mapping ----------------------------------------------------------------------


def test_error_mapping() -> None:
    key = aiohttp.client_reqrep.ConnectionKey("h", 443, True, True, None, None, None)
    cases: list[tuple[BaseException, str]] = [
        (
            aiohttp.ClientConnectorError(key, BlockedDestinationError("h", "10.0.0.1", "private")),
            "blocked_destination",
        ),
        (aiohttp.ClientConnectorError(key, TargetNotAllowedError("no")), "target_not_allowed"),
        (
            aiohttp.ClientConnectorError(key, ConnectionRefusedError(111, "refused")),
            "connection_refused",
        ),
        (aiohttp.ClientConnectorSSLError(key, ssl.SSLError(1, "boom")), "tls_error"),
        (aiohttp.ServerTimeoutError("slow"), "timeout"),
        (aiohttp.ServerDisconnectedError(), "bad_response"),
        (InvalidRequestError("bad"), "invalid_request"),
    ]
    for exc, code in cases:
        assert to_upstream_error(exc, "h:443").code == code, exc
    with pytest.raises(KeyError):
        to_upstream_error(KeyError("a bug stays a bug"), "h:443")
    err = UpstreamError("auth_failed", "x")
    assert to_upstream_error(err, "h") is err
    assert [
        http_status(c)
        for c in (
            "agent_offline",
            "timeout",
            "blocked_destination",
            "needs_authorization",
            "rate_limited",
            "tls_error",
        )
    ] == [503, 504, 403, 409, 429, 502]
    assert code_for_test_result("agent_protocol_error") == "agent_offline"
    assert code_for_test_result("too_many_redirects") == "ping_failed"


# -- pins on aiohttp internals ----------------------------------------------------------


def test_aiohttp_private_api_pins() -> None:
    """OnPremConnector overrides these private TCPConnector methods; if an aiohttp
    upgrade changes their shape, this fails before the tunnel tests get confusing."""
    wrap = inspect.signature(aiohttp.TCPConnector._wrap_create_connection)
    assert {"addr_infos", "req", "timeout", "client_error"} <= set(wrap.parameters)
    resolve = inspect.signature(aiohttp.TCPConnector._resolve_host)
    assert list(resolve.parameters)[:3] == ["self", "host", "port"]
    source = inspect.getsource(aiohttp.TCPConnector._create_direct_connection)
    assert "self._wrap_create_connection(" in source and "self._resolve_host(" in source
    # And why ssrf.DestinationGuard.check_url exists: IP literals skip the resolver.
    assert "is_ip_address(host)" in inspect.getsource(aiohttp.TCPConnector._resolve_host)
