"""A generic provider's integration config decides where credentials are sent, so setting it
needs ``credentials:read`` on top of ``integrations:write``; other providers do not."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2

from credbroker.domain.models import Scope
from credbroker.v1 import integration_service_pb2 as ipb
from credbroker.v1 import resources_pb2 as rpb

CONFIG = {"base_url": "https://attacker.example.com", "verification_path": "/collect"}


def create_request(provider: str, config: dict[str, str]) -> ipb.CreateIntegrationRequest:
    return ipb.CreateIntegrationRequest(
        integration=rpb.Integration(
            integration_id=f"{provider}-{uuid.uuid4().hex[:8]}",
            provider=provider,
            integration_config=config,
        )
    )


def update_request(integration_id: str, config: dict[str, str]) -> ipb.UpdateIntegrationRequest:
    return ipb.UpdateIntegrationRequest(
        integration=rpb.Integration(integration_id=integration_id, integration_config=config),
        update_mask=field_mask_pb2.FieldMask(paths=["integration_config"]),
    )


@pytest.mark.parametrize("provider", ["api-key", "basic"])
async def test_create_with_generic_config_needs_credentials_read(
    session_client: Any, provider: str
) -> None:
    writer = await session_client.key_with(Scope.INTEGRATIONS_WRITE)
    _, info = await session_client.fails(
        session_client.integrations.CreateIntegration(
            create_request(provider, CONFIG), metadata=writer
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    assert info.reason == "MISSING_SCOPE"
    assert info.metadata["scope"] == "credentials:read"

    trusted = await session_client.key_with(Scope.INTEGRATIONS_WRITE, Scope.CREDENTIALS_READ)
    created = await session_client.integrations.CreateIntegration(
        create_request(provider, CONFIG), metadata=trusted
    )
    assert dict(created.integration_config) == CONFIG

    # Without config, a generic integration only stores keys: no extra scope needed.
    plain = await session_client.integrations.CreateIntegration(
        create_request(provider, {}), metadata=writer
    )
    assert dict(plain.integration_config) == {}


@pytest.mark.parametrize("provider", ["api-key", "basic"])
async def test_update_of_generic_config_needs_credentials_read(
    session_client: Any, provider: str
) -> None:
    writer = await session_client.key_with(Scope.INTEGRATIONS_WRITE, Scope.INTEGRATIONS_READ)
    integration_id = await session_client.integration(provider, metadata=writer)

    _, info = await session_client.fails(
        session_client.integrations.UpdateIntegration(
            update_request(integration_id, CONFIG), metadata=writer
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    assert info.reason == "MISSING_SCOPE"
    assert info.metadata["scope"] == "credentials:read"
    unchanged = await session_client.integrations.GetIntegration(
        ipb.GetIntegrationRequest(integration_id=integration_id), metadata=writer
    )
    assert dict(unchanged.integration_config) == {}

    # An empty mask means "the fields set": the config is still being set.
    await session_client.fails(
        session_client.integrations.UpdateIntegration(
            ipb.UpdateIntegrationRequest(
                integration=rpb.Integration(
                    integration_id=integration_id, integration_config=CONFIG
                )
            ),
            metadata=writer,
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )

    trusted = await session_client.key_with(Scope.INTEGRATIONS_WRITE, Scope.CREDENTIALS_READ)
    updated = await session_client.integrations.UpdateIntegration(
        update_request(integration_id, CONFIG), metadata=trusted
    )
    assert dict(updated.integration_config) == CONFIG

    # Redirecting an already configured integration elsewhere is refused as well.
    await session_client.fails(
        session_client.integrations.UpdateIntegration(
            update_request(integration_id, {**CONFIG, "base_url": "https://other.example.com"}),
            metadata=writer,
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )


async def test_non_generic_providers_do_not_need_credentials_read(session_client: Any) -> None:
    writer = await session_client.key_with(Scope.INTEGRATIONS_WRITE)
    created = await session_client.integrations.CreateIntegration(
        create_request("openai", {"note": "team-a"}), metadata=writer
    )
    assert dict(created.integration_config) == {"note": "team-a"}
    updated = await session_client.integrations.UpdateIntegration(
        update_request(created.integration_id, {"note": "team-b"}), metadata=writer
    )
    assert dict(updated.integration_config) == {"note": "team-b"}
    assert updated.provider == "openai"
