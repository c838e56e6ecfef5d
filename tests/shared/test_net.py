"""``parse_host_port``: the one address parser both sides use for ``host:port`` settings."""

from __future__ import annotations

import pytest

from shared.net import parse_host_port


@pytest.mark.parametrize(
    ("value", "default", "expected"),
    [
        ("relay.example.com:2222", None, ("relay.example.com", 2222)),
        ("relay.example.com", 2222, ("relay.example.com", 2222)),
        ("relay.example.com:443", 2222, ("relay.example.com", 443)),
        ("127.0.0.1:0", None, ("127.0.0.1", 0)),
        ("0.0.0.0:65535", None, ("0.0.0.0", 65535)),
        ("[::1]:8080", None, ("::1", 8080)),
        ("[fd00::1]", 22, ("fd00::1", 22)),
        ("[fd00::1]:", 22, ("fd00::1", 22)),
        ("  relay:1  ", None, ("relay", 1)),
        ("relay:", 9, ("relay", 9)),
    ],
)
def test_parses(value: str, default: int | None, expected: tuple[str, int]) -> None:
    assert parse_host_port(value, default) == expected


@pytest.mark.parametrize(
    ("value", "default", "message"),
    [
        ("relay", None, "missing port"),
        ("relay:", None, "missing port"),
        (":80", None, "empty host"),
        ("[]:80", None, "empty host"),
        ("", 1, "empty host"),
        ("relay:65536", None, "port must be 0-65535"),
        ("relay:-1", None, "port must be 0-65535"),
        ("relay:http", None, "port must be 0-65535"),
        ("relay:8O", None, "port must be 0-65535"),
        ("relay:\u0663", None, "port must be 0-65535"),  # ARABIC-INDIC DIGIT THREE
        ("relay:\u00b2", None, "port must be 0-65535"),  # SUPERSCRIPT TWO
        ("relay:" + "9" * 5000, None, "port must be 0-65535"),
        ("::1", None, "put IPv6 addresses in brackets"),
        ("fd00::1:443", None, "put IPv6 addresses in brackets"),
        ("[::1", None, "missing ']'"),
        ("[::1]x", None, "bad address"),
        ("[::1]80", None, "bad address"),
    ],
)
def test_rejects_with_a_clear_message(value: str, default: int | None, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        parse_host_port(value, default)
    assert repr(value) in str(info.value)
