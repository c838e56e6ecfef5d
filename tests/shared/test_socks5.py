"""The SOCKS5 codec alone: bytes in, requests and replies out, no sockets."""

from __future__ import annotations

import ipaddress
import itertools
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.socks5 import (
    ATYP_DOMAIN,
    MAX_HANDSHAKE,
    ConnectRequest,
    Reply,
    Socks5Client,
    Socks5Error,
    Socks5Server,
    build_reply,
    encode_address,
)

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_NAME_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._"


def _not_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return True
    return False


hosts = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
    st.text(alphabet=_NAME_CHARS, min_size=1, max_size=255).filter(_not_ip),
)
ports = st.integers(min_value=1, max_value=65535)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the given offsets (taken modulo its length, in any order)."""
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


# --- client -> server ---------------------------------------------------------------


@FAST
@given(host=hosts, port=ports, cuts=st.lists(st.integers(min_value=0), max_size=8))
def test_request_round_trip_any_split(host: str, port: int, cuts: list[int]) -> None:
    client = Socks5Client(host, port)
    server = Socks5Server()
    request = None
    for chunk in split(client.initial_bytes(), cuts):
        assert request is None
        request = server.receive_data(chunk)
    assert request == ConnectRequest(host, port)
    assert server.request == request
    assert server.data_to_send() == b"\x05\x00"
    assert server.leftover == b""


@FAST
@given(host=hosts, port=ports)
def test_request_round_trip_byte_by_byte(host: str, port: int) -> None:
    data = Socks5Client(host, port).initial_bytes()
    server = Socks5Server()
    results = [server.receive_data(data[i : i + 1]) for i in range(len(data))]
    assert results[:-1] == [None] * (len(data) - 1)
    assert results[-1] == ConnectRequest(host, port)


@FAST
@given(
    host=hosts,
    port=ports,
    early=st.binary(min_size=1, max_size=4096),
    cuts=st.lists(st.integers(min_value=0), max_size=4),
)
def test_early_data_after_request_is_kept(
    host: str, port: int, early: bytes, cuts: list[int]
) -> None:
    handshake = Socks5Client(host, port).initial_bytes()
    data = handshake + early
    server = Socks5Server()
    chunks = split(data, cuts)
    fed = 0
    for chunk in chunks:
        fed += len(chunk)
        request = server.receive_data(chunk)
        if request is not None:
            break
    assert request == ConnectRequest(host, port)
    # Bytes of the completing chunk beyond the request, not the ones still unfed.
    assert server.leftover == data[len(handshake) : fed]


def test_big_early_data_in_the_same_write() -> None:
    # A pipelined first request (bigger than any handshake) in the same segment.
    payload = b"GET / HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 8000 + b"\r\n\r\n"
    server = Socks5Server()
    request = server.receive_data(Socks5Client("erp.internal", 8443).initial_bytes() + payload)
    assert request == ConnectRequest("erp.internal", 8443)
    assert server.leftover == payload


def test_reply_and_a_big_server_banner_in_the_same_read() -> None:
    banner = b"220 " + b"x" * 4000 + b"\r\n"
    client = Socks5Client("mail.internal", 25)
    assert (
        client.receive_data(b"\x05\x00" + build_reply(Reply.SUCCEEDED) + banner) is Reply.SUCCEEDED
    )
    assert client.leftover == banner


def test_idna_host_is_sent_as_ascii() -> None:
    server = Socks5Server()
    request = server.receive_data(Socks5Client("bücher.example", 443).initial_bytes())
    assert request == ConnectRequest("xn--bcher-kva.example", 443)


@pytest.mark.parametrize("host", ["::1", "[::1]", "fd00::1", "[fd00::1]"])
def test_bracketed_and_bare_ipv6_encode_alike(host: str) -> None:
    server = Socks5Server()
    request = server.receive_data(Socks5Client(host, 22).initial_bytes())
    assert request is not None
    assert ipaddress.ip_address(request.host) == ipaddress.ip_address(host.strip("[]"))


@pytest.mark.parametrize(
    ("host", "port"),
    [("", 80), ("a" * 256, 80), ("example.com", -1), ("example.com", 65536)],
)
def test_encode_address_rejects(host: str, port: int) -> None:
    with pytest.raises(ValueError):
        encode_address(host, port)


# --- server -> client ---------------------------------------------------------------


@FAST
@given(
    code=st.integers(min_value=0, max_value=255),
    bind=st.one_of(hosts, st.just("0.0.0.0")),
    bind_port=st.integers(min_value=0, max_value=65535),
    early=st.binary(max_size=2048),
    cuts=st.lists(st.integers(min_value=0), max_size=8),
)
def test_reply_round_trip_any_split(
    code: int, bind: str, bind_port: int, early: bytes, cuts: list[int]
) -> None:
    client = Socks5Client("erp.internal", 8443)
    reply = build_reply(code, bind, bind_port)
    data = b"\x05\x00" + reply + early
    result = None
    fed = 0
    for chunk in split(data, cuts):
        fed += len(chunk)
        result = client.receive_data(chunk)
        if result is not None:
            break
    assert result == code
    assert client.reply == code
    assert isinstance(result, Reply) == (code in set(Reply))
    # The rest of the stream keeps arriving after the reply: all of it is payload.
    client.receive_data(data[fed:])
    assert client.leftover == early


@pytest.mark.parametrize("code", list(Reply))
def test_every_reply_code_from_the_server(code: Reply) -> None:
    server = Socks5Server()
    client = Socks5Client("10.1.2.3", 22)
    assert server.receive_data(client.initial_bytes()) == ConnectRequest("10.1.2.3", 22)
    to_client = server.data_to_send() + server.reply(code)
    results = [client.receive_data(to_client[i : i + 1]) for i in range(len(to_client))]
    assert results[:-1] == [None] * (len(to_client) - 1)
    assert results[-1] is code


def test_server_reply_data_to_send_is_drained() -> None:
    server = Socks5Server()
    server.receive_data(Socks5Client("a.example", 1).initial_bytes())
    out = server.reply(Reply.SUCCEEDED)
    assert out == b"\x05\x00" + build_reply(Reply.SUCCEEDED)
    assert server.data_to_send() == b""


# --- garbage ------------------------------------------------------------------------


def _drive(parser: Socks5Server | Socks5Client, data: bytes, cuts: list[int]) -> None:
    """Feed ``data``; the only exception allowed is Socks5Error, and the parser must
    decide (result or error) within MAX_HANDSHAKE bytes."""
    fed = 0
    for chunk in split(data, cuts):
        before = fed
        fed += len(chunk)
        try:
            result = parser.receive_data(chunk)
        except Socks5Error:
            return
        if result is not None:
            return
        # Still undecided: everything fed so far is (buffered) handshake.
        assert fed <= MAX_HANDSHAKE, f"undecided after {before}+{len(chunk)} bytes"


@FAST
@given(data=st.binary(max_size=2 * MAX_HANDSHAKE), cuts=st.lists(st.integers(0), max_size=8))
def test_server_garbage_only_raises_socks5_error(data: bytes, cuts: list[int]) -> None:
    _drive(Socks5Server(), data, cuts)


@FAST
@given(data=st.binary(max_size=2 * MAX_HANDSHAKE), cuts=st.lists(st.integers(0), max_size=8))
def test_client_garbage_only_raises_socks5_error(data: bytes, cuts: list[int]) -> None:
    _drive(Socks5Client("x.example", 1), data, cuts)


@FAST
@given(
    host=hosts,
    port=ports,
    garbage=st.binary(min_size=1, max_size=64),
    at=st.integers(min_value=0),
)
def test_server_corrupted_request_only_raises_socks5_error(
    host: str, port: int, garbage: bytes, at: int
) -> None:
    data = bytearray(Socks5Client(host, port).initial_bytes())
    at %= len(data)
    data[at : at + len(garbage)] = garbage
    _drive(Socks5Server(), bytes(data), [])


@FAST
@given(data=st.data())
def test_server_truncated_request_waits(data: st.DataObject) -> None:
    request = Socks5Client(data.draw(hosts), data.draw(ports)).initial_bytes()
    cut = data.draw(st.integers(min_value=0, max_value=len(request) - 1))
    assert Socks5Server().receive_data(request[:cut]) is None


def _keep_feeding(parser: Socks5Server | Socks5Client, stream: bytes, chunk: int) -> int:
    """Feed ``stream`` in ``chunk``-sized pieces until the parser decides or raises;
    the number of bytes fed by then."""
    fed = 0
    while fed < len(stream):
        try:
            result = parser.receive_data(stream[fed : fed + chunk])
        except Socks5Error:
            return fed + chunk
        fed += chunk
        if result is not None:
            return fed
    pytest.fail(f"still undecided after {fed} bytes")


@pytest.mark.parametrize("chunk", [1, 7, 100, MAX_HANDSHAKE + 1])
@pytest.mark.parametrize("fill", [b"\x00", b"\x05", b"\x01", b"\xff"])
def test_server_that_keeps_being_fed_decides(chunk: int, fill: bytes) -> None:
    # The longest valid greeting (255 methods) and request (255-byte name), then fill.
    stream = bytes((5, 255)) + bytes(range(255)) + bytes((5, 1, 0, ATYP_DOMAIN, 255))
    stream += fill * (10 * MAX_HANDSHAKE)
    server = Socks5Server()
    assert _keep_feeding(server, stream, chunk) <= MAX_HANDSHAKE + chunk
    with pytest.raises(Socks5Error):  # and nothing more is accepted after that
        server.receive_data(fill)


@pytest.mark.parametrize("chunk", [1, 7, 100])
def test_client_that_keeps_being_fed_decides(chunk: int) -> None:
    stream = b"\x05\x00" + bytes((5, 0, 0, ATYP_DOMAIN, 255)) + b"a" * 5000
    assert _keep_feeding(Socks5Client("a.example", 80), stream, chunk) <= MAX_HANDSHAKE + chunk


@pytest.mark.parametrize("chunk", [1, 64])
def test_feeding_after_the_request_is_an_error(chunk: int) -> None:
    server = Socks5Server()
    assert server.receive_data(Socks5Client("a.example", 80).initial_bytes()) is not None
    with pytest.raises(Socks5Error):
        server.receive_data(b"x" * chunk)


# --- specific cases -----------------------------------------------------------------


def test_socks4_is_refused_without_reply() -> None:
    server = Socks5Server()
    with pytest.raises(Socks5Error) as info:
        server.receive_data(b"\x04\x01\x00\x50\x0a\x00\x00\x01\x00")
    assert info.value.reply is None
    assert server.data_to_send() == b""


def test_greeting_without_methods() -> None:
    server = Socks5Server()
    with pytest.raises(Socks5Error) as info:
        server.receive_data(b"\x05\x00")
    assert info.value.reply is None


def test_user_pass_only_gets_no_acceptable_method() -> None:
    server = Socks5Server()
    with pytest.raises(Socks5Error) as info:
        server.receive_data(b"\x05\x01\x02")
    assert info.value.reply is None
    assert server.data_to_send() == b"\x05\xff"


def test_no_auth_among_other_methods_is_chosen() -> None:
    server = Socks5Server()
    assert server.receive_data(b"\x05\x03\x02\x01\x00") is None
    assert server.data_to_send() == b"\x05\x00"


@pytest.mark.parametrize(("cmd", "name"), [(0x02, "BIND"), (0x03, "UDP ASSOCIATE"), (0x09, "?")])
def test_other_commands_are_not_supported(cmd: int, name: str) -> None:
    server = Socks5Server()
    data = b"\x05\x01\x00" + bytes((5, cmd, 0)) + encode_address("10.0.0.1", 80)
    with pytest.raises(Socks5Error) as info:
        server.receive_data(data)
    assert info.value.reply is Reply.COMMAND_NOT_SUPPORTED, name
    # The caller answers with the error's reply code, after the method selection.
    assert server.reply(Reply.COMMAND_NOT_SUPPORTED) == b"\x05\x00" + build_reply(7)


@pytest.mark.parametrize("atyp", [0x00, 0x02, 0x05, 0xFF])
def test_bad_address_type(atyp: int) -> None:
    server = Socks5Server()
    data = b"\x05\x01\x00\x05\x01\x00" + bytes((atyp,)) + b"\x7f\x00\x00\x01\x00\x50"
    with pytest.raises(Socks5Error) as info:
        server.receive_data(data)
    assert info.value.reply is Reply.ADDRESS_TYPE_NOT_SUPPORTED


@pytest.mark.parametrize(
    ("request_bytes", "reply"),
    [
        (b"\x04\x01\x00\x01\x7f\x00\x00\x01\x00\x50", Reply.GENERAL_FAILURE),  # version
        (b"\x05\x01\x01\x01\x7f\x00\x00\x01\x00\x50", Reply.GENERAL_FAILURE),  # reserved
        (b"\x05\x01\x00\x03\x00\x00\x50", Reply.GENERAL_FAILURE),  # empty name
        (b"\x05\x01\x00\x03\x03a b\x00\x50", Reply.GENERAL_FAILURE),  # space in name
        (b"\x05\x01\x00\x03\x02\xc3\xbc\x00\x50", Reply.GENERAL_FAILURE),  # not ASCII
        (b"\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x00", Reply.GENERAL_FAILURE),  # port 0
    ],
)
def test_bad_requests_name_a_reply(request_bytes: bytes, reply: Reply) -> None:
    server = Socks5Server()
    with pytest.raises(Socks5Error) as info:
        server.receive_data(b"\x05\x01\x00" + request_bytes)
    assert info.value.reply is reply


@pytest.mark.parametrize(
    "data",
    [
        b"\x04\x00",  # version
        b"\x05\x02",  # method the client did not offer
        b"\x05\xff",  # no acceptable method
        b"\x05\x00\x04\x00\x00\x01" + bytes(6),  # reply version
        b"\x05\x00\x05\x00\x01\x01" + bytes(6),  # reserved byte
        b"\x05\x00\x05\x00\x00\x07" + bytes(6),  # address type
    ],
)
def test_client_rejects_bad_replies(data: bytes) -> None:
    with pytest.raises(Socks5Error):
        Socks5Client("a.example", 80).receive_data(data)


def test_client_initial_bytes_are_greeting_and_request_in_one() -> None:
    data = Socks5Client("erp.internal", 8443).initial_bytes()
    name = b"erp.internal"
    assert data == (
        b"\x05\x01\x00\x05\x01\x00\x03" + bytes((len(name),)) + name + struct.pack("!H", 8443)
    )
