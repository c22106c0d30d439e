"""The audit trail: what is recorded, who may read it, and that it fails closed."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from credbroker.domain.models import Scope
from credbroker.v1 import audit_service_pb2 as apb
from credbroker.v1 import audit_service_pb2_grpc as apb_grpc
from credbroker.v1 import connection_service_pb2 as cpb
from credbroker.v1 import integration_service_pb2 as ipb
from credbroker.v1 import resources_pb2 as rpb

CONNECTIONS = "/credbroker.v1.ConnectionService/"


async def _setup(tenant: Any, secret: str = "sk-audit-secret") -> str:
    await tenant.integrations.CreateIntegration(
        ipb.CreateIntegrationRequest(
            integration=rpb.Integration(integration_id="openai", provider="openai")
        ),
        metadata=tenant.metadata,
    )
    created = await tenant.connections.CreateConnection(
        cpb.CreateConnectionRequest(
            connection=rpb.Connection(
                integration_id="openai",
                credentials=rpb.Credentials(api_key=rpb.ApiKeyCredentials(api_key=secret)),
            )
        ),
        metadata=tenant.metadata,
    )
    return str(created.connection_id)


def _audit(channel: grpc.aio.Channel) -> Any:
    return apb_grpc.AuditServiceStub(channel)


async def _events(channel: grpc.aio.Channel, metadata: Any) -> list[apb.AuditEvent]:
    reply = await _audit(channel).ListAuditEvents(
        apb.ListAuditEventsRequest(page_size=100), metadata=metadata
    )
    return list(reply.audit_events)


async def test_mutations_and_reveals_are_recorded(tenant: Any, channel: grpc.aio.Channel) -> None:
    connection_id = await _setup(tenant)
    access = cpb.AccessCredentialsRequest(integration_id="openai", connection_id=connection_id)
    await tenant.connections.AccessCredentials(access, metadata=tenant.metadata)
    await tenant.connections.GetConnection(
        cpb.GetConnectionRequest(integration_id="openai", connection_id=connection_id),
        metadata=tenant.metadata,
    )
    with pytest.raises(grpc.aio.AioRpcError):
        await tenant.connections.AccessCredentials(
            cpb.AccessCredentialsRequest(integration_id="openai", connection_id="missing"),
            metadata=tenant.metadata,
        )
    await tenant.connections.DeleteConnection(
        cpb.DeleteConnectionRequest(integration_id="openai", connection_id=connection_id),
        metadata=tenant.metadata,
    )

    events = await _events(channel, tenant.metadata)
    summary = [(e.method.rsplit("/", 1)[1], e.connection_id, e.outcome) for e in reversed(events)]
    assert summary == [
        ("CreateIntegration", "", "OK"),
        ("CreateConnection", connection_id, "OK"),  # the generated id is filled in
        ("AccessCredentials", connection_id, "OK"),
        ("AccessCredentials", "missing", "NOT_FOUND"),
        ("DeleteConnection", connection_id, "OK"),
    ]  # GetConnection (a read) is not audited
    key_id = tenant.key.split("_")[1]
    assert {e.key_id for e in events} == {key_id}
    assert {e.environment for e in events} == {tenant.environment}
    assert all(e.request_id and e.event_time.seconds for e in events)
    assert "sk-audit-secret" not in str(events)


async def test_denied_reveal_is_recorded(tenant: Any, channel: grpc.aio.Channel) -> None:
    connection_id = await _setup(tenant)
    reader = await tenant.key_with(Scope.CONNECTIONS_READ)
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await tenant.connections.AccessCredentials(
            cpb.AccessCredentialsRequest(integration_id="openai", connection_id=connection_id),
            metadata=reader,
        )
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    events = await _events(channel, tenant.metadata)
    assert events[0].method == CONNECTIONS + "AccessCredentials"
    assert events[0].outcome == "PERMISSION_DENIED"


async def test_audit_needs_its_scope_and_is_per_environment(
    tenant: Any, make_tenant: Any, channel: grpc.aio.Channel
) -> None:
    await _setup(tenant)
    everything_but_audit = await tenant.key_with(*(s for s in Scope if s is not Scope.AUDIT_READ))
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await _events(channel, everything_but_audit)
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "audit:read" in (denied.value.details() or "")

    other = await make_tenant()
    assert await _events(channel, other.metadata) == []
    assert len(await _events(channel, await tenant.key_with(Scope.AUDIT_READ))) == 2


async def test_audit_pages_newest_first(tenant: Any, channel: grpc.aio.Channel) -> None:
    for index in range(7):
        await tenant.integrations.CreateIntegration(
            ipb.CreateIntegrationRequest(
                integration=rpb.Integration(integration_id=f"i{index}", provider="api-key")
            ),
            metadata=tenant.metadata,
        )
    seen: list[int] = []
    token = ""
    while True:
        reply = await _audit(channel).ListAuditEvents(
            apb.ListAuditEventsRequest(page_size=3, page_token=token), metadata=tenant.metadata
        )
        seen.extend(int(e.event_id) for e in reply.audit_events)
        token = reply.next_page_token
        if not token:
            break
    assert len(seen) == 7
    assert seen == sorted(seen, reverse=True)


async def test_reveal_fails_closed_when_audit_cannot_be_written(tenant: Any, backend: Any) -> None:
    connection_id = await _setup(tenant, secret="sk-must-not-leak")
    async with backend.db.pool.acquire() as connection:
        await connection.execute(
            """CREATE OR REPLACE FUNCTION test_refuse_audit() RETURNS trigger AS $$
               BEGIN RAISE EXCEPTION 'audit sink down'; END $$ LANGUAGE plpgsql"""
        )
        await connection.execute(
            f"""CREATE TRIGGER test_refuse_audit BEFORE INSERT ON audit_events FOR EACH ROW
                WHEN (NEW.environment = '{tenant.environment}')
                EXECUTE FUNCTION test_refuse_audit()"""
        )
    try:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await tenant.connections.AccessCredentials(
                cpb.AccessCredentialsRequest(integration_id="openai", connection_id=connection_id),
                metadata=tenant.metadata,
            )
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "sk-must-not-leak" not in str(refused.value.details())
        assert "audit sink down" not in str(refused.value.details())

        with pytest.raises(grpc.aio.AioRpcError) as create_refused:
            await tenant.connections.CreateConnection(
                cpb.CreateConnectionRequest(
                    connection=rpb.Connection(
                        integration_id="openai",
                        connection_id="unrecorded",
                        credentials=rpb.Credentials(api_key=rpb.ApiKeyCredentials(api_key="x")),
                    )
                ),
                metadata=tenant.metadata,
            )
        assert create_refused.value.code() == grpc.StatusCode.UNAVAILABLE

        with pytest.raises(grpc.aio.AioRpcError) as update_refused:
            await tenant.connections.UpdateConnection(
                cpb.UpdateConnectionRequest(
                    connection=rpb.Connection(
                        integration_id="openai",
                        connection_id=connection_id,
                        credentials=rpb.Credentials(api_key=rpb.ApiKeyCredentials(api_key="new")),
                    )
                ),
                metadata=tenant.metadata,
            )
        assert update_refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        async with backend.db.pool.acquire() as connection:
            await connection.execute("DROP TRIGGER test_refuse_audit ON audit_events")

    # Nothing changed while the trail was down, and everything works again once it is back.
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await tenant.connections.GetConnection(
            cpb.GetConnectionRequest(integration_id="openai", connection_id="unrecorded"),
            metadata=tenant.metadata,
        )
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    access = await tenant.connections.AccessCredentials(
        cpb.AccessCredentialsRequest(integration_id="openai", connection_id=connection_id),
        metadata=tenant.metadata,
    )
    assert access.credentials.api_key.api_key == "sk-must-not-leak"
