"""What can go wrong with OAuth 2.0, as exceptions the API and the pipeline can act on.

OAuthError (RelayError)
 +-- CallbackError (ValueError)              the redirect back from the provider is bad
 |    +-- InvalidStateError                  unknown, reused, expired or foreign state
 |    +-- AuthorizationDeniedError           the provider sent ``error=`` (user said no)
 +-- TokenError (UpstreamError)              getting or using a token failed
 |    +-- NeedsAuthorizationError            no usable grant: the user must authorize again
 |    +-- OAuthConfigurationError            the iClient is wrong (``invalid_client``, ...)
 |    +-- TransientTokenError (ConnectionError)  5xx, network, timeout: retry later
 |    +-- BadTokenResponseError              the provider answered garbage
 +-- TokenDomainError (UpstreamError, PermissionError)
                                             the token would go to a host not in
                                             the iClient's ``valid_domains``

``TokenError`` and ``TokenDomainError`` are ``UpstreamError``s with a design error
code, so the request pipeline reports them as they are. ``connection_state`` says
what the connection becomes (None: unchanged). Messages never carry a token, code,
secret or verifier: they are built from fixed text, host names and the provider's
(cleaned) error fields only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from relay.errors import RelayError, UpstreamError

if TYPE_CHECKING:
    from relay.oauth.flow import PendingAuthorization


class OAuthError(RelayError):
    """Root of the OAuth errors."""


class CallbackError(OAuthError, ValueError):
    """The callback cannot be accepted (HTTP 400, nothing stored)."""

    code: ClassVar[str] = "invalid_callback"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidStateError(CallbackError):
    code: ClassVar[str] = "invalid_state"


class AuthorizationDeniedError(CallbackError):
    """The provider redirected back with ``error`` (``access_denied``, ...). ``state``
    is the callback's, unchecked (so the pending entry can be burnt)."""

    code: ClassVar[str] = "authorization_denied"

    def __init__(
        self, message: str, *, error: str, description: str | None, state: str | None = None
    ) -> None:
        super().__init__(message)
        self.error = error
        self.description = description
        self.state = state
        # The pending authorization the state belonged to (set once the flow burnt it),
        # so the callback can still send the browser back to its return URL.
        self.pending: PendingAuthorization | None = None


class TokenError(OAuthError, UpstreamError):
    """A token could not be obtained. ``error`` is the provider's OAuth error code
    when it sent one."""

    code = "auth_failed"
    connection_state: ClassVar[str | None] = None

    def __init__(self, message: str, *, status: int | None = None, error: str | None = None):
        super().__init__(self.code, message, status=status)
        self.error = error


class NeedsAuthorizationError(TokenError):
    """``invalid_grant`` (refresh token revoked or expired), or there never were tokens:
    only the user can fix it, by authorizing again. Never retried automatically."""

    code = "needs_authorization"
    connection_state: ClassVar[str | None] = "needs_authorization"


class OAuthConfigurationError(TokenError):
    """``invalid_client``, ``unauthorized_client`` and other answers that mean the
    iClient's settings are wrong: retrying changes nothing."""

    code = "auth_failed"
    connection_state: ClassVar[str | None] = "offline"


class TransientTokenError(TokenError, ConnectionError):
    """The token endpoint was unreachable, slow or answered 5xx/429. ``retry_after``:
    seconds before the next attempt is worth making (from ``Retry-After`` or the
    backoff)."""

    code = "auth_failed"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        error: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status=status, error=error)
        self.retry_after = retry_after


class BadTokenResponseError(TokenError):
    """The token endpoint answered something that is not a token response (HTML error
    page, non-JSON, no ``access_token``): the peer misbehaved."""

    code = "auth_failed"
    connection_state: ClassVar[str | None] = "offline"


class TokenDomainError(OAuthError, UpstreamError, PermissionError):
    """The request goes to a host outside the iClient's ``valid_domains``: refused, and
    the token was not sent (design code ``blocked_destination``: HTTP 403)."""

    code = "blocked_destination"

    def __init__(self, message: str) -> None:
        super().__init__(self.code, message)
