"""WebhookService over a real server: validation naming the field, the outbound policy, the
signing secret shown once and stored encrypted, isolation, audit, redelivery and listing."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, field_mask_pb2

from credbroker.app import start_server
from credbroker.v1 import audit_service_pb2 as apb
from credbroker.v1 import audit_service_pb2_grpc as agrpc
from credbroker.v1 import connection_service_pb2 as cpb
from credbroker.v1 import integration_service_pb2 as ipb
from credbroker.v1 import resources_pb2 as rpb
from credbroker.v1 import webhook_service_pb2 as wpb
from credbroker.v1 import webhook_service_pb2_grpc as wgrpc

# Never contacted: the session server's dispatcher would fail to reach it and retry later.
PUBLIC_URL = "https://93.184.215.14/hooks"


def _stub(channel: grpc.aio.Channel) -> Any:
    return wgrpc.WebhookServiceStub(channel)


async def _fails(call: Any, code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == code, caught.value.details()
    return caught.value


async def test_create_list_update_delete(
    channel: grpc.aio.Channel, tenant: Any, backend: Any
) -> None:
    stub = _stub(channel)
    created = await stub.CreateWebhookEndpoint(
        wpb.CreateWebhookEndpointRequest(
            url=PUBLIC_URL, events=["connection.created"], description="billing"
        ),
        metadata=tenant.metadata,
    )
    secret = created.signing_secret
    assert secret.startswith("cbwhsec_")
    endpoint = created.endpoint
    assert list(endpoint.events) == ["connection.created"] and not endpoint.disabled
    listed = await stub.ListWebhookEndpoints(
        wpb.ListWebhookEndpointsRequest(), metadata=tenant.metadata
    )
    assert [e.endpoint_id for e in listed.endpoints] == [endpoint.endpoint_id]
    assert secret not in str(listed)
    # Stored encrypted: the secret is nowhere in the row.
    row = await backend.db.fetchrow(
        "SELECT * FROM webhook_endpoints WHERE id = $1::uuid", endpoint.endpoint_id
    )
    assert secret.encode() not in b"".join(
        bytes(v) if isinstance(v, bytes | memoryview) else str(v).encode() for v in row.values()
    )
    updated = await stub.UpdateWebhookEndpoint(
        wpb.UpdateWebhookEndpointRequest(
            endpoint=wpb.WebhookEndpoint(endpoint_id=endpoint.endpoint_id, disabled=True),
            update_mask=field_mask_pb2.FieldMask(paths=["disabled", "events"]),
        ),
        metadata=tenant.metadata,
    )
    assert updated.disabled and list(updated.events) == []
    await stub.DeleteWebhookEndpoint(
        wpb.DeleteWebhookEndpointRequest(endpoint_id=endpoint.endpoint_id),
        metadata=tenant.metadata,
    )
    error = await _fails(
        stub.DeleteWebhookEndpoint(
            wpb.DeleteWebhookEndpointRequest(endpoint_id=endpoint.endpoint_id),
            metadata=tenant.metadata,
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    assert "WEBHOOK_ENDPOINT_NOT_FOUND" in str(error.trailing_metadata())
    events = await agrpc.AuditServiceStub(channel).ListAuditEvents(
        apb.ListAuditEventsRequest(), metadata=tenant.metadata
    )
    methods = [e.method.rsplit("/", 1)[1] for e in events.audit_events]
    assert {"CreateWebhookEndpoint", "UpdateWebhookEndpoint", "DeleteWebhookEndpoint"} <= set(
        methods
    )
    assert secret not in str(events)


@pytest.mark.parametrize(
    ("url", "events", "field"),
    [
        ("", [], "url"),
        ("ftp://example.com/x", [], "url"),
        ("https://user:pw@example.com/x", [], "url"),
        ("https://example.com/x#frag", [], "url"),
        ("https://exa mple.com/x", [], "url"),
        ("https://" + "a" * 2050 + ".com", [], "url"),
        (PUBLIC_URL, ["connection.created", "connection.exploded"], "events[1]"),
    ],
)
async def test_invalid_endpoints_name_the_field(
    channel: grpc.aio.Channel, tenant: Any, url: str, events: list[str], field: str
) -> None:
    error = await _fails(
        _stub(channel).CreateWebhookEndpoint(
            wpb.CreateWebhookEndpointRequest(url=url, events=events), metadata=tenant.metadata
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert field in (error.details() or "")
    assert "user:pw" not in str(error.trailing_metadata())


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/hook",
        "https://10.1.2.3/hook",
        "https://[::1]/hook",
        "https://169.254.169.254/latest",
        "http://93.184.215.14/plain-http",
        "https://localhost/hook",
    ],
)
async def test_private_and_plain_http_destinations_are_refused(
    channel: grpc.aio.Channel, tenant: Any, url: str
) -> None:
    error = await _fails(
        _stub(channel).CreateWebhookEndpoint(
            wpb.CreateWebhookEndpointRequest(url=url), metadata=tenant.metadata
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert "DESTINATION_NOT_ALLOWED" in str(error.trailing_metadata())


async def test_endpoints_of_another_environment_are_invisible(
    channel: grpc.aio.Channel, make_tenant: Any
) -> None:
    mine, theirs = await make_tenant(), await make_tenant()
    stub = _stub(channel)
    created = await stub.CreateWebhookEndpoint(
        wpb.CreateWebhookEndpointRequest(url=PUBLIC_URL), metadata=theirs.metadata
    )
    endpoint_id = created.endpoint.endpoint_id
    listed = await stub.ListWebhookEndpoints(
        wpb.ListWebhookEndpointsRequest(), metadata=mine.metadata
    )
    assert list(listed.endpoints) == []
    for call in (
        stub.DeleteWebhookEndpoint(
            wpb.DeleteWebhookEndpointRequest(endpoint_id=endpoint_id), metadata=mine.metadata
        ),
        stub.RotateWebhookSecret(
            wpb.RotateWebhookSecretRequest(endpoint_id=endpoint_id), metadata=mine.metadata
        ),
        stub.UpdateWebhookEndpoint(
            wpb.UpdateWebhookEndpointRequest(
                endpoint=wpb.WebhookEndpoint(endpoint_id=endpoint_id, description="x"),
                update_mask=field_mask_pb2.FieldMask(paths=["description"]),
            ),
            metadata=mine.metadata,
        ),
    ):
        await _fails(call, grpc.StatusCode.NOT_FOUND)
    await _fails(
        stub.DeleteWebhookEndpoint(
            wpb.DeleteWebhookEndpointRequest(endpoint_id="not-a-uuid"), metadata=mine.metadata
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )


async def test_rotation_bounds_and_at_most_twenty_endpoints(
    channel: grpc.aio.Channel, tenant: Any
) -> None:
    stub = _stub(channel)
    ids = []
    for _ in range(20):
        created = await stub.CreateWebhookEndpoint(
            wpb.CreateWebhookEndpointRequest(url=PUBLIC_URL), metadata=tenant.metadata
        )
        ids.append(created.endpoint.endpoint_id)
    error = await _fails(
        stub.CreateWebhookEndpoint(
            wpb.CreateWebhookEndpointRequest(url=PUBLIC_URL), metadata=tenant.metadata
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert "TOO_MANY_WEBHOOK_ENDPOINTS" in str(error.trailing_metadata())
    await _fails(
        stub.RotateWebhookSecret(
            wpb.RotateWebhookSecretRequest(
                endpoint_id=ids[0], overlap=duration_pb2.Duration(seconds=8 * 86400)
            ),
            metadata=tenant.metadata,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    rotated = await stub.RotateWebhookSecret(
        wpb.RotateWebhookSecretRequest(endpoint_id=ids[0]), metadata=tenant.metadata
    )
    assert rotated.signing_secret.startswith("cbwhsec_")
    assert rotated.endpoint.HasField("previous_secret_expire_time")


async def test_deliveries_are_listed_and_redelivered(
    settings_factory: Any, backend: Any, keyring: Any, tenant: Any
) -> None:
    """A server that does not dispatch: deliveries stay pending and are listed; a redelivery
    of a retained event is a new delivery with the same event."""
    running = await start_server(settings_factory(webhook_dispatch=False), backend, keyring)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = _stub(channel)
            created = await stub.CreateWebhookEndpoint(
                wpb.CreateWebhookEndpointRequest(url=PUBLIC_URL, events=["connection.deleted"]),
                metadata=tenant.metadata,
            )
            endpoint_id = created.endpoint.endpoint_id
            await tenant.integrations.CreateIntegration(
                ipb.CreateIntegrationRequest(
                    integration=rpb.Integration(integration_id="openai-prod", provider="openai")
                ),
                metadata=tenant.metadata,
            )
            for i in range(3):
                await tenant.connections.CreateConnection(
                    cpb.CreateConnectionRequest(
                        connection=rpb.Connection(
                            integration_id="openai-prod",
                            connection_id=f"u-{i}",
                            credentials=rpb.Credentials(
                                api_key=rpb.ApiKeyCredentials(api_key="sk-x")
                            ),
                        ),
                        skip_verification=True,
                    ),
                    metadata=tenant.metadata,
                )
                await tenant.connections.DeleteConnection(
                    cpb.DeleteConnectionRequest(
                        integration_id="openai-prod", connection_id=f"u-{i}"
                    ),
                    metadata=tenant.metadata,
                )
            first = await stub.ListWebhookDeliveries(
                wpb.ListWebhookDeliveriesRequest(endpoint_id=endpoint_id, page_size=2),
                metadata=tenant.metadata,
            )
            assert len(first.deliveries) == 2 and first.next_page_token
            rest = await stub.ListWebhookDeliveries(
                wpb.ListWebhookDeliveriesRequest(
                    endpoint_id=endpoint_id, page_size=2, page_token=first.next_page_token
                ),
                metadata=tenant.metadata,
            )
            deliveries = [*first.deliveries, *rest.deliveries]
            assert [d.event.connection_id for d in deliveries] == ["u-2", "u-1", "u-0"]
            assert {d.event.event_type for d in deliveries} == {"connection.deleted"}
            assert {d.state for d in deliveries} == {wpb.WebhookDelivery.STATE_PENDING}
            event_id = deliveries[-1].event.event_id
            again = await stub.RedeliverWebhookEvent(
                wpb.RedeliverWebhookEventRequest(endpoint_id=endpoint_id, event_id=event_id),
                metadata=tenant.metadata,
            )
            assert again.redelivery and again.event.event_id == event_id
            by_event = await stub.ListWebhookDeliveries(
                wpb.ListWebhookDeliveriesRequest(event_id=event_id), metadata=tenant.metadata
            )
            assert len(by_event.deliveries) == 2
            await _fails(
                stub.RedeliverWebhookEvent(
                    wpb.RedeliverWebhookEventRequest(
                        endpoint_id=endpoint_id, event_id="00000000-0000-4000-8000-000000000000"
                    ),
                    metadata=tenant.metadata,
                ),
                grpc.StatusCode.NOT_FOUND,
            )
            await _fails(
                stub.ListWebhookDeliveries(
                    wpb.ListWebhookDeliveriesRequest(endpoint_id=endpoint_id, page_token="x"),
                    metadata=tenant.metadata,
                ),
                grpc.StatusCode.INVALID_ARGUMENT,
            )
            await asyncio.sleep(0)
    finally:
        await running.stop(0)
