"""API fixtures: the real application (registry on SQLite, or PostgreSQL when
``ONPREM_TEST_DATABASE_URL`` is set) served on 127.0.0.1:0, two accounts, and a
client per account; connection tests answered by ``StubExecutor``."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from api_helpers import Env, StubExecutor, running_env

from relay.registry import SecretBox


@pytest.fixture
def secret_box() -> SecretBox:
    return SecretBox(SecretBox.generate_key())


@pytest.fixture
async def env(database_url: str, secret_box: SecretBox) -> AsyncIterator[Env]:
    """The app with ``StubExecutor`` answering connection tests."""
    async with running_env(
        database_url, secret_box, lambda hub, registry: StubExecutor(registry=registry)
    ) as e:
        yield e
