"""Registry methods for connections (relay/registry/connections.py) and the merge
patch, below the HTTP layer. (Here, not in tests/relay/, because this folder is what
the API work owns.)"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from relay.api.merge_patch import apply_merge_patch
from relay.errors import ConflictError, NotFoundError, RegistryError
from relay.models.connection import MASK, ConnectionIn
from relay.registry import InvalidReferenceError, Registry, SecretBox
from relay.registry.connections import mask_secrets


@pytest.fixture
async def reg(database_url: str) -> AsyncIterator[Registry]:
    r = await Registry.open(database_url, secrets=SecretBox(SecretBox.generate_key()))
    await r.upgrade()
    yield r
    await r.close()


def spec(name: str = "c", **http: object) -> ConnectionIn:
    return ConnectionIn.model_validate(
        {"name": name, "http": {"base_uri": "https://api.example.com", **http}}
    )


# RFC 7396, appendix A.
@pytest.mark.parametrize(
    ("target", "patch", "result"),
    [
        ({"a": "b"}, {"a": "c"}, {"a": "c"}),
        ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
        ({"a": "b"}, {"a": None}, {}),
        ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
        ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
        ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
        ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
        ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
        (["a", "b"], ["c", "d"], ["c", "d"]),
        ({"a": "b"}, ["c"], ["c"]),
        ({"a": "foo"}, None, None),
        ({"a": "foo"}, "bar", "bar"),
        ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
        ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
        ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
    ],
)
def test_merge_patch_rfc7396(target: object, patch: object, result: object) -> None:
    before = repr(target)
    assert apply_merge_patch(target, patch) == result
    assert repr(target) == before  # not modified


def test_mask_secrets() -> None:
    doc = spec(
        auth={"type": "token", "token": {"token": "t"}},
        client_certificate={"cert_pem": "c", "key_pem": "k"},
    ).model_dump(mode="json")
    masked = mask_secrets(doc)
    assert masked["http"]["auth"]["token"]["token"] == MASK
    assert masked["http"]["client_certificate"] == {"cert_pem": "c", "key_pem": MASK}
    assert doc["http"]["auth"]["token"]["token"] == "t"
    unset = mask_secrets(spec(auth={"type": "basic", "basic": {"username": "u"}}).model_dump())
    assert unset["http"]["auth"]["basic"]["password"] is None


async def test_crud_states_and_versions(reg: Registry) -> None:
    acc, _ = await reg.create_account("acme")
    other, _ = await reg.create_account("globex")
    c = await reg.create_connection(
        acc.id, spec(), state="offline", state_reason="not tested", tested_at=None, actor="t"
    )
    assert (await reg.get_connection(c.id)).spec == spec()
    with pytest.raises(NotFoundError):
        await reg.get_connection(c.id, other.id)
    assert await reg.list_connections(other.id) == []

    now = datetime.now(UTC)
    await reg.set_connection_state(c.id, "online", None, tested_at=now)
    got = await reg.get_connection(c.id, acc.id)
    assert got.state == "online" and got.last_tested_at is not None and got.version == 1
    assert [x.id for x in await reg.list_connections_in_state("online")] == [c.id]
    assert await reg.list_connections_in_state("offline") == []
    with pytest.raises(NotFoundError):
        await reg.set_connection_state("con_nope", "online", None)
    with pytest.raises(ValueError, match="state"):
        await reg.set_connection_state(c.id, "sideways", None)

    updated = await reg.update_connection(
        c.id, acc.id, spec("renamed"), actor="t", expected_version=1
    )
    assert updated.version == 2 and updated.spec.name == "renamed"
    assert updated.state == "online"  # no state given: kept
    with pytest.raises(ConflictError, match="changed meanwhile"):
        await reg.update_connection(c.id, acc.id, spec("x"), actor="t", expected_version=1)
    with pytest.raises(NotFoundError):
        await reg.update_connection(c.id, other.id, spec("x"), actor="t")
    with pytest.raises(NotFoundError):
        await reg.delete_connection(c.id, other.id, actor="t")
    await reg.delete_connection(c.id, acc.id, actor="t")
    assert await reg.list_connections(acc.id) == []


async def test_references(reg: Registry) -> None:
    acc, _ = await reg.create_account("acme")
    other, _ = await reg.create_account("globex")
    foreign_agent, _ = await reg.create_agent(other.id, "gw")
    onprem = ConnectionIn.model_validate(
        {
            "name": "c",
            "mode": "onpremise",
            "agent_id": foreign_agent.id,
            "http": {"base_uri": "https://erp.internal"},
        }
    )
    with pytest.raises(InvalidReferenceError) as info:
        await reg.create_connection(
            acc.id, onprem, state="offline", state_reason=None, tested_at=None, actor="t"
        )
    assert info.value.field == "agent_id"
    own_agent, _ = await reg.create_agent(acc.id, "gw")
    ok = onprem.model_copy(update={"agent_id": own_agent.id})
    made = await reg.create_connection(
        acc.id, ok, state="offline", state_reason=None, tested_at=None, actor="t"
    )
    assert await reg.connections_using_agent(own_agent.id) == [made.id]
    with pytest.raises(ConflictError, match=made.id):
        await reg.delete_agent(own_agent.id, acc.id)


async def test_needs_a_secret_box(database_url: str) -> None:
    bare = await Registry.open(database_url)
    await bare.upgrade()
    try:
        acc, _ = await bare.create_account("acme")
        with pytest.raises(RegistryError, match="secrets key"):
            await bare.create_connection(
                acc.id, spec(), state="offline", state_reason=None, tested_at=None, actor="t"
            )
    finally:
        await bare.close()
