"""OAuth fixtures: the authlib-based authorization server in a thread, an aiohttp
session, a token client, and iClients pointing at the server."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiohttp
import pytest
from oauth_authlib_server import AuthServer

from relay.models.iclient import IClientIn
from relay.oauth.client import TokenClient

CLIENT_ID = "relay-client"
CLIENT_SECRET = "relay-secret-value"
REDIRECT_URI = "http://127.0.0.1:9/oauth2/callback"  # never contacted: the code is read from it


@pytest.fixture
def auth_server() -> Iterator[AuthServer]:
    server = AuthServer()
    server.add_client(CLIENT_ID, CLIENT_SECRET, [REDIRECT_URI])
    with server.running():
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def token_client(http: aiohttp.ClientSession) -> TokenClient:
    return TokenClient(http)


@pytest.fixture
def make_iclient(auth_server: AuthServer) -> Callable[..., IClientIn]:
    def make(**overrides: Any) -> IClientIn:
        doc: dict[str, Any] = {
            "name": "test server",
            "grant_type": "authorization_code",
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "authorization_url": f"{auth_server.base_url}/authorize",
            "token_url": f"{auth_server.base_url}/token",
            "revoke_url": f"{auth_server.base_url}/revoke",
            "client_auth": "basic",
            "valid_domains": ["127.0.0.1"],
        }
        doc.update(overrides)
        return IClientIn.model_validate(doc)

    return make


@pytest.fixture
def log_capture(log_stream: io.StringIO) -> io.StringIO:
    """Every log line (debug and up, JSON) into a buffer (tests/conftest.py)."""
    return log_stream
