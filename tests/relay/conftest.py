"""Relay fixtures: a migrated registry on SQLite and, when ``ONPREM_TEST_DATABASE_URL``
is set, on PostgreSQL too (a fresh database per test session, a fresh schema per test,
so parallel or repeated runs never see each other's rows)."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from relay.registry import Registry

PG_ENV = "ONPREM_TEST_DATABASE_URL"


async def _pg_execute(url: str, *statements: str) -> None:
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            for statement in statements:
                await conn.execute(text(statement))
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def pg_database_url() -> Iterator[str]:
    """A PostgreSQL database of its own for this test session (dropped afterwards)."""
    base = os.environ.get(PG_ENV)
    if not base:
        pytest.skip(f"PostgreSQL tests need env {PG_ENV}")
    name = f"onprem_test_{secrets.token_hex(6)}"
    asyncio.run(_pg_execute(base, f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(base).set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(_pg_execute(base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def pg_url(pg_database_url: str) -> str:
    """The session's PostgreSQL database, emptied for this test."""
    asyncio.run(_pg_execute(pg_database_url, "DROP SCHEMA public CASCADE", "CREATE SCHEMA public"))
    return pg_database_url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database: a SQLite file in tmp_path, or a wiped PostgreSQL schema."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'relay.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
async def registry(database_url: str) -> AsyncIterator[Registry]:
    """A migrated, empty registry."""
    reg = await Registry.open(database_url)
    await reg.upgrade()
    try:
        yield reg
    finally:
        await reg.close()
