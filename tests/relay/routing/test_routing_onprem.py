"""mode: onpremise through a real relay SSH endpoint and a real agent, in process:
every stream error code from a real situation, TLS end to end inside the tunnel
(the agent sees only ciphertext), keep-alive reuse of tunnel streams, JSON and XML
paths, and the background re-ping of offline connections."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import pytest
from routing_harness import CA, TIMEOUT, Spy, server_context, spec

from relay.errors import UpstreamError
from relay.models.connection import RequestIn


def onprem(relay, base: str, **http: object):
    return spec(base, mode="onpremise", agent_id=relay.agent_id, **http)


async def test_offline_agent(relay, make_executor, upstream) -> None:
    ex = make_executor()
    r = await ex.test("acc", onprem(relay, upstream.base), request_id="r")
    assert r.route == "onpremise"
    assert r.error is not None and r.error.code == "agent_offline", r
    with pytest.raises(UpstreamError) as info:
        await ex.request("acc", "con_a", onprem(relay, upstream.base), RequestIn(), request_id="r")
    assert info.value.code == "agent_offline"


async def test_stream_failures_by_code(relay, start_agent, make_executor, upstream) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    await start_agent(
        [f"127.0.0.1:{upstream.port}", f"127.0.0.1:{closed}", "no-such-host.invalid:80"]
    )
    ex = make_executor()
    cases = {
        "http://127.0.0.1:1": "target_not_allowed",
        f"http://localhost:{upstream.port}": "target_not_allowed",
        f"http://127.0.0.1:{closed}": "connection_refused",
        "http://no-such-host.invalid": "target_unreachable",
    }
    for base, code in cases.items():
        r = await ex.test(
            "acc", onprem(relay, base, ping={"relative_uri": "/ping"}), request_id="r"
        )
        assert r.error is not None and r.error.code == code, (base, r)
    r = await ex.test(
        "acc", onprem(relay, upstream.base, ping={"relative_uri": "/ping"}), request_id="r"
    )
    assert r.ok, r


async def test_timeout_through_the_tunnel(relay, start_agent, make_executor, upstream) -> None:
    await start_agent([f"127.0.0.1:{upstream.port}"])
    ex = make_executor()
    s = onprem(relay, upstream.base, timeout_s=0.4, ping={"relative_uri": "/hang"})
    r = await ex.test("acc", s, request_id="r")
    assert r.error is not None and r.error.code == "timeout", r
    with pytest.raises(UpstreamError) as info:
        await ex.request("acc", "con_t", s, RequestIn(relative_uri="/hang"), request_id="r")
    assert info.value.code == "timeout"


async def test_json_and_xml_paths_and_auth_errors(
    relay, start_agent, make_executor, upstream
) -> None:
    await start_agent([f"127.0.0.1:{upstream.port}"])
    ex = make_executor()
    ok = await ex.test(
        "acc",
        onprem(
            relay,
            upstream.base,
            ping={
                "relative_uri": "/status",
                "success_path": "result.state",
                "success_values": ["up"],
            },
        ),
        request_id="r",
    )
    assert ok.ok, ok
    xml = await ex.test(
        "acc",
        onprem(
            relay,
            upstream.base,
            media_type="xml",
            ping={
                "relative_uri": "/xml?state=down",
                "success_path": "/response/status",
                "success_values": ["up"],
                "error_path": "//message",
            },
        ),
        request_id="r",
    )
    assert (
        xml.error is not None
        and xml.error.code == "ping_failed"
        and xml.error.message == "XML says down"
    )
    with pytest.raises(UpstreamError) as info:
        await ex.request(
            "acc",
            "con_a",
            onprem(relay, upstream.base),
            RequestIn(relative_uri="/code/401"),
            request_id="r",
        )
    assert info.value.code == "auth_failed"
    s = onprem(
        relay, upstream.base, auth={"fail_path": "errors.0.code", "fail_values": ["INVALID_TOKEN"]}
    )
    with pytest.raises(UpstreamError) as info:
        await ex.request("acc", "con_a", s, RequestIn(relative_uri="/auth-in-body"), request_id="r")
    assert info.value.code == "auth_failed"
    out = await ex.request(
        "acc",
        "con_a",
        onprem(relay, upstream.base),
        RequestIn(relative_uri="/throttle-then-ok"),
        request_id="r",
    )
    assert out.status == 200 and out.attempts == 2 and out.route == "onpremise"


async def test_keep_alive_reuses_one_tunnel_stream(
    relay, start_agent, make_executor, upstream, tmp_path: Path
) -> None:
    audit = tmp_path / "audit.log"
    agent = await start_agent([f"127.0.0.1:{upstream.port}"], audit_file=str(audit))
    ex = make_executor()
    s = onprem(relay, upstream.base)
    for i in range(5):
        out = await ex.request(
            "acc",
            "con_k",
            s,
            RequestIn(method="POST", relative_uri="/echo", body={"i": i}),
            request_id=f"req_{i}",
        )
        assert out.status == 200
    assert len(upstream.peers) == 1  # one TCP connection from the agent to the server
    assert agent.stats.open == 1  # one stream, still open for the next request
    assert sum(agent.stats.total.values()) == 0  # none ended
    await ex.close()
    async with asyncio.timeout(TIMEOUT):
        await agent.stats.idle.wait()
    assert agent.stats.total == {"ok": 1}
    # The agent's audit log names the connection and the request that opened it.
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [(r["connection_id"], r["request_id"]) for r in lines] == [("con_k", "req_0")]


async def test_tls_end_to_end_inside_the_tunnel(
    relay, start_agent, make_executor, make_upstream, ca: CA, tmp_path: Path
) -> None:
    up = await make_upstream(ssl_context=server_context(ca.issue("localhost"), tmp_path))
    spy = await Spy(up.port).start()
    try:
        agent = await start_agent([f"localhost:{spy.port}"])
        ex = make_executor()
        base = f"https://localhost:{spy.port}/"
        # Strict verification against the system store: the private CA is unknown.
        r = await ex.test(
            "acc", onprem(relay, base, ping={"relative_uri": "/ping"}), request_id="r"
        )
        assert r.error is not None and r.error.code == "tls_error", r
        # ca_pem: verified, and several requests share one stream (TLS session kept).
        s = onprem(relay, base, ca_pem=ca.pem, ping={"relative_uri": "/ping"})
        r = await ex.test("acc", s, connection_id="con_tls", request_id="r")
        assert r.ok, r
        for i in range(3):
            out = await ex.request(
                "acc",
                "con_tls",
                s,
                RequestIn(method="POST", relative_uri="/echo", body={"secret": f"plaintext-{i}"}),
                request_id=f"r{i}",
            )
            assert out.status == 200 and out.body["body"] == f'{{"secret":"plaintext-{i}"}}'
        # disable_strict_ssl also passes.
        r = await ex.test(
            "acc",
            onprem(relay, base, disable_strict_ssl=True, ping={"relative_uri": "/ping"}),
            request_id="r",
        )
        assert r.ok, r
        # What crossed the agent was TLS: handshake records, no HTTP in clear.
        assert spy.client_bytes[:1] == b"\x16" and spy.server_bytes[:1] == b"\x16"
        assert b"plaintext-" not in spy.client_bytes and b"POST /echo" not in spy.client_bytes
        assert b"plaintext-" not in spy.server_bytes and b'"secret"' not in spy.server_bytes
        assert len(up.seen) >= 5
        # The tls_error test, the ca_pem connection (one stream for 4 requests) and
        # the disable_strict_ssl test: 3 streams through the agent.
        assert spy.connections == 3
        assert agent.stats.total.get("ok", 0) + agent.stats.open == 3
    finally:
        await spy.stop()


async def test_tls_client_certificate_through_the_tunnel(
    relay, start_agent, make_executor, make_upstream, ca: CA, tmp_path: Path
) -> None:
    client_ca = CA.create("Client CA")
    up = await make_upstream(
        ssl_context=server_context(ca.issue("localhost"), tmp_path, client_ca=client_ca)
    )
    await start_agent([f"localhost:{up.port}"])
    ex = make_executor()
    client = client_ca.issue("relay", server=False)
    s = onprem(
        relay,
        f"https://localhost:{up.port}",
        ca_pem=ca.pem,
        client_certificate={"cert_pem": client.cert_pem, "key_pem": client.key_pem},
        ping={"relative_uri": "/ping"},
    )
    r = await ex.test("acc", s, request_id="r")
    assert r.ok, r


class WatchedRegistry:
    """The real registry, plus an event when a connection is set online."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.online = asyncio.Event()

    async def get_connection(self, connection_id, account_id):
        return await self.inner.get_connection(connection_id, account_id)

    async def list_connections_in_state(self, state):
        return await self.inner.list_connections_in_state(state)

    async def set_connection_state(self, connection_id, state, reason, *, tested_at=None):
        await self.inner.set_connection_state(connection_id, state, reason, tested_at=tested_at)
        if state == "online":
            self.online.set()


async def test_offline_connections_come_back(relay, start_agent, make_executor, upstream) -> None:
    watched = WatchedRegistry(relay.registry)
    ex = make_executor(registry=watched)
    stored = await relay.registry.create_connection(
        relay.account_id,
        onprem(relay, upstream.base, ping={"relative_uri": "/ping"}),
        state="offline",
        state_reason="agent_offline",
        tested_at=None,
        actor="test",
    )
    assert await ex.reping_once() == 0  # the agent is not there yet
    still = await relay.registry.get_connection(stored.id, relay.account_id)
    assert still.state == "offline" and still.last_tested_at is not None
    assert still.state_reason is not None and "not connected" in still.state_reason
    await start_agent([f"127.0.0.1:{upstream.port}"])
    task = asyncio.create_task(ex.run_repinger(0.05))
    try:
        async with asyncio.timeout(TIMEOUT):
            await watched.online.wait()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    back = await relay.registry.get_connection(stored.id, relay.account_id)
    assert back.state == "online" and back.state_reason is None


async def test_auth_failure_takes_a_stored_connection_offline(
    relay, make_executor, upstream
) -> None:
    ex = make_executor()
    stored = await relay.registry.create_connection(
        relay.account_id,
        spec(upstream.base),
        state="online",
        state_reason=None,
        tested_at=None,
        actor="test",
    )
    with pytest.raises(UpstreamError):
        await ex.request(
            relay.account_id,
            stored.id,
            stored.spec,
            RequestIn(relative_uri="/code/401"),
            request_id="r",
        )
    now = await relay.registry.get_connection(stored.id, relay.account_id)
    assert now.state == "offline" and now.state_reason and "401" in now.state_reason
