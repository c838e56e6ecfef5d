"""OAuth 2.0 as one relay process runs it: the pieces of this package wired to the
registry and the configuration (``OAuthService``), for ``relay.server`` and the API.

Token, revocation and webhook URLs are user-supplied, so their requests go through one
aiohttp session with the SSRF guard of ``mode: cloud`` (``cloud.deny_private_networks``):
names are resolved by the guarded resolver, IP literals (which aiohttp never resolves)
are checked before every request.
"""

from __future__ import annotations

import uuid
from types import TracebackType
from typing import Any

import aiohttp

from relay.config import RelayConfig
from relay.errors import NotFoundError
from relay.metrics import RelayMetrics
from relay.models.connection import OAuth2Auth
from relay.oauth.client import TokenClient, TokenClientConfig
from relay.oauth.errors import OAuthConfigurationError
from relay.oauth.flow import AuthorizationFlow
from relay.oauth.refresh import OAuthTarget, RefreshConfig, TokenManager
from relay.oauth.signals import WebhookConfig, WebhookSender
from relay.oauth.sqlstore import SqlStateStore, SqlTokenStore
from relay.oauth.states import ConnectionStates
from relay.oauth.step import oauth_auth_steps
from relay.registry import Registry, StoredIClient
from relay.routing.auth import AuthContext, AuthStepFactory
from relay.routing.ssrf import DestinationGuard

CALLBACK_PATH = "/oauth2/callback"
DEFAULT_CONNECTION_LIMIT = 100
DEFAULT_CLOSE_TIMEOUT_S = 5.0


def guarded_session(
    guard: DestinationGuard | None, *, limit: int = DEFAULT_CONNECTION_LIMIT
) -> aiohttp.ClientSession:
    """A session for user-supplied URLs: no cookies, no proxy from the environment,
    and with ``guard``, no private or loopback destinations."""
    traces = []
    if guard is not None:
        trace = aiohttp.TraceConfig()

        async def check_url(
            _session: aiohttp.ClientSession,
            _ctx: Any,
            params: aiohttp.TraceRequestStartParams,
        ) -> None:
            guard.check_url(params.url)  # raises BlockedDestinationError (an OSError)

        trace.on_request_start.append(check_url)
        traces.append(trace)
    connector = aiohttp.TCPConnector(
        resolver=guard.resolver() if guard is not None else None, limit=limit
    )
    return aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
        trace_configs=traces,
    )


class OAuthService:
    """Everything OAuth in one relay process. Create it inside the event loop and
    ``aclose()`` it (or ``async with``) before closing the registry.

    ``guard``: the SSRF guard for token, revocation and webhook requests; by default
    ``DestinationGuard()`` when ``cloud.deny_private_networks``, none otherwise.
    ``owner``: this process's name in refresh leases (default: node id + random)."""

    def __init__(
        self,
        registry: Registry,
        *,
        config: RelayConfig,
        metrics: RelayMetrics | None = None,
        guard: DestinationGuard | None = None,
        owner: str | None = None,
    ) -> None:
        settings = config.oauth
        deny = config.cloud.deny_private_networks
        self.config = config
        self.registry = registry
        self.guard = (guard or DestinationGuard()) if deny else None
        self.http = guarded_session(self.guard)
        self.token_client = TokenClient(
            self.http,
            TokenClientConfig(
                timeout_s=settings.token_timeout_s,
                default_expires_in_s=settings.default_expires_in_s,
            ),
        )
        self.webhooks = WebhookSender(
            self.http,
            WebhookConfig(timeout_s=settings.webhook_timeout_s, attempts=settings.webhook_attempts),
        )
        self.states = ConnectionStates(registry, metrics=metrics, webhooks=self.webhooks)
        self.token_store = SqlTokenStore(registry)
        self.state_store = SqlStateStore(registry, ttl_s=settings.state_ttl_s)
        self.manager = TokenManager(
            self.token_store,
            self.token_client,
            owner=owner or f"{config.node_id[:200]}-{uuid.uuid4().hex[:8]}",
            config=RefreshConfig(
                leeway_s=settings.refresh_leeway_s,
                lease_s=settings.lease_s,
                wait_s=settings.refresh_wait_s,
            ),
            listener=self.states.on_token_event,
            metrics=metrics,
        )
        self.flow = AuthorizationFlow(self.state_store, self.token_client)

    @property
    def callback_url(self) -> str:
        """The redirect URI: the same in every authorization and token request, and
        the one to register at the provider."""
        return self.config.http.public_url.rstrip("/") + CALLBACK_PATH

    async def iclient(self, account_id: str, iclient_id: str) -> StoredIClient:
        """The account's own iClient (secret in clear); ``NotFoundError`` otherwise."""
        return await self.registry.get_iclient(iclient_id, account_id)

    async def target(
        self, account_id: str, connection_id: str | None, auth: OAuth2Auth
    ) -> OAuthTarget:
        """What the ``TokenManager`` needs for one connection."""
        try:
            stored = await self.iclient(account_id, auth.iclient_id)
        except NotFoundError:
            raise OAuthConfigurationError(
                f"the connection's iClient {auth.iclient_id} no longer exists"
            ) from None
        return OAuthTarget(connection_id, stored.spec, auth)

    async def resolve_target(self, ctx: AuthContext, auth: OAuth2Auth) -> OAuthTarget:
        return await self.target(ctx.account_id, ctx.connection_id, auth)

    def auth_steps(self) -> AuthStepFactory:
        """The executor's ``auth_steps``: OAuth 2.0 for ``oauth2`` connections."""
        return oauth_auth_steps(self.manager, self.resolve_target)

    async def aclose(self, timeout: float = DEFAULT_CLOSE_TIMEOUT_S) -> None:
        """Wait (bounded) for webhook deliveries in flight, stop listening, close."""
        try:
            await self.webhooks.aclose(timeout)
            await self.token_store.aclose()
        finally:
            await self.http.close()

    async def __aenter__(self) -> OAuthService:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
