"""Which on-premise targets the relay may reach through this agent (pure, no I/O).

Entries (``allow:`` in ``agent.yaml``), each ``HOST:PORTS`` or ``*``:

- ``*``                      anything
- ``erp.internal:8443``      one host name, one port
- ``erp.internal:80,443``    a port list; ``host:8000-8100`` a range; ``host:*`` any port
- ``*.corp.example:443``     any subdomain, at any depth, but not ``corp.example`` itself
- ``*:443``                  any host, one port
- ``10.1.2.3:22``, ``[fd00::1]:22``              one IP address
- ``10.20.0.0/16:443``, ``[fd00::/8]:443``        a network (IPv6 in brackets)

Names compare case-insensitively and ignore a trailing dot. A name entry never
matches an IP literal target (and an IP entry never matches a name): the agent
checks the target as the SOCKS request names it, before resolving it.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# A port set: None = any port, else inclusive (low, high) ranges.
PortRanges = tuple[tuple[int, int], ...] | None

_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")
_PORT = re.compile(r"^[0-9]{1,5}$")
_MAX_NAME = 253


def _normalize_name(name: str) -> str | None:
    """Lower-cased ASCII name without trailing dot, or None if it is not a host name.

    Labels allow ``_`` (common in internal names). A last label of only digits is
    refused: ``10.1.2`` or ``10.1.2.300`` are not names, and resolvers may read them
    as (odd forms of) IP addresses."""
    text = name[:-1] if name.endswith(".") else name
    if not text or len(text) > _MAX_NAME:
        return None
    if not text.isascii():
        try:
            text = text.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    text = text.lower()
    labels = text.split(".")
    if not all(_LABEL.match(label) for label in labels):
        return None
    if labels[-1].isdigit():
        return None
    return text


def _parse_ip_target(host: str) -> IPAddress | None:
    """The IP address ``host`` names (brackets allowed), IPv4-mapped IPv6 unwrapped."""
    text = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        # ::ffff:10.1.2.3 is dialed as 10.1.2.3: judge it as that address.
        return ip.ipv4_mapped
    return ip


_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def _unmap(network: IPNetwork) -> IPNetwork:
    """``[::ffff:10.0.0.0/104]`` -> ``10.0.0.0/8``: targets in it are unwrapped to IPv4."""
    if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(_MAPPED):
        address = network.network_address.ipv4_mapped
        assert address is not None
        return ipaddress.IPv4Network((address, network.prefixlen - 96))
    return network


def _parse_ports(text: str) -> PortRanges:
    if text == "*":
        return None
    ranges: list[tuple[int, int]] = []
    for item in text.split(","):
        low_text, sep, high_text = item.partition("-")
        if not _PORT.match(low_text) or (sep and not _PORT.match(high_text)):
            raise ValueError(f"bad port {item!r}: use N, N-M, a comma list of those, or *")
        low = int(low_text)
        high = int(high_text) if sep else low
        for port in (low, high):
            if not 1 <= port <= 65535:
                raise ValueError(f"port {port} out of range 1-65535")
        if low > high:
            raise ValueError(f"port range {item!r} is reversed")
        ranges.append((low, high))
    return tuple(ranges)


def _format_ports(ports: PortRanges) -> str:
    if ports is None:
        return "*"
    return ",".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in ports)


@dataclass(frozen=True, slots=True)
class Rule:
    """One parsed entry. Exactly one of the host fields is set, or none for ``*``."""

    entry: str
    ports: PortRanges = None
    name: str | None = None  # exact host name
    suffix: str | None = None  # ".corp.example" for "*.corp.example"
    network: IPNetwork | None = None  # IP or CIDR entries (an IP is a /32 or /128)

    @property
    def any_host(self) -> bool:
        return self.name is None and self.suffix is None and self.network is None

    def port_ok(self, port: int) -> bool:
        if self.ports is None:
            return True
        return any(lo <= port <= hi for lo, hi in self.ports)

    def matches_name(self, name: str) -> bool:
        if self.name is not None:
            return name == self.name
        if self.suffix is not None:
            return name.endswith(self.suffix)
        return self.network is None

    def matches_ip(self, ip: IPAddress) -> bool:
        if self.network is not None:
            return ip.version == self.network.version and ip in self.network
        return self.any_host

    def describe(self) -> str:
        if self.name is not None:
            host = self.name
        elif self.suffix is not None:
            host = "*" + self.suffix
        elif self.network is not None:
            net = self.network
            single = net.prefixlen == net.max_prefixlen
            host = str(net.network_address) if single else str(net)
            if net.version == 6:
                host = f"[{host}]"
        else:
            host = "*"
        if host == "*" and self.ports is None:
            return "*"
        return f"{host}:{_format_ports(self.ports)}"


def _split_host_ports(entry: str) -> tuple[str, str]:
    if entry.startswith("["):
        end = entry.find("]")
        if end < 0:
            raise ValueError("missing ']' after an IPv6 address")
        host, rest = entry[1:end], entry[end + 1 :]
        if not rest.startswith(":"):
            raise ValueError("expected ':PORTS' after ']' (like [fd00::/8]:443 or [fd00::1]:*)")
        if not host:
            raise ValueError("empty host")
        try:
            ipaddress.ip_network(host, strict=False)
        except ValueError:
            raise ValueError("brackets are only for IPv6 addresses and networks") from None
        if ":" not in host:
            raise ValueError("brackets are only for IPv6 addresses and networks")
        return host, rest[1:]
    if entry.count(":") > 1:
        raise ValueError("put IPv6 addresses in brackets, like [fd00::1]:443")
    host, sep, ports = entry.partition(":")
    if not sep:
        raise ValueError("missing port: write HOST:PORT, HOST:80,443, HOST:8000-8100 or HOST:*")
    if not host:
        raise ValueError("empty host")
    if not ports:
        raise ValueError("empty port")
    return host, ports


def parse_rule(entry: str) -> Rule:
    """Parse one allowlist entry; ValueError(``allow entry '...': why``) if it is bad."""
    try:
        return _parse_rule(entry)
    except ValueError as exc:
        raise ValueError(f"allow entry {entry!r}: {exc}") from None


def _parse_rule(entry: str) -> Rule:
    if not isinstance(entry, str):
        raise ValueError(f"must be a string, not {type(entry).__name__}")
    if not entry:
        raise ValueError("empty entry")
    if any(c.isspace() for c in entry):
        raise ValueError("contains whitespace")
    if "://" in entry:
        raise ValueError("not a URL: write HOST:PORT without a scheme")
    if any(c in entry for c in "@?#\\%"):
        raise ValueError("unexpected character: write HOST:PORT (no user, path or zone id)")
    if entry == "*":
        return Rule(entry)
    host, port_text = _split_host_ports(entry)
    ports = _parse_ports(port_text)
    if host == "*":
        return Rule(entry, ports)
    if "/" in host:
        try:
            network = ipaddress.ip_network(host, strict=True)
        except ValueError as exc:
            raise ValueError(f"bad network {host!r}: {exc}") from None
        return Rule(entry, ports, network=_unmap(network))
    ip = _parse_ip_target(host)
    if ip is not None:
        return Rule(entry, ports, network=ipaddress.ip_network(ip))
    if host.startswith("*."):
        suffix = _normalize_name(host[2:])
        if suffix is None or "*" in host[2:]:
            raise ValueError(f"bad wildcard {host!r}: use *.DOMAIN (like *.corp.example)")
        return Rule(entry, ports, suffix="." + suffix)
    if "*" in host:
        raise ValueError(f"bad wildcard {host!r}: '*' is allowed only as '*' or a '*.' prefix")
    name = _normalize_name(host)
    if name is None:
        if all(c.isdigit() or c == "." for c in host):
            raise ValueError(f"bad IPv4 address {host!r}")
        raise ValueError(f"bad host name {host!r}")
    return Rule(entry, ports, name=name)


class Allowlist:
    """The parsed ``allow:`` list. Empty denies everything."""

    __slots__ = ("_rules",)

    def __init__(self, rules: Iterable[Rule] = ()) -> None:
        self._rules = tuple(rules)

    @classmethod
    def parse(cls, entries: Iterable[str]) -> Allowlist:
        """Parse all entries; the first bad one raises ValueError naming it and why."""
        return cls(parse_rule(entry) for entry in entries)

    @property
    def rules(self) -> tuple[Rule, ...]:
        return self._rules

    def __bool__(self) -> bool:
        return bool(self._rules)

    def __len__(self) -> int:
        return len(self._rules)

    def __repr__(self) -> str:
        return f"Allowlist({[rule.entry for rule in self._rules]!r})"

    def describe(self) -> str:
        """One line for logs and ``onprem-agent check``."""
        if not self._rules:
            return "nothing (empty allowlist)"
        return ", ".join(rule.describe() for rule in self._rules)

    def match(self, host: str, port: int) -> Rule | None:
        """The first rule that lets the relay reach ``host:port``, or None.

        ``host`` is the target as the SOCKS request names it: an IP literal (IPv6
        with or without brackets) or a host name."""
        if not 1 <= port <= 65535:
            return None
        ip = _parse_ip_target(host)
        if ip is not None:
            return self._match_ip(ip, port)
        name = _normalize_name(host)
        for rule in self._rules:
            if not rule.port_ok(port):
                continue
            if rule.any_host or (name is not None and rule.matches_name(name)):
                return rule
        return None

    def allows(self, host: str, port: int) -> bool:
        return self.match(host, port) is not None

    def allows_address(self, ip: str, port: int) -> bool:
        """Optional hardening after DNS resolution: may the agent dial address ``ip``?

        Only IP/CIDR entries and host wildcards (``*``, ``*:PORTS``) can satisfy it:
        a name entry cannot vouch for an address, since the DNS answer is not under
        the allowlist's control. A deployment that lists names *and* the networks
        they live in can call this with the resolved address to refuse a dial that
        DNS points elsewhere (rebinding, a poisoned record). With name entries alone
        it refuses everything, so the caller decides whether to apply it."""
        if not 1 <= port <= 65535:
            return False
        address = _parse_ip_target(ip)
        if address is None:
            return False
        return self._match_ip(address, port) is not None

    def _match_ip(self, ip: IPAddress, port: int) -> Rule | None:
        for rule in self._rules:
            if rule.port_ok(port) and rule.matches_ip(ip):
                return rule
        return None
