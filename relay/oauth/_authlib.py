"""Typed wrappers of the authlib primitives this package uses (authlib ships no type
information), so the untyped surface stays in one place."""

from __future__ import annotations

from authlib.common.security import generate_token as _generate_token  # type: ignore[import-untyped,unused-ignore]
from authlib.oauth2.rfc6749.errors import OAuth2Error  # type: ignore[import-untyped,unused-ignore]
from authlib.oauth2.rfc6749.parameters import (  # type: ignore[import-untyped,unused-ignore]
    parse_authorization_code_response as _parse_authorization_code_response,
)
from authlib.oauth2.rfc6749.parameters import (
    prepare_grant_uri as _prepare_grant_uri,
)
from authlib.oauth2.rfc6749.parameters import (
    prepare_token_request as _prepare_token_request,
)
from authlib.oauth2.rfc7009 import (  # type: ignore[import-untyped,unused-ignore]
    prepare_revoke_token_request as _prepare_revoke_token_request,
)
from authlib.oauth2.rfc7636 import (  # type: ignore[import-untyped,unused-ignore]
    create_s256_code_challenge as _create_s256_code_challenge,
)

# The parsers raise subclasses of ``OAuth2Error`` (MissingCodeException, ...).
__all__ = [
    "OAuth2Error",
    "create_s256_code_challenge",
    "generate_token",
    "parse_authorization_code_response",
    "prepare_grant_uri",
    "prepare_revoke_token_request",
    "prepare_token_request",
]


def generate_token(length: int) -> str:
    """``length`` characters from [A-Za-z0-9], from ``random.SystemRandom``."""
    return str(_generate_token(length))


def create_s256_code_challenge(verifier: str) -> str:
    """BASE64URL(SHA256(verifier)) without padding (RFC 7636 4.2)."""
    return str(_create_s256_code_challenge(verifier))


def prepare_grant_uri(
    uri: str,
    client_id: str,
    response_type: str,
    *,
    redirect_uri: str,
    scope: str | None,
    state: str,
    **extra: str,
) -> str:
    return str(
        _prepare_grant_uri(
            uri,
            client_id,
            response_type,
            redirect_uri=redirect_uri,
            scope=scope,
            state=state,
            **extra,
        )
    )


def prepare_token_request(
    grant_type: str, *, redirect_uri: str | None = None, **params: str
) -> str:
    """The form-encoded token request body; empty or None parameters are left out."""
    return str(_prepare_token_request(grant_type, body="", redirect_uri=redirect_uri, **params))


def parse_authorization_code_response(uri: str) -> dict[str, str]:
    """The callback URL's query parameters (raises ``MissingCodeException`` without a
    ``code``). The state is checked by our state store, not here."""
    params = _parse_authorization_code_response(uri, state=None)
    return {str(k): str(v) for k, v in params.items()}


def prepare_revoke_token_request(
    token: str, token_type_hint: str | None
) -> tuple[str, dict[str, str]]:
    body, headers = _prepare_revoke_token_request(token, token_type_hint)
    return str(body), {str(k): str(v) for k, v in headers.items()}
