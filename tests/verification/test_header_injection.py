"""Issue 9, finding 6: CR, LF, NUL and other control characters never reach the headers, query
parameters or URLs that AccessCredentials hands out: refused on write for every value rendered
there, and checked again when rendering (for values stored before)."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import field_mask_pb2

from credbroker.v1 import connection_service_pb2 as cpb
from credbroker.v1 import integration_service_pb2 as ipb
from credbroker.v1 import resources_pb2 as rpb

from .conftest import Client, api_key

BAD = ["app\r\nX-Injected: yes", "a\nb", "nul\x00", "tab\tx", "del\x7f", "c1\x85", "ls\u2028"]


@pytest.mark.parametrize("value", BAD)
async def test_connection_config_rendered_into_headers_refuses_control_chars(
    session_client: Client, value: str
) -> None:
    client = session_client
    integration_id = await client.integration("datadog")
    error, _ = await client.fails(
        client.create(integration_id, api_key("dd-key"), config={"application_key": value}),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "connection.connection_config[application_key]" in client.violated_fields(error)
    created = await client.create(integration_id, api_key("dd-key"), skip=True)
    await client.fails(
        client.connections.UpdateConnection(
            cpb.UpdateConnectionRequest(
                connection=rpb.Connection(
                    integration_id=integration_id,
                    connection_id=created.connection_id,
                    connection_config={"application_key": value},
                ),
                update_mask=field_mask_pb2.FieldMask(paths=["connection_config"]),
            ),
            metadata=client.metadata,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )


@pytest.mark.parametrize("field", ["value_template", "header_name", "query_param", "base_url"])
async def test_generic_integration_config_refuses_control_chars(
    session_client: Client, field: str
) -> None:
    value = {"value_template": "Bearer ${credentials.api_key}\r\nX-Injected: yes"}.get(
        field, "x\r\ny"
    )
    await session_client.fails(
        session_client.integrations.CreateIntegration(
            ipb.CreateIntegrationRequest(
                integration=rpb.Integration(
                    integration_id=f"g-{field}",
                    provider="api-key",
                    integration_config={field: value},
                )
            ),
            metadata=session_client.metadata,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )


async def test_stored_control_chars_are_refused_at_render(
    session_client: Client, backend: object
) -> None:
    client = session_client
    integration_id = await client.integration(
        "api-key", {"value_template": "Token ${credentials.api_key}"}
    )
    created = await client.create(integration_id, api_key("k-1"), skip=True)
    # As if stored by an older version: straight into the table.
    await backend.db.execute(  # type: ignore[attr-defined]
        """UPDATE integrations SET integration_config = $1::jsonb WHERE integration_id = $2
           AND environment_id = (SELECT id FROM environments WHERE name = $3)""",
        {"value_template": "Token ${credentials.api_key}\r\nX-Injected: yes"},
        integration_id,
        client.environment,
    )
    _, info = await client.fails(
        client.access(integration_id, created.connection_id), grpc.StatusCode.FAILED_PRECONDITION
    )
    assert info.reason == "CONFIG_HAS_CONTROL_CHARACTERS"
