"""The SSRF guard of cloud connections: address classification (pure), the guarded
resolver, and real refusals: IP literals, names resolving to loopback, redirects.

No test sends a packet to 10.0.0.0/8 or 169.254.169.254: the guard refuses IP literals
before aiohttp is called (``check_url``), which ``test_literals_are_refused_before_any
_connection`` checks with a connector that would fail the test if asked to connect.

For redirects the tests need an allowed server, and every address a test can bind is
private. ``DestinationGuard`` takes its classifier as a parameter, so the test builds
a guard whose classifier exempts exactly 127.0.0.2 and defers to the product's
``classify_address`` for everything else: no test switch in product code."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

import aiohttp
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult
from routing_harness import spec
from yarl import URL

from relay.errors import UpstreamError
from relay.models.connection import RequestIn
from relay.routing.ssrf import (
    BlockedDestinationError,
    DestinationGuard,
    GuardedResolver,
    classify_address,
    legacy_ipv4,
)


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Safety net for these tests: should the guard ever regress, no connection leaves
    loopback (the test fails instead of sending a SYN to 10.x or 169.254.169.254)."""
    original = aiohttp.TCPConnector._wrap_create_connection

    async def checked(self: aiohttp.TCPConnector, *args: Any, **kwargs: Any) -> Any:
        for info in kwargs["addr_infos"]:
            if not ipaddress.ip_address(info[4][0]).is_loopback:
                raise AssertionError(f"a connection to {info[4][0]} was attempted")
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(aiohttp.TCPConnector, "_wrap_create_connection", checked)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.255.0.9",
        "10.0.0.1",
        "10.255.255.255",
        "172.16.0.1",
        "172.31.255.255",
        "192.168.1.1",
        "169.254.169.254",
        "169.254.0.1",
        "100.64.0.1",
        "100.100.100.200",  # Alibaba's metadata, inside CGNAT space
        "0.0.0.0",
        "224.0.0.1",
        "239.255.255.250",
        "255.255.255.255",
        "240.0.0.1",
        "192.0.2.10",
        "198.18.0.1",
        "::1",
        "::",
        "fc00::1",
        "fd12:3456::1",
        "fe80::1",
        "fec0::1",
        "ff02::1",
        "fd00:ec2::254",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "::ffff:10.1.2.3",
        "::127.0.0.1",
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "2002:a00:1::1",  # 6to4 of 10.0.0.1
        "2001:db8::1",
        "2001::1",
    ],
)
def test_refused_addresses(address: str) -> None:
    assert classify_address(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "1.1.1.1", "93.184.215.14", "2606:4700:4700::1111", "2a00:1450::1"]
)
def test_public_addresses_pass(address: str) -> None:
    assert classify_address(ipaddress.ip_address(address)) is None


def test_metadata_reason_is_named() -> None:
    reason = classify_address(ipaddress.ip_address("169.254.169.254"))
    assert reason is not None and "metadata" in reason


def test_legacy_numeric_hosts() -> None:
    assert legacy_ipv4("2130706433") == "127.0.0.1"
    assert legacy_ipv4("0x7f.1") == "127.0.0.1"
    assert legacy_ipv4("127.1") == "127.0.0.1"
    assert legacy_ipv4("api.example.com") is None
    guard = DestinationGuard()
    for host in ("2130706433", "0x7f000001", "127.1", "[::ffff:7f00:1]", "[::1]"):
        with pytest.raises(BlockedDestinationError):
            guard.check_url(URL(f"http://{host}:8080/"))
    guard.check_url(URL("http://api.example.com/"))  # names are the resolver's job


class FixedResolver(AbstractResolver):
    def __init__(self, *addresses: str) -> None:
        self.addresses = addresses

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            {
                "hostname": host,
                "host": a,
                "port": port,
                "family": socket.AF_INET6 if ":" in a else socket.AF_INET,
                "proto": 0,
                "flags": 0,
            }
            for a in self.addresses
        ]

    async def close(self) -> None:
        return None


async def test_resolver_returns_only_checked_addresses() -> None:
    resolver = GuardedResolver(DestinationGuard(), FixedResolver("10.0.0.7", "93.184.215.14"))
    got = await resolver.resolve("mixed.example", 443)
    assert [r["host"] for r in got] == ["93.184.215.14"]
    only_private = GuardedResolver(DestinationGuard(), FixedResolver("127.0.0.1", "::1"))
    with pytest.raises(BlockedDestinationError) as info:
        await only_private.resolve("rebind.example", 80)
    assert info.value.reason == "loopback"


# -- real refusals ---------------------------------------------------------------------


async def test_loopback_and_names_resolving_to_it_are_refused(make_executor, upstream) -> None:
    ex = make_executor(deny_private_networks=True)
    port = upstream.port
    for base in (
        f"http://127.0.0.1:{port}",
        f"http://localhost:{port}",
        f"http://[::ffff:127.0.0.1]:{port}",
        f"http://2130706433:{port}",
        f"http://0.0.0.0:{port}",
    ):
        result = await ex.test("acc_x", spec(base, ping={"relative_uri": "/ping"}), request_id="r")
        assert not result.ok and result.error is not None, base
        assert result.error.code == "blocked_destination", (base, result.error)
        with pytest.raises(UpstreamError) as info:
            await ex.request(
                "acc_x", "con_a", spec(base), RequestIn(relative_uri="/ping"), request_id="r"
            )
        assert info.value.code == "blocked_destination"
    assert upstream.seen == []


async def test_literals_are_refused_before_any_connection(make_executor) -> None:
    """10.0.0.0/8 and the metadata address: refused with no connection attempt."""
    ex = make_executor(deny_private_networks=True)
    for base in (
        "http://169.254.169.254",
        "http://10.0.0.1",
        "https://10.200.3.4:8443",
        "http://100.64.1.1",
    ):
        s = spec(base, ping={"relative_uri": "/latest/meta-data/"})
        lease = await ex._pool.acquire("con_probe", s)
        connector = lease.session.connector
        assert connector is not None

        async def no_connect(*args: object, **kwargs: object) -> None:
            raise AssertionError("the guard let a connection attempt through")

        connector._create_connection = no_connect  # type: ignore[method-assign]
        try:
            result = await ex.test("acc_x", s, connection_id="con_probe", request_id="r")
        finally:
            await lease.release()
        assert result.error is not None and result.error.code == "blocked_destination", result
        assert result.latency_ms < 1000


async def test_redirects_are_checked_at_every_hop(make_executor, make_upstream) -> None:
    def classify(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
        return None if str(ip) == "127.0.0.2" else classify_address(ip)

    ex = make_executor(deny_private_networks=True, destination_guard=DestinationGuard(classify))
    front = await make_upstream(host="127.0.0.2")
    back = await make_upstream(host="127.0.0.1")
    s = spec(front.base)
    # The allowed server itself works, and so does a redirect to itself.
    out = await ex.request("acc_x", "con_a", s, RequestIn(relative_uri="/ping"), request_id="r")
    assert out.status == 200
    to_self = f"/redirect?to={front.base}/ping"
    out = await ex.request("acc_x", "con_a", s, RequestIn(relative_uri=to_self), request_id="r")
    assert out.status == 200
    for target in (
        f"http://127.0.0.1:{back.port}/ping",
        f"http://localhost:{back.port}/ping",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/",
    ):
        rel = "/redirect?to=" + str(URL(target)).replace("&", "%26")
        with pytest.raises(UpstreamError) as info:
            await ex.request("acc_x", "con_a", s, RequestIn(relative_uri=rel), request_id="r")
        assert info.value.code == "blocked_destination", target
        r = await ex.test("acc_x", spec(front.base, ping={"relative_uri": rel}), request_id="r")
        assert r.error is not None and r.error.code == "blocked_destination"
    assert back.seen == []


async def test_credentials_stay_with_the_origin_on_redirect(make_executor, make_upstream) -> None:
    ex = make_executor()  # guard off: both servers are on loopback
    front = await make_upstream()
    other = await make_upstream()
    s = spec(
        front.base,
        headers=[{"name": "X-Api-Key", "value": "k"}],
        auth={"type": "token", "token": {"token": "t"}},
    )
    # Same origin: credentials follow.
    out = await ex.request(
        "acc_x",
        "con_a",
        s,
        RequestIn(relative_uri=f"/redirect?to={front.base}/echo"),
        request_id="r",
    )
    assert out.body["headers"]["Authorization"] == "Bearer t"
    # Another origin (another port): neither the token nor the connection's headers.
    out = await ex.request(
        "acc_x",
        "con_a",
        s,
        RequestIn(
            relative_uri=f"/redirect?to=http://localhost:{other.port}/echo",
            headers={"X-Trace": "1"},
        ),
        request_id="r",
    )
    assert out.status == 200
    assert "Authorization" not in out.body["headers"]
    assert "X-Api-Key" not in out.body["headers"]
    assert out.body["headers"]["X-Trace"] == "1"


async def test_too_many_redirects(make_executor, upstream) -> None:
    ex = make_executor(max_redirects=3)
    with pytest.raises(UpstreamError) as info:
        await ex.request(
            "acc_x", "con_a", spec(upstream.base), RequestIn(relative_uri="/loop"), request_id="r"
        )
    assert info.value.code == "too_many_redirects"
    assert len(upstream.seen) == 4
