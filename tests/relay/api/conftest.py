"""API fixtures: the real application (registry on SQLite, or PostgreSQL when
``ONPREM_TEST_DATABASE_URL`` is set) served on 127.0.0.1:0, two accounts, and a
client per account; connection tests answered by ``StubExecutor``."""

from __future__ import annotations

import io
import logging
from collections.abc import AsyncIterator, Iterator

import pytest
import structlog
from api_helpers import Env, StubExecutor, running_env

from relay.registry import SecretBox
from shared.logging import configure_logging


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


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    """Every log line (debug and up, JSON) into a buffer; the global setup restored."""
    root = logging.getLogger()
    saved_handlers = list(root.handlers)
    saved_level = root.level
    saved_asyncssh = logging.getLogger("asyncssh").level
    stream = io.StringIO()
    configure_logging("debug", "json", stream)
    try:
        yield stream
    finally:
        for handler in root.handlers[:]:
            if handler not in saved_handlers:
                root.removeHandler(handler)
                handler.close()
        root.setLevel(saved_level)
        logging.getLogger("asyncssh").setLevel(saved_asyncssh)
        structlog.reset_defaults()
        structlog.contextvars.clear_contextvars()
