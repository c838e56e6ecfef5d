"""SOCKS5 (RFC 1928) codec, sans I/O: no-auth method, CONNECT command only.

The relay is the client (``Socks5Client``) and sends greeting and request in one write;
the agent, or a stock OpenSSH client doing ``ssh -R 0``, is the server
(``Socks5Server``). Both parsers take bytes in and hand bytes out; the asyncio code
around them only moves bytes. Garbage raises ``Socks5Error`` at once, and a parser
never buffers more than one handshake's worth of bytes.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from enum import IntEnum

VERSION = 5
METHOD_NO_AUTH = 0x00
METHOD_NONE_ACCEPTABLE = 0xFF
CMD_CONNECT = 0x01
ATYP_IPV4 = 0x01
ATYP_DOMAIN = 0x03
ATYP_IPV6 = 0x04
# Greeting (2 + 255 methods) + request (4 + 1 + 255 + 2): anything longer is garbage.
MAX_HANDSHAKE = 2 + 255 + 4 + 1 + 255 + 2


class Reply(IntEnum):
    SUCCEEDED = 0x00
    GENERAL_FAILURE = 0x01
    NOT_ALLOWED = 0x02
    NETWORK_UNREACHABLE = 0x03
    HOST_UNREACHABLE = 0x04
    CONNECTION_REFUSED = 0x05
    TIMED_OUT = 0x06  # RFC 1928 "TTL expired"; used for "dial timed out"
    COMMAND_NOT_SUPPORTED = 0x07
    ADDRESS_TYPE_NOT_SUPPORTED = 0x08


class Socks5Error(ValueError):
    """The peer sent something that is not the SOCKS5 we speak.

    ``reply`` is the code a server should answer with before closing, or None when
    no reply can be sent (bad version, no acceptable method)."""

    def __init__(self, message: str, reply: Reply | None = Reply.GENERAL_FAILURE) -> None:
        super().__init__(message)
        self.reply = reply


@dataclass(frozen=True, slots=True)
class ConnectRequest:
    host: str
    port: int


def encode_address(host: str, port: int) -> bytes:
    """ATYP + address + port for ``host`` (IPv4, IPv6 or a domain name)."""
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range: {port}")
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        name = host.encode("idna") if not host.isascii() else host.encode("ascii")
        if not 0 < len(name) <= 255:
            raise ValueError(f"host name length must be 1-255 bytes: {host!r}") from None
        return bytes((ATYP_DOMAIN, len(name))) + name + struct.pack("!H", port)
    atyp = ATYP_IPV4 if ip.version == 4 else ATYP_IPV6
    return bytes((atyp,)) + ip.packed + struct.pack("!H", port)


def _decode_address(buf: bytes | bytearray, offset: int) -> tuple[str, int, int] | None:
    """Parse ATYP+addr+port at ``offset``: (host, port, end) or None if incomplete."""
    if len(buf) <= offset:
        return None
    atyp = buf[offset]
    if atyp == ATYP_IPV4:
        end = offset + 1 + 4 + 2
        if len(buf) < end:
            return None
        host = str(ipaddress.IPv4Address(bytes(buf[offset + 1 : offset + 5])))
    elif atyp == ATYP_IPV6:
        end = offset + 1 + 16 + 2
        if len(buf) < end:
            return None
        host = str(ipaddress.IPv6Address(bytes(buf[offset + 1 : offset + 17])))
    elif atyp == ATYP_DOMAIN:
        if len(buf) < offset + 2:
            return None
        length = buf[offset + 1]
        if length == 0:
            raise Socks5Error("empty domain name", Reply.GENERAL_FAILURE)
        end = offset + 2 + length + 2
        if len(buf) < end:
            return None
        raw = bytes(buf[offset + 2 : offset + 2 + length])
        try:
            host = raw.decode("ascii")
        except UnicodeDecodeError:
            raise Socks5Error("domain name is not ASCII", Reply.GENERAL_FAILURE) from None
        if any(c in host for c in "\x00/\\ \t\r\n"):
            raise Socks5Error("domain name has forbidden characters", Reply.GENERAL_FAILURE)
    else:
        raise Socks5Error(f"address type {atyp:#x} not supported", Reply.ADDRESS_TYPE_NOT_SUPPORTED)
    (port,) = struct.unpack_from("!H", buf, end - 2)
    return host, port, end


def build_reply(code: Reply | int, host: str = "0.0.0.0", port: int = 0) -> bytes:
    return bytes((VERSION, int(code), 0x00)) + encode_address(host, port)


class Socks5Server:
    """Server side: greeting -> method selection -> CONNECT request -> (caller) reply.

    Feed bytes with ``receive_data``; it returns the ``ConnectRequest`` once complete.
    Send ``data_to_send()`` after each call. Bytes after the request are kept in
    ``leftover`` (a client may send payload before the reply; RFC 1928 forbids it, but
    being lenient costs nothing)."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._out = bytearray()
        self._greeted = False
        self.request: ConnectRequest | None = None
        self.leftover = b""

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def receive_data(self, data: bytes) -> ConnectRequest | None:
        if self.request is not None:
            raise Socks5Error("data after the request", None)
        self._buf += data
        request = self._parse()
        # Checked only while undecided: payload right behind a complete request may
        # be of any size (it goes to ``leftover``).
        if request is None and len(self._buf) > MAX_HANDSHAKE:
            raise Socks5Error("handshake too long", None)
        return request

    def _parse(self) -> ConnectRequest | None:
        if not self._greeted:
            if len(self._buf) < 2:
                return None
            if self._buf[0] != VERSION:
                raise Socks5Error(f"not SOCKS5 (version byte {self._buf[0]:#x})", None)
            nmethods = self._buf[1]
            if nmethods == 0:
                raise Socks5Error("greeting offers no methods", None)
            if len(self._buf) < 2 + nmethods:
                return None
            methods = self._buf[2 : 2 + nmethods]
            del self._buf[: 2 + nmethods]
            if METHOD_NO_AUTH not in methods:
                self._out += bytes((VERSION, METHOD_NONE_ACCEPTABLE))
                raise Socks5Error("client does not offer the no-auth method", None)
            self._out += bytes((VERSION, METHOD_NO_AUTH))
            self._greeted = True
        if len(self._buf) < 4:
            return None
        ver, cmd, rsv = self._buf[0], self._buf[1], self._buf[2]
        if ver != VERSION:
            raise Socks5Error(f"bad request version {ver:#x}", Reply.GENERAL_FAILURE)
        if rsv != 0:
            raise Socks5Error("reserved byte is not zero", Reply.GENERAL_FAILURE)
        if cmd != CMD_CONNECT:
            raise Socks5Error(f"command {cmd:#x} not supported", Reply.COMMAND_NOT_SUPPORTED)
        parsed = _decode_address(self._buf, 3)
        if parsed is None:
            return None
        host, port, end = parsed
        if port == 0:
            raise Socks5Error("port 0", Reply.GENERAL_FAILURE)
        self.leftover = bytes(self._buf[end:])
        self._buf.clear()
        self.request = ConnectRequest(host, port)
        return self.request

    def reply(self, code: Reply | int) -> bytes:
        """Queue and return the reply to the CONNECT request."""
        out = build_reply(code)
        self._out += out
        return self.data_to_send()


class Socks5Client:
    """Client side: ``initial_bytes()`` is greeting + CONNECT in one write; feed the
    server's bytes to ``receive_data`` until it returns the reply code."""

    def __init__(self, host: str, port: int) -> None:
        self._request = (
            bytes((VERSION, 1, METHOD_NO_AUTH))
            + bytes((VERSION, CMD_CONNECT, 0x00))
            + encode_address(host, port)
        )
        self._buf = bytearray()
        self._selected = False
        self.reply: Reply | int | None = None
        self.leftover = b""

    def initial_bytes(self) -> bytes:
        return self._request

    def receive_data(self, data: bytes) -> Reply | int | None:
        if self.reply is not None:
            self.leftover += data
            return self.reply
        self._buf += data
        reply = self._parse()
        if reply is None and len(self._buf) > MAX_HANDSHAKE:
            raise Socks5Error("reply too long", None)
        return reply

    def _parse(self) -> Reply | int | None:
        if not self._selected:
            if len(self._buf) < 2:
                return None
            if self._buf[0] != VERSION:
                raise Socks5Error(f"not SOCKS5 (version byte {self._buf[0]:#x})", None)
            if self._buf[1] != METHOD_NO_AUTH:
                raise Socks5Error(f"server chose method {self._buf[1]:#x}", None)
            del self._buf[:2]
            self._selected = True
        if len(self._buf) < 4:
            return None
        if self._buf[0] != VERSION or self._buf[2] != 0:
            raise Socks5Error("malformed reply", None)
        parsed = _decode_address(self._buf, 3)
        if parsed is None:
            return None
        _, _, end = parsed
        code = self._buf[1]
        self.leftover = bytes(self._buf[end:])
        self._buf.clear()
        try:
            self.reply = Reply(code)
        except ValueError:
            self.reply = code
        return self.reply
