"""Talking to a token endpoint: the authorization-code exchange, refresh, client
credentials (RFC 6749 4.1.3, 6, 4.4) and revocation (RFC 7009).

``build_token_request`` and ``parse_token_response`` are pure (parameters in, bytes
out; status and bytes in, a ``TokenSet`` or a typed error out); ``TokenClient`` only
moves them over aiohttp. Whatever the provider answers (HTML error pages, non-JSON,
no ``access_token``, a Slack-style ``200 {"ok": false}``), the caller gets a
``TokenError`` subclass that says what to do next, with a message that names the
host and the provider's error but never a secret, code, verifier or token.
"""

from __future__ import annotations

import base64
import json
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import aiohttp

from relay.models.connection import Header
from relay.models.iclient import IClientIn
from relay.oauth import _authlib
from relay.oauth.errors import (
    BadTokenResponseError,
    NeedsAuthorizationError,
    OAuthConfigurationError,
    TokenError,
    TransientTokenError,
)
from relay.oauth.tokens import TokenSet
from relay.routing.failures import find_cause
from relay.routing.policy import parse_retry_after
from relay.routing.ssrf import BlockedDestinationError
from shared.logging import get_logger, redact_text

log = get_logger("relay.oauth")

DEFAULT_TIMEOUT_S = 30.0
# Lifetime assumed when a token response has no ``expires_in``: RFC 6749 5.1 lets the
# provider omit it ("documented by other means"). Treating that as "never expires"
# leaves a dead token in use forever; one hour is the most common documented
# lifetime, and an early refresh costs one request while a late one fails calls.
DEFAULT_EXPIRES_IN_S = 3600.0
# Longer lifetimes are clipped: a typo'd or hostile value must not pin a token for years.
MAX_EXPIRES_IN_S = 366 * 86400.0
DEFAULT_MAX_RESPONSE_BYTES = 256 * 1024
_MESSAGE_MAX = 300
_ERROR_CODE_MAX = 64

# Provider error codes, by what the relay does about them (RFC 6749 5.2, 7009 2.2.1,
# and the spellings of providers that answer ``{"ok": false, "error": ...}``).
NEEDS_AUTHORIZATION_ERRORS = frozenset(
    {"invalid_grant", "invalid_refresh_token", "invalid_code", "token_revoked", "token_expired"}
)
TRANSIENT_ERRORS = frozenset(
    {"temporarily_unavailable", "server_error", "slow_down", "ratelimited", "rate_limited"}
)
TRANSIENT_STATUSES = frozenset({408, 425, 429})

FORM = "application/x-www-form-urlencoded"
JSON = "application/json"


@dataclass(frozen=True)
class TokenClientConfig:
    timeout_s: float = DEFAULT_TIMEOUT_S
    default_expires_in_s: float = DEFAULT_EXPIRES_IN_S
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    user_agent: str = "onprem-relay-oauth"


@dataclass(frozen=True)
class TokenRequest:
    """One POST to a token or revocation endpoint, ready to send. ``secrets`` are the
    values no error message may repeat (the provider may echo them back)."""

    url: str
    headers: dict[str, str] = field(repr=False)
    body: bytes = field(repr=False)
    grant_type: str
    secrets: tuple[str, ...] = field(default=(), repr=False)

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "(no host)"


# --- building requests -----------------------------------------------------------------


def basic_credentials(client_id: str, client_secret: str) -> str:
    """The ``Authorization`` value for client_secret_basic. RFC 6749 2.3.1: id and
    secret are each form-urlencoded, then joined with ``:`` and base64-encoded, so a
    ``:`` in the id survives (authlib's ``ClientAuth`` skips the encoding). Spaces
    are sent as ``%20``, which every form decoder reads as a space, where ``+``
    would turn into a literal plus at servers that percent-decode only."""
    raw = f"{quote(client_id, safe='')}:{quote(client_secret, safe='')}"
    return "Basic " + base64.b64encode(raw.encode("ascii")).decode("ascii")


def header_pairs(headers: Iterable[Header | tuple[str, str]]) -> list[tuple[str, str]]:
    return [(h.name, h.value) if isinstance(h, Header) else (h[0], h[1]) for h in headers]


def _wants_json(headers: Mapping[str, str]) -> bool:
    for name, value in headers.items():
        if name.lower() == "content-type":
            media = value.split(";", 1)[0].strip().lower()
            return media == JSON or media.endswith("+json")
    return False


def build_token_request(
    iclient: IClientIn,
    grant_type: str,
    params: Mapping[str, str | None],
    *,
    url: str | None = None,
    extra_headers: Iterable[Header | tuple[str, str]] = (),
    secrets: Sequence[str] = (),
) -> TokenRequest:
    """The token request for ``grant_type`` with ``params`` (``None`` values left out),
    the client authenticated per ``iclient.client_auth``. ``extra_headers`` are the
    connection's "Override access token HTTP headers": a ``Content-Type`` naming JSON
    sends the parameters as a JSON object instead of a form."""
    present = {k: v for k, v in params.items() if v}
    redirect_uri = present.pop("redirect_uri", None)
    form = _authlib.prepare_token_request(grant_type, redirect_uri=redirect_uri, **present)
    fields = parse_qsl(form, keep_blank_values=True)
    return _finish(
        iclient,
        url or iclient.token_url,
        grant_type,
        fields,
        extra_headers=extra_headers,
        secrets=secrets,
    )


def build_revoke_request(
    iclient: IClientIn, token: str, *, token_type_hint: str | None = None
) -> TokenRequest:
    """RFC 7009 2.1: ``token`` (+ hint) form-encoded, the client authenticated as for
    the token endpoint."""
    if not iclient.revoke_url:
        raise OAuthConfigurationError("the iClient has no revoke_url")
    body, _ = _authlib.prepare_revoke_token_request(token, token_type_hint)
    fields = parse_qsl(body, keep_blank_values=True)
    return _finish(iclient, iclient.revoke_url, "revoke", fields, secrets=(token,))


def _finish(
    iclient: IClientIn,
    url: str,
    grant_type: str,
    fields: list[tuple[str, str]],
    *,
    extra_headers: Iterable[Header | tuple[str, str]] = (),
    secrets: Sequence[str] = (),
) -> TokenRequest:
    headers: dict[str, str] = {"Content-Type": FORM, "Accept": JSON}
    for name, value in header_pairs(extra_headers):
        for existing in [k for k in headers if k.lower() == name.lower()]:
            del headers[existing]
        headers[name] = value
    secret = iclient.client_secret
    if secret is not None and iclient.client_auth == "basic":
        for existing in [k for k in headers if k.lower() == "authorization"]:
            del headers[existing]
        headers["Authorization"] = basic_credentials(iclient.client_id, secret)
    else:
        # client_secret_post, or a public client (no secret): RFC 6749 2.3.1 / 4.1.3
        # want client_id in the body whenever the client does not authenticate by Basic.
        fields.append(("client_id", iclient.client_id))
        if secret is not None:
            fields.append(("client_secret", secret))
    if _wants_json(headers):
        body = json.dumps(dict(fields), separators=(",", ":")).encode()
    else:
        body = urlencode(fields).encode()
    scrub = tuple(s for s in (*secrets, secret or "", iclient.client_secret or "") if s)
    return TokenRequest(url=url, headers=headers, body=body, grant_type=grant_type, secrets=scrub)


# --- reading responses ------------------------------------------------------------------


def _clean(text: object, secrets: Sequence[str], limit: int = _MESSAGE_MAX) -> str:
    """Provider-supplied text made safe for a message: printable, short, and without
    any of ``secrets`` or secret-shaped parts."""
    s = "".join(c if c.isprintable() else " " for c in str(text))
    for secret in secrets:
        if secret:
            s = s.replace(secret, "********")
    s = redact_text(s)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _error_code(value: object) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    code = "".join(c for c in value if c.isprintable())[:_ERROR_CODE_MAX]
    return code or None


def _decode_body(content_type: str, body: bytes) -> Any:
    """JSON, or form-encoded (some old providers answer ``access_token=...&...``), or
    None when it is neither."""
    media = content_type.split(";", 1)[0].strip().lower()
    text = body.decode("utf-8", errors="replace").strip()
    if media == FORM:
        return dict(parse_qsl(text, keep_blank_values=True))
    if media == JSON or media.endswith("+json") or text.startswith("{"):
        try:
            return json.loads(text)
        except ValueError:
            return None
    return None


def _expires_in(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        try:
            seconds = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    if not math.isfinite(seconds) or seconds <= 0:
        return None
    return min(seconds, MAX_EXPIRES_IN_S)


def _scope(value: object) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return " ".join(value)
    return None


def _provider_error(
    data: Any, status: int, host: str, secrets: Sequence[str], retry_after: float | None
) -> TokenError | None:
    """The typed error for an answer that carries an OAuth error (``{"error": ...}``,
    also inside a 200, and Slack's ``{"ok": false, "error": ...}``), or None."""
    if not isinstance(data, dict):
        return None
    error = _error_code(data.get("error"))
    if error is None and data.get("ok") is False:
        error = "unknown_error"
    if error is None:
        return None
    text = f"the token endpoint at {host} answered {error}"
    description = data.get("error_description")
    if isinstance(description, str) and description.strip():
        text += f": {_clean(description, secrets)}"
    lowered = error.lower()
    if lowered in NEEDS_AUTHORIZATION_ERRORS:
        return NeedsAuthorizationError(
            text + " (the grant is no longer valid: authorize the connection again)",
            status=status,
            error=error,
        )
    if lowered in TRANSIENT_ERRORS:
        return TransientTokenError(text, status=status, error=error, retry_after=retry_after)
    return OAuthConfigurationError(
        text + " (check the iClient's client id, secret, URLs and scope)",
        status=status,
        error=error,
    )


def parse_token_response(
    status: int,
    content_type: str,
    body: bytes,
    *,
    host: str,
    retry_after: str | None = None,
    now: float | None = None,
    default_expires_in: float = DEFAULT_EXPIRES_IN_S,
    secrets: Sequence[str] = (),
) -> TokenSet:
    """A token endpoint's answer as a ``TokenSet``, or the ``TokenError`` that says what
    went wrong: 5xx/408/429 and ``temporarily_unavailable`` are transient;
    ``invalid_grant`` needs the user; other OAuth errors and a 401/403 are
    configuration errors; anything unreadable is a bad response."""
    wait = parse_retry_after(retry_after)
    data = _decode_body(content_type, body)
    if status >= 500 or status in TRANSIENT_STATUSES:
        error = data.get("error") if isinstance(data, dict) else None
        detail = f" ({_clean(error, secrets, _ERROR_CODE_MAX)})" if isinstance(error, str) else ""
        raise TransientTokenError(
            f"the token endpoint at {host} answered HTTP {status}{detail}; will retry later",
            status=status,
            error=error if isinstance(error, str) else None,
            retry_after=wait,
        )
    problem = _provider_error(data, status, host, secrets, wait)
    if problem is not None:
        raise problem
    if status in (401, 403):
        raise OAuthConfigurationError(
            f"the token endpoint at {host} refused the client (HTTP {status}): "
            "check the iClient's client id, secret and client_auth",
            status=status,
        )
    if not 200 <= status < 300:
        raise BadTokenResponseError(
            f"the token endpoint at {host} answered HTTP {status} "
            f"({_describe(content_type)}) without an OAuth error",
            status=status,
        )
    if not isinstance(data, dict):
        raise BadTokenResponseError(
            f"the token endpoint at {host} answered HTTP {status} with "
            f"{_describe(content_type)}, not a JSON token response",
            status=status,
        )
    access = data.get("access_token")
    if not isinstance(access, str) or not access:
        raise BadTokenResponseError(
            f"the token endpoint at {host} answered without an access_token", status=status
        )
    refresh = data.get("refresh_token")
    token_type = data.get("token_type")
    lifetime = _expires_in(data.get("expires_in"))
    current = time.time() if now is None else now
    return TokenSet(
        access_token=access,
        token_type=token_type if isinstance(token_type, str) and token_type else "Bearer",
        refresh_token=refresh if isinstance(refresh, str) and refresh else None,
        expires_at=current + (lifetime if lifetime is not None else default_expires_in),
        scope=_scope(data.get("scope")),
        lifetime_defaulted=lifetime is None,
    )


def _describe(content_type: str) -> str:
    media = content_type.split(";", 1)[0].strip().lower()
    return media[:80] if media else "no content type"


def parse_revoke_response(
    status: int,
    content_type: str,
    body: bytes,
    *,
    host: str,
    retry_after: str | None = None,
    secrets: Sequence[str] = (),
) -> None:
    """RFC 7009 2.2: any 2xx means revoked (also for a token that was already invalid);
    503 and the like are transient; errors are classified as for tokens."""
    if 200 <= status < 300:
        return
    wait = parse_retry_after(retry_after)
    if status >= 500 or status in TRANSIENT_STATUSES:
        raise TransientTokenError(
            f"the revocation endpoint at {host} answered HTTP {status}; will retry later",
            status=status,
            retry_after=wait,
        )
    problem = _provider_error(_decode_body(content_type, body), status, host, secrets, wait)
    if problem is not None:
        raise problem
    raise BadTokenResponseError(
        f"the revocation endpoint at {host} answered HTTP {status}", status=status
    )


# --- I/O ----------------------------------------------------------------------------------


class TokenClient:
    """Token requests over an aiohttp session the caller owns (in the relay: one with
    the SSRF guard for ``mode: cloud`` destinations). Redirects are not followed: a
    307 would replay the client secret to wherever it points."""

    def __init__(
        self, session: aiohttp.ClientSession, config: TokenClientConfig | None = None
    ) -> None:
        self._session = session
        self.config = config or TokenClientConfig()

    async def exchange_code(
        self,
        iclient: IClientIn,
        *,
        code: str,
        redirect_uri: str,
        code_verifier: str | None,
        extra_headers: Iterable[Header | tuple[str, str]] = (),
    ) -> TokenSet:
        """RFC 6749 4.1.3 with the same ``redirect_uri`` as the authorization request,
        plus the PKCE verifier (RFC 7636 4.5)."""
        request = build_token_request(
            iclient,
            "authorization_code",
            {"code": code, "redirect_uri": redirect_uri, "code_verifier": code_verifier},
            extra_headers=extra_headers,
            secrets=(code, code_verifier or ""),
        )
        return await self._token(request)

    async def refresh(
        self,
        iclient: IClientIn,
        previous: TokenSet,
        *,
        scope: str | None = None,
        extra_headers: Iterable[Header | tuple[str, str]] = (),
    ) -> TokenSet:
        """RFC 6749 6. The result keeps ``previous``'s refresh token when the provider
        sends no new one. No refresh token at all -> ``NeedsAuthorizationError``."""
        if not previous.refresh_token:
            raise NeedsAuthorizationError(
                "the access token expired and the provider gave no refresh token: "
                "authorize the connection again"
            )
        request = build_token_request(
            iclient,
            "refresh_token",
            {"refresh_token": previous.refresh_token, "scope": scope},
            extra_headers=extra_headers,
            secrets=(previous.refresh_token, previous.access_token),
        )
        tokens = await self._token(request)
        return tokens.keeping(previous)

    async def client_credentials(
        self,
        iclient: IClientIn,
        *,
        scope: str | None = None,
        extra_headers: Iterable[Header | tuple[str, str]] = (),
    ) -> TokenSet:
        """RFC 6749 4.4: a token for the client itself."""
        request = build_token_request(
            iclient, "client_credentials", {"scope": scope}, extra_headers=extra_headers
        )
        return await self._token(request)

    async def revoke(
        self, iclient: IClientIn, token: str, *, token_type_hint: str | None = None
    ) -> None:
        """RFC 7009: ask the provider to forget ``token`` (a refresh token revokes the
        grant at most providers)."""
        request = build_revoke_request(iclient, token, token_type_hint=token_type_hint)
        status, content_type, retry_after, body = await self._post(request)
        parse_revoke_response(
            status,
            content_type,
            body,
            host=request.host,
            retry_after=retry_after,
            secrets=request.secrets,
        )

    async def _token(self, request: TokenRequest) -> TokenSet:
        status, content_type, retry_after, body = await self._post(request)
        try:
            tokens = parse_token_response(
                status,
                content_type,
                body,
                host=request.host,
                retry_after=retry_after,
                default_expires_in=self.config.default_expires_in_s,
                secrets=request.secrets,
            )
        except TokenError as exc:
            log.warning(
                "oauth_token_request_failed",
                grant_type=request.grant_type,
                host=request.host,
                status=status,
                error=exc.error,
                result=type(exc).__name__,
            )
            raise
        log.info(
            "oauth_token_request_ok",
            grant_type=request.grant_type,
            host=request.host,
            status=status,
            lifetime_defaulted=tokens.lifetime_defaulted,
            new_refresh_token=tokens.refresh_token is not None
            and tokens.refresh_token not in request.secrets,
        )
        return tokens

    async def _post(self, request: TokenRequest) -> tuple[int, str, str | None, bytes]:
        """POST and read the answer (bounded); transport failures become
        ``TransientTokenError`` (or a configuration error for a blocked host)."""
        timeout = aiohttp.ClientTimeout(total=self.config.timeout_s)
        limit = self.config.max_response_bytes
        headers = {"User-Agent": self.config.user_agent, **request.headers}
        try:
            async with self._session.post(
                request.url,
                data=request.body,
                headers=headers,
                timeout=timeout,
                allow_redirects=False,
            ) as resp:
                chunks: list[bytes] = []
                size = 0
                async for chunk in resp.content.iter_chunked(64 * 1024):
                    size += len(chunk)
                    if size > limit:
                        raise BadTokenResponseError(
                            f"the endpoint at {request.host} answered more than {limit} bytes",
                            status=resp.status,
                        )
                    chunks.append(chunk)
                return (
                    resp.status,
                    resp.headers.get("Content-Type", ""),
                    resp.headers.get("Retry-After"),
                    b"".join(chunks),
                )
        except TokenError:
            raise
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            blocked = find_cause(exc, BlockedDestinationError)
            if blocked is not None:
                raise OAuthConfigurationError(
                    f"the endpoint host {request.host} is not an allowed destination"
                ) from None
            what = (
                "did not answer in time"
                if find_cause(exc, TimeoutError) is not None
                else f"could not be reached ({type(exc).__name__})"
            )
            raise TransientTokenError(
                f"the endpoint at {request.host} {what}; will retry later"
            ) from None
