"""Allowlist parsing and matching: table tests plus properties, no I/O."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.allowlist import Allowlist, parse_rule

ENTRIES = [
    "erp.internal:8443",
    "10.20.0.0/16:443",
    "*.corp.example:80,443",
    "[fd00::/8]:443",
    "10.1.2.3:22",
    "[fd00::22]:22",
    "range.internal:8000-8100",
    "any-port.internal:*",
    "Mixed.Case.Internal.:9000",
]
ALLOW = Allowlist.parse(ENTRIES)
MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


@pytest.mark.parametrize(
    ("host", "port", "allowed"),
    [
        # exact name
        ("erp.internal", 8443, True),
        ("ERP.Internal", 8443, True),
        ("erp.internal.", 8443, True),
        ("erp.internal", 443, False),
        ("erp.internal.evil", 8443, False),
        ("xerp.internal", 8443, False),
        ("sub.erp.internal", 8443, False),
        # wildcard: any depth, not the apex, not a look-alike
        ("a.corp.example", 80, True),
        ("a.corp.example", 443, True),
        ("a.b.c.corp.example", 443, True),
        ("A.CORP.EXAMPLE.", 443, True),
        ("corp.example", 443, False),
        ("xcorp.example", 443, False),
        ("a.corp.example.evil", 443, False),
        ("a.corp.example", 8080, False),
        # CIDR and single addresses
        ("10.20.0.1", 443, True),
        ("10.20.255.255", 443, True),
        ("10.21.0.1", 443, False),
        ("10.20.0.1", 80, False),
        ("10.1.2.3", 22, True),
        ("10.1.2.4", 22, False),
        ("fd00::1", 443, True),
        ("[fd00::1]", 443, True),
        ("fdff:ffff::1", 443, True),
        ("fe80::1", 443, False),
        ("fd00::22", 22, True),
        ("FD00:0:0::22", 22, True),
        ("fd00::23", 22, False),
        # IPv4-mapped IPv6 is judged as the IPv4 address it dials
        ("::ffff:10.20.1.1", 443, True),
        ("::ffff:10.21.1.1", 443, False),
        # port ranges and any port
        ("range.internal", 8000, True),
        ("range.internal", 8100, True),
        ("range.internal", 7999, False),
        ("range.internal", 8101, False),
        ("any-port.internal", 1, True),
        ("any-port.internal", 65535, True),
        ("mixed.case.internal", 9000, True),
        # names never match IP entries, IPs never match name entries
        ("10.20.0.1.nip.io", 443, False),
        # out of range ports are never allowed
        ("any-port.internal", 0, False),
        ("any-port.internal", 65536, False),
        ("any-port.internal", -1, False),
        # garbage targets
        ("", 443, False),
        ("erp.internal/", 8443, False),
        ("erp internal", 8443, False),
    ],
)
def test_allows(host: str, port: int, allowed: bool) -> None:
    assert ALLOW.allows(host, port) is allowed


def test_name_entry_never_matches_an_ip_literal() -> None:
    allow = Allowlist.parse(["localhost:80", "erp.internal:80"])
    assert not allow.allows("127.0.0.1", 80)
    assert not allow.allows("::1", 80)
    assert allow.allows("localhost", 80)


def test_ip_entry_never_matches_a_name() -> None:
    allow = Allowlist.parse(["127.0.0.1:80", "10.0.0.0/8:80"])
    assert not allow.allows("localhost", 80)
    assert not allow.allows("10.0.0.1.example", 80)


@pytest.mark.parametrize("entries", [["*"], ["*:*"]])
def test_star_allows_anything(entries: list[str]) -> None:
    allow = Allowlist.parse(entries)
    assert allow.allows("anything.example", 1)
    assert allow.allows("10.0.0.1", 65535)
    assert allow.allows("::1", 22)
    assert not allow.allows("anything.example", 0)


def test_ipv4_mapped_entries_mean_ipv4() -> None:
    allow = Allowlist.parse(["[::ffff:10.0.0.0/104]:22", "[::ffff:192.0.2.1]:80"])
    assert allow.describe() == "10.0.0.0/8:22, 192.0.2.1:80"
    assert allow.allows("10.9.9.9", 22)
    assert allow.allows("::ffff:10.9.9.9", 22)
    assert allow.allows("192.0.2.1", 80)
    assert not allow.allows("11.0.0.1", 22)


def test_star_host_with_ports() -> None:
    allow = Allowlist.parse(["*:443"])
    assert allow.allows("a.example", 443)
    assert allow.allows("10.0.0.1", 443)
    assert not allow.allows("a.example", 80)


def test_empty_denies_everything() -> None:
    allow = Allowlist.parse([])
    assert not allow
    assert len(allow) == 0
    assert not allow.allows("erp.internal", 443)
    assert not allow.allows("10.0.0.1", 443)
    assert allow.describe() == "nothing (empty allowlist)"


def test_bool_len_describe_match() -> None:
    assert ALLOW
    assert len(ALLOW) == len(ENTRIES)
    assert ALLOW.describe() == (
        "erp.internal:8443, 10.20.0.0/16:443, *.corp.example:80,443, [fd00::/8]:443, "
        "10.1.2.3:22, [fd00::22]:22, range.internal:8000-8100, any-port.internal:*, "
        "mixed.case.internal:9000"
    )
    rule = ALLOW.match("a.corp.example", 443)
    assert rule is not None
    assert rule.entry == "*.corp.example:80,443"
    assert ALLOW.match("nope.example", 443) is None
    assert "erp.internal:8443" in repr(ALLOW)


def test_idna_names_compare_as_ascii() -> None:
    allow = Allowlist.parse(["bücher.example:443"])
    assert allow.allows("xn--bcher-kva.example", 443)
    assert allow.allows("BÜCHER.example", 443)


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        ("", "empty entry"),
        ("erp.internal", "missing port"),
        ("*.corp.example", "missing port"),
        ("erp.internal:", "empty port"),
        (":443", "empty host"),
        ("erp.internal:0", "port 0 out of range"),
        ("erp.internal:65536", "port 65536 out of range"),
        ("erp.internal:99999", "out of range"),
        ("erp.internal:100000", "bad port"),
        ("erp.internal:80,0", "port 0 out of range"),
        ("erp.internal:http", "bad port"),
        ("erp.internal:80,", "bad port"),
        ("erp.internal:-80", "bad port"),
        ("erp.internal:90-80", "reversed"),
        ("erp.internal:1-70000", "out of range"),
        ("erp.internal:\u0663", "bad port"),
        ("erp internal:80", "whitespace"),
        (" erp.internal:80", "whitespace"),
        ("erp.internal:80 ", "whitespace"),
        ("erp.internal:80,\t443", "whitespace"),
        ("http://erp.internal:80", "not a URL"),
        ("https://erp.internal", "not a URL"),
        ("user@erp.internal:80", "unexpected character"),
        ("erp.internal:80/path", "bad port"),
        ("erp.internal/path:80", "bad network"),
        ("erp..internal:80", "bad host name"),
        ("-erp.internal:80", "bad host name"),
        ("erp_.internal-:80", "bad host name"),
        ("a" * 64 + ".internal:80", "bad host name"),
        ("erp.internal..:80", "bad host name"),
        ("1.2.3:80", "bad IPv4 address"),
        ("10.1.2.300:80", "bad IPv4 address"),
        ("10.20.0.0/33:443", "bad network"),
        ("10.20.1.0/16:443", "host bits set"),
        ("10.20.0.0/x:443", "bad network"),
        ("fd00::/8:443", "put IPv6 addresses in brackets"),
        ("fd00::1:443", "put IPv6 addresses in brackets"),
        ("fd00::1", "put IPv6 addresses in brackets"),
        ("[fd00::1]", "expected ':PORTS'"),
        ("[fd00::1]443", "expected ':PORTS'"),
        ("[fd00::1:443", "missing ']'"),
        ("[]:443", "empty host"),
        ("[10.0.0.1]:443", "brackets are only for IPv6"),
        ("[erp.internal]:443", "brackets are only for IPv6"),
        ("[fe80::1%eth0]:22", "unexpected character"),
        ("*.:443", "bad wildcard"),
        ("*.*.corp.example:443", "bad wildcard"),
        ("a.*.example:443", "bad wildcard"),
        ("*corp.example:443", "bad wildcard"),
        ("**:443", "bad wildcard"),
    ],
)
def test_parse_rejects_with_entry_and_reason(entry: str, why: str) -> None:
    with pytest.raises(ValueError) as info:
        Allowlist.parse(["ok.internal:80", entry])
    message = str(info.value)
    assert message.startswith(f"allow entry {entry!r}: ")
    assert why in message


def test_non_string_entry_is_refused() -> None:
    with pytest.raises(ValueError, match="must be a string"):
        Allowlist.parse([443])  # type: ignore[list-item]


# --- allows_address -----------------------------------------------------------------


def test_allows_address_only_ip_entries_and_wildcards() -> None:
    assert ALLOW.allows_address("10.20.3.4", 443)
    assert ALLOW.allows_address("::ffff:10.20.3.4", 443)
    assert ALLOW.allows_address("fd00::9", 443)
    assert not ALLOW.allows_address("10.20.3.4", 80)
    assert not ALLOW.allows_address("192.0.2.1", 8443)  # erp.internal's address? unknown
    assert not ALLOW.allows_address("erp.internal", 8443)  # not an address at all
    assert not ALLOW.allows_address("10.20.3.4", 0)
    assert Allowlist.parse(["*"]).allows_address("192.0.2.1", 1)
    assert Allowlist.parse(["*:22"]).allows_address("192.0.2.1", 22)
    assert not Allowlist.parse(["*.corp.example:*"]).allows_address("192.0.2.1", 22)
    assert not Allowlist.parse([]).allows_address("10.0.0.1", 22)


# --- properties ---------------------------------------------------------------------

_LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True).filter(
    lambda s: not s.isdigit()
)
_NAME = st.lists(_LABEL, min_size=1, max_size=4).map(".".join)


@settings(max_examples=100, deadline=None)
@given(name=_NAME, sub=st.lists(_LABEL, min_size=1, max_size=3), port=st.integers(1, 65535))
def test_wildcard_matches_subdomains_not_apex(name: str, sub: list[str], port: int) -> None:
    allow = Allowlist.parse([f"*.{name}:{port}"])
    assert allow.allows(".".join([*sub, name]), port)
    assert allow.allows(".".join([*sub, name]).upper() + ".", port)
    assert not allow.allows(name, port)
    assert not allow.allows("x" + name, port)
    assert not allow.allows(".".join([*sub, name]), port % 65535 + 1)


@settings(max_examples=100, deadline=None)
@given(
    network=st.one_of(
        st.ip_addresses(v=4).flatmap(
            lambda ip: st.integers(0, 32).map(
                lambda p: ipaddress.ip_network(f"{ip}/{p}", strict=False)
            )
        ),
        st.ip_addresses(v=6).flatmap(
            lambda ip: st.integers(0, 128).map(
                lambda p: ipaddress.ip_network(f"{ip}/{p}", strict=False)
            )
        ),
    ),
    probe=st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)),
    port=st.integers(1, 65535),
)
def test_cidr_matches_exactly_its_addresses(
    network: ipaddress.IPv4Network | ipaddress.IPv6Network,
    probe: ipaddress.IPv4Address | ipaddress.IPv6Address,
    port: int,
) -> None:
    host = str(network) if network.version == 4 else f"[{network}]"
    allow = Allowlist.parse([f"{host}:{port}"])
    effective: ipaddress.IPv4Address | ipaddress.IPv6Address = probe
    if isinstance(probe, ipaddress.IPv6Address) and probe.ipv4_mapped is not None:
        effective = probe.ipv4_mapped
    if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(MAPPED):
        # An IPv4-mapped network means the IPv4 network inside it.
        assert network.network_address.ipv4_mapped is not None
        network = ipaddress.IPv4Network(
            (network.network_address.ipv4_mapped, network.prefixlen - 96)
        )
    expected = effective.version == network.version and effective in network
    assert allow.allows(str(probe), port) is expected
    assert allow.allows_address(str(probe), port) is expected
    assert not allow.allows(str(probe), port % 65535 + 1)


@settings(max_examples=100, deadline=None)
@given(
    low=st.integers(1, 65535),
    span=st.integers(0, 1000),
    probe=st.integers(-10, 66000),
)
def test_port_range_bounds(low: int, span: int, probe: int) -> None:
    high = min(65535, low + span)
    allow = Allowlist.parse([f"h.internal:{low}-{high}"])
    assert allow.allows("h.internal", probe) is (low <= probe <= high)


@settings(max_examples=200, deadline=None)
@given(entry=st.text(max_size=40))
def test_parse_only_raises_value_error(entry: str) -> None:
    try:
        allow = Allowlist.parse([entry])
    except ValueError as exc:
        assert repr(entry) in str(exc)
        return
    # Whatever parses describes itself as an entry with the same meaning.
    assert _meaning(allow.rules[0].describe()) == _meaning(entry)


def _meaning(entry: str) -> tuple[object, ...]:
    rule = parse_rule(entry)
    return (rule.ports, rule.name, rule.suffix, rule.network)


@pytest.mark.parametrize("entry", ENTRIES)
def test_describe_parses_back_to_the_same_rule(entry: str) -> None:
    assert _meaning(parse_rule(entry).describe()) == _meaning(entry)
