"""The request the pipeline is about to send, and the pure steps that build it: the
URL (base URI + relative URI, never another host), the headers, and the body encoded
per media type. Auth steps edit an ``OutgoingRequest`` before it goes out."""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import AsyncIterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl, quote, urlencode

from multidict import CIMultiDict
from yarl import URL

from relay.errors import RelayError
from relay.models.connection import ConnectionIn, MediaType

CONTENT_TYPES: dict[str, str] = {
    "json": "application/json",
    "xml": "application/xml",
    "urlencoded": "application/x-www-form-urlencoded",
    "plaintext": "text/plain; charset=utf-8",
}

# Never forwarded in either direction (RFC 9110 7.6.1), plus framing headers that the
# HTTP library on each side sets itself.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# Headers a caller cannot set on an upstream request: hop-by-hop, framing and Host
# (the relay targets the connection's host, never one the caller names).
CALLER_FORBIDDEN = HOP_BY_HOP | {"host", "content-length"}
# Never carried to another origin on a redirect.
CREDENTIAL_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})

BodyKind = Literal["none", "json", "form", "raw", "stream"]


class InvalidRequestError(RelayError, ValueError):
    """The caller's request cannot be sent as given (the caller's mistake: HTTP 400)."""

    code = "invalid_request"


def drop_hop_by_hop(headers: Mapping[str, str] | CIMultiDict[str]) -> list[tuple[str, str]]:
    """Headers minus hop-by-hop ones, including those named by ``Connection``."""
    items = list(headers.items())
    named = {t.strip().lower() for k, v in items if k.lower() == "connection" for t in v.split(",")}
    return [(k, v) for k, v in items if k.lower() not in HOP_BY_HOP and k.lower() not in named]


def join_url(base_uri: str, relative_uri: str) -> URL:
    """``base_uri`` + ``relative_uri`` as a path under the base (``/api`` + ``/orders``
    is ``/api/orders``). A relative URI that names a scheme or host, or whose dot
    segments climb above the base path, is refused: a caller picks a path on the
    connection's host, never another host."""
    rel = relative_uri.strip()
    if any(c in rel for c in "\r\n\x00\\"):
        raise InvalidRequestError("relative_uri contains a forbidden character")
    if rel.startswith("//") or "://" in rel.split("?", 1)[0] or _has_scheme(rel):
        raise InvalidRequestError("relative_uri must be a path, not an absolute URL")
    if "#" in rel:
        rel = rel.split("#", 1)[0]
    path, sep, query = rel.partition("?")
    base = URL(base_uri)
    base_path = base.raw_path.rstrip("/")
    joined_path = base_path + "/" + path.lstrip("/") if path else base.raw_path or "/"
    segments: list[str] = []
    for seg in joined_path.split("/")[1:]:
        if seg in (".", "%2e", "%2E"):
            continue
        if seg.lower() in ("..", "%2e%2e", ".%2e", "%2e."):
            if not segments:
                raise InvalidRequestError("relative_uri climbs above the root")
            segments.pop()
            continue
        segments.append(seg)
    normalized = "/" + "/".join(segments)
    base_segments = base_path.split("/")[1:]
    if base_segments and segments[: len(base_segments)] != base_segments:
        raise InvalidRequestError("relative_uri climbs above the connection's base path")
    query_parts = [q for q in (base.raw_query_string, query if sep else "") if q]
    # Built from raw strings (encoded=True) so the caller's escapes reach the upstream
    # as given (%2F stays %2F); characters that may not appear raw are escaped here.
    return URL.build(
        scheme=base.scheme,
        authority=base.raw_authority,
        path=_requote(normalized, _PATH_SAFE),
        query_string=_requote("&".join(query_parts), _QUERY_SAFE),
        encoded=True,
    )


_PATH_SAFE = "/%:@!$&'()*+,;=-._~"
_QUERY_SAFE = _PATH_SAFE + "?"
_STRAY_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")


def _requote(text: str, safe: str) -> str:
    """Percent-encode what may not appear raw, keeping valid %XX escapes as they are."""
    return quote(_STRAY_PERCENT.sub("%25", text), safe=safe)


def with_query_param(url: URL, name: str, value: str) -> URL:
    """``url`` with ``name=value`` set in its query, the rest of the query byte for byte
    (yarl's ``update_query`` would re-normalise it)."""
    key = quote(name, safe="")
    kept = [p for p in url.raw_query_string.split("&") if p and p.split("=", 1)[0] != key]
    kept.append(f"{key}={quote(value, safe='')}")
    return URL.build(
        scheme=url.scheme,
        authority=url.raw_authority,
        path=url.raw_path,
        query_string="&".join(kept),
        encoded=True,
    )


def _has_scheme(rel: str) -> bool:
    head = rel.split("/", 1)[0].split("?", 1)[0]
    if ":" not in head:
        return False
    scheme = head.split(":", 1)[0]
    return bool(scheme) and scheme[0].isalpha() and all(c.isalnum() or c in "+-." for c in scheme)


def same_origin(a: URL, b: URL) -> bool:
    return (a.scheme, (a.host or "").lower(), a.port) == (b.scheme, (b.host or "").lower(), b.port)


@dataclass
class OutgoingRequest:
    """One request on its way out. ``body`` holds a JSON value (kind ``json``), a list
    of form pairs (``form``), bytes (``raw``) or an async iterable of chunks
    (``stream``), so an auth step can add a field before the body is encoded.
    ``secret_headers`` (lowercase) are stripped when a redirect leaves the origin;
    ``body_has_secret`` stops a 307/308 redirect to another origin."""

    method: str
    url: URL
    media_type: MediaType
    headers: CIMultiDict[str] = field(default_factory=CIMultiDict)
    body_kind: BodyKind = "none"
    body: Any = None
    secret_headers: set[str] = field(default_factory=set)
    body_has_secret: bool = False

    @property
    def has_body(self) -> bool:
        return self.body_kind != "none"

    def set_default_content_type(self, value: str | None = None) -> None:
        if self.has_body and "Content-Type" not in self.headers:
            self.headers["Content-Type"] = value or CONTENT_TYPES[self.media_type]

    def add_body_field(self, name: str, value: str) -> None:
        """Put ``name=value`` into the body (token location ``body``)."""
        if self.body_kind == "none":
            if self.media_type == "json":
                self.body_kind, self.body = "json", {}
            elif self.media_type == "urlencoded":
                self.body_kind, self.body = "form", []
        if self.body_kind == "json" and isinstance(self.body, dict):
            self.body = {**self.body, name: value}
        elif self.body_kind == "form":
            self.body = [*self.body, (name, value)]
        elif self.body_kind == "raw" and self.media_type == "urlencoded":
            pairs = parse_qsl(bytes(self.body).decode("utf-8"), keep_blank_values=True)
            self.body_kind, self.body = "form", [*pairs, (name, value)]
        else:
            raise InvalidRequestError(
                "a token sent in the body needs a JSON object or urlencoded body "
                f"(media_type {self.media_type!r}, body kind {self.body_kind!r})"
            )
        self.body_has_secret = True
        self.set_default_content_type()

    def encoded_body(self) -> bytes | AsyncIterable[bytes] | None:
        if self.body_kind == "json":
            return json.dumps(self.body, separators=(",", ":"), ensure_ascii=False).encode()
        if self.body_kind == "form":
            return urlencode(self.body).encode()
        if self.body_kind in ("raw", "stream"):
            data: bytes | AsyncIterable[bytes] = self.body
            return data
        return None


def encode_value(value: Any, media_type: MediaType) -> tuple[BodyKind, Any]:
    """A JSON value from the caller (``RequestIn.body``, ``ping.body``) as a body: a
    string is sent as is; anything else is encoded per ``media_type``."""
    if value is None:
        return "none", None
    if isinstance(value, str):
        return "raw", value.encode("utf-8")
    if media_type == "json":
        return "json", value
    if media_type == "urlencoded":
        if isinstance(value, dict):
            return "form", [(str(k), _form_text(v)) for k, v in value.items()]
        if isinstance(value, list) and all(isinstance(p, list) and len(p) == 2 for p in value):
            return "form", [(str(k), _form_text(v)) for k, v in value]
        raise InvalidRequestError("an urlencoded body must be an object or a list of pairs")
    raise InvalidRequestError(
        f"a {media_type} body must be a string (give body_text or a JSON string)"
    )


def _form_text(v: Any) -> str:
    if isinstance(v, str):
        return v
    return json.dumps(v, separators=(",", ":"))


def build_request(
    spec: ConnectionIn,
    *,
    method: str,
    relative_uri: str,
    headers: Mapping[str, str] | None = None,
    body: Any = None,
    body_text: str | None = None,
    body_base64: str | None = None,
    stream: AsyncIterable[bytes] | None = None,
) -> OutgoingRequest:
    """The request before auth: URL, the connection's headers (then the caller's,
    which override them), and the body."""
    http = spec.http
    out = OutgoingRequest(
        method=method.upper(),
        url=join_url(http.base_uri, relative_uri),
        media_type=http.media_type,
    )
    for h in http.headers:
        out.headers[h.name] = h.value
        out.secret_headers.add(h.name.lower())
    for name, value in (headers or {}).items():
        if name.lower() in CALLER_FORBIDDEN:
            continue
        out.headers[name] = value
        out.secret_headers.discard(name.lower())
    if stream is not None:
        out.body_kind, out.body = "stream", stream
    elif body_base64 is not None:
        try:
            out.body_kind, out.body = "raw", base64.b64decode(body_base64, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequestError("body_base64 is not valid base64") from None
    elif body_text is not None:
        out.body_kind, out.body = "raw", body_text.encode("utf-8")
    else:
        out.body_kind, out.body = encode_value(body, http.media_type)
    out.set_default_content_type()
    return out
