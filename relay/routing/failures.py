"""Turning whatever a request raised into an ``UpstreamError`` with a design code
(section 6), and codes into HTTP statuses. Pure: exceptions in, codes out.

Messages name host and port at most: aiohttp's own texts can carry the full URL,
query string included, and a token may sit in the query (token location ``url``).
"""

from __future__ import annotations

import ssl
from typing import TypeVar, get_args

import aiohttp

from relay.errors import AgentProtocolError, StreamError, UpstreamError
from relay.models.connection import ErrorCode
from relay.routing.outgoing import InvalidRequestError
from relay.routing.ssrf import BlockedDestinationError
from relay.routing.tls import TlsConfigError

E = TypeVar("E", bound=BaseException)

# Codes a TestResult can carry: the design's list, from the API model.
TEST_CODES = frozenset(get_args(ErrorCode))

HTTP_STATUS = {
    "agent_offline": 503,
    "timeout": 504,
    "blocked_destination": 403,
    "needs_authorization": 409,
    "rate_limited": 429,
    "invalid_request": 400,
}


def http_status(code: str) -> int:
    """The relay API's status for an upstream failure: 502 unless listed."""
    return HTTP_STATUS.get(code, 502)


def code_for_test_result(code: str) -> str:
    """A code a TestResult can carry: a misbehaving agent reads as offline, the other
    extra codes (bad response, too many redirects, ...) as a failed ping."""
    if code in TEST_CODES:
        return code
    if code == AgentProtocolError.code:
        return "agent_offline"
    return "ping_failed"


def find_cause(exc: BaseException, kind: type[E]) -> E | None:
    """The first ``kind`` in ``exc``'s chain (``__cause__``/``__context__`` and
    aiohttp's ``os_error``/``certificate_error``)."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        cur = todo.pop(0)
        if id(cur) in seen:
            continue
        seen.add(id(cur))
        if isinstance(cur, kind):
            return cur
        for attr in ("os_error", "certificate_error"):
            inner = getattr(cur, attr, None)
            if isinstance(inner, BaseException):
                todo.append(inner)
        for inner in (cur.__cause__, cur.__context__):
            if inner is not None:
                todo.append(inner)
    return None


def to_upstream_error(exc: BaseException, target: str) -> UpstreamError:
    """``target`` is ``host:port`` for messages."""
    if isinstance(exc, UpstreamError):
        return exc
    if isinstance(exc, InvalidRequestError):
        return UpstreamError("invalid_request", str(exc))
    if isinstance(exc, TlsConfigError):
        return UpstreamError("tls_error", str(exc))
    blocked = find_cause(exc, BlockedDestinationError)
    if blocked is not None:
        return UpstreamError("blocked_destination", str(blocked))
    stream = find_cause(exc, StreamError)
    if stream is not None:
        return UpstreamError(stream.code, str(stream))
    if find_cause(exc, aiohttp.ClientConnectorCertificateError) or find_cause(
        exc, ssl.CertificateError
    ):
        cert = find_cause(exc, ssl.CertificateError)
        detail = getattr(cert, "verify_message", None) or getattr(cert, "reason", None) or cert
        return UpstreamError("tls_error", f"TLS certificate of {target} rejected: {detail}")
    ssl_error = find_cause(exc, ssl.SSLError)
    if ssl_error is not None or find_cause(exc, aiohttp.ClientSSLError):
        reason = getattr(ssl_error, "reason", None) or "handshake failed"
        return UpstreamError("tls_error", f"TLS with {target} failed: {reason}")
    if find_cause(exc, TimeoutError) is not None:
        return UpstreamError("timeout", f"{target} did not answer in time")
    if find_cause(exc, aiohttp.ClientConnectorDNSError) is not None:
        return UpstreamError("target_unreachable", f"cannot resolve the host of {target}")
    if find_cause(exc, ConnectionRefusedError) is not None:
        return UpstreamError("connection_refused", f"{target} refused the connection")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamError("target_unreachable", f"cannot connect to {target}")
    if isinstance(exc, aiohttp.TooManyRedirects):
        return UpstreamError("too_many_redirects", f"{target} redirected too often")
    if isinstance(exc, aiohttp.ClientResponseError | aiohttp.ClientPayloadError):
        return UpstreamError("bad_response", f"{target} sent an invalid HTTP response")
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError):
        return UpstreamError("bad_response", f"{target} closed the connection")
    if isinstance(exc, aiohttp.InvalidURL):
        return UpstreamError("invalid_request", "the request URL is not valid")
    if isinstance(exc, aiohttp.ClientError | OSError):
        return UpstreamError("bad_response", f"request to {target} failed ({type(exc).__name__})")
    raise exc
