"""Small address helpers used by both sides."""

from __future__ import annotations


def parse_host_port(value: str, default_port: int | None = None) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port). Raises ValueError with a clear text."""
    text = value.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"bad address {value!r}: missing ']'")
        host, rest = text[1:end], text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f"bad address {value!r}")
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif ":" not in text:
        host, port_text = text, ""
    else:
        raise ValueError(f"bad address {value!r}: put IPv6 addresses in brackets")
    if not host:
        raise ValueError(f"bad address {value!r}: empty host")
    if not port_text:
        if default_port is None:
            raise ValueError(f"bad address {value!r}: missing port")
        return host, default_port
    # isdigit() alone admits "²" and other non-ASCII digits; 5 digits bound int().
    digits = port_text.isascii() and port_text.isdigit() and len(port_text) <= 5
    if not digits or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"bad address {value!r}: port must be 0-65535")
    return host, int(port_text)
