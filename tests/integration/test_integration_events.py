"""The connection-event outbox against real PostgreSQL: every change writes its event in the same
transaction, and nothing else does."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import asyncpg
import grpc
import pytest
from google.protobuf import field_mask_pb2

from credbroker.app import key_service, start_server
from credbroker.bootstrap import Backend, BoundCipher, open_backend
from credbroker.crypto import EnvelopeCipher, Keyring
from credbroker.domain.events import ConnectionEventType
from credbroker.domain.models import ALL_SCOPES, VerificationRecord, VerificationState
from credbroker.domain.rotation import KeyRotationService
from credbroker.storage.connections import PostgresConnectionRepository
from credbroker.storage.events import PostgresEventStore
from credbroker.storage.master_keys import PostgresMasterKeyRepository
from credbroker.v1 import connection_service_pb2 as cpb
from credbroker.v1 import connection_service_pb2_grpc, integration_service_pb2_grpc
from credbroker.v1 import integration_service_pb2 as ipb
from credbroker.v1 import resources_pb2 as rpb

EVENT_COLUMNS = {
    "position",
    "event_id",
    "environment_id",
    "environment",
    "event_type",
    "event_time",
    "connection_row_id",
    "integration_id",
    "connection_id",
    "provider",
    "auth_mode",
    "tags",
    "end_user",
    "error_type",
    "error_description",
}


async def _events(backend: Backend, environment: str) -> list[asyncpg.Record]:
    return await backend.db.fetch(
        "SELECT * FROM connection_events WHERE environment = $1 ORDER BY position", environment
    )


async def _setup(tenant: Any, integration_id: str = "openai-prod") -> None:
    await tenant.integrations.CreateIntegration(
        ipb.CreateIntegrationRequest(
            integration=rpb.Integration(integration_id=integration_id, provider="openai")
        ),
        metadata=tenant.metadata,
    )


def _key(value: str) -> rpb.Credentials:
    return rpb.Credentials(api_key=rpb.ApiKeyCredentials(api_key=value))


async def _create(tenant: Any, connection_id: str, key: str = "sk-first", **tags: str) -> Any:
    return await tenant.connections.CreateConnection(
        cpb.CreateConnectionRequest(
            connection=rpb.Connection(
                integration_id="openai-prod",
                connection_id=connection_id,
                credentials=_key(key),
                tags=tags,
            ),
            skip_verification=True,
        ),
        metadata=tenant.metadata,
    )


async def _update(tenant: Any, connection: rpb.Connection, *paths: str, **kw: Any) -> Any:
    return await tenant.connections.UpdateConnection(
        cpb.UpdateConnectionRequest(
            connection=connection,
            update_mask=field_mask_pb2.FieldMask(paths=list(paths)),
            skip_verification=True,
            **kw,
        ),
        metadata=tenant.metadata,
    )


async def test_every_change_writes_one_event_with_the_change(backend: Backend, tenant: Any) -> None:
    await _setup(tenant)
    await _create(tenant, "user-1", end_user_id="u1")
    ids: dict[str, Any] = {"integration_id": "openai-prod", "connection_id": "user-1"}
    # Tags and metadata only: not an event.
    await _update(tenant, rpb.Connection(**ids, tags={"end_user_id": "u2"}), "tags")
    await _update(tenant, rpb.Connection(**ids, credentials=_key("sk-2")), "credentials")
    # An upsert that creates is a creation.
    await _update(
        tenant,
        rpb.Connection(integration_id="openai-prod", connection_id="user-2", credentials=_key("k")),
        "credentials",
        allow_missing=True,
    )
    await tenant.connections.DeleteConnection(
        cpb.DeleteConnectionRequest(integration_id="openai-prod", connection_id="user-1"),
        metadata=tenant.metadata,
    )
    rows = await _events(backend, tenant.environment)
    assert [(r["event_type"], r["connection_id"]) for r in rows] == [
        ("connection.created", "user-1"),
        ("connection.credentials_replaced", "user-1"),
        ("connection.created", "user-2"),
        ("connection.deleted", "user-1"),
    ]
    assert set(rows[0].keys()) == EVENT_COLUMNS  # no column that could hold a secret
    assert rows[0]["tags"] == {"end_user_id": "u1"}
    assert rows[1]["tags"] == {"end_user_id": "u2"}
    assert rows[3]["tags"] == {"end_user_id": "u2"}  # as it was when deleted
    assert {r["provider"] for r in rows} == {"openai"}
    assert {r["auth_mode"] for r in rows} == {"api_key"}
    assert len({r["event_id"] for r in rows}) == 4
    positions = [r["position"] for r in rows]
    assert positions == sorted(positions)
    text = repr([dict(r) for r in rows])
    assert "sk-first" not in text and "sk-2" not in text


async def test_refused_changes_write_no_event(backend: Backend, tenant: Any) -> None:
    await _setup(tenant)
    await _create(tenant, "user-1")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _create(tenant, "user-1")  # duplicate: rolled back
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(grpc.aio.AioRpcError):
        await _update(
            tenant,
            rpb.Connection(
                integration_id="openai-prod",
                connection_id="user-1",
                credentials=_key("x"),
                etag="999",
            ),
            "credentials",
        )
    with pytest.raises(grpc.aio.AioRpcError):
        await tenant.connections.DeleteConnection(
            cpb.DeleteConnectionRequest(integration_id="openai-prod", connection_id="nobody"),
            metadata=tenant.metadata,
        )
    assert [r["event_type"] for r in await _events(backend, tenant.environment)] == [
        "connection.created"
    ]


async def test_verification_transitions_are_events(backend: Backend, tenant: Any) -> None:
    await _setup(tenant)
    created = await _create(tenant, "user-1")
    repository = PostgresConnectionRepository(backend.db)
    stored = await repository.get(
        (await tenant.keys.environment(tenant.environment)).id, "openai-prod", "user-1"
    )
    assert stored is not None and created.connection_id == "user-1"
    now = datetime.now(UTC)
    for state, status in [
        (VerificationState.VERIFIED, 200),
        (VerificationState.REJECTED, 401),  # failed
        (VerificationState.REJECTED, 401),  # still failing: quiet
        (VerificationState.ERROR, 503),  # still failing: quiet
        (VerificationState.VERIFIED, 200),  # recovered
        (VerificationState.ERROR, 0),  # failed (provider unreachable)
        (VerificationState.UNVERIFIED, 0),  # quiet
    ]:
        record = VerificationRecord(state, now, status)
        assert await repository.record_verification(stored.environment_id, stored.id, record)
    rows = await _events(backend, tenant.environment)
    assert [(r["event_type"], r["error_type"]) for r in rows] == [
        ("connection.created", ""),
        ("connection.verification_failed", "credentials_rejected"),
        ("connection.verification_recovered", ""),
        ("connection.verification_failed", "provider_unavailable"),
    ]
    assert "HTTP 401" in rows[1]["error_description"]


async def test_rewrap_writes_no_event(
    fresh_database_url: str, keyring: Keyring, settings_factory: Any
) -> None:
    """Key rotation rewrites every blob; no connection changed, so no credentials_replaced."""
    settings = settings_factory(database_url=fresh_database_url)
    backend = await open_backend(settings)
    try:
        keys = key_service(backend)
        await keys.create_environment("rot")
        token, _ = await keys.create_key("rot", ALL_SCOPES)
        running = await start_server(settings, backend, keyring)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
                tenant = SimpleNamespace(
                    metadata=(("authorization", f"Bearer {token}"),),
                    integrations=integration_service_pb2_grpc.IntegrationServiceStub(channel),
                    connections=connection_service_pb2_grpc.ConnectionServiceStub(channel),
                )
                await _setup(tenant)
                for i in range(3):
                    await _create(tenant, f"user-{i}")
        finally:
            await running.stop(0)
        rotated = keyring.with_new_key(primary=True)
        rotation = KeyRotationService(
            PostgresMasterKeyRepository(backend.db),
            BoundCipher(EnvelopeCipher(rotated), accept_binding_v1=False),
            rotated.primary_key_id,
        )
        assert (await rotation.rewrap_all()).rewrapped == 3
        assert [r["event_type"] for r in await _events(backend, "rot")] == [
            "connection.created"
        ] * 3
    finally:
        await backend.close()


async def test_retention_purges_and_remembers_how_far(backend: Backend, tenant: Any) -> None:
    await _setup(tenant)
    for i in range(3):
        await _create(tenant, f"user-{i}")
    environment_id = (await tenant.keys.environment(tenant.environment)).id
    rows = await _events(backend, tenant.environment)
    store = PostgresEventStore(backend.db)
    await backend.db.execute(
        """UPDATE connection_events SET event_time = now() - interval '2 days'
           WHERE position = ANY($1)""",
        [r["position"] for r in rows[:2]],
    )
    deleted = 0
    while True:
        n = await store.purge(datetime.now(UTC) - timedelta(days=1), 1000)
        deleted += n
        if n == 0:
            break
    assert deleted >= 2
    remaining = await _events(backend, tenant.environment)
    assert [r["position"] for r in remaining] == [rows[2]["position"]]
    assert await store.purged_through(environment_id) == rows[1]["position"]
    assert await store.latest_position(environment_id) == rows[2]["position"]
    assert [e.event_type for e in await store.list_after(environment_id, 0, 10)] == [
        ConnectionEventType.CREATED
    ]
