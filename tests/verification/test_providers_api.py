"""IntegrationService.ListProviders and GetProvider through the session server."""

from __future__ import annotations

from typing import Any

import grpc

from credbroker.domain.models import AuthMode, Scope
from credbroker.domain.providers import default_catalog
from credbroker.v1 import integration_service_pb2 as ipb
from credbroker.v1 import resources_pb2 as rpb


async def all_providers(
    client: Any,
    auth_mode: rpb.AuthMode.ValueType = rpb.AUTH_MODE_UNSPECIFIED,
    page_size: int = 25,
) -> list[Any]:
    providers: list[Any] = []
    token = ""
    for _ in range(100):
        page = await client.integrations.ListProviders(
            ipb.ListProvidersRequest(auth_mode=auth_mode, page_size=page_size, page_token=token),
            metadata=client.metadata,
        )
        assert len(page.providers) <= page_size
        providers.extend(page.providers)
        token = page.next_page_token
        if not token:
            return providers
    raise AssertionError("ListProviders never reached its last page")


async def test_list_providers_pages_through_the_whole_catalog(session_client: Any) -> None:
    providers = await all_providers(session_client)
    names = [p.name for p in providers]
    assert len(names) >= 60
    assert names == sorted(names)
    assert len(set(names)) == len(names), "a provider appeared on two pages"
    assert names == sorted(default_catalog().providers)

    first = await session_client.integrations.ListProviders(
        ipb.ListProvidersRequest(page_size=25), metadata=session_client.metadata
    )
    assert len(first.providers) == 25
    assert first.next_page_token


async def test_list_providers_by_auth_mode(session_client: Any) -> None:
    api_key = await all_providers(session_client, rpb.AUTH_MODE_API_KEY)
    basic = await all_providers(session_client, rpb.AUTH_MODE_BASIC)
    assert api_key and basic
    assert {p.auth_mode for p in api_key} == {rpb.AUTH_MODE_API_KEY}
    assert {p.auth_mode for p in basic} == {rpb.AUTH_MODE_BASIC}
    everything = await all_providers(session_client, page_size=1000)
    assert sorted(p.name for p in api_key + basic) == [p.name for p in everything]
    assert len(api_key) == len(default_catalog().list(AuthMode.API_KEY))


async def test_page_token_is_bound_to_the_filter(session_client: Any) -> None:
    page = await session_client.integrations.ListProviders(
        ipb.ListProvidersRequest(auth_mode=rpb.AUTH_MODE_API_KEY, page_size=5),
        metadata=session_client.metadata,
    )
    await session_client.fails(
        session_client.integrations.ListProviders(
            ipb.ListProvidersRequest(
                auth_mode=rpb.AUTH_MODE_BASIC, page_size=5, page_token=page.next_page_token
            ),
            metadata=session_client.metadata,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )


async def test_get_provider(session_client: Any) -> None:
    provider = await session_client.integrations.GetProvider(
        ipb.GetProviderRequest(name="anthropic"), metadata=session_client.metadata
    )
    assert provider.name == "anthropic"
    assert provider.display_name == "Anthropic"
    assert provider.auth_mode == rpb.AUTH_MODE_API_KEY
    assert provider.base_url == "https://api.anthropic.com"
    assert provider.docs.startswith("https://")
    assert "ai" in provider.categories
    assert provider.verifies_credentials
    (version,) = provider.connection_config
    assert version.name == "version"
    assert version.default_value == "2023-06-01"
    assert version.pattern == r"^\d{4}-\d{2}-\d{2}$"
    assert not version.optional

    jira = await session_client.integrations.GetProvider(
        ipb.GetProviderRequest(name="jira-basic"), metadata=session_client.metadata
    )
    assert jira.auth_mode == rpb.AUTH_MODE_BASIC
    assert jira.base_url == "https://${connection_config.subdomain}.atlassian.net"

    generic = await session_client.integrations.GetProvider(
        ipb.GetProviderRequest(name="api-key"), metadata=session_client.metadata
    )
    assert {f.name for f in generic.integration_config} >= {
        "base_url",
        "header_name",
        "value_template",
        "query_param",
        "verification_path",
    }

    stripe = await session_client.integrations.GetProvider(
        ipb.GetProviderRequest(name="stripe-api-key"), metadata=session_client.metadata
    )
    assert not stripe.verifies_credentials


async def test_get_provider_errors(session_client: Any) -> None:
    _, info = await session_client.fails(
        session_client.integrations.GetProvider(
            ipb.GetProviderRequest(name="no-such-provider"), metadata=session_client.metadata
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    assert info.reason == "PROVIDER_NOT_FOUND"
    await session_client.fails(
        session_client.integrations.GetProvider(
            ipb.GetProviderRequest(name=""), metadata=session_client.metadata
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )


async def test_providers_need_integrations_read(session_client: Any) -> None:
    metadata = await session_client.key_with(Scope.CONNECTIONS_READ)
    await session_client.fails(
        session_client.integrations.ListProviders(ipb.ListProvidersRequest(), metadata=metadata),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    await session_client.fails(
        session_client.integrations.GetProvider(
            ipb.GetProviderRequest(name="openai"), metadata=metadata
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    reader = await session_client.key_with(Scope.INTEGRATIONS_READ)
    page = await session_client.integrations.ListProviders(
        ipb.ListProvidersRequest(page_size=1), metadata=reader
    )
    assert len(page.providers) == 1
