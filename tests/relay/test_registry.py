"""The registry against real databases: SQLite always, PostgreSQL when configured."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import stat
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.engine import Connection

from relay.errors import ConflictError, NotFoundError
from relay.registry import (
    AccountInfo,
    AgentInfo,
    Registry,
    SchemaError,
    SecretBox,
    SecretDecryptError,
    SessionInfo,
)
from relay.registry.migrate import head_revision
from relay.registry.models import metadata
from shared.config import ConfigError

LONG_AGO = datetime(2020, 1, 1, tzinfo=UTC)


def session(agent_id: str, sid: str, node: str = "node-a", at: datetime = LONG_AGO) -> SessionInfo:
    return SessionInfo(
        id=sid,
        agent_id=agent_id,
        node_id=node,
        remote_addr="203.0.113.7:50000",
        client_version="SSH-2.0-onprem-agent_1.2.3",
        hostname="gw-1.corp",
        connected_at=at,
        last_seen=at,
    )


@pytest.fixture
async def account(registry: Registry) -> AccountInfo:
    acc, _ = await registry.create_account("acme")
    return acc


# -- accounts and agents ---------------------------------------------------------


async def test_create_get_list_agents(registry: Registry, account: AccountInfo) -> None:
    a1, t1 = await registry.create_agent(account.id, "gw-1", "first gateway")
    a2, t2 = await registry.create_agent(account.id, "gw-2")
    assert re.fullmatch(r"agt_[a-z0-9]{20}", a1.id)
    assert t1.startswith("oat_") and len(t1) >= 4 + 43 and t1 != t2
    assert a1.status == "offline" and a1.sessions == [] and a1.last_seen is None

    got = await registry.get_agent(a1.id)
    assert (got.id, got.account_id, got.name, got.description) == (
        a1.id,
        account.id,
        "gw-1",
        "first gateway",
    )
    assert got.created_at == a1.created_at and got.created_at.tzinfo is not None
    assert [a.id for a in await registry.list_agents()] == [a1.id, a2.id]
    assert [a.id for a in await registry.list_agents(account.id)] == [a1.id, a2.id]

    doc = got.to_json()
    assert doc["status"] == "offline" and doc["last_seen"] is None
    assert datetime.fromisoformat(doc["created_at"]) == a1.created_at
    json.dumps(doc)


async def test_accounts(registry: Registry) -> None:
    acc, token = await registry.create_account("acme")
    assert re.fullmatch(r"acc_[a-z0-9]{20}", acc.id)
    assert token.startswith("oak_") and len(token) >= 4 + 43
    assert await registry.get_account_by_name("acme") == acc
    assert await registry.get_account(acc.id) == acc
    assert await registry.list_accounts() == [acc]
    with pytest.raises(NotFoundError):
        await registry.get_account_by_name("nope")
    with pytest.raises(ConflictError):
        await registry.create_account("acme")

    assert await registry.authenticate_api_token(token) == acc
    assert await registry.authenticate_api_token(token + "x") is None
    assert await registry.authenticate_api_token("oak_" + "A" * 43) is None
    assert await registry.authenticate_api_token("") is None


async def test_name_rules(registry: Registry, account: AccountInfo) -> None:
    await registry.create_agent(account.id, "gw")
    with pytest.raises(ConflictError):
        await registry.create_agent(account.id, "gw")
    other, _ = await registry.create_account("other")
    await registry.create_agent(other.id, "gw")  # names are unique per account only
    with pytest.raises(NotFoundError):
        await registry.create_agent("acc_doesnotexist000000", "gw")
    for bad in ["", "   ", "a\nb", "x" * 101]:
        with pytest.raises(ValueError):
            await registry.create_agent(account.id, bad)
    with pytest.raises(ValueError):
        await registry.create_account("bad\x00name")
    with pytest.raises(ValueError):
        await registry.create_agent(account.id, "gw-d", "x" * 1001)
    multiline, _ = await registry.create_agent(account.id, "gw-m", "line 1\nline 2\tend")
    assert (await registry.get_agent(multiline.id)).description == "line 1\nline 2\tend"
    # Nothing half-written by the failures above.
    assert len(await registry.list_agents()) == 3
    assert [e.action for e in await registry.list_audit()].count("agent.created") == 3


# -- tokens ----------------------------------------------------------------------


async def test_agent_token_verification(registry: Registry, account: AccountInfo) -> None:
    agent, token = await registry.create_agent(account.id, "gw")
    other, other_token = await registry.create_agent(account.id, "gw-2")

    expected = hashlib.sha256(token.encode()).hexdigest()
    assert await registry.verify_agent_token(agent.id, token) == expected
    assert await registry.verify_agent_token(agent.id, token[:-1]) is None
    assert await registry.verify_agent_token(agent.id, other_token) is None
    assert await registry.verify_agent_token("agt_unknown0000000000000", token) is None
    assert await registry.verify_agent_token(agent.id, "") is None

    new = await registry.rotate_agent_token(agent.id)
    assert new != token and new.startswith("oat_")
    assert await registry.verify_agent_token(agent.id, token) is None
    new_hash = await registry.verify_agent_token(agent.id, new)
    assert new_hash == hashlib.sha256(new.encode()).hexdigest()
    assert (await registry.get_agent(agent.id)).updated_at != agent.updated_at

    hashes = await registry.agent_token_hashes([agent.id, other.id, "agt_gone"])
    assert hashes == {
        agent.id: new_hash,
        other.id: hashlib.sha256(other_token.encode()).hexdigest(),
    }
    assert await registry.agent_token_hashes([]) == {}

    await registry.delete_agent(agent.id)
    assert await registry.verify_agent_token(agent.id, new) is None
    assert await registry.agent_token_hashes([agent.id]) == {}
    with pytest.raises(NotFoundError):
        await registry.get_agent(agent.id)
    with pytest.raises(NotFoundError):
        await registry.rotate_agent_token(agent.id)
    with pytest.raises(NotFoundError):
        await registry.delete_agent(agent.id)


async def test_agent_token_hashes_many(registry: Registry, account: AccountInfo) -> None:
    agent, _ = await registry.create_agent(account.id, "gw")
    ids = [f"agt_missing{i:013d}" for i in range(1200)] + [agent.id]  # > one IN chunk
    assert list(await registry.agent_token_hashes(ids)) == [agent.id]


async def test_account_isolation(registry: Registry, account: AccountInfo) -> None:
    mine, token = await registry.create_agent(account.id, "gw")
    other, _ = await registry.create_account("other")
    theirs, _ = await registry.create_agent(other.id, "gw")

    assert (await registry.get_agent(mine.id, account.id)).id == mine.id
    with pytest.raises(NotFoundError):
        await registry.get_agent(mine.id, other.id)
    with pytest.raises(NotFoundError):
        await registry.rotate_agent_token(mine.id, other.id)
    with pytest.raises(NotFoundError):
        await registry.delete_agent(mine.id, other.id)
    assert [a.id for a in await registry.list_agents(other.id)] == [theirs.id]
    # The failed attempts changed nothing.
    assert await registry.verify_agent_token(mine.id, token) is not None


# -- sessions and presence -------------------------------------------------------


async def test_sessions_presence(registry: Registry, account: AccountInfo) -> None:
    agent, _ = await registry.create_agent(account.id, "gw")
    other, _ = await registry.create_agent(account.id, "gw-2")

    s1 = session(agent.id, "ses_1", node="node-a")
    s2 = session(agent.id, "ses_2", node="node-b")
    await registry.session_opened(s1)
    await registry.session_opened(s2)
    await registry.session_opened(session(other.id, "ses_3", node="node-a"))

    got = await registry.get_agent(agent.id)
    assert got.status == "online"
    assert got.sessions == [s1, s2]
    assert got.version == "SSH-2.0-onprem-agent_1.2.3"
    assert got.last_seen == LONG_AGO
    assert got.to_json()["sessions"][0]["remote_addr"] == "203.0.113.7:50000"
    with pytest.raises(ConflictError):
        await registry.session_opened(s1)
    with pytest.raises(NotFoundError):
        await registry.session_opened(session("agt_unknown0000000000000", "ses_x"))

    # A heartbeat from node-a refreshes node-a's session of the agent, not node-b's.
    before = datetime.now(UTC)
    await registry.heartbeat("node-a", ["ses_1", "ses_2", "ses_unknown"])
    got = await registry.get_agent(agent.id)
    seen = {s.id: s.last_seen for s in got.sessions}
    assert seen["ses_1"] >= before and seen["ses_2"] == LONG_AGO
    assert got.last_seen is not None and got.last_seen >= before
    await registry.heartbeat("node-a", [])

    await registry.session_closed("ses_1")
    await registry.session_closed("ses_1")  # idempotent
    got = await registry.get_agent(agent.id)
    assert [s.id for s in got.sessions] == ["ses_2"]

    await registry.clear_node_sessions("node-b")
    assert (await registry.get_agent(agent.id)).status == "offline"
    assert (await registry.get_agent(other.id)).status == "online"  # node-a's, kept
    await registry.clear_node_sessions("node-a")
    assert all(a.status == "offline" for a in await registry.list_agents())


async def test_deleting_agent_drops_its_sessions(registry: Registry, account: AccountInfo) -> None:
    agent, _ = await registry.create_agent(account.id, "gw")
    await registry.session_opened(session(agent.id, "ses_1"))
    await registry.delete_agent(agent.id)
    agent2, _ = await registry.create_agent(account.id, "gw")
    await registry.session_opened(session(agent2.id, "ses_1"))  # the id is free again
    assert [a.status for a in await registry.list_agents()] == ["online"]


async def test_stale_sessions_are_ignored(
    database_url: str, registry: Registry, account: AccountInfo
) -> None:
    agent, _ = await registry.create_agent(account.id, "gw")
    await registry.session_opened(session(agent.id, "ses_old", at=LONG_AGO))
    fresh = datetime.now(UTC)
    agent2, _ = await registry.create_agent(account.id, "gw-2")
    await registry.session_opened(session(agent2.id, "ses_new", at=fresh))

    strict = await Registry.open(database_url, stale_session_after_s=60)
    try:
        assert {a.name: a.status for a in await strict.list_agents()} == {
            "gw": "offline",
            "gw-2": "online",
        }
        assert (await strict.get_agent(agent.id)).sessions == []
    finally:
        await strict.close()
    assert (await registry.get_agent(agent.id)).status == "online"


async def test_session_strings_are_clipped(registry: Registry, account: AccountInfo) -> None:
    agent, _ = await registry.create_agent(account.id, "gw")
    long = replace(
        session(agent.id, "ses_1"), client_version="SSH-2.0-" + "v" * 1000, hostname="h" * 999
    )
    await registry.session_opened(long)
    got = await registry.get_agent(agent.id)
    assert len(got.sessions[0].client_version) == 255 and got.version is not None
    assert len(got.version) == 255


# -- audit and secrecy -----------------------------------------------------------


async def test_audit_trail_never_holds_tokens(registry: Registry) -> None:
    acc, api_token = await registry.create_account("acme")
    agent, token = await registry.create_agent(acc.id, "gw", actor="admin@example")
    new = await registry.rotate_agent_token(agent.id, acc.id, actor=f"api:{acc.id}")
    await registry.delete_agent(agent.id)
    await registry.record_audit(
        acc.id,
        "api",
        "connection.created",
        "con_1",
        {
            "name": "x",
            "client_secret": "s3cret",
            "nested": {"Authorization": "Bearer x", "token_url": "https://idp/token"},
            "private_key": "-----BEGIN",
            "note": "oat_pasted-by-mistake",
        },
    )

    events = await registry.list_audit()
    assert [e.action for e in reversed(events)] == [
        "account.created",
        "agent.created",
        "agent.token_rotated",
        "agent.deleted",
        "connection.created",
    ]
    created = events[3]
    assert (created.account_id, created.actor, created.target_id) == (
        acc.id,
        "admin@example",
        agent.id,
    )
    assert created.details == {"name": "gw"}
    assert events[0].details["client_secret"] == "********"
    assert events[0].details["nested"] == {
        "Authorization": "********",
        "token_url": "https://idp/token",
    }
    assert events[0].details["private_key"] == "********"
    assert events[0].details["note"] == "********"
    assert events[2].actor == f"api:{acc.id}"
    dumped = json.dumps([e.to_json() for e in events])
    for secret in (api_token, token, new, "s3cret", "Bearer x"):
        assert secret not in dumped
    assert [e.id for e in await registry.list_audit(acc.id, limit=2)] == [
        events[0].id,
        events[1].id,
    ]


def _sqlite_bytes(folder: Path) -> bytes:
    """The database file and its WAL, as stored on disk."""
    return b"".join(p.read_bytes() for p in sorted(folder.glob("relay.db*")))


async def test_database_holds_hashes_not_tokens(tmp_path: Path) -> None:
    reg = await Registry.open(f"sqlite+aiosqlite:///{tmp_path / 'relay.db'}")
    await reg.upgrade()
    acc, api_token = await reg.create_account("acme")
    agent, token = await reg.create_agent(acc.id, "gw")
    rotated = await reg.rotate_agent_token(agent.id)
    await reg.close()

    raw = _sqlite_bytes(tmp_path)
    for secret in (api_token, token, rotated):
        assert secret.encode() not in raw
        assert secret[4:].encode() not in raw
    assert hashlib.sha256(rotated.encode()).hexdigest().encode() in raw
    assert hashlib.sha256(api_token.encode()).hexdigest().encode() in raw


# -- schema and engine -----------------------------------------------------------


async def test_schema_check_and_idempotent_upgrade(database_url: str) -> None:
    reg = await Registry.open(database_url)
    try:
        await reg.ping()
        assert await reg.schema_revision() is None
        with pytest.raises(SchemaError, match="db upgrade"):
            await reg.check_schema()
        await reg.upgrade()
        await reg.upgrade()
        await reg.check_schema()
        assert await reg.schema_revision() == head_revision()
    finally:
        await reg.close()


async def test_migrations_match_models(registry: Registry) -> None:
    def diff(conn: Connection) -> list[object]:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(ctx, metadata))

    async with registry._engine.connect() as conn:
        assert await conn.run_sync(diff) == []


async def test_concurrent_upgrades(database_url: str) -> None:
    regs = [await Registry.open(database_url) for _ in range(3)]
    try:
        await asyncio.gather(*(r.upgrade() for r in regs))
        await regs[0].check_schema()
    finally:
        for r in regs:
            await r.close()


@pytest.fixture
async def two_sqlite_registries(tmp_path: Path) -> AsyncIterator[tuple[Registry, Registry]]:
    url = "sqlite+aiosqlite:///shared.db"
    a = await Registry.open(url, base_dir=str(tmp_path))
    b = await Registry.open(url, base_dir=str(tmp_path))
    await a.upgrade()
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


async def test_sqlite_shared_by_two_engines(
    tmp_path: Path, two_sqlite_registries: tuple[Registry, Registry]
) -> None:
    a, b = two_sqlite_registries
    assert a.sqlite_path == tmp_path / "shared.db"  # relative to base_dir
    acc, _ = await a.create_account("acme")
    created = await asyncio.gather(
        *(reg.create_agent(acc.id, f"gw-{i}") for i, reg in enumerate([a, b] * 10))
    )
    sessions = [session(agent.id, f"ses_{i}") for i, (agent, _) in enumerate(created)]
    await asyncio.gather(*(b.session_opened(s) for s in sessions))
    await asyncio.gather(
        *(reg.heartbeat("node-a", [s.id for s in sessions]) for reg in [a, b] * 5),
        *(a.rotate_agent_token(agent.id) for agent, _ in created[:5]),
    )
    assert len(await b.list_agents()) == 20
    assert all(x.status == "online" for x in await a.list_agents())
    async with a._engine.connect() as conn:
        mode = (await conn.execute(text("PRAGMA journal_mode"))).scalar()
        busy = (await conn.execute(text("PRAGMA busy_timeout"))).scalar()
        fks = (await conn.execute(text("PRAGMA foreign_keys"))).scalar()
    assert (mode, fks) == ("wal", 1) and busy is not None and busy >= 1000


@pytest.mark.parametrize(
    "url",
    ["mysql://u@h/db", "not a url", "oracle+cx_oracle://x"],
)
async def test_bad_database_url(url: str) -> None:
    with pytest.raises(ConfigError, match="database_url"):
        await Registry.open(url)


async def test_sync_driver_names_are_upgraded(tmp_path: Path) -> None:
    reg = await Registry.open("sqlite:///r.db", base_dir=str(tmp_path))
    try:
        assert reg.url.startswith("sqlite+aiosqlite:///") and reg.url.endswith("/r.db")
        await reg.upgrade()
    finally:
        await reg.close()
    assert (tmp_path / "r.db").exists()


def test_agent_info_status() -> None:
    now = datetime.now(UTC)
    info = AgentInfo("agt_x", "acc_x", "n", "", now, None, None, [])
    assert info.status == "offline"
    online = replace(info, sessions=[session("agt_x", "s", at=now - timedelta(seconds=1))])
    assert online.status == "online"
    assert online.to_json()["sessions"][0]["id"] == "s"


# -- secrets at rest -------------------------------------------------------------


def test_secret_box(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "secrets.key"
    box = SecretBox.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["secrets.key"]  # no temp file left
    sealed = box.encrypt("pässword")
    assert "pässword" not in sealed
    assert box.decrypt(sealed) == "pässword"
    again = SecretBox.load_or_create(path)  # the same key, kept
    assert again.decrypt(sealed) == "pässword"

    stranger = SecretBox.load_or_create(tmp_path / "other.key")
    with pytest.raises(SecretDecryptError):
        stranger.decrypt(sealed)
    with pytest.raises(SecretDecryptError):
        box.decrypt("garbage")


def test_secret_box_bad_key_file(tmp_path: Path) -> None:
    path = tmp_path / "secrets.key"
    path.write_text("not a key\n")
    with pytest.raises(ConfigError, match=r"secrets\.key"):
        SecretBox.load_or_create(path)
    assert path.read_text() == "not a key\n"  # never replaced


async def test_only_one_first_account_across_processes(
    registry: Registry, database_url: str
) -> None:
    """First-run setup on two relay processes at once: exactly one first account."""
    other = await Registry.open(database_url)  # a second process's engine
    try:
        results = await asyncio.gather(
            *(
                reg.create_account(f"first-{i}", actor="console:setup", only_first=True)
                for i, reg in enumerate([registry, other, registry, other])
            ),
            return_exceptions=True,
        )
    finally:
        await other.close()
    created = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, ConflictError)]
    assert len(created) == 1 and len(refused) == 3, results
    assert [a.name for a in await registry.list_accounts()] == [created[0][0].name]
    # Without only_first, more accounts are as usual.
    await registry.create_account("second")
