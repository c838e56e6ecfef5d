"""Typed keys for what the API's application and requests carry (one module, so the
API modules and the executor's handlers import them without cycles)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from relay.config import RelayConfig
from relay.hub import AgentHub
from relay.registry import AccountInfo, Registry, SecretBox

if TYPE_CHECKING:
    from relay.oauth.service import OAuthService
    from relay.routing.executor import HttpExecutor

HUB = web.AppKey("hub", AgentHub)
REGISTRY = web.AppKey("registry", Registry)
SECRETS = web.AppKey("secrets", SecretBox)
CONFIG = web.AppKey("config", RelayConfig)
EXECUTOR: web.AppKey[HttpExecutor] = web.AppKey("executor")
# OAuth 2.0 (relay.api.oauth.install_oauth); without it the OAuth endpoints answer 503.
OAUTH: web.AppKey[OAuthService] = web.AppKey("oauth")
SSH_READY = web.AppKey("ssh_ready", dict)
# The SSH host key fingerprint agents pin (shown when an agent is created).
HOST_KEY = web.AppKey("host_key", str)

# Per-request values, set by the middlewares in ``relay.api.app``: the request id (also
# sent back as X-Request-Id) and the account of the bearer token (absent on public
# routes). ``web.RequestKey`` needs aiohttp 3.14; plain string keys warn there.
REQUEST_ID = web.RequestKey("request_id", str)
ACCOUNT = web.RequestKey("account", AccountInfo)


def account_of(request: web.Request) -> AccountInfo:
    """The authenticated account (every /v1/ route except the OpenAPI document)."""
    account = request.get(ACCOUNT)
    assert isinstance(account, AccountInfo), "route is not behind the auth middleware"
    return account


def request_id_of(request: web.Request) -> str:
    rid = request.get(REQUEST_ID)
    return rid if isinstance(rid, str) else ""
