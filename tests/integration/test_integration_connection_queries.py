"""Connection listing filters, atomic metadata changes and batched read times against a real
database (what the HTTP API's GET /connections and /connections/metadata rely on)."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from credbroker.bootstrap import Backend
from credbroker.domain.errors import InvalidArgumentError
from credbroker.domain.models import (
    AuthMode,
    EncryptedConnectionSecrets,
    Environment,
    Integration,
)
from credbroker.domain.ports import NewConnection
from credbroker.storage.connections import PostgresConnectionRepository
from credbroker.storage.integrations import PostgresIntegrationRepository


def integration(environment: Environment, integration_id: str) -> Integration:
    now = datetime.now(UTC)
    return Integration(
        uuid.uuid4(),
        environment.id,
        integration_id,
        "openai",
        integration_id,
        AuthMode.API_KEY,
        now,
        now,
    )


def new_connection(
    environment: Environment, integration_id: str, connection_id: str
) -> NewConnection:
    # Blobs shaped like an envelope header (format 2) naming master key 1; never decrypted here.
    blob = b"\x02\x01" + (1).to_bytes(4, "big") + os.urandom(64)
    return NewConnection(
        id=uuid.uuid4(),
        environment_id=environment.id,
        integration_id=integration_id,
        connection_id=connection_id,
        auth_mode=AuthMode.API_KEY,
        secrets=EncryptedConnectionSecrets(blob, blob),
        metadata={"plan": "pro", "n": 1},
        tags={"env": "prod"},
        connection_config_keys=(),
    )


@pytest.fixture
def integrations(backend: Backend) -> PostgresIntegrationRepository:
    return PostgresIntegrationRepository(backend.db)


@pytest.fixture
def connections(backend: Backend) -> PostgresConnectionRepository:
    return PostgresConnectionRepository(backend.db)


async def _seed(
    integrations: PostgresIntegrationRepository,
    connections: PostgresConnectionRepository,
    environment: Environment,
) -> None:
    for integration_id in ("crm", "mail", "pay"):
        await integrations.create(integration(environment, integration_id))
    for integration_id, connection_id in [
        ("crm", "Acme-1"),
        ("crm", "beta_2"),
        ("mail", "acme-1"),
        ("mail", "100%_real"),
        ("pay", "acme-9"),
    ]:
        await connections.create(new_connection(environment, integration_id, connection_id))


async def _ids(connections: PostgresConnectionRepository, env: Environment, **filters: Any) -> Any:
    rows = await connections.list(
        env.id, integration_id=None, tags={}, after=None, limit=100, **filters
    )
    return [(c.integration_id, c.connection_id) for c in rows]


async def test_list_filters_by_several_integrations_exact_id_and_search(
    integrations: PostgresIntegrationRepository,
    connections: PostgresConnectionRepository,
    environment: Environment,
    make_environment: Any,
) -> None:
    await _seed(integrations, connections, environment)
    other = await make_environment()
    await integrations.create(integration(other, "crm"))
    await connections.create(new_connection(other, "crm", "acme-1"))

    assert await _ids(connections, environment, integration_ids=["crm", "pay"]) == [
        ("crm", "Acme-1"),
        ("crm", "beta_2"),
        ("pay", "acme-9"),
    ]
    # connectionId is exact (case-sensitive) and may match several integrations.
    assert await _ids(connections, environment, connection_id="acme-1") == [("mail", "acme-1")]
    # search is a case-insensitive substring; its own % and _ are literal characters.
    assert await _ids(connections, environment, search="ACME") == [
        ("crm", "Acme-1"),
        ("mail", "acme-1"),
        ("pay", "acme-9"),
    ]
    assert await _ids(connections, environment, search="%_") == [("mail", "100%_real")]
    assert await _ids(connections, environment, search="_") == [
        ("crm", "beta_2"),
        ("mail", "100%_real"),
    ]
    assert await _ids(
        connections, environment, integration_ids=["mail"], search="acme", connection_id="acme-1"
    ) == [("mail", "acme-1")]
    # The other environment's identical ids never show.
    assert await _ids(connections, other, search="acme") == [("crm", "acme-1")]


async def test_update_metadata_of_several_connections_in_one_transaction(
    integrations: PostgresIntegrationRepository,
    connections: PostgresConnectionRepository,
    environment: Environment,
) -> None:
    await _seed(integrations, connections, environment)

    def merge(current: Mapping[str, Any]) -> Mapping[str, Any]:
        return {**current, "plan": "team"}

    updated = await connections.update_metadata(
        environment.id, "crm", ["beta_2", "Acme-1", "beta_2"], merge
    )
    assert updated is not None
    assert [c.connection_id for c in updated] == ["Acme-1", "beta_2"]
    assert all(c.metadata == {"plan": "team", "n": 1} for c in updated)
    assert all(c.version == 2 for c in updated)

    # One unknown id: nothing changes, not even the known ones.
    assert (
        await connections.update_metadata(
            environment.id, "crm", ["Acme-1", "missing"], lambda _: {"x": 1}
        )
        is None
    )
    # A connection of another integration is unknown here too.
    assert await connections.update_metadata(environment.id, "crm", ["acme-1"], dict) is None
    stored = await connections.get(environment.id, "crm", "Acme-1")
    assert stored is not None and stored.metadata == {"plan": "team", "n": 1}

    # An exception raised while computing rolls every change back.
    def refuse_second(current: Mapping[str, Any]) -> Mapping[str, Any]:
        if current.get("seen"):
            raise InvalidArgumentError.single("metadata", "too large")
        return {"seen": True}

    await connections.update_metadata(environment.id, "mail", ["acme-1"], refuse_second)
    with pytest.raises(InvalidArgumentError):
        await connections.update_metadata(
            environment.id, "mail", ["100%_real", "acme-1"], refuse_second
        )
    untouched = await connections.get(environment.id, "mail", "100%_real")
    assert untouched is not None and untouched.metadata == {"plan": "pro", "n": 1}


async def test_concurrent_metadata_merges_lose_no_key(
    integrations: PostgresIntegrationRepository,
    connections: PostgresConnectionRepository,
    environment: Environment,
) -> None:
    await _seed(integrations, connections, environment)

    async def add(key: str) -> None:
        await connections.update_metadata(
            environment.id, "crm", ["Acme-1", "beta_2"], lambda current: {**current, key: True}
        )

    await asyncio.gather(*(add(f"k{i}") for i in range(8)))
    for connection_id in ("Acme-1", "beta_2"):
        stored = await connections.get(environment.id, "crm", connection_id)
        assert stored is not None
        assert {f"k{i}" for i in range(8)} <= set(stored.metadata)


async def test_record_fetches_keeps_the_latest_and_skips_deleted_rows(
    integrations: PostgresIntegrationRepository,
    connections: PostgresConnectionRepository,
    environment: Environment,
) -> None:
    await integrations.create(integration(environment, "crm"))
    kept = await connections.create(new_connection(environment, "crm", "kept"))
    gone = await connections.create(new_connection(environment, "crm", "gone"))
    assert kept.last_fetch_time is None
    await connections.delete(environment.id, "crm", "gone")

    later = datetime.now(UTC).replace(microsecond=0)
    earlier = later - timedelta(minutes=5)
    await connections.record_fetches({kept.id: later, gone.id: later})
    await connections.record_fetches({kept.id: earlier})  # an older batch arriving late
    await connections.record_fetches({})

    stored = await connections.get(environment.id, "crm", "kept")
    assert stored is not None and stored.last_fetch_time == later
    listed = await connections.list(
        environment.id, integration_id="crm", tags={}, after=None, limit=10
    )
    assert [c.last_fetch_time for c in listed] == [later]
    # Recording a read is not a change: version and update time stay.
    assert stored.version == kept.version and stored.update_time == kept.update_time
