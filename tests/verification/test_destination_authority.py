"""Issue 9, finding 1: whatever decides where stored credentials go changes only with
``credentials:read``, or in the call that replaces the credentials; nothing is dialed otherwise.

The settings are derived from the catalog templates (every placeholder of ``base_url``), so the
rule also covers providers added later and integration settings of non-generic providers."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2

from credbroker.app import start_server
from credbroker.domain.models import Scope
from credbroker.domain.providers import (
    ConfigField,
    Provider,
    ProviderCatalog,
    Verification,
    default_catalog,
)
from credbroker.v1 import connection_service_pb2 as cpb
from credbroker.v1 import integration_service_pb2 as ipb
from credbroker.v1 import resources_pb2 as rpb

from .conftest import Client, FakeProvider, api_key, basic

DENIED = grpc.StatusCode.PERMISSION_DENIED
WRITER = (Scope.CONNECTIONS_WRITE, Scope.CONNECTIONS_READ, Scope.INTEGRATIONS_WRITE)


def _update(
    integration_id: str,
    connection_id: str,
    *,
    config: dict[str, str] | None = None,
    credentials: rpb.Credentials | None = None,
    paths: list[str],
) -> cpb.UpdateConnectionRequest:
    connection = rpb.Connection(
        integration_id=integration_id, connection_id=connection_id, connection_config=config or {}
    )
    if credentials is not None:
        connection.credentials.CopyFrom(credentials)
    return cpb.UpdateConnectionRequest(
        connection=connection, update_mask=field_mask_pb2.FieldMask(paths=paths)
    )


@pytest.mark.parametrize(
    ("provider", "credentials", "original"),
    [
        ("gitlab-pat", api_key("glpat-victim"), "gitlab.victim.example"),
        ("woocommerce", basic("ck_victim", "cs_victim"), "shop.victim.example"),
    ],
)
async def test_writer_cannot_repoint_stored_credentials(
    session_client: Client, provider: str, credentials: rpb.Credentials, original: str
) -> None:
    client = session_client
    integration_id = await client.integration(provider)
    created = await client.create(integration_id, credentials, config={"host": original}, skip=True)
    writer = await client.key_with(*WRITER)
    for config in ({"host": "exfil.attacker.example"}, {}):  # {} = back to the default
        if provider == "woocommerce" and not config:
            continue  # woocommerce has no default host: {} is refused as incomplete
        error, info = await client.fails(
            client.connections.UpdateConnection(
                _update(
                    integration_id,
                    created.connection_id,
                    config=config,
                    paths=["connection_config"],
                ),
                metadata=writer,
            ),
            DENIED,
        )
        assert info.reason == "MISSING_SCOPE" and info.metadata["scope"] == "credentials:read"
        assert "exfil" not in (error.details() or "")
    revealed = await client.access(integration_id, created.connection_id)
    assert revealed.base_url.startswith(f"https://{original}")

    # With the credentials in the same call, the caller sends its own secret: allowed.
    await client.connections.UpdateConnection(
        _update(
            integration_id,
            created.connection_id,
            config={"host": "other.example"},
            credentials=credentials,
            paths=["connection_config", "credentials"],
        ),
        metadata=writer,
        timeout=10,
    )
    # A key that may read the credentials may also move them.
    trusted = await client.key_with(*WRITER, Scope.CREDENTIALS_READ)
    await client.connections.UpdateConnection(
        _update(
            integration_id,
            created.connection_id,
            config={"host": "third.example"},
            paths=["connection_config"],
        ),
        metadata=trusted,
        timeout=10,
    )
    assert (await client.access(integration_id, created.connection_id)).base_url.startswith(
        "https://third.example"
    )


async def test_writer_may_change_config_that_does_not_move_credentials(
    session_client: Client,
) -> None:
    client = session_client
    integration_id = await client.integration("anthropic")
    created = await client.create(integration_id, api_key("sk-ant-x"), skip=True)
    writer = await client.key_with(*WRITER)
    updated = await client.connections.UpdateConnection(
        _update(
            integration_id,
            created.connection_id,
            config={"version": "2024-01-01", "team": "a"},
            paths=["connection_config"],
        ),
        metadata=writer,
        timeout=10,
    )
    assert sorted(updated.connection_config_keys) == ["team", "version"]


def test_destination_fields_come_from_the_templates() -> None:
    from credbroker.domain.destinations import destination_fields

    catalog = default_catalog()
    assert destination_fields(catalog.providers["gitlab-pat"], "connection_config") == {"host"}
    assert destination_fields(catalog.providers["zendesk"], "connection_config") == {"subdomain"}
    assert destination_fields(catalog.providers["anthropic"], "connection_config") == frozenset()
    assert destination_fields(catalog.providers["api-key"], "integration_config") >= {
        "base_url",
        "verification_path",
        "query_param",
    }


def test_fixed_domain_providers_constrain_their_host_fields() -> None:
    """Every host placeholder of a provider with a fixed domain refuses another domain; only
    providers whose API lives on the customer's own host (self-managed GitLab, WooCommerce
    stores) accept any host, and the rule above protects those."""
    open_hosts = set()
    for provider in default_catalog().providers.values():
        if provider.generic:
            continue
        host = re.sub(r"^https://", "", provider.base_url).split("/", 1)[0]
        for kind, name in re.findall(r"\$\{([a-z_]+)\.([A-Za-z0-9_.\-]+)\}", host):
            fields = (
                provider.connection_config
                if kind == "connection_config"
                else provider.integration_config
            )
            field = next(f for f in fields if f.name == name)
            assert field.pattern is not None, provider.name
            for hostile in ("attacker.example", "a.attacker.example", "evil.com#", "x/y", "x@y"):
                if field.pattern.fullmatch(hostile):
                    open_hosts.add(provider.name)
    assert open_hosts == {"gitlab-pat", "woocommerce"}


@pytest.fixture
def hosted_catalog(test_catalog: ProviderCatalog) -> ProviderCatalog:
    """The test catalog plus providers whose host comes from config (pointing at the fakes)."""
    openai = test_catalog.providers["openai"]
    host = ConfigField("host", "host", pattern=re.compile(r"127\.0\.0\.1:[0-9]+"))
    by_connection = dataclasses.replace(
        openai,
        name="hosted",
        base_url="http://${connection_config.host}/openai",
        connection_config=(host,),
        verification=Verification("GET", ("/v1/models",)),
    )
    by_integration: Provider = dataclasses.replace(
        by_connection,
        name="regional",
        base_url="http://${integration_config.host}/openai",
        connection_config=(),
        integration_config=(host,),
    )
    return ProviderCatalog(
        {**test_catalog.providers, "hosted": by_connection, "regional": by_integration}
    )


async def test_nothing_is_dialed_at_a_host_chosen_without_authority(
    verify_settings: Any,
    vbackend: Any,
    keyring: Any,
    hosted_catalog: ProviderCatalog,
    make_vclient: Any,
    fake: FakeProvider,
    other_origin: FakeProvider,
) -> None:
    """Verification on: the writer's re-point is refused before any request, VerifyConnection
    and background re-checks keep going to the host the credentials were stored for."""
    running = await start_server(
        verify_settings(recheck_interval=0.2, recheck_max_age=0.1),
        vbackend,
        keyring,
        catalog=hosted_catalog,
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            from credbroker.v1 import connection_service_pb2_grpc, integration_service_pb2_grpc

            client: Client = await make_vclient()
            client.integrations = integration_service_pb2_grpc.IntegrationServiceStub(channel)
            client.connections = connection_service_pb2_grpc.ConnectionServiceStub(channel)
            fake.accept("sk-victim")
            own = f"127.0.0.1:{fake.port}"
            elsewhere = f"127.0.0.1:{other_origin.port}"
            integration_id = await client.integration("hosted")
            created = await client.create(
                integration_id, api_key("sk-victim"), config={"host": own}
            )
            writer = await client.key_with(*WRITER)
            await client.fails(
                client.connections.UpdateConnection(
                    _update(
                        integration_id,
                        created.connection_id,
                        config={"host": elsewhere},
                        paths=["connection_config"],
                    ),
                    metadata=writer,
                ),
                DENIED,
            )
            await client.connections.VerifyConnection(
                cpb.VerifyConnectionRequest(
                    integration_id=integration_id, connection_id=created.connection_id
                ),
                metadata=writer,
                timeout=10,
            )
            # Integration settings named by base_url are guarded the same way.
            regional = await client.integration("regional", {"host": own})
            await client.create(regional, api_key("sk-victim"))
            await client.fails(
                client.integrations.UpdateIntegration(
                    ipb.UpdateIntegrationRequest(
                        integration=rpb.Integration(
                            integration_id=regional, integration_config={"host": elsewhere}
                        ),
                        update_mask=field_mask_pb2.FieldMask(paths=["integration_config"]),
                    ),
                    metadata=writer,
                ),
                DENIED,
            )
            await client.fails(
                client.integrations.CreateIntegration(
                    ipb.CreateIntegrationRequest(
                        integration=rpb.Integration(
                            integration_id="regional-2",
                            provider="regional",
                            integration_config={"host": elsewhere},
                        )
                    ),
                    metadata=writer,
                ),
                DENIED,
            )
            import asyncio

            await asyncio.sleep(1.0)  # a few background re-check rounds
    finally:
        await running.stop(0)
    assert other_origin.requests_with("sk-victim") == []
    assert len(fake.requests_with("sk-victim")) >= 3  # create x2, verify, re-checks
