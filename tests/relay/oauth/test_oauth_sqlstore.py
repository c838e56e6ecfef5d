"""The OAuth stores on the registry database (SQLite, and PostgreSQL when
``ONPREM_TEST_DATABASE_URL`` is set): the token row's compare-and-set and refresh
lease, waiting for another process's write (NOTIFY on PostgreSQL, polling on SQLite),
pending authorizations, and two relays (two engines, two managers) sharing one
database against the authlib test server: one refresh."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
import sqlalchemy as sa
from oauth_authlib_server import AuthServer
from tunnel_env import TIMEOUT

from relay.errors import NotFoundError
from relay.models.connection import ConnectionIn
from relay.models.iclient import IClientIn
from relay.oauth.client import TokenClient
from relay.oauth.errors import InvalidStateError
from relay.oauth.flow import (
    AuthorizationFlow,
    InMemoryStateStore,
    PendingAuthorization,
    ResolvedClient,
    state_key,
)
from relay.oauth.refresh import OAuthTarget, TokenManager
from relay.oauth.sqlstore import SqlStateStore, SqlTokenStore
from relay.oauth.tokens import TokenSet
from relay.registry import Registry, SecretBox
from relay.registry.models import oauth_states, oauth_tokens

# The redirect URI the ``auth_server`` fixture registers (tests/relay/oauth/conftest.py).
REDIRECT_URI = "http://127.0.0.1:9/oauth2/callback"
ACCESS = "access-6d1c0e55-DISTINCT"
REFRESH = "refresh-0b9a7f31-DISTINCT"
VERIFIER = "verifier-" + "v" * 50


@pytest.fixture
def box() -> SecretBox:
    return SecretBox(SecretBox.generate_key())


@pytest.fixture
async def reg(database_url: str, box: SecretBox) -> AsyncIterator[Registry]:
    registry = await Registry.open(database_url, secrets=box)
    await registry.upgrade()
    try:
        yield registry
    finally:
        await registry.close()


@pytest.fixture
async def cid(reg: Registry) -> str:
    account, _ = await reg.create_account("acme")
    spec = ConnectionIn.model_validate({"name": "c", "http": {"base_uri": "https://api.acme.com"}})
    stored = await reg.create_connection(
        account.id, spec, state="online", state_reason=None, tested_at=None, actor="t"
    )
    return stored.id


def tokens(expires_in: float = 3600, access: str = ACCESS) -> TokenSet:
    return TokenSet(access_token=access, refresh_token=REFRESH, expires_at=time.time() + expires_in)


async def test_compare_and_set_and_the_refresh_lease(reg: Registry, cid: str) -> None:
    store = SqlTokenStore(reg)
    assert (await store.load(cid)).tokens is None and (await store.load(cid)).version == 0
    assert await store.try_lease(cid, "node-a", 30) == 0
    assert await store.try_lease(cid, "node-b", 30) is None  # held by a
    assert await store.try_lease(cid, "node-a", 30) == 0  # a extends its own lease
    assert await store.store(cid, tokens(), 0) == 1  # access + refresh: one write
    assert await store.store(cid, tokens(access="lost"), 0) is None  # someone wrote first
    loaded = await store.load(cid)
    assert loaded.version == 1
    assert loaded.tokens is not None and loaded.tokens.access_token == ACCESS
    assert loaded.tokens.refresh_token == REFRESH
    # The write dropped the lease; give-back only by the holder.
    assert await store.try_lease(cid, "node-b", 30) == 1
    await store.release_lease(cid, "node-a")
    assert await store.try_lease(cid, "node-a", 30) is None
    await store.release_lease(cid, "node-b")
    # A lease left by a dead process expires.
    assert await store.try_lease(cid, "dead-node", -1) == 1
    assert await store.try_lease(cid, "node-a", 30) == 1
    # Clearing (invalid_grant) is a write like any other.
    assert await store.store(cid, None, 1) == 2
    assert (await store.load(cid)).tokens is None

    assert await store.store(cid, tokens(), 2) == 3
    async with reg._read() as conn:
        row = (await conn.execute(oauth_tokens.select())).one()
    assert ACCESS not in row.tokens and REFRESH not in row.tokens
    assert row.expires_at is not None

    with pytest.raises(NotFoundError):
        await store.try_lease("con_gone", "node-a", 30)
    with pytest.raises(NotFoundError):
        await store.store("con_gone", tokens(), 0)
    account_id = (await reg.get_connection(cid)).account_id
    await reg.delete_connection(cid, account_id, actor="t")
    assert (await store.load(cid)).version == 0  # the row went with the connection
    await store.aclose()


async def test_a_waiter_wakes_when_another_relay_writes(
    reg: Registry, cid: str, database_url: str, box: SecretBox
) -> None:
    other = await Registry.open(database_url, secrets=box)
    # No periodic re-check while listening: on PostgreSQL only a NOTIFY can wake it.
    mine = SqlTokenStore(reg, listen_recheck_s=TIMEOUT * 10)
    theirs = SqlTokenStore(other)
    try:
        assert await theirs.try_lease(cid, "node-b", 30) == 0
        async with asyncio.timeout(TIMEOUT):
            # Not leased by anyone else: returns at once.
            await mine.wait_for_change(cid, 5, TIMEOUT * 10)
            waiter = asyncio.create_task(mine.wait_for_change(cid, 0, TIMEOUT * 10))
            await asyncio.sleep(0)
            assert not waiter.done()
            assert await theirs.store(cid, tokens(), 0) == 1
            # Woken by the write (NOTIFY or the poll), long before its own timeout.
            await waiter
        if reg.url.startswith("postgresql"):
            assert mine._listener is not None
        # A lease given back wakes waiters too.
        assert await theirs.try_lease(cid, "node-b", 30) == 1
        async with asyncio.timeout(TIMEOUT):
            waiter = asyncio.create_task(mine.wait_for_change(cid, 1, TIMEOUT * 10))
            await asyncio.sleep(0)
            await theirs.release_lease(cid, "node-b")
            await waiter
        # Nothing happens: the wait ends at its timeout.
        assert await theirs.try_lease(cid, "node-b", 30) == 1
        started = time.monotonic()
        await mine.wait_for_change(cid, 1, 0.2)
        assert 0.15 < time.monotonic() - started < TIMEOUT
    finally:
        await mine.aclose()
        await theirs.aclose()
        await other.close()


async def test_pending_authorizations(reg: Registry, cid: str) -> None:
    account_id = (await reg.get_connection(cid)).account_id
    now = [1_000_000.0]
    states = SqlStateStore(reg, ttl_s=600, max_pending_per_connection=3, clock=lambda: now[0])
    pending = PendingAuthorization(
        account_id=account_id,
        connection_id=cid,
        iclient_id="icl_1",
        redirect_uri="https://relay.example.com/oauth2/callback",
        code_verifier=VERIFIER,
        return_url="https://relay.example.com/done",
    )
    await states.put("state-one", pending)
    async with reg._read() as conn:
        row = (await conn.execute(oauth_states.select())).one()
    assert row.state_hash == state_key("state-one") and "state-one" not in str(row)
    assert VERIFIER not in row.code_verifier  # encrypted
    taken = await states.take("state-one")
    assert taken.code_verifier == VERIFIER and taken.return_url == pending.return_url
    assert taken.created_at == now[0]
    with pytest.raises(InvalidStateError, match="unknown or already used"):
        await states.take("state-one")

    # Bound to its connection: a mismatch burns it.
    await states.put("state-two", pending)
    with pytest.raises(InvalidStateError, match="another connection"):
        await states.take("state-two", connection_id="con_other")
    with pytest.raises(InvalidStateError, match="unknown"):
        await states.take("state-two")

    # Expired after the TTL.
    await states.put("state-three", pending)
    now[0] += 601
    with pytest.raises(InvalidStateError, match="too long"):
        await states.take("state-three")

    # At most 3 pending per connection; expired ones are purged on the next put.
    for i in range(5):
        now[0] += 1
        await states.put(f"many-{i}", pending)
    async with reg._read() as conn:
        left = await conn.scalar(sa.select(sa.func.count()).select_from(oauth_states))
    assert left == 3
    assert (await states.take("many-4")).connection_id == cid
    with pytest.raises(InvalidStateError):
        await states.take("many-0")
    # They go with their connection.
    await reg.delete_connection(cid, account_id, actor="t")
    with pytest.raises(InvalidStateError):
        await states.take("many-3")
    with pytest.raises(NotFoundError):
        await states.put("orphan", pending)


async def test_state_updates_say_what_changed(reg: Registry, cid: str) -> None:
    update = await reg.set_connection_state(cid, "offline", "ping failed")
    assert (update.previous, update.state, update.changed) == ("online", "offline", True)
    update = await reg.set_connection_state(cid, "offline", "still failing")
    assert update.changed is False and update.reason == "still failing"
    with pytest.raises(NotFoundError):
        await reg.set_connection_state("con_gone", "online", None)


async def _authorized_tokens(
    http: aiohttp.ClientSession, token_client: TokenClient, iclient: IClientIn, cid: str
) -> TokenSet:
    flow = AuthorizationFlow(InMemoryStateStore(), token_client)
    url = await flow.begin(
        iclient,
        account_id="acc_1",
        connection_id=cid,
        iclient_id="icl_1",
        redirect_uri=REDIRECT_URI,
        scope=None,
    )
    async with http.get(url, allow_redirects=False) as resp:
        callback = resp.headers["Location"]

    async def resolve(pending: PendingAuthorization) -> ResolvedClient:
        return ResolvedClient(iclient)

    _, got = await flow.complete(callback, resolve)
    return got


async def test_two_relays_sharing_the_database_make_one_refresh(
    reg: Registry,
    cid: str,
    database_url: str,
    box: SecretBox,
    auth_server: AuthServer,
    http: aiohttp.ClientSession,
    token_client: TokenClient,
    make_iclient: Callable[..., IClientIn],
) -> None:
    """Two registries = two engines and connection pools, two managers with their own
    locks and lease owners: what two relay processes are, in one process."""
    iclient = make_iclient()
    fresh = await _authorized_tokens(http, token_client, iclient, cid)
    other = await Registry.open(database_url, secrets=box)
    store_a, store_b = SqlTokenStore(reg), SqlTokenStore(other)
    try:
        assert await store_a.store(cid, dataclasses.replace(fresh, expires_at=time.time() - 5), 0)
        node_a = TokenManager(store_a, token_client, owner="node-a")
        node_b = TokenManager(store_b, token_client, owner="node-b")
        target = OAuthTarget(cid, iclient)
        async with asyncio.timeout(TIMEOUT):
            results = await asyncio.gather(
                *(m.access_token(target) for _ in range(25) for m in (node_a, node_b))
            )
        assert auth_server.token_calls["refresh_token"] == 1
        assert len({r.tokens.access_token for r in results if r.tokens}) == 1
        assert {r.version for r in results} == {2}
    finally:
        await store_a.aclose()
        await store_b.aclose()
        await other.close()
