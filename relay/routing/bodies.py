"""Response bodies: parsing one for path lookups, and shaping it for the request
envelope (``body`` for JSON, ``body_text`` for text, ``body_base64`` for the rest)."""

from __future__ import annotations

import base64
import json
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from typing import Any

from relay.routing.outgoing import HOP_BY_HOP
from relay.routing.paths import parse_xml

_TEXTUAL = ("xml", "x-www-form-urlencoded", "javascript", "yaml", "csv", "html")


def _mime(content_type: str) -> tuple[str, str | None]:
    main, _, params = content_type.partition(";")
    charset = None
    for p in params.split(";"):
        k, _, v = p.strip().partition("=")
        if k.lower() == "charset" and v:
            charset = v.strip().strip('"')
    return main.strip().lower(), charset


def is_json_type(mime: str) -> bool:
    return mime == "application/json" or mime.endswith("+json") or mime == "text/json"


def is_xml_type(mime: str) -> bool:
    return mime in ("application/xml", "text/xml") or mime.endswith("+xml")


def decode_text(raw: bytes, charset: str | None) -> str | None:
    try:
        return raw.decode(charset or "utf-8")
    except (UnicodeDecodeError, LookupError):
        return None


def parse_for_paths(raw: bytes, content_type: str, media_type: str) -> Any:
    """What the auth-error, rate-limit and ping paths look into: a JSON value, an XML
    element, the text, or ``None`` for an empty body. Without a content type the
    connection's media type says how to read it."""
    if not raw:
        return None
    mime, charset = _mime(content_type)
    if is_json_type(mime) or (not mime and media_type == "json"):
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return decode_text(raw, charset)
    if is_xml_type(mime) or (not mime and media_type == "xml"):
        try:
            return parse_xml(raw)
        except ET.ParseError:
            return decode_text(raw, charset)
    return decode_text(raw, charset)


def envelope_body(raw: bytes, content_type: str) -> dict[str, Any]:
    """The ``RequestOut`` body fields for a response body."""
    if not raw:
        return {}
    mime, charset = _mime(content_type)
    if is_json_type(mime):
        try:
            return {"body": json.loads(raw)}
        except (ValueError, UnicodeDecodeError):
            pass
    textual = mime.startswith("text/") or any(t in mime for t in _TEXTUAL)
    if textual or is_json_type(mime) or charset:
        text = decode_text(raw, charset)
        if text is not None:
            return {"body_text": text}
    return {"body_base64": base64.b64encode(raw).decode("ascii")}


# The envelope carries the decoded body: its length and encoding headers no longer
# describe it.
_ENVELOPE_DROP = HOP_BY_HOP | {"content-length", "content-encoding"}


def envelope_headers(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Response headers for the envelope: hop-by-hop and framing headers dropped,
    repeated headers joined with ", " (RFC 9110 5.3)."""
    out: dict[str, str] = {}
    lower: dict[str, str] = {}
    for k, v in items:
        if k.lower() in _ENVELOPE_DROP:
            continue
        key = lower.setdefault(k.lower(), k)
        out[key] = f"{out[key]}, {v}" if key in out else v
    return out
