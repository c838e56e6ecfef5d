"""The request pipeline's auth step for ``auth.type: oauth2`` (``relay.routing.auth``):
put a fresh access token on the request, and on an auth error refresh once so the
executor retries once."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from relay.models.connection import ConnectionIn, OAuth2Auth
from relay.oauth.refresh import OAuthTarget, TokenManager
from relay.oauth.tokens import TokenSet, apply_token
from relay.routing.auth import AuthContext, AuthStep, AuthStepFactory, default_auth_step
from relay.routing.outgoing import OutgoingRequest

# Finds a connection's iClient (secret decrypted) for a request; the relay's looks it
# up in the registry and refuses another account's iClient.
ResolveTarget = Callable[[AuthContext, OAuth2Auth], Awaitable[OAuthTarget]]


class OAuth2AuthStep:
    """One request's OAuth step. ``apply`` may run twice (the retry after a refresh)."""

    def __init__(
        self,
        manager: TokenManager,
        resolve: ResolveTarget,
        ctx: AuthContext,
        auth: OAuth2Auth,
    ) -> None:
        self._manager = manager
        self._resolve = resolve
        self._ctx = ctx
        self._auth = auth
        self._target: OAuthTarget | None = None
        self._used_version: int | None = None
        # An unsaved connection (Test connection) stores nothing: its client-credentials
        # token lives as long as this request.
        self._ephemeral: TokenSet | None = None

    async def _get_target(self) -> OAuthTarget:
        if self._target is None:
            self._target = await self._resolve(self._ctx, self._auth)
        return self._target

    async def apply(self, request: OutgoingRequest) -> None:
        target = await self._get_target()
        if target.connection_id is None and self._ephemeral is not None:
            apply_token(request, self._ephemeral, target.iclient)
            return
        stored = await self._manager.access_token(target)
        assert stored.tokens is not None
        apply_token(request, stored.tokens, target.iclient)
        self._used_version = stored.version
        if target.connection_id is None:
            self._ephemeral = stored.tokens

    async def on_auth_error(self) -> bool:
        """Refresh (unless someone already did) and ask for one retry. Refresh failures
        propagate: ``needs_authorization`` says more than ``auth_failed``."""
        if self._used_version is None:
            return False
        target = await self._get_target()
        if target.connection_id is None:
            self._ephemeral = None  # fetched anew by the next apply
            return True
        await self._manager.refresh_after_auth_error(target, self._used_version)
        return True


def oauth_auth_steps(manager: TokenManager, resolve: ResolveTarget) -> AuthStepFactory:
    """An ``AuthStepFactory`` for the executor: OAuth 2.0 steps for ``oauth2``
    connections, ``default_auth_step`` for the rest."""

    def factory(spec: ConnectionIn, ctx: AuthContext) -> AuthStep:
        auth = spec.http.auth
        if auth.type == "oauth2" and auth.oauth2 is not None:
            return OAuth2AuthStep(manager, resolve, ctx, auth.oauth2)
        return default_auth_step(spec, ctx)

    return factory
