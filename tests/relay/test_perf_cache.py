"""The registry's read cache (API token -> account, connection by id): a change made in
this process is seen at once, whoever makes it and however; one made by another
process within ``READ_CACHE_TTL_S``; failures are never cached; concurrent misses
share one read."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from relay.errors import NotFoundError
from relay.models.connection import ConnectionIn
from relay.registry import Registry, SecretBox
from relay.registry import store as store_module
from relay.registry.models import accounts
from relay.registry.tokens import hash_token


@pytest.fixture
async def reg(database_url: str) -> AsyncIterator[Registry]:
    r = await Registry.open(database_url, secrets=SecretBox(SecretBox.generate_key()))
    await r.upgrade()
    yield r
    await r.close()


def spec(name: str = "c", base_uri: str = "https://api.example.com") -> ConnectionIn:
    return ConnectionIn.model_validate({"name": name, "http": {"base_uri": base_uri}})


def count_selects(r: Registry) -> list[str]:
    """Every SELECT the registry's engine runs from now on."""
    seen: list[str] = []

    def on_statement(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            seen.append(statement)

    sa.event.listen(r._engine.sync_engine, "before_cursor_execute", on_statement)
    return seen


async def test_api_token_is_answered_from_memory(reg: Registry) -> None:
    account, token = await reg.create_account("acme")
    assert await reg.authenticate_api_token(token) == account
    selects = count_selects(reg)
    for _ in range(5):
        assert await reg.authenticate_api_token(token) == account
    assert selects == []


async def test_a_changed_api_token_stops_working_at_once(reg: Registry) -> None:
    """Rotation and deletion write through the registry: the next check fails."""
    account, token = await reg.create_account("acme")
    assert await reg.authenticate_api_token(token) == account
    async with reg._write() as conn:  # what a token rotation does
        await conn.execute(
            accounts.update()
            .where(accounts.c.id == account.id)
            .values(api_token_hash=hash_token("oak_new"))
        )
    assert await reg.authenticate_api_token(token) is None
    assert await reg.authenticate_api_token("oak_new") == account
    async with reg._write() as conn:  # what a deletion does
        await conn.execute(accounts.delete().where(accounts.c.id == account.id))
    assert await reg.authenticate_api_token("oak_new") is None


async def test_a_write_outside_the_registry_methods_also_counts(reg: Registry) -> None:
    account, token = await reg.create_account("acme")
    assert await reg.authenticate_api_token(token) == account
    async with reg._engine.begin() as conn:  # not through Registry._write
        await conn.execute(accounts.delete().where(accounts.c.id == account.id))
    assert await reg.authenticate_api_token(token) is None


async def test_a_write_by_another_registry_object_counts(reg: Registry, tmp_path: Path) -> None:
    if reg.sqlite_path is None:
        pytest.skip("needs a database file two engines can share")
    account, token = await reg.create_account("acme")
    other = await Registry.open(f"sqlite+aiosqlite:///{reg.sqlite_path}")
    try:
        assert await reg.authenticate_api_token(token) == account
        async with other._write() as conn:
            await conn.execute(accounts.delete().where(accounts.c.id == account.id))
        assert await reg.authenticate_api_token(token) is None
    finally:
        await other.close()


async def test_another_process_is_seen_within_the_ttl(
    reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    if reg.sqlite_path is None:
        pytest.skip("needs a database file a plain sqlite3 connection can open")
    reg._cache.ttl = 0.2
    account, token = await reg.create_account("acme")
    assert await reg.authenticate_api_token(token) == account
    # Another process: no SQLAlchemy, no event, nothing this process can notice.
    db = sqlite3.connect(reg.sqlite_path)
    try:
        db.execute("DELETE FROM accounts WHERE id = ?", (account.id,))
        db.commit()
    finally:
        db.close()
    assert await reg.authenticate_api_token(token) == account  # still cached
    await asyncio.sleep(0.25)
    assert await reg.authenticate_api_token(token) is None
    assert store_module.READ_CACHE_TTL_S <= 1.0  # what the README promises


async def test_failures_are_never_cached(reg: Registry) -> None:
    selects = count_selects(reg)
    for _ in range(3):
        assert await reg.authenticate_api_token("oak_nope") is None
    assert len(selects) == 3


async def test_connection_changes_are_seen_at_once(reg: Registry) -> None:
    account, _ = await reg.create_account("acme")
    made = await reg.create_connection(
        account.id, spec(), state="offline", state_reason="new", tested_at=None, actor="t"
    )
    first = await reg.get_connection(made.id, account.id)
    assert first.spec == spec()
    assert await reg.get_connection(made.id, account.id) is first  # from memory

    await reg.update_connection(
        made.id, account.id, spec(base_uri="https://b.example.com"), actor="t"
    )
    changed = await reg.get_connection(made.id, account.id)
    assert changed.spec.http.base_uri == "https://b.example.com"
    assert changed.version == first.version + 1

    await reg.set_connection_state(made.id, "online", None)
    assert (await reg.get_connection(made.id, account.id)).state == "online"

    await reg.delete_connection(made.id, account.id, actor="t")
    with pytest.raises(NotFoundError):
        await reg.get_connection(made.id, account.id)


async def test_connection_cache_keeps_accounts_apart(reg: Registry) -> None:
    account, _ = await reg.create_account("acme")
    other, _ = await reg.create_account("globex")
    made = await reg.create_connection(
        account.id, spec(), state="offline", state_reason="new", tested_at=None, actor="t"
    )
    assert (await reg.get_connection(made.id, account.id)).id == made.id
    with pytest.raises(NotFoundError):
        await reg.get_connection(made.id, other.id)


async def test_concurrent_misses_share_one_read(reg: Registry) -> None:
    account, token = await reg.create_account("acme")
    selects = count_selects(reg)
    results = await asyncio.gather(*(reg.authenticate_api_token(token) for _ in range(20)))
    assert results == [account] * 20
    assert len(selects) == 1


def test_nothing_is_kept_from_a_read_that_raced_a_write() -> None:
    cache = store_module._ReadCache(ttl=10)
    Freshness = store_module._Freshness
    generation = Freshness.generation
    Freshness.bump()  # a write happened while reading
    cache.put("k", "stale", generation)
    assert cache.get("k") is None
    Freshness.writing += 1  # a write transaction is open
    try:
        cache.put("k", "maybe stale", Freshness.generation)
        assert cache.get("k") is None
    finally:
        Freshness.writing -= 1
    cache.put("k", "fresh", Freshness.generation)
    assert cache.get("k") == "fresh"
    Freshness.bump()
    assert cache.get("k") is None


def test_the_cache_is_bounded() -> None:
    cache = store_module._ReadCache(ttl=10, max_entries=3)
    for i in range(10):
        cache.put(i, str(i), store_module._Freshness.generation)
    assert len(cache._entries) == 3
    assert cache.get(9) == "9"
