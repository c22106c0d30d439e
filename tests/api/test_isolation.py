"""Tenant isolation: an environment's key never reaches another environment's rows, and a
foreign row answers exactly like a missing one (no existence oracle)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

import grpc
import pytest
from google.protobuf import field_mask_pb2, struct_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from credbroker.v1 import connection_service_pb2 as cpb
from credbroker.v1 import integration_service_pb2 as ipb
from credbroker.v1 import resources_pb2 as rpb

STATUS_TRAILER = "grpc-status-details-bin"


def api_key(value: str) -> rpb.Credentials:
    return rpb.Credentials(api_key=rpb.ApiKeyCredentials(api_key=value))


async def failure(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(cast(grpc.Call, error))
    assert status is not None
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info
    raise AssertionError("no ErrorInfo")


def status_trailer(error: grpc.aio.AioRpcError) -> bytes:
    values = [v for k, v in error.trailing_metadata() or () if k == STATUS_TRAILER]
    assert len(values) == 1
    value = values[0]
    assert isinstance(value, bytes)
    return value


def assert_same_failure(foreign: grpc.aio.AioRpcError, missing: grpc.aio.AioRpcError) -> None:
    """The error for another tenant's row is byte-identical to the one for a random id."""
    assert foreign.code() == grpc.StatusCode.NOT_FOUND, foreign.details()
    assert missing.code() == grpc.StatusCode.NOT_FOUND, missing.details()
    assert foreign.details() == missing.details()
    assert error_info(foreign) == error_info(missing)
    assert status_trailer(foreign) == status_trailer(missing)
    assert sorted(k for k, _ in foreign.trailing_metadata() or ()) == sorted(
        k for k, _ in missing.trailing_metadata() or ()
    )


@dataclass
class World:
    a: Any
    b: Any
    b_secret: str
    b_integration: rpb.Integration
    b_connection: rpb.Connection


async def _world(make_tenant: Callable[[], Awaitable[Any]]) -> World:
    a = await make_tenant()
    b = await make_tenant()
    b_secret = f"sk-b-{uuid.uuid4().hex}"
    b_integration = await b.integrations.CreateIntegration(
        ipb.CreateIntegrationRequest(
            integration=rpb.Integration(
                integration_id="shared", provider="openai", display_name="B's"
            )
        ),
        metadata=b.metadata,
    )
    metadata = struct_pb2.Struct()
    metadata.update({"owner": "b"})
    b_connection = await b.connections.CreateConnection(
        cpb.CreateConnectionRequest(
            connection=rpb.Connection(
                integration_id="shared",
                connection_id="u1",
                credentials=api_key(b_secret),
                metadata=metadata,
                connection_config={"org": "b-org"},
                tags={"end_user_id": "b-user"},
            )
        ),
        metadata=b.metadata,
    )
    return World(a, b, b_secret, b_integration, b_connection)


async def _assert_b_untouched(world: World) -> None:
    b = world.b
    integration = await b.integrations.GetIntegration(
        ipb.GetIntegrationRequest(integration_id="shared"), metadata=b.metadata
    )
    assert integration == world.b_integration
    connection = await b.connections.GetConnection(
        cpb.GetConnectionRequest(integration_id="shared", connection_id="u1"), metadata=b.metadata
    )
    assert connection == world.b_connection
    access = await b.connections.AccessCredentials(
        cpb.AccessCredentialsRequest(integration_id="shared", connection_id="u1"),
        metadata=b.metadata,
    )
    assert access.credentials.api_key.api_key == world.b_secret
    assert dict(access.connection_config) == {"org": "b-org"}
    listed = await b.connections.ListConnections(cpb.ListConnectionsRequest(), metadata=b.metadata)
    assert [(c.integration_id, c.connection_id) for c in listed.connections] == [("shared", "u1")]


def _integration_calls(tenant: Any, integration_id: str) -> dict[str, Callable[[], Awaitable[Any]]]:

    return {
        "GetIntegration": lambda: tenant.integrations.GetIntegration(
            ipb.GetIntegrationRequest(integration_id=integration_id), metadata=tenant.metadata
        ),
        "UpdateIntegration": lambda: tenant.integrations.UpdateIntegration(
            ipb.UpdateIntegrationRequest(
                integration=rpb.Integration(integration_id=integration_id, display_name="pwned"),
                update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
            ),
            metadata=tenant.metadata,
        ),
        "UpdateIntegration-empty-mask": lambda: tenant.integrations.UpdateIntegration(
            ipb.UpdateIntegrationRequest(
                integration=rpb.Integration(integration_id=integration_id)
            ),
            metadata=tenant.metadata,
        ),
        "DeleteIntegration": lambda: tenant.integrations.DeleteIntegration(
            ipb.DeleteIntegrationRequest(integration_id=integration_id), metadata=tenant.metadata
        ),
        "DeleteIntegration-force": lambda: tenant.integrations.DeleteIntegration(
            ipb.DeleteIntegrationRequest(integration_id=integration_id, force=True),
            metadata=tenant.metadata,
        ),
        "CreateConnection": lambda: tenant.connections.CreateConnection(
            cpb.CreateConnectionRequest(
                connection=rpb.Connection(
                    integration_id=integration_id, connection_id="new", credentials=api_key("x")
                )
            ),
            metadata=tenant.metadata,
        ),
    }


def _connection_calls(
    tenant: Any, integration_id: str, connection_id: str
) -> dict[str, Callable[[], Awaitable[Any]]]:

    ids: dict[str, Any] = {"integration_id": integration_id, "connection_id": connection_id}
    return {
        "GetConnection": lambda: tenant.connections.GetConnection(
            cpb.GetConnectionRequest(**ids), metadata=tenant.metadata
        ),
        "UpdateConnection-credentials": lambda: tenant.connections.UpdateConnection(
            cpb.UpdateConnectionRequest(
                connection=rpb.Connection(**ids, credentials=api_key("attacker")),
                update_mask=field_mask_pb2.FieldMask(paths=["credentials"]),
            ),
            metadata=tenant.metadata,
        ),
        "UpdateConnection-tags-with-etag": lambda: tenant.connections.UpdateConnection(
            cpb.UpdateConnectionRequest(
                connection=rpb.Connection(**ids, tags={"x": "y"}, etag="1.000000000000"),
            ),
            metadata=tenant.metadata,
        ),
        "UpdateConnection-allow-missing": lambda: tenant.connections.UpdateConnection(
            cpb.UpdateConnectionRequest(
                connection=rpb.Connection(**ids, credentials=api_key("attacker")),
                update_mask=field_mask_pb2.FieldMask(paths=["credentials"]),
                allow_missing=True,
            ),
            metadata=tenant.metadata,
        ),
        "DeleteConnection": lambda: tenant.connections.DeleteConnection(
            cpb.DeleteConnectionRequest(**ids), metadata=tenant.metadata
        ),
        "AccessCredentials": lambda: tenant.connections.AccessCredentials(
            cpb.AccessCredentialsRequest(**ids), metadata=tenant.metadata
        ),
    }


INTEGRATION_CALLS = list(_integration_calls(None, "x"))
CONNECTION_CALLS = list(_connection_calls(None, "x", "y"))


@pytest.mark.parametrize("name", INTEGRATION_CALLS)
async def test_foreign_integration_looks_missing(make_tenant: Any, name: str) -> None:
    world = await _world(make_tenant)
    foreign = await failure(_integration_calls(world.a, "shared")[name]())
    missing = await failure(_integration_calls(world.a, f"r-{uuid.uuid4().hex}")[name]())
    assert_same_failure(foreign, missing)
    assert error_info(foreign).reason == "INTEGRATION_NOT_FOUND"
    await _assert_b_untouched(world)


@pytest.mark.parametrize("name", CONNECTION_CALLS)
async def test_foreign_connection_looks_missing(make_tenant: Any, name: str) -> None:
    world = await _world(make_tenant)
    foreign = await failure(_connection_calls(world.a, "shared", "u1")[name]())
    missing = await failure(
        _connection_calls(world.a, f"r-{uuid.uuid4().hex}", f"r-{uuid.uuid4().hex}")[name]()
    )
    assert_same_failure(foreign, missing)
    assert world.b_secret not in (foreign.details() or "")
    await _assert_b_untouched(world)


@pytest.mark.parametrize("name", CONNECTION_CALLS)
async def test_foreign_connection_looks_missing_when_a_has_the_integration(
    make_tenant: Any, name: str
) -> None:
    """A owns an integration with B's id: B's connection under it is still invisible to A."""
    world = await _world(make_tenant)
    await world.a.integrations.CreateIntegration(
        ipb.CreateIntegrationRequest(
            integration=rpb.Integration(integration_id="shared", provider="openai")
        ),
        metadata=world.a.metadata,
    )
    calls = _connection_calls(world.a, "shared", "u1")
    if name == "UpdateConnection-allow-missing":
        # An upsert in A's own environment creates A's connection; B's stays untouched.
        created = await calls[name]()
        assert created.connection_id == "u1"
        access = await calls["AccessCredentials"]()
        assert access.credentials.api_key.api_key == "attacker"
    else:
        foreign = await failure(calls[name]())
        missing = await failure(
            _connection_calls(world.a, "shared", f"r-{uuid.uuid4().hex}")[name]()
        )
        assert_same_failure(foreign, missing)
        assert error_info(foreign).reason == "CONNECTION_NOT_FOUND"
    await _assert_b_untouched(world)


async def test_lists_show_only_own_rows(make_tenant: Any) -> None:
    world = await _world(make_tenant)
    a = world.a
    integrations = await a.integrations.ListIntegrations(
        ipb.ListIntegrationsRequest(page_size=1000), metadata=a.metadata
    )
    assert list(integrations.integrations) == []
    assert integrations.next_page_token == ""
    for request in (
        cpb.ListConnectionsRequest(page_size=1000),
        cpb.ListConnectionsRequest(integration_id="shared"),
        cpb.ListConnectionsRequest(tags={"end_user_id": "b-user"}),
        cpb.ListConnectionsRequest(integration_id="shared", tags={"end_user_id": "b-user"}),
    ):
        connections = await a.connections.ListConnections(request, metadata=a.metadata)
        assert list(connections.connections) == []
        assert connections.next_page_token == ""
    await _assert_b_untouched(world)


async def test_foreign_page_token_grants_nothing(make_tenant: Any) -> None:
    world = await _world(make_tenant)
    a, b = world.a, world.b
    await b.connections.CreateConnection(
        cpb.CreateConnectionRequest(
            connection=rpb.Connection(
                integration_id="shared", connection_id="u0", credentials=api_key("x")
            )
        ),
        metadata=b.metadata,
    )
    first = await b.connections.ListConnections(
        cpb.ListConnectionsRequest(page_size=1), metadata=b.metadata
    )
    assert first.next_page_token
    try:
        page = await a.connections.ListConnections(
            cpb.ListConnectionsRequest(page_size=1, page_token=first.next_page_token),
            metadata=a.metadata,
        )
    except grpc.aio.AioRpcError as error:
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    else:
        assert list(page.connections) == []


async def test_same_ids_in_two_environments_are_independent(make_tenant: Any) -> None:
    world = await _world(make_tenant)
    a = world.a
    a_secret = f"sk-a-{uuid.uuid4().hex}"
    integration = await a.integrations.CreateIntegration(
        ipb.CreateIntegrationRequest(
            integration=rpb.Integration(integration_id="shared", provider="openai")
        ),
        metadata=a.metadata,
    )
    assert integration.display_name == "OpenAI"
    connection = await a.connections.CreateConnection(
        cpb.CreateConnectionRequest(
            connection=rpb.Connection(
                integration_id="shared",
                connection_id="u1",
                credentials=api_key(a_secret),
                tags={"end_user_id": "a-user"},
            )
        ),
        metadata=a.metadata,
    )
    assert connection.connection_id == "u1"
    access = await a.connections.AccessCredentials(
        cpb.AccessCredentialsRequest(integration_id="shared", connection_id="u1"),
        metadata=a.metadata,
    )
    assert access.credentials.api_key.api_key == a_secret
    assert dict(access.connection_config) == {}
    listed = await a.connections.ListConnections(cpb.ListConnectionsRequest(), metadata=a.metadata)
    assert [dict(c.tags) for c in listed.connections] == [{"end_user_id": "a-user"}]
    await _assert_b_untouched(world)

    # A's writes and deletes touch only A's rows.
    await a.connections.UpdateConnection(
        cpb.UpdateConnectionRequest(
            connection=rpb.Connection(
                integration_id="shared", connection_id="u1", credentials=api_key("a-2")
            )
        ),
        metadata=a.metadata,
    )
    await _assert_b_untouched(world)
    await a.integrations.DeleteIntegration(
        ipb.DeleteIntegrationRequest(integration_id="shared", force=True), metadata=a.metadata
    )
    await _assert_b_untouched(world)
    # And B's deletes touch only B's rows.
    await a.integrations.CreateIntegration(
        ipb.CreateIntegrationRequest(
            integration=rpb.Integration(integration_id="shared", provider="basic")
        ),
        metadata=a.metadata,
    )
    await world.b.integrations.DeleteIntegration(
        ipb.DeleteIntegrationRequest(integration_id="shared", force=True),
        metadata=world.b.metadata,
    )
    kept = await a.integrations.GetIntegration(
        ipb.GetIntegrationRequest(integration_id="shared"), metadata=a.metadata
    )
    assert kept.provider == "basic"
