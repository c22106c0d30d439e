"""The PostgreSQL repositories against a real database (the session's migrated test database)."""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from credbroker.bootstrap import Backend, BoundCipher
from credbroker.crypto import EnvelopeCipher, Keyring
from credbroker.domain.errors import AlreadyExistsError, FailedPreconditionError, NotFoundError
from credbroker.domain.models import (
    AuthMode,
    EncryptedConnectionSecrets,
    Environment,
    Integration,
    Scope,
    SecretKeyRecord,
)
from credbroker.domain.ports import Binding, ConnectionChanges, NewConnection
from credbroker.domain.secret_keys import generate_key, hash_secret
from credbroker.storage.connections import PostgresConnectionRepository
from credbroker.storage.environments import (
    PostgresEnvironmentRepository,
    PostgresSecretKeyRepository,
)
from credbroker.storage.integrations import PostgresIntegrationRepository


def integration(
    environment: Environment, integration_id: str, mode: AuthMode = AuthMode.API_KEY
) -> Integration:
    now = datetime.now(UTC)
    return Integration(
        id=uuid.uuid4(),
        environment_id=environment.id,
        integration_id=integration_id,
        provider="openai" if mode is AuthMode.API_KEY else "basic",
        display_name=f"Integration {integration_id}",
        auth_mode=mode,
        create_time=now,
        update_time=now,
    )


def fake_blob(key_id: int, size: int = 120) -> bytes:
    """Bytes shaped like an envelope header (format 2, suite, key id) followed by noise."""
    return b"\x02\x01" + key_id.to_bytes(4, "big") + os.urandom(size - 6)


def new_connection(
    environment: Environment,
    integration_id: str,
    connection_id: str,
    *,
    credentials: bytes | None = None,
    config: bytes | None = None,
    tags: dict[str, str] | None = None,
) -> NewConnection:
    return NewConnection(
        id=uuid.uuid4(),
        environment_id=environment.id,
        integration_id=integration_id,
        connection_id=connection_id,
        auth_mode=AuthMode.API_KEY,
        secrets=EncryptedConnectionSecrets(
            credentials if credentials is not None else fake_blob(1),
            config if config is not None else fake_blob(1),
        ),
        metadata={"plan": "pro", "n": 1},
        tags=tags if tags is not None else {"env": "prod"},
        connection_config_keys=("org",),
    )


@pytest.fixture
def integrations(backend: Backend) -> PostgresIntegrationRepository:
    return PostgresIntegrationRepository(backend.db)


@pytest.fixture
def connections(backend: Backend) -> PostgresConnectionRepository:
    return PostgresConnectionRepository(backend.db)


@pytest.fixture
def environments(backend: Backend) -> PostgresEnvironmentRepository:
    return PostgresEnvironmentRepository(backend.db)


@pytest.fixture
def secret_key_repo(backend: Backend) -> PostgresSecretKeyRepository:
    return PostgresSecretKeyRepository(backend.db)


# --- integrations ---------------------------------------------------------------------------


async def test_integration_create_get_and_duplicate(
    integrations: PostgresIntegrationRepository,
    environment: Environment,
    make_environment: Any,
) -> None:
    row = integration(environment, "openai-prod")
    created = await integrations.create(row)
    assert created.id == row.id
    assert created.integration_id == "openai-prod"
    assert created.auth_mode is AuthMode.API_KEY
    assert created.display_name == "Integration openai-prod"
    assert created.update_time == created.create_time

    fetched = await integrations.get(environment.id, "openai-prod")
    assert fetched == created

    with pytest.raises(AlreadyExistsError) as caught:
        await integrations.create(integration(environment, "openai-prod", AuthMode.BASIC))
    assert caught.value.reason == "INTEGRATION_ALREADY_EXISTS"
    still = await integrations.get(environment.id, "openai-prod")
    assert still is not None and still.auth_mode is AuthMode.API_KEY

    # Same integration id in another environment is a different row.
    other_env = await make_environment()
    other = await integrations.create(integration(other_env, "openai-prod", AuthMode.BASIC))
    assert other.environment_id == other_env.id
    assert await integrations.get(other_env.id, "missing") is None
    assert await integrations.get(uuid.uuid4(), "openai-prod") is None


async def test_integration_list_keyset_ordering(
    integrations: PostgresIntegrationRepository,
    environment: Environment,
    make_environment: Any,
) -> None:
    ids = ["delta", "alpha", "charlie", "bravo", "echo", "foxtrot", "golf"]
    for integration_id in ids:
        await integrations.create(integration(environment, integration_id))
    other_env = await make_environment()
    await integrations.create(integration(other_env, "aaa-other"))

    everything = await integrations.list(environment.id, after=None, limit=100)
    assert [i.integration_id for i in everything] == sorted(ids)

    paged: list[str] = []
    after: str | None = None
    for _ in range(10):
        page = await integrations.list(environment.id, after=after, limit=3)
        if not page:
            break
        assert len(page) <= 3
        paged.extend(i.integration_id for i in page)
        after = page[-1].integration_id
    assert paged == sorted(ids)
    assert await integrations.list(environment.id, after="golf", limit=3) == []
    assert [
        i.integration_id for i in await integrations.list(environment.id, after="c", limit=2)
    ] == [
        "charlie",
        "delta",
    ]


async def test_integration_list_keyset_is_consistent_for_mixed_ids(
    integrations: PostgresIntegrationRepository, environment: Environment
) -> None:
    """Whatever the collation, walking pages yields every row exactly once in list order."""
    ids = ["a", "A", "a-b", "a.b", "ab", "a_b", "B", "b", "0", "9z", "a:b", "a~b", "a@b", "Z-1"]
    for integration_id in ids:
        await integrations.create(integration(environment, integration_id))
    full = [
        i.integration_id for i in await integrations.list(environment.id, after=None, limit=100)
    ]
    assert sorted(full) == sorted(ids)
    for limit in (1, 2, 5):
        paged: list[str] = []
        after: str | None = None
        while True:
            page = await integrations.list(environment.id, after=after, limit=limit)
            if not page:
                break
            paged.extend(i.integration_id for i in page)
            after = page[-1].integration_id
            assert len(paged) <= len(ids)
        assert paged == full, limit


async def test_integration_update_display_name(
    integrations: PostgresIntegrationRepository, environment: Environment
) -> None:
    created = await integrations.create(integration(environment, "x"))
    updated = await integrations.update(
        environment.id, "x", display_name="Renamed", integration_config=None
    )
    assert updated is not None
    assert updated.display_name == "Renamed"
    assert updated.update_time >= created.update_time
    assert updated.create_time == created.create_time
    assert updated.integration_config == created.integration_config
    configured = await integrations.update(
        environment.id, "x", display_name=None, integration_config={"base_url": "https://a.b"}
    )
    assert configured is not None
    assert configured.display_name == "Renamed"
    assert configured.integration_config == {"base_url": "https://a.b"}
    assert (
        await integrations.update(environment.id, "nope", display_name="N", integration_config=None)
        is None
    )
    assert (
        await integrations.update(uuid.uuid4(), "x", display_name="N", integration_config=None)
        is None
    )


async def test_integration_delete_with_connections_needs_force(
    integrations: PostgresIntegrationRepository,
    connections: PostgresConnectionRepository,
    environment: Environment,
) -> None:
    await integrations.create(integration(environment, "x"))
    await integrations.create(integration(environment, "y"))
    await connections.create(new_connection(environment, "x", "c1"))
    await connections.create(new_connection(environment, "x", "c2"))
    await connections.create(new_connection(environment, "y", "c1"))

    with pytest.raises(FailedPreconditionError) as caught:
        await integrations.delete(environment.id, "x", force=False)
    assert caught.value.reason == "INTEGRATION_HAS_CONNECTIONS"
    assert await integrations.get(environment.id, "x") is not None
    assert await connections.get(environment.id, "x", "c1") is not None

    assert await integrations.delete(environment.id, "x", force=True) is True
    assert await integrations.get(environment.id, "x") is None
    assert await connections.get(environment.id, "x", "c1") is None
    assert await connections.get(environment.id, "x", "c2") is None
    # The other integration's connections are untouched.
    assert await connections.get(environment.id, "y", "c1") is not None

    assert await integrations.delete(environment.id, "x", force=True) is False
    assert await integrations.delete(environment.id, "x", force=False) is False


async def test_integration_delete_without_connections(
    integrations: PostgresIntegrationRepository, environment: Environment, make_environment: Any
) -> None:
    await integrations.create(integration(environment, "x"))
    other_env = await make_environment()
    assert await integrations.delete(other_env.id, "x", force=True) is False
    assert await integrations.delete(environment.id, "x", force=False) is True
    assert await integrations.get(environment.id, "x") is None


# --- connections ----------------------------------------------------------------------------


async def test_connection_create_get_and_errors(
    integrations: PostgresIntegrationRepository,
    connections: PostgresConnectionRepository,
    environment: Environment,
) -> None:
    await integrations.create(integration(environment, "x"))
    row = new_connection(environment, "x", "c1")
    created = await connections.create(row)
    assert created.id == row.id
    assert created.version == 1
    assert created.metadata == {"plan": "pro", "n": 1}
    assert created.tags == {"env": "prod"}
    assert created.connection_config_keys == ("org",)
    assert created.auth_mode is AuthMode.API_KEY
    assert await connections.get(environment.id, "x", "c1") == created

    found = await connections.get_with_secrets(environment.id, "x", "c1")
    assert found is not None
    assert found.connection == created
    assert found.secrets == row.secrets
    assert found.provider == "openai"

    with pytest.raises(AlreadyExistsError) as caught:
        await connections.create(new_connection(environment, "x", "c1"))
    assert caught.value.reason == "CONNECTION_ALREADY_EXISTS"
    with pytest.raises(NotFoundError) as missing:
        await connections.create(new_connection(environment, "nope", "c1"))
    assert missing.value.reason == "INTEGRATION_NOT_FOUND"

    assert await connections.get(environment.id, "x", "c2") is None
    assert await connections.get_with_secrets(uuid.uuid4(), "x", "c1") is None


async def test_connection_update_with_expected_version(
    integrations: PostgresIntegrationRepository,
    connections: PostgresConnectionRepository,
    environment: Environment,
    make_environment: Any,
) -> None:
    await integrations.create(integration(environment, "x"))
    row = new_connection(environment, "x", "c1")
    await connections.create(row)

    updated = await connections.update(
        environment.id, row.id, ConnectionChanges(metadata={"plan": "team"}), expected_version=1
    )
    assert updated is not None
    assert updated.version == 2
    assert updated.metadata == {"plan": "team"}
    assert updated.tags == {"env": "prod"}  # not in the changes: kept

    stale = await connections.update(
        environment.id, row.id, ConnectionChanges(tags={"env": "dev"}), expected_version=1
    )
    assert stale is None
    current = await connections.get(environment.id, "x", "c1")
    assert current is not None
    assert current.version == 2
    assert current.tags == {"env": "prod"}

    unconditional = await connections.update(
        environment.id, row.id, ConnectionChanges(tags={}), expected_version=None
    )
    assert unconditional is not None
    assert unconditional.version == 3
    assert unconditional.tags == {}
    assert unconditional.metadata == {"plan": "team"}

    # Wrong environment or unknown id: nothing happens.
    other_env = await make_environment()
    assert (
        await connections.update(
            other_env.id, row.id, ConnectionChanges(metadata={}), expected_version=None
        )
        is None
    )
    assert (
        await connections.update(
            environment.id, uuid.uuid4(), ConnectionChanges(metadata={}), expected_version=None
        )
        is None
    )
    final = await connections.get(environment.id, "x", "c1")
    assert final is not None and final.version == 3


async def test_connection_update_replaces_secrets_and_config_keys(
    integrations: PostgresIntegrationRepository,
    connections: PostgresConnectionRepository,
    environment: Environment,
) -> None:
    await integrations.create(integration(environment, "x"))
    row = new_connection(environment, "x", "c1")
    await connections.create(row)
    new_credentials = fake_blob(7)
    updated = await connections.update(
        environment.id,
        row.id,
        ConnectionChanges(credentials=new_credentials, connection_config_keys=()),
        expected_version=None,
    )
    assert updated is not None
    assert updated.connection_config_keys == ()
    found = await connections.get_with_secrets(environment.id, "x", "c1")
    assert found is not None
    assert found.secrets.credentials == new_credentials
    assert found.secrets.connection_config == row.secrets.connection_config


async def test_credentials_key_id_column_mirrors_blob_header(
    backend: Backend,
    integrations: PostgresIntegrationRepository,
    connections: PostgresConnectionRepository,
    environment: Environment,
) -> None:
    await integrations.create(integration(environment, "x"))
    cases = {"small": (1, 2), "large": (0xDEADBEEF, 0xFFFFFFFF), "mid": (0x01020304, 0x00FF00FF)}
    for connection_id, (credentials_key, config_key) in cases.items():
        await connections.create(
            new_connection(
                environment,
                "x",
                connection_id,
                credentials=fake_blob(credentials_key),
                config=fake_blob(config_key),
            )
        )
    rows = await backend.db.fetch(
        """SELECT connection_id, credentials_blob, credentials_key_id, config_blob, config_key_id
           FROM connections WHERE environment_id = $1""",
        environment.id,
    )
    assert len(rows) == len(cases)
    for row in rows:
        expected_credentials, expected_config = cases[row["connection_id"]]
        assert row["credentials_key_id"] == expected_credentials
        assert row["config_key_id"] == expected_config
        blob = bytes(row["credentials_blob"])
        assert row["credentials_key_id"] == int.from_bytes(blob[2:6], "big")
        assert row["config_key_id"] == int.from_bytes(bytes(row["config_blob"])[2:6], "big")


async def test_credentials_key_id_follows_updates_and_real_cipher(
    backend: Backend,
    integrations: PostgresIntegrationRepository,
    connections: PostgresConnectionRepository,
    environment: Environment,
) -> None:
    keyring = Keyring(primary_key_id=4000000000, keys={4000000000: os.urandom(32)})
    cipher = BoundCipher(EnvelopeCipher(keyring), accept_binding_v1=False)
    await integrations.create(integration(environment, "x"))
    row = new_connection(environment, "x", "c1")
    blob = cipher.encrypt(
        b'{"api_key":"k"}', purpose="p", binding=Binding((row.id.bytes,), (row.id.bytes,))
    )
    await connections.create(
        new_connection(environment, "x", "c1", credentials=blob, config=fake_blob(3))
    )
    query = """SELECT credentials_key_id, config_key_id FROM connections
               WHERE environment_id = $1 AND connection_id = 'c1'"""
    record = await backend.db.fetchrow(query, environment.id)
    assert record is not None
    assert (record["credentials_key_id"], record["config_key_id"]) == (4000000000, 3)

    created = await connections.get(environment.id, "x", "c1")
    assert created is not None
    await connections.update(
        environment.id,
        created.id,
        ConnectionChanges(credentials=fake_blob(9), connection_config=fake_blob(10)),
        expected_version=None,
    )
    record = await backend.db.fetchrow(query, environment.id)
    assert record is not None
    assert (record["credentials_key_id"], record["config_key_id"]) == (9, 10)


async def test_connection_list_keyset_and_filters(
    integrations: PostgresIntegrationRepository,
    connections: PostgresConnectionRepository,
    environment: Environment,
    make_environment: Any,
) -> None:
    await integrations.create(integration(environment, "a"))
    await integrations.create(integration(environment, "b"))
    pairs = [("b", "1"), ("a", "3"), ("a", "1"), ("b", "2"), ("a", "2")]
    for integration_id, connection_id in pairs:
        tag = "even" if int(connection_id) % 2 == 0 else "odd"
        await connections.create(
            new_connection(
                environment, integration_id, connection_id, tags={"parity": tag, "env": "prod"}
            )
        )
    other_env = await make_environment()
    await integrations.create(integration(other_env, "a"))
    await connections.create(new_connection(other_env, "a", "0"))

    async def walk(integration_id: str | None, tags: dict[str, str]) -> list[tuple[str, str]]:
        seen: list[tuple[str, str]] = []
        after: tuple[str, str] | None = None
        for _ in range(20):
            page = await connections.list(
                environment.id, integration_id=integration_id, tags=tags, after=after, limit=2
            )
            if not page:
                break
            seen.extend((c.integration_id, c.connection_id) for c in page)
            after = (page[-1].integration_id, page[-1].connection_id)
        return seen

    assert await walk(None, {}) == sorted(pairs)
    assert await walk("a", {}) == [("a", "1"), ("a", "2"), ("a", "3")]
    assert await walk(None, {"parity": "odd"}) == [("a", "1"), ("a", "3"), ("b", "1")]
    assert await walk("b", {"parity": "even", "env": "prod"}) == [("b", "2")]
    assert await walk(None, {"parity": "none"}) == []


async def test_connection_delete(
    integrations: PostgresIntegrationRepository,
    connections: PostgresConnectionRepository,
    environment: Environment,
    make_environment: Any,
) -> None:
    await integrations.create(integration(environment, "x"))
    await connections.create(new_connection(environment, "x", "c1"))
    other_env = await make_environment()
    assert await connections.delete(other_env.id, "x", "c1") is False
    assert await connections.delete(environment.id, "x", "c1") is True
    assert await connections.delete(environment.id, "x", "c1") is False
    assert await connections.get(environment.id, "x", "c1") is None


# --- environments and secret keys -----------------------------------------------------------


async def test_environment_create_get_list(environments: PostgresEnvironmentRepository) -> None:
    name = f"env-{uuid.uuid4().hex[:10]}"
    created = await environments.create(name)
    assert created.name == name
    assert await environments.get_by_name(name) == created
    assert await environments.get_by_name(name + "-missing") is None
    listed = await environments.list()
    assert created in listed
    names = [e.name for e in listed]
    assert names == sorted(names)
    with pytest.raises(AlreadyExistsError) as caught:
        await environments.create(name)
    assert name in caught.value.message


def key_record(environment: Environment, **overrides: Any) -> tuple[str, SecretKeyRecord]:
    token, parsed = generate_key()
    values: dict[str, Any] = {
        "key_id": parsed.key_id,
        "environment_id": environment.id,
        "environment_name": environment.name,
        "scopes": frozenset({Scope.CONNECTIONS_READ, Scope.CREDENTIALS_READ}),
        "secret_hash": hash_secret(parsed),
        "create_time": datetime.now(UTC),
        "description": "ci key",
    }
    values.update(overrides)
    return token, SecretKeyRecord(**values)


async def test_secret_key_create_get_list_revoke(
    secret_key_repo: PostgresSecretKeyRepository,
    environment: Environment,
    make_environment: Any,
) -> None:
    expire = datetime.now(UTC) + timedelta(days=1)
    _, first = key_record(environment, expire_time=expire)
    _, second = key_record(
        environment, create_time=first.create_time + timedelta(seconds=1), scopes=frozenset()
    )
    await secret_key_repo.create(first)
    await secret_key_repo.create(second)
    other_env = await make_environment()
    _, foreign = key_record(other_env)
    await secret_key_repo.create(foreign)

    fetched = await secret_key_repo.get(first.key_id)
    assert fetched is not None
    assert fetched.key_id == first.key_id
    assert fetched.environment_id == environment.id
    assert fetched.environment_name == environment.name
    assert fetched.scopes == first.scopes
    assert fetched.secret_hash == first.secret_hash
    assert fetched.description == "ci key"
    assert fetched.expire_time == expire
    assert fetched.revoke_time is None
    assert await secret_key_repo.get("0" * 16) is None

    listed = await secret_key_repo.list(environment.id)
    assert [k.key_id for k in listed] == [first.key_id, second.key_id]
    assert listed[1].scopes == frozenset()

    assert await secret_key_repo.revoke(first.key_id) is True
    revoked = await secret_key_repo.get(first.key_id)
    assert revoked is not None and revoked.revoke_time is not None
    assert not revoked.is_active(datetime.now(UTC))
    # Revoking again keeps the first revoke time.
    assert await secret_key_repo.revoke(first.key_id) is True
    again = await secret_key_repo.get(first.key_id)
    assert again is not None and again.revoke_time == revoked.revoke_time
    assert await secret_key_repo.revoke("0" * 16) is False
    # Other keys untouched.
    untouched = await secret_key_repo.get(second.key_id)
    assert untouched is not None and untouched.revoke_time is None
