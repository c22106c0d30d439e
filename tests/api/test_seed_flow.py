"""The README's seed flow end to end through a real server: create an integration, store a
credential, fetch it back, for both auth modes."""

from __future__ import annotations

from google.protobuf import struct_pb2

from credbroker.v1 import connection_service_pb2 as cpb
from credbroker.v1 import integration_service_pb2 as ipb
from credbroker.v1 import resources_pb2 as rpb


async def test_api_key_seed_flow(tenant) -> None:  # type: ignore[no-untyped-def]
    integration = await tenant.integrations.CreateIntegration(
        ipb.CreateIntegrationRequest(
            integration=rpb.Integration(integration_id="openai-prod", provider="openai")
        ),
        metadata=tenant.metadata,
    )
    assert integration.auth_mode == rpb.AUTH_MODE_API_KEY
    assert integration.display_name == "OpenAI"
    assert integration.create_time.seconds > 0

    metadata = struct_pb2.Struct()
    metadata.update({"plan": "pro", "seats": 3})
    created = await tenant.connections.CreateConnection(
        cpb.CreateConnectionRequest(
            connection=rpb.Connection(
                integration_id="openai-prod",
                connection_id="user-42",
                credentials=rpb.Credentials(api_key=rpb.ApiKeyCredentials(api_key="sk-test-123")),
                metadata=metadata,
                connection_config={"organization": "org-1"},
                tags={"end_user_id": "42"},
            )
        ),
        metadata=tenant.metadata,
    )
    assert created.credentials_set
    assert not created.HasField("credentials")
    assert list(created.connection_config_keys) == ["organization"]
    assert "sk-test-123" not in str(created)

    fetched = await tenant.connections.GetConnection(
        cpb.GetConnectionRequest(integration_id="openai-prod", connection_id="user-42"),
        metadata=tenant.metadata,
    )
    assert fetched.metadata["plan"] == "pro"
    assert dict(fetched.tags) == {"end_user_id": "42"}
    assert "sk-test-123" not in str(fetched)

    access = await tenant.connections.AccessCredentials(
        cpb.AccessCredentialsRequest(integration_id="openai-prod", connection_id="user-42"),
        metadata=tenant.metadata,
    )
    assert access.credentials.api_key.api_key == "sk-test-123"
    assert dict(access.connection_config) == {"organization": "org-1"}
    assert access.auth_mode == rpb.AUTH_MODE_API_KEY


async def test_basic_seed_flow_with_generated_id(tenant) -> None:  # type: ignore[no-untyped-def]
    await tenant.integrations.CreateIntegration(
        ipb.CreateIntegrationRequest(
            integration=rpb.Integration(integration_id="jira", provider="jira-basic")
        ),
        metadata=tenant.metadata,
    )
    created = await tenant.connections.CreateConnection(
        cpb.CreateConnectionRequest(
            connection=rpb.Connection(
                integration_id="jira",
                credentials=rpb.Credentials(
                    basic=rpb.BasicCredentials(username="ann@example.com", password="tok")
                ),
                connection_config={"subdomain": "acme"},
            )
        ),
        metadata=tenant.metadata,
    )
    assert created.connection_id  # generated
    assert created.auth_mode == rpb.AUTH_MODE_BASIC
    access = await tenant.connections.AccessCredentials(
        cpb.AccessCredentialsRequest(integration_id="jira", connection_id=created.connection_id),
        metadata=tenant.metadata,
    )
    assert access.credentials.basic.username == "ann@example.com"
    assert access.credentials.basic.password == "tok"
    assert access.connection_config["subdomain"] == "acme"
