"""mode: cloud against real HTTP servers on loopback (the SSRF guard off: these
servers are on 127.0.0.1; the guard has its own tests): envelope, auth, auth-error
detection, rate limits, timeouts, TLS options, JSON and XML paths, pacing and
concurrency."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import time
from pathlib import Path

import pytest
from routing_harness import CA, TIMEOUT, Upstream, server_context, spec

from relay.errors import UpstreamError
from relay.models.connection import RequestIn


def rid() -> str:
    return "req_test"


async def test_envelope_json_roundtrip_with_headers_and_token(make_executor, upstream) -> None:
    ex = make_executor()
    s = spec(
        upstream.base + "/",
        headers=[{"name": "X-Env", "value": "prod"}],
        auth={"type": "token", "token": {"token": "sekrit"}},
    )
    out = await ex.request(
        "acc_x",
        "con_a",
        s,
        RequestIn(method="POST", relative_uri="/echo?x=1", headers={"X-Trace": "1"}, body={"a": 1}),
        request_id=rid(),
    )
    assert out.status == 200 and out.route == "cloud" and out.attempts == 1
    assert out.body["method"] == "POST" and out.body["query"] == "x=1"
    assert json.loads(out.body["body"]) == {"a": 1}
    h = out.body["headers"]
    assert h["Authorization"] == "Bearer sekrit"
    assert h["X-Env"] == "prod" and h["X-Trace"] == "1"
    assert h["Content-Type"] == "application/json"
    assert out.headers["X-Upstream"] == "yes"
    assert "Transfer-Encoding" not in out.headers and "Content-Length" not in out.headers


@pytest.mark.parametrize(
    ("token", "expect_header", "expect_query", "expect_body"),
    [
        (
            {"location": "header", "header_name": "X-Api-Key", "scheme": None},
            ("X-Api-Key", "t0k"),
            "",
            None,
        ),
        ({"location": "url", "param_name": "key"}, None, "key=t0k", None),
        ({"location": "body", "param_name": "tok"}, None, "", {"q": 1, "tok": "t0k"}),
    ],
)
async def test_token_locations(
    make_executor, upstream, token, expect_header, expect_query, expect_body
) -> None:
    ex = make_executor()
    s = spec(upstream.base, auth={"type": "token", "token": {"token": "t0k", **token}})
    out = await ex.request(
        "acc_x",
        "con_a",
        s,
        RequestIn(method="POST", relative_uri="/echo", body={"q": 1}),
        request_id=rid(),
    )
    if expect_header:
        assert out.body["headers"][expect_header[0]] == expect_header[1]
    else:
        assert "Authorization" not in out.body["headers"]
    assert out.body["query"] == expect_query
    if expect_body:
        assert json.loads(out.body["body"]) == expect_body


async def test_basic_auth_and_urlencoded_body(make_executor, upstream) -> None:
    ex = make_executor()
    s = spec(
        upstream.base,
        media_type="urlencoded",
        auth={"type": "basic", "basic": {"username": "ann", "password": "pw:x"}},
    )
    out = await ex.request(
        "acc_x",
        "con_a",
        s,
        RequestIn(method="POST", relative_uri="/echo", body={"a": "1 2"}),
        request_id=rid(),
    )
    assert out.body["headers"]["Authorization"] == "Basic " + base64.b64encode(b"ann:pw:x").decode()
    assert out.body["body"] == "a=1+2"
    assert out.body["headers"]["Content-Type"] == "application/x-www-form-urlencoded"


async def test_text_and_binary_bodies(make_executor, upstream) -> None:
    ex = make_executor()
    s = spec(upstream.base, media_type="xml")
    out = await ex.request("acc_x", "con_a", s, RequestIn(relative_uri="/xml"), request_id=rid())
    assert out.body is None and out.body_text is not None and "<status" in out.body_text
    out = await ex.request("acc_x", "con_a", s, RequestIn(relative_uri="/bytes"), request_id=rid())
    assert base64.b64decode(out.body_base64 or "") == bytes(range(256))
    raw = base64.b64encode(b"\x00\x01binary").decode()
    out = await ex.request(
        "acc_x",
        "con_a",
        s,
        RequestIn(
            method="PUT",
            relative_uri="/echo",
            body_base64=raw,
            headers={"Content-Type": "application/octet-stream"},
        ),
        request_id=rid(),
    )
    assert upstream.seen[-1].body == b"\x00\x01binary"


async def test_relative_uri_cannot_leave_the_host(make_executor, upstream) -> None:
    ex = make_executor()
    s = spec(upstream.base + "/api")
    for bad in ("http://evil.example/x", "//evil.example/x", "/../../etc", "https:evil"):
        with pytest.raises(UpstreamError) as info:
            await ex.request("acc_x", "con_a", s, RequestIn(relative_uri=bad), request_id=rid())
        assert info.value.code == "invalid_request"
    assert upstream.seen == []


# -- auth errors ---------------------------------------------------------------------


async def test_auth_error_by_status_marks_failure(make_executor, upstream) -> None:
    ex = make_executor()
    s = spec(upstream.base, auth={"type": "token", "token": {"token": "bad"}})
    with pytest.raises(UpstreamError) as info:
        await ex.request("acc_x", "con_a", s, RequestIn(relative_uri="/code/401"), request_id=rid())
    assert info.value.code == "auth_failed" and info.value.status == 401
    result = await ex.test(
        "acc_x", spec(upstream.base, ping={"relative_uri": "/code/401"}), request_id=rid()
    )
    assert not result.ok and result.error and result.error.code == "auth_failed"
    assert result.status == 401


async def test_auth_error_status_override_and_body_path(make_executor, upstream) -> None:
    ex = make_executor()
    # 403 counts when configured; 401 then is an ordinary answer.
    s = spec(upstream.base, auth={"fail_status_code": 403})
    with pytest.raises(UpstreamError) as info:
        await ex.request("acc_x", "con_a", s, RequestIn(relative_uri="/code/403"), request_id=rid())
    assert info.value.code == "auth_failed"
    out = await ex.request(
        "acc_x", "con_a", s, RequestIn(relative_uri="/code/401"), request_id=rid()
    )
    assert out.status == 401
    # A 200 whose fail_path value is a fail value.
    s = spec(
        upstream.base,
        auth={"fail_path": "errors.0.code", "fail_values": ["INVALID_TOKEN", "EXPIRED"]},
    )
    with pytest.raises(UpstreamError) as info:
        await ex.request(
            "acc_x", "con_a", s, RequestIn(relative_uri="/auth-in-body"), request_id=rid()
        )
    assert info.value.code == "auth_failed" and info.value.status == 200
    s = spec(upstream.base, auth={"fail_path": "errors.0.code", "fail_values": ["OTHER"]})
    out = await ex.request(
        "acc_x", "con_a", s, RequestIn(relative_uri="/auth-in-body"), request_id=rid()
    )
    assert out.status == 200


async def test_oauth2_is_needs_authorization_without_traffic(make_executor, upstream) -> None:
    ex = make_executor()
    s = spec(upstream.base, auth={"type": "oauth2", "oauth2": {"iclient_id": "icl_abc"}})
    result = await ex.test("acc_x", s, request_id=rid())
    assert result.error and result.error.code == "needs_authorization"
    with pytest.raises(UpstreamError) as info:
        await ex.request("acc_x", "con_a", s, RequestIn(), request_id=rid())
    assert info.value.code == "needs_authorization"
    assert upstream.seen == []


async def test_auth_step_refresh_retries_once(make_executor, upstream) -> None:
    """The auth step is a seam: a step that refreshes gets exactly one retry."""
    from relay.routing.auth import AuthContext
    from relay.routing.outgoing import OutgoingRequest

    class Refreshing:
        tokens = ["old", "new"]
        refreshed = 0

        async def apply(self, request: OutgoingRequest) -> None:
            request.headers["Authorization"] = "Bearer " + self.tokens[min(self.refreshed, 1)]

        async def on_auth_error(self) -> bool:
            self.refreshed += 1
            return True

    step = Refreshing()

    def factory(spec_, ctx: AuthContext) -> Refreshing:
        return step

    ex = make_executor(auth_steps=factory)
    with pytest.raises(UpstreamError) as info:
        await ex.request(
            "acc_x",
            "con_a",
            spec(upstream.base),
            RequestIn(relative_uri="/code/401"),
            request_id=rid(),
        )
    assert info.value.code == "auth_failed"
    assert step.refreshed == 1
    assert [s.headers["Authorization"] for s in upstream.seen] == ["Bearer old", "Bearer new"]


# -- rate limits ---------------------------------------------------------------------


async def test_429_with_retry_after_then_success(make_executor, upstream) -> None:
    ex = make_executor()
    s = spec(upstream.base, timeout_s=5)
    started = time.monotonic()
    out = await ex.request(
        "acc_x", "con_a", s, RequestIn(relative_uri="/throttle-then-ok"), request_id=rid()
    )
    assert out.status == 200 and out.attempts == 2
    assert time.monotonic() - started >= 0.95  # Retry-After: 1 was honoured


async def test_429_forever_is_rate_limited_within_the_deadline(make_executor, upstream) -> None:
    ex = make_executor(backoff_initial_s=0.05)
    s = spec(upstream.base, timeout_s=1)
    started = time.monotonic()
    with pytest.raises(UpstreamError) as info:
        await ex.request("acc_x", "con_a", s, RequestIn(relative_uri="/throttle"), request_id=rid())
    assert info.value.code == "rate_limited" and info.value.status == 429
    assert time.monotonic() - started < 1.0
    assert upstream.counters["throttle"] >= 3  # backed off and retried


async def test_rate_limit_in_body_and_custom_retry_header(make_executor, upstream) -> None:
    ex = make_executor()
    s = spec(
        upstream.base,
        rate_limit={
            "fail_path": "fault.code",
            "fail_values": ["RATE_LIMIT"],
            "retry_after_header": "X-Wait",
        },
    )
    out = await ex.request(
        "acc_x", "con_a", s, RequestIn(relative_uri="/throttle-in-body"), request_id=rid()
    )
    assert out.status == 200 and out.attempts == 2


async def test_wait_between_requests(make_executor, upstream) -> None:
    ex = make_executor()
    s = spec(upstream.base, rate_limit={"wait_between_requests_ms": 150})
    started = time.monotonic()
    await asyncio.gather(
        *(
            ex.request("acc_x", "con_p", s, RequestIn(relative_uri="/ping"), request_id=rid())
            for _ in range(3)
        )
    )
    assert time.monotonic() - started >= 0.29


# -- failures --------------------------------------------------------------------------


async def test_timeout(make_executor, upstream) -> None:
    ex = make_executor()
    s = spec(upstream.base, timeout_s=0.3, ping={"relative_uri": "/hang"})
    result = await ex.test("acc_x", s, request_id=rid())
    assert result.error and result.error.code == "timeout"
    assert 250 <= result.latency_ms < 3000
    with pytest.raises(UpstreamError) as info:
        await ex.request("acc_x", "con_a", s, RequestIn(relative_uri="/hang"), request_id=rid())
    assert info.value.code == "timeout"


async def test_connection_refused_and_unresolvable(make_executor) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ex = make_executor()
    result = await ex.test("acc_x", spec(f"http://127.0.0.1:{port}"), request_id=rid())
    assert result.error and result.error.code == "connection_refused", result
    result = await ex.test("acc_x", spec("http://no-such-host.invalid"), request_id=rid())
    assert result.error and result.error.code == "target_unreachable", result


# -- ping ------------------------------------------------------------------------------


async def test_ping_verdicts_json(make_executor, upstream) -> None:
    ex = make_executor()

    async def ping(**p: object):
        return await ex.test(
            "acc_x", spec(upstream.base, ping={"relative_uri": "/status", **p}), request_id=rid()
        )

    assert (await ping()).ok
    assert (await ping(success_path="result.state", success_values=["up"])).ok
    r = await ping(success_path="result.state", success_values=["down"])
    assert not r.ok and r.error and r.error.code == "ping_failed" and r.status == 200
    r = await ping(fail_path="errors.0.code", fail_values=["none"], error_path="result.state")
    assert r.error and r.error.code == "ping_failed" and r.error.message == "up"
    r = await ex.test(
        "acc_x", spec(upstream.base, ping={"relative_uri": "/code/500"}), request_id=rid()
    )
    assert r.error and r.error.code == "ping_failed" and r.status == 500


async def test_ping_verdicts_xml(make_executor, upstream) -> None:
    ex = make_executor()

    async def ping(state: str, **p: object):
        s = spec(upstream.base, media_type="xml", ping={"relative_uri": f"/xml?state={state}", **p})
        return await ex.test("acc_x", s, request_id=rid())

    assert (await ping("up", success_path="/response/status", success_values=["up"])).ok
    assert (await ping("up", success_path="//status/@code", success_values=["7"])).ok
    r = await ping(
        "down", success_path="/response/status", success_values=["up"], error_path="//error/message"
    )
    assert r.error and r.error.code == "ping_failed" and r.error.message == "XML says down"
    r = await ping("up", fail_path="status", fail_values=["up"])
    assert r.error and r.error.code == "ping_failed"


async def test_auth_error_by_xml_path(make_executor, upstream) -> None:
    ex = make_executor()
    s = spec(
        upstream.base, media_type="xml", auth={"fail_path": "//status", "fail_values": ["revoked"]}
    )
    with pytest.raises(UpstreamError) as info:
        await ex.request(
            "acc_x", "con_a", s, RequestIn(relative_uri="/xml?state=revoked"), request_id=rid()
        )
    assert info.value.code == "auth_failed"


# -- TLS -------------------------------------------------------------------------------


async def test_tls_strict_ca_pem_and_disable_strict(
    make_executor, make_upstream, ca: CA, tmp_path: Path
) -> None:
    up = await make_upstream(ssl_context=server_context(ca.issue("localhost"), tmp_path))
    ex = make_executor()
    base = f"https://localhost:{up.port}"
    r = await ex.test("acc_x", spec(base, ping={"relative_uri": "/ping"}), request_id=rid())
    assert r.error and r.error.code == "tls_error", r
    assert "certificate" in r.error.message.lower()
    r = await ex.test(
        "acc_x", spec(base, ca_pem=ca.pem, ping={"relative_uri": "/ping"}), request_id=rid()
    )
    assert r.ok, r
    r = await ex.test(
        "acc_x",
        spec(base, disable_strict_ssl=True, ping={"relative_uri": "/ping"}),
        request_id=rid(),
    )
    assert r.ok, r
    # The name must match too: the CA is trusted but the certificate is for another name.
    other = await make_upstream(
        ssl_context=server_context(ca.issue("other", names=("other.example",)), tmp_path)
    )
    r = await ex.test(
        "acc_x",
        spec(f"https://localhost:{other.port}", ca_pem=ca.pem, ping={"relative_uri": "/ping"}),
        request_id=rid(),
    )
    assert r.error and r.error.code == "tls_error", r
    assert other.seen == []


async def test_tls_client_certificate(make_executor, make_upstream, ca: CA, tmp_path: Path) -> None:
    client_ca = CA.create("Client CA")
    up = await make_upstream(
        ssl_context=server_context(ca.issue("localhost"), tmp_path, client_ca=client_ca)
    )
    ex = make_executor()
    base = f"https://localhost:{up.port}"
    r = await ex.test(
        "acc_x", spec(base, ca_pem=ca.pem, ping={"relative_uri": "/ping"}), request_id=rid()
    )
    assert not r.ok and r.error and r.error.code in ("tls_error", "ping_failed"), r
    client = client_ca.issue("relay-client", server=False)
    r = await ex.test(
        "acc_x",
        spec(
            base,
            ca_pem=ca.pem,
            client_certificate={"cert_pem": client.cert_pem, "key_pem": client.key_pem},
            ping={"relative_uri": "/ping"},
        ),
        request_id=rid(),
    )
    assert r.ok, r


async def test_concurrency_level_and_borrowing(make_executor, upstream, relay) -> None:
    """Two requests to /hang with concurrency 1: the second waits in the queue, and a
    borrower of that budget waits too."""
    ex = make_executor()
    lender = await relay.registry.create_connection(
        relay.account_id,
        spec(upstream.base, concurrency_level=1),
        state="online",
        state_reason=None,
        tested_at=None,
        actor="test",
    )
    s_lender = lender.spec
    s_borrower = spec(upstream.base, borrow_concurrency_from=lender.id, timeout_s=0.5)
    first = asyncio.create_task(
        ex.request(
            relay.account_id, lender.id, s_lender, RequestIn(relative_uri="/hang"), request_id=rid()
        )
    )
    async with asyncio.timeout(TIMEOUT):
        await upstream.hanging.wait()
    with pytest.raises(UpstreamError) as info:  # queued behind the lender's request
        await ex.request(
            relay.account_id,
            "con_borrower",
            s_borrower,
            RequestIn(relative_uri="/ping"),
            request_id=rid(),
        )
    assert info.value.code == "timeout"
    assert len(upstream.seen) == 1
    upstream.release.set()
    out = await first
    assert out.status == 200
    out = await ex.request(
        relay.account_id,
        "con_borrower",
        s_borrower,
        RequestIn(relative_uri="/ping"),
        request_id=rid(),
    )
    assert out.status == 200


async def test_cloud_keep_alive(make_executor, upstream) -> None:
    ex = make_executor()
    for _ in range(4):
        out = await ex.request(
            "acc_x", "con_k", spec(upstream.base), RequestIn(relative_uri="/ping"), request_id=rid()
        )
        assert out.status == 200
    assert len(upstream.peers) == 1


async def test_metrics_count_requests(make_executor, upstream) -> None:
    ex = make_executor()
    await ex.request(
        "acc_x", "con_a", spec(upstream.base), RequestIn(relative_uri="/ping"), request_id=rid()
    )
    text = _metrics_text(ex)
    assert 'onprem_relay_requests_total{code="200",route="cloud"} 1.0' in text
    assert 'onprem_relay_bytes_total{direction="in"}' in text


def _metrics_text(ex) -> str:
    from prometheus_client import generate_latest

    return generate_latest(ex.metrics.registry).decode()


def _unused(_: Upstream) -> None:  # keep the import used for type hints in editors
    return None
