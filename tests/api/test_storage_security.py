"""What reaches the database: secrets only as ciphertext bound to their row and column, data that
survives a restart, and a server that refuses to start with the wrong master key."""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import grpc
import pytest
import pytest_asyncio
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from pydantic import SecretStr

from credbroker.app import key_service, start_server
from credbroker.bootstrap import StartupError, open_backend
from credbroker.config import Settings
from credbroker.crypto import Keyring, generate_keyring
from credbroker.domain.models import ALL_SCOPES
from credbroker.v1 import connection_service_pb2 as cpb
from credbroker.v1 import connection_service_pb2_grpc, integration_service_pb2_grpc
from credbroker.v1 import integration_service_pb2 as ipb
from credbroker.v1 import resources_pb2 as rpb

DATA_LOSS_MESSAGE = "stored data failed an integrity check"


def marker(label: str) -> str:
    return f"{label}X{uuid.uuid4().hex}"


def api_key(value: str) -> rpb.Credentials:
    return rpb.Credentials(api_key=rpb.ApiKeyCredentials(api_key=value))


def basic(username: str, password: str) -> rpb.Credentials:
    return rpb.Credentials(basic=rpb.BasicCredentials(username=username, password=password))


def encodings(secret: str) -> list[bytes]:
    """The secret raw, as hex, and as base64/base64url at every 3-byte alignment."""
    raw = secret.encode("utf-8")
    assert len(raw) >= 16, "markers must be long enough to be unambiguous"
    found = [raw, raw.hex().encode()]
    for shift in range(3):
        middle = base64.b64encode(b"\x00" * shift + raw)[4:-4]
        found += [middle, middle.replace(b"+", b"-").replace(b"/", b"_")]
    return found


def quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


async def scan_database(pool: asyncpg.Pool, secrets: list[str]) -> list[tuple[str, str]]:
    """Every value of every column of every table, as text (and bytea also raw): returns
    ``(schema.table.column, secret)`` for each column holding a secret in any encoding."""
    columns = await pool.fetch(
        """SELECT c.table_schema, c.table_name, c.column_name, c.data_type
           FROM information_schema.columns c
           JOIN information_schema.tables t
             ON t.table_schema = c.table_schema AND t.table_name = c.table_name
           WHERE t.table_type = 'BASE TABLE'
             AND c.table_schema NOT IN ('pg_catalog', 'information_schema')
           ORDER BY 1, 2, 3"""
    )
    assert any(c["column_name"] == "credentials_blob" for c in columns)
    needles = {secret: [n.lower() for n in encodings(secret)] for secret in secrets}
    hits: list[tuple[str, str]] = []
    for column in columns:
        table = f"{quote(column['table_schema'])}.{quote(column['table_name'])}"
        name = quote(column["column_name"])
        values: list[bytes] = []
        for row in await pool.fetch(f"SELECT {name}::text AS v FROM {table}"):
            if row["v"] is not None:
                values.append(row["v"].encode("utf-8").lower())
        if column["data_type"] == "bytea":
            for row in await pool.fetch(f"SELECT {name} AS v FROM {table}"):
                if row["v"] is not None:
                    values.append(bytes(row["v"]).lower())
        where = f"{column['table_schema']}.{column['table_name']}.{column['column_name']}"
        for secret, variants in needles.items():
            if any(variant in value for variant in variants for value in values):
                hits.append((where, secret))
    return hits


def rich(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(cast(grpc.Call, error))
    assert status is not None
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info
    raise AssertionError("no ErrorInfo")


def error_text(error: grpc.aio.AioRpcError) -> bytes:
    parts = [(error.details() or "").encode(), (error.debug_error_string() or "").encode()]
    for key, value in error.trailing_metadata() or ():
        parts += [key.encode(), value if isinstance(value, bytes) else value.encode()]
    return b"\n".join(parts)


def with_keyring(settings: Settings, keyring: Keyring, *, database_url: str | None = None) -> Any:
    """``settings`` with another keyring (and database). ``settings_factory(keyring=...)`` cannot
    do it: ``make_settings`` takes ``keyring`` and ``database_url`` positionally as well."""
    update: dict[str, Any] = {"keyring": SecretStr(keyring.to_json())}
    if database_url is not None:
        update["database_url"] = SecretStr(database_url)
    return settings.model_copy(update=update)


async def create_integration(tenant: Any, integration_id: str, provider: str = "openai") -> None:
    await tenant.integrations.CreateIntegration(
        ipb.CreateIntegrationRequest(
            integration=rpb.Integration(integration_id=integration_id, provider=provider)
        ),
        metadata=tenant.metadata,
    )


async def create_connection(
    tenant: Any, integration_id: str, connection_id: str, **fields: Any
) -> None:
    await tenant.connections.CreateConnection(
        cpb.CreateConnectionRequest(
            connection=rpb.Connection(
                integration_id=integration_id, connection_id=connection_id, **fields
            )
        ),
        metadata=tenant.metadata,
    )


async def access(tenant: Any, integration_id: str, connection_id: str) -> Any:
    return await tenant.connections.AccessCredentials(
        cpb.AccessCredentialsRequest(integration_id=integration_id, connection_id=connection_id),
        metadata=tenant.metadata,
    )


async def row_id(pool: asyncpg.Pool, tenant: Any, integration_id: str, connection_id: str) -> Any:
    found = await pool.fetchval(
        """SELECT c.id FROM connections c JOIN environments e ON e.id = c.environment_id
           WHERE e.name = $1 AND c.integration_id = $2 AND c.connection_id = $3""",
        tenant.environment,
        integration_id,
        connection_id,
    )
    assert found is not None
    return found


async def assert_data_loss(tenant: Any, ids: tuple[str, str], *secrets: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await access(tenant, *ids)
    error = caught.value
    assert error.code() == grpc.StatusCode.DATA_LOSS, error.details()
    assert error.details() == DATA_LOSS_MESSAGE
    assert rich(error).reason == "DATA_INTEGRITY"
    text = error_text(error).lower()
    for secret in secrets:
        for needle in encodings(secret):
            assert needle.lower() not in text


# ---------------------------------------------------------------------------------------------
# nothing secret in the database


async def test_no_secret_reaches_the_database_in_plaintext(tenant: Any, backend: Any) -> None:
    pool = backend.db.pool
    api_secret = marker("apikey")
    username = marker("user")
    password = marker("password")
    config_value = marker("config")
    updated_secret = marker("updated")
    upserted_secret = marker("upserted")
    canary = marker("canary")  # stored in plaintext on purpose: proves the scan can see values

    await create_integration(tenant, "openai", "openai")
    await create_integration(tenant, "jira", "twilio")
    await create_connection(
        tenant,
        "openai",
        "u1",
        credentials=api_key(api_secret),
        connection_config={"secondary": config_value},
        tags={"note": canary},
    )
    await create_connection(tenant, "jira", "u1", credentials=basic(username, password))
    await create_connection(tenant, "openai", "u2", credentials=api_key(api_secret + "-2"))
    await tenant.connections.UpdateConnection(
        cpb.UpdateConnectionRequest(
            connection=rpb.Connection(
                integration_id="openai", connection_id="u2", credentials=api_key(updated_secret)
            )
        ),
        metadata=tenant.metadata,
    )
    await tenant.connections.UpdateConnection(
        cpb.UpdateConnectionRequest(
            connection=rpb.Connection(
                integration_id="openai", connection_id="u3", credentials=api_key(upserted_secret)
            ),
            allow_missing=True,
        ),
        metadata=tenant.metadata,
    )
    # Everything is readable back through the API ...
    assert (await access(tenant, "openai", "u1")).credentials.api_key.api_key == api_secret
    assert (await access(tenant, "jira", "u1")).credentials.basic.password == password
    assert (await access(tenant, "openai", "u2")).credentials.api_key.api_key == updated_secret

    hits = await scan_database(
        pool,
        [api_secret, username, password, config_value, updated_secret, upserted_secret, canary],
    )
    # ... the scan does see stored values (the canary tag) ...
    assert ("public.connections.tags", canary) in hits
    # ... but none of the secrets.
    assert [where for where, secret in hits if secret != canary] == []


async def test_blobs_are_opaque_and_unique(tenant: Any, backend: Any) -> None:
    """Equal secrets in two rows give unrelated ciphertexts (fresh DEK and nonces per write)."""
    await create_integration(tenant, "openai")
    same = marker("same")
    await create_connection(tenant, "openai", "a", credentials=api_key(same))
    await create_connection(tenant, "openai", "b", credentials=api_key(same))
    rows = await backend.db.pool.fetch(
        """SELECT credentials_blob, config_blob FROM connections c
           JOIN environments e ON e.id = c.environment_id WHERE e.name = $1""",
        tenant.environment,
    )
    blobs = [bytes(r["credentials_blob"]) for r in rows] + [bytes(r["config_blob"]) for r in rows]
    assert len(blobs) == 4
    assert len(set(blobs)) == 4
    assert all(len(b) > len(same) for b in blobs)


# ---------------------------------------------------------------------------------------------
# ciphertext moved between rows or columns


async def served_within_bound(
    tenant: Any, ids: tuple[str, str], secret: str, since: float, change_takes_effect: Any
) -> None:
    """A row repaired behind the servers' back (straight in the database) is served again
    within the documented bound: the cached copy of the broken one is dropped on the
    database's change announcement."""

    async def served() -> bool:
        try:
            reply = await access(tenant, *ids)
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.DATA_LOSS, error.details()
            return False
        assert reply.credentials.api_key.api_key == secret
        return True

    await change_takes_effect(served, since, f"the repaired row {ids}")


async def test_credentials_blob_copied_within_a_tenant(
    tenant: Any, backend: Any, change_takes_effect: Any
) -> None:
    pool = backend.db.pool
    secret_a, secret_b, secret_c = marker("a"), marker("b"), marker("c")
    await create_integration(tenant, "openai")
    await create_integration(tenant, "other")
    await create_connection(tenant, "openai", "a", credentials=api_key(secret_a))
    await create_connection(tenant, "openai", "b", credentials=api_key(secret_b))
    await create_connection(tenant, "other", "a", credentials=api_key(secret_c))
    id_a = await row_id(pool, tenant, "openai", "a")
    id_b = await row_id(pool, tenant, "openai", "b")
    id_c = await row_id(pool, tenant, "other", "a")
    original_b = await pool.fetchval("SELECT credentials_blob FROM connections WHERE id = $1", id_b)

    copy = """UPDATE connections
                  SET credentials_blob = (SELECT credentials_blob FROM connections WHERE id = $1)
                WHERE id = $2"""
    await pool.execute(copy, id_a, id_b)  # same integration, other connection
    await pool.execute(copy, id_a, id_c)  # other integration, same connection id
    await assert_data_loss(tenant, ("openai", "b"), secret_a, secret_b)
    await assert_data_loss(tenant, ("other", "a"), secret_a, secret_c)
    # The source row is intact; the failure is caused by the move alone.
    assert (await access(tenant, "openai", "a")).credentials.api_key.api_key == secret_a
    await pool.execute(
        "UPDATE connections SET credentials_blob = $1 WHERE id = $2", original_b, id_b
    )
    await served_within_bound(
        tenant, ("openai", "b"), secret_b, time.monotonic(), change_takes_effect
    )


async def test_credentials_blob_copied_across_tenants(make_tenant: Any, backend: Any) -> None:
    pool = backend.db.pool
    first, second = await make_tenant(), await make_tenant()
    secret_1, secret_2 = marker("one"), marker("two")
    for tenant, secret in ((first, secret_1), (second, secret_2)):
        await create_integration(tenant, "openai")  # the very same ids in both environments
        await create_connection(tenant, "openai", "u", credentials=api_key(secret))
    id_1 = await row_id(pool, first, "openai", "u")
    id_2 = await row_id(pool, second, "openai", "u")
    await pool.execute(
        """UPDATE connections SET
               credentials_blob = (SELECT credentials_blob FROM connections WHERE id = $1),
               config_blob = (SELECT config_blob FROM connections WHERE id = $1)
           WHERE id = $2""",
        id_1,
        id_2,
    )
    await assert_data_loss(second, ("openai", "u"), secret_1, secret_2)
    assert (await access(first, "openai", "u")).credentials.api_key.api_key == secret_1


async def test_config_blob_copied_to_another_row(tenant: Any, backend: Any) -> None:
    pool = backend.db.pool
    config_a = marker("cfg")
    await create_integration(tenant, "openai")
    await create_connection(
        tenant, "openai", "a", credentials=api_key("ka"), connection_config={"k": config_a}
    )
    key_b = marker("kb")
    await create_connection(tenant, "openai", "b", credentials=api_key(key_b))
    await pool.execute(
        """UPDATE connections SET config_blob = (SELECT config_blob FROM connections WHERE id = $1)
           WHERE id = $2""",
        await row_id(pool, tenant, "openai", "a"),
        await row_id(pool, tenant, "openai", "b"),
    )
    await assert_data_loss(tenant, ("openai", "b"), config_a, key_b)


async def test_blobs_swapped_within_one_row(tenant: Any, backend: Any) -> None:
    pool = backend.db.pool
    secret, config_value = marker("sk"), marker("cfg")
    await create_integration(tenant, "openai")
    await create_connection(
        tenant, "openai", "u", credentials=api_key(secret), connection_config={"k": config_value}
    )
    await pool.execute(
        """UPDATE connections SET credentials_blob = config_blob, config_blob = credentials_blob
           WHERE id = $1""",
        await row_id(pool, tenant, "openai", "u"),
    )
    await assert_data_loss(tenant, ("openai", "u"), secret, config_value)


async def swap(pool: asyncpg.Pool, column: str, first: Any, second: Any) -> None:
    """Swaps ``column`` between two connection rows, as someone with write access to the
    database could. The ids are unique together, so the first row's connection_id is parked on
    a third value meanwhile."""
    async with pool.acquire() as connection, connection.transaction():
        select = "SELECT {} FROM connections WHERE id = $1"
        a = await connection.fetchval(select.format(column), first)
        b = await connection.fetchval(select.format(column), second)
        parked = await connection.fetchval(select.format("connection_id"), first)
        update = "UPDATE connections SET {} = $1 WHERE id = $2"
        await connection.execute(update.format("connection_id"), "swap-in-progress", first)
        await connection.execute(update.format(column), a, second)
        await connection.execute(update.format(column), b, first)
        if column != "connection_id":
            await connection.execute(update.format("connection_id"), parked, first)


async def test_connection_ids_swapped_between_rows(tenant: Any, backend: Any) -> None:
    """Finding 11: with database write access, swapping two rows' connection_id made user A's
    secret be served as user B's (the associated data bound the row id, not the connection
    id). Both now answer DATA_LOSS."""
    pool = backend.db.pool
    secret_a, secret_b = marker("alice"), marker("bob")
    await create_integration(tenant, "openai")
    await create_connection(tenant, "openai", "alice", credentials=api_key(secret_a))
    await create_connection(tenant, "openai", "bob", credentials=api_key(secret_b))
    await swap(
        pool,
        "connection_id",
        await row_id(pool, tenant, "openai", "alice"),
        await row_id(pool, tenant, "openai", "bob"),
    )
    await assert_data_loss(tenant, ("openai", "alice"), secret_a, secret_b)
    await assert_data_loss(tenant, ("openai", "bob"), secret_a, secret_b)


async def test_integration_ids_swapped_between_rows(tenant: Any, backend: Any) -> None:
    pool = backend.db.pool
    secret_1, secret_2 = marker("one"), marker("two")
    await create_integration(tenant, "openai")
    await create_integration(tenant, "other")
    await create_connection(tenant, "openai", "u", credentials=api_key(secret_1))
    await create_connection(tenant, "other", "u", credentials=api_key(secret_2))
    await swap(
        pool,
        "integration_id",
        await row_id(pool, tenant, "openai", "u"),
        await row_id(pool, tenant, "other", "u"),
    )
    await assert_data_loss(tenant, ("openai", "u"), secret_1, secret_2)
    await assert_data_loss(tenant, ("other", "u"), secret_1, secret_2)


async def test_environments_swapped_between_rows(make_tenant: Any, backend: Any) -> None:
    pool = backend.db.pool
    first, second = await make_tenant(), await make_tenant()
    secret_1, secret_2 = marker("one"), marker("two")
    for tenant, secret in ((first, secret_1), (second, secret_2)):
        await create_integration(tenant, "openai")
        await create_connection(tenant, "openai", "u", credentials=api_key(secret))
    await swap(
        pool,
        "environment_id",
        await row_id(pool, first, "openai", "u"),
        await row_id(pool, second, "openai", "u"),
    )
    await assert_data_loss(first, ("openai", "u"), secret_1, secret_2)
    await assert_data_loss(second, ("openai", "u"), secret_1, secret_2)


@pytest.mark.parametrize(
    "offset",
    [
        pytest.param(0, id="format"),
        pytest.param(1, id="suite"),
        pytest.param(5, id="key-id"),  # names a master key nobody has
        pytest.param(10, id="wrap-nonce"),
        pytest.param(40, id="wrapped-dek"),
        pytest.param(70, id="payload-nonce"),
        pytest.param(-1, id="payload-tag"),
    ],
)
async def test_tampered_blob(
    tenant: Any, backend: Any, offset: int, change_takes_effect: Any
) -> None:
    pool = backend.db.pool
    secret = marker("sk")
    await create_integration(tenant, "openai")
    await create_connection(tenant, "openai", "u", credentials=api_key(secret))
    id_ = await row_id(pool, tenant, "openai", "u")
    original = await pool.fetchval("SELECT credentials_blob FROM connections WHERE id = $1", id_)
    blob = bytearray(original)
    blob[offset] ^= 0x01
    await pool.execute(
        "UPDATE connections SET credentials_blob = $1 WHERE id = $2", bytes(blob), id_
    )
    try:
        await assert_data_loss(tenant, ("openai", "u"), secret)
    finally:
        # A blob naming an unknown master key would stop every later server start (fail-closed
        # start-up check): restore the row whatever happened.
        await pool.execute(
            "UPDATE connections SET credentials_blob = $1 WHERE id = $2", original, id_
        )
    await served_within_bound(
        tenant, ("openai", "u"), secret, time.monotonic(), change_takes_effect
    )


async def test_truncated_blob(tenant: Any, backend: Any) -> None:
    pool = backend.db.pool
    secret = marker("sk")
    await create_integration(tenant, "openai")
    await create_connection(tenant, "openai", "u", credentials=api_key(secret))
    await pool.execute(
        "UPDATE connections SET credentials_blob = substring(credentials_blob from 1 for 70) "
        "WHERE id = $1",
        await row_id(pool, tenant, "openai", "u"),
    )
    await assert_data_loss(tenant, ("openai", "u"), secret)


# ---------------------------------------------------------------------------------------------
# restart and master key check


async def test_credentials_survive_a_restart(
    tenant: Any, settings_factory: Callable[..., Any], keyring: Keyring
) -> None:
    secret, password = marker("persist"), marker("pw")
    await create_integration(tenant, "openai")
    await create_integration(tenant, "jira", "twilio")
    await create_connection(
        tenant, "openai", "u", credentials=api_key(secret), connection_config={"org": "o"}
    )
    await create_connection(tenant, "jira", "u", credentials=basic("ann", password))

    settings = settings_factory()
    second_backend = await open_backend(settings)  # a new pool, as after a process restart
    try:
        running = await start_server(settings, second_backend, keyring)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
                connections = connection_service_pb2_grpc.ConnectionServiceStub(channel)
                integrations = integration_service_pb2_grpc.IntegrationServiceStub(channel)
                revealed = await connections.AccessCredentials(
                    cpb.AccessCredentialsRequest(integration_id="openai", connection_id="u"),
                    metadata=tenant.metadata,
                )
                assert revealed.credentials.api_key.api_key == secret
                assert dict(revealed.connection_config) == {"org": "o"}
                revealed = await connections.AccessCredentials(
                    cpb.AccessCredentialsRequest(integration_id="jira", connection_id="u"),
                    metadata=tenant.metadata,
                )
                assert revealed.credentials.basic.password == password
                # And the other way round: written by the second server, read by the first.
                await integrations.CreateIntegration(
                    ipb.CreateIntegrationRequest(
                        integration=rpb.Integration(integration_id="late", provider="stripe")
                    ),
                    metadata=tenant.metadata,
                )
                await connections.CreateConnection(
                    cpb.CreateConnectionRequest(
                        connection=rpb.Connection(
                            integration_id="late", connection_id="u", credentials=api_key(secret)
                        )
                    ),
                    metadata=tenant.metadata,
                )
        finally:
            await running.stop(0)
    finally:
        await second_backend.close()
    assert (await access(tenant, "late", "u")).credentials.api_key.api_key == secret


async def test_wrong_master_key_refuses_to_start(
    tenant: Any, backend: Any, settings_factory: Callable[..., Any], keyring: Keyring
) -> None:
    await create_integration(tenant, "openai")
    await create_connection(tenant, "openai", "u", credentials=api_key("still-readable"))
    checks_before = await backend.db.pool.fetch("SELECT * FROM master_keys ORDER BY key_id")

    other = generate_keyring()  # the same key id 1, other bytes
    assert other.primary_key_id == keyring.primary_key_id
    with pytest.raises(StartupError) as caught:
        await start_server(with_keyring(settings_factory(), other), backend, other)
    message = str(caught.value)
    assert "master key 1" in message
    for key in (other.keys[1], keyring.keys[1]):
        for needle in (
            key.hex(),
            base64.b64encode(key).decode(),
            base64.b64encode(key[:24]).decode(),
        ):
            assert needle not in message
    # Nothing changed: the check values are the same and the running server still decrypts.
    assert await backend.db.pool.fetch("SELECT * FROM master_keys ORDER BY key_id") == checks_before
    assert (await access(tenant, "openai", "u")).credentials.api_key.api_key == "still-readable"


# ---------------------------------------------------------------------------------------------
# a private database for start-up checks that write to master_keys


@pytest_asyncio.fixture
async def private_database(admin_database_url: str) -> AsyncIterator[str]:
    name = f"credbroker_private_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(admin_database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield urlunsplit(urlsplit(admin_database_url)._replace(path="/" + name))
    admin = await asyncpg.connect(admin_database_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def _store_one_secret(settings: Any, keyring: Keyring, secret: str) -> str:
    """Starts a server on ``settings``' database, stores one secret, stops; returns the key."""
    backend = await open_backend(settings)
    try:
        running = await start_server(settings, backend, keyring)
        try:
            keys = key_service(backend)
            await keys.create_environment("prod")
            token, _ = await keys.create_key("prod", ALL_SCOPES)
            metadata = (("authorization", f"Bearer {token}"),)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
                await integration_service_pb2_grpc.IntegrationServiceStub(
                    channel
                ).CreateIntegration(
                    ipb.CreateIntegrationRequest(
                        integration=rpb.Integration(integration_id="openai", provider="openai")
                    ),
                    metadata=metadata,
                )
                await connection_service_pb2_grpc.ConnectionServiceStub(channel).CreateConnection(
                    cpb.CreateConnectionRequest(
                        connection=rpb.Connection(
                            integration_id="openai", connection_id="u", credentials=api_key(secret)
                        )
                    ),
                    metadata=metadata,
                )
        finally:
            await running.stop(0)
    finally:
        await backend.close()
    return token


async def test_keyring_missing_the_data_key_refuses_to_start_and_leaves_no_trace(
    private_database: str, settings_factory: Callable[..., Any]
) -> None:
    """A keyring lacking key 1 (which encrypts stored data) must not start, and that failed start
    must not register anything: adding key 1 back next to a new key 2 then starts fine."""
    first = generate_keyring(1)
    settings = with_keyring(settings_factory(), first, database_url=private_database)
    token = await _store_one_secret(settings, first, "private-secret")

    backend = await open_backend(settings)
    try:
        only_two = generate_keyring(2)
        with pytest.raises(StartupError) as caught:
            await start_server(with_keyring(settings, only_two), backend, only_two)
        assert "[1]" in str(caught.value)

        both = Keyring(primary_key_id=2, keys={1: first.keys[1], 2: generate_keyring(2).keys[2]})
        running = await start_server(with_keyring(settings, both), backend, both)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
                revealed = await connection_service_pb2_grpc.ConnectionServiceStub(
                    channel
                ).AccessCredentials(
                    cpb.AccessCredentialsRequest(integration_id="openai", connection_id="u"),
                    metadata=(("authorization", f"Bearer {token}"),),
                )
            assert revealed.credentials.api_key.api_key == "private-secret"
        finally:
            await running.stop(0)
    finally:
        await backend.close()
