"""The SSRF guard for ``mode: cloud`` (``cloud.deny_private_networks``): a caller must
not use the relay to reach the relay's own network (loopback, private ranges, the cloud
metadata service at 169.254.169.254, ...).

How it holds:
- Names: ``GuardedResolver`` resolves, drops every address the classifier refuses and
  hands aiohttp only the addresses it checked, so aiohttp connects to exactly those
  (no second lookup a DNS-rebinding server could answer differently).
- IP literals: aiohttp (3.14, ``TCPConnector._resolve_host``) does not call the
  resolver for an IP-literal host, so ``DestinationGuard.check_url`` checks those
  before every hop; the executor calls it for the first URL and for every redirect,
  which it follows by hand.

``classify_address`` is the pure part. ``DestinationGuard`` takes the classifier as a
parameter (the default is ``classify_address``), which is what lets a test build a
guard that exempts one loopback address for a "public" server while refusing every
other: no test switch lives in product code.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Classifier = Callable[[IPAddress], "str | None"]

_V4 = ipaddress.IPv4Network
_V6 = ipaddress.IPv6Network

# (network, reason). Order matters only for the reason reported.
_BLOCKED_V4: list[tuple[_V4, str]] = [
    (_V4("127.0.0.0/8"), "loopback"),
    (_V4("169.254.169.254/32"), "cloud metadata service (link-local)"),
    (_V4("169.254.0.0/16"), "link-local"),
    (_V4("10.0.0.0/8"), "private network (RFC 1918)"),
    (_V4("172.16.0.0/12"), "private network (RFC 1918)"),
    (_V4("192.168.0.0/16"), "private network (RFC 1918)"),
    (_V4("100.64.0.0/10"), "shared address space (CGNAT, RFC 6598)"),
    (_V4("0.0.0.0/8"), "unspecified / this network"),
    (_V4("192.0.0.0/24"), "IETF protocol assignments"),
    (_V4("192.0.2.0/24"), "documentation range"),
    (_V4("198.51.100.0/24"), "documentation range"),
    (_V4("203.0.113.0/24"), "documentation range"),
    (_V4("192.88.99.0/24"), "6to4 relay anycast"),
    (_V4("198.18.0.0/15"), "benchmarking range"),
    (_V4("224.0.0.0/4"), "multicast"),
    (_V4("240.0.0.0/4"), "reserved"),  # includes 255.255.255.255
]

_BLOCKED_V6: list[tuple[_V6, str]] = [
    (_V6("::1/128"), "loopback"),
    (_V6("::/128"), "unspecified"),
    (_V6("fd00:ec2::254/128"), "cloud metadata service"),
    (_V6("fc00::/7"), "private network (unique local)"),
    (_V6("fe80::/10"), "link-local"),
    (_V6("fec0::/10"), "site-local (deprecated)"),
    (_V6("ff00::/8"), "multicast"),
    (_V6("64:ff9b:1::/48"), "local-use NAT64"),
    (_V6("100::/64"), "discard-only"),
    (_V6("2001::/23"), "IETF protocol assignments"),  # includes Teredo 2001::/32
    (_V6("2001:db8::/32"), "documentation range"),
    (_V6("3fff::/20"), "documentation range"),
    (_V6("::/8"), "reserved"),  # includes the deprecated IPv4-compatible ::a.b.c.d
]

_NAT64 = _V6("64:ff9b::/96")


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 form carries to the same host: IPv4-mapped
    (``::ffff:a.b.c.d``), 6to4 (``2002:AABB:CCDD::``) and NAT64 (``64:ff9b::a.b.c.d``)."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def classify_address(ip: IPAddress) -> str | None:
    """Why the relay must not connect to ``ip`` in cloud mode, or ``None`` if it may."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            return "scoped (link-local) IPv6 address"
        inner = embedded_ipv4(ip)
        if inner is not None:
            reason = classify_address(inner)
            return f"{reason} (IPv4 inside IPv6)" if reason else None
        for net6, reason in _BLOCKED_V6:
            if ip in net6:
                return reason
        return None
    for net4, reason in _BLOCKED_V4:
        if ip in net4:
            return reason
    return None


def parse_ip(host: str) -> IPAddress | None:
    """``host`` as an IP address when it is a literal (brackets and zone allowed)."""
    h = host.strip("[]")
    try:
        return ipaddress.ip_address(h)
    except ValueError:
        return None


def legacy_ipv4(host: str) -> str | None:
    """The address a legacy numeric IPv4 form (``2130706433``, ``0x7f.1``, ``127.1``)
    means to ``inet_aton``, or ``None`` for a name."""
    if not host or not all(c in "0123456789abcdefxABCDEFX." for c in host):
        return None
    try:
        return socket.inet_ntoa(socket.inet_aton(host))
    except OSError:
        return None


class BlockedDestinationError(OSError):
    """Refused by the SSRF guard. An ``OSError`` so aiohttp carries it (as the
    ``os_error`` of a connector error) instead of turning it into something else."""

    code = "blocked_destination"

    def __init__(self, host: str, address: str, reason: str) -> None:
        super().__init__(f"{host} ({address}) is not allowed for cloud connections: {reason}")
        self.host = host
        self.address = address
        self.reason = reason


class DestinationGuard:
    """Decides which addresses cloud connections may reach."""

    def __init__(self, classify: Classifier = classify_address) -> None:
        self.classify = classify

    def check_address(self, host: str, address: str) -> None:
        ip = parse_ip(address)
        if ip is None:
            raise BlockedDestinationError(host, address, "not an IP address")
        reason = self.classify(ip)
        if reason is not None:
            raise BlockedDestinationError(host, address, reason)

    def check_url(self, url: URL) -> None:
        """Refuse an IP-literal host the resolver would never see. Names pass here; the
        resolver checks what they resolve to."""
        host = url.raw_host or ""
        if parse_ip(host) is not None:
            self.check_address(host, host)
            return
        legacy = legacy_ipv4(host)
        if legacy is not None:
            # 2130706433, 0x7f.1, 127.1: aiohttp refuses these itself today, but the C
            # resolver would map them to an address; judge the address they mean.
            self.check_address(host, legacy)

    def resolver(self, inner: AbstractResolver | None = None) -> GuardedResolver:
        return GuardedResolver(self, inner)


class GuardedResolver(AbstractResolver):
    """Resolves with ``inner`` and returns only addresses the guard allows; none left:
    ``BlockedDestinationError``."""

    def __init__(self, guard: DestinationGuard, inner: AbstractResolver | None = None) -> None:
        self._guard = guard
        self._inner: AbstractResolver = inner if inner is not None else DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        allowed: list[ResolveResult] = []
        first_refusal: BlockedDestinationError | None = None
        for r in results:
            try:
                self._guard.check_address(host, r["host"])
            except BlockedDestinationError as exc:
                first_refusal = first_refusal or exc
                continue
            allowed.append(r)
        if not allowed:
            raise first_refusal or BlockedDestinationError(host, "?", "resolved to no address")
        return allowed

    async def close(self) -> None:
        await self._inner.close()
