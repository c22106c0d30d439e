"""The list methods iterate over every page: small page sizes give the same complete, ordered,
duplicate-free results as one big page."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from credbroker.client import AuthMode
from credbroker.v1 import integration_service_pb2 as ipb
from credbroker.v1 import resources_pb2 as rpb

Invoke = Callable[..., Awaitable[Any]]


async def test_server_pages_are_bounded_by_page_size(tenant: Any) -> None:
    """The premise of the tests below: one page holds at most ``page_size`` items."""
    for name in ("a", "b", "c"):
        await tenant.integrations.CreateIntegration(
            ipb.CreateIntegrationRequest(
                integration=rpb.Integration(integration_id=name, provider="openai")
            ),
            metadata=tenant.metadata,
        )
    page = await tenant.integrations.ListIntegrations(
        ipb.ListIntegrationsRequest(page_size=2), metadata=tenant.metadata
    )
    assert len(page.integrations) == 2 and page.next_page_token


async def test_integrations_across_pages(invoke: Invoke, tenant: Any) -> None:
    ids = [f"integration-{n:02d}" for n in range(7)]
    for integration_id in reversed(ids):
        await invoke(tenant.key, "create_integration", integration_id, "openai")
    for page_size in (1, 2, 3, 7, 8):
        listed = await invoke(tenant.key, "list_integrations", page_size=page_size)
        assert [i.integration_id for i in listed] == ids, page_size


async def test_connections_across_pages_with_filters(invoke: Invoke, tenant: Any) -> None:
    expected = []
    for integration_id in ("alpha", "beta"):
        await invoke(tenant.key, "create_integration", integration_id, "openai")
        for n in range(4):
            connection_id = f"user-{n}"
            group = "even" if n % 2 == 0 else "odd"
            await invoke(
                tenant.key,
                "create_connection",
                integration_id,
                connection_id=connection_id,
                api_key=f"sk-{integration_id}-{n}",
                tags={"group": group},
            )
            expected.append((integration_id, connection_id, group))
    listed = await invoke(tenant.key, "list_connections", page_size=3)
    assert [(c.integration_id, c.connection_id, c.tags["group"]) for c in listed] == expected
    evens = await invoke(tenant.key, "list_connections", tags={"group": "even"}, page_size=1)
    assert [(c.integration_id, c.connection_id) for c in evens] == [
        (i, c) for i, c, group in expected if group == "even"
    ]
    beta = await invoke(tenant.key, "list_connections", "beta", page_size=2)
    assert [c.connection_id for c in beta] == ["user-0", "user-1", "user-2", "user-3"]


async def test_providers_across_pages(invoke: Invoke, tenant: Any) -> None:
    one_page = await invoke(tenant.key, "list_providers", page_size=1000)
    paged = await invoke(tenant.key, "list_providers", page_size=9)
    assert len(one_page) > 100
    assert paged == one_page
    api_keys = await invoke(tenant.key, "list_providers", AuthMode.API_KEY, page_size=9)
    assert api_keys == [p for p in one_page if p.auth_mode is AuthMode.API_KEY]
    by_name = await invoke(tenant.key, "list_providers", "BASIC", page_size=4)
    assert by_name == [p for p in one_page if p.auth_mode is AuthMode.BASIC]


async def test_audit_events_across_pages(invoke: Invoke, tenant: Any) -> None:
    await invoke(tenant.key, "create_integration", "audited", "openai")
    for n in range(3):
        await invoke(tenant.key, "create_connection", "audited", connection_id=f"c{n}", api_key="k")
        await invoke(tenant.key, "access_credentials", "audited", f"c{n}")
    everything = await invoke(tenant.key, "list_audit_events", page_size=1000)
    paged = await invoke(tenant.key, "list_audit_events", page_size=2)
    assert len(everything) == 7
    assert paged == everything
    assert [int(e.event_id) for e in paged] == sorted(
        (int(e.event_id) for e in paged), reverse=True
    )
    one = await invoke(tenant.key, "list_audit_events", connection_id="c1", page_size=1)
    assert [e.method.rsplit("/", 1)[1] for e in one] == ["AccessCredentials", "CreateConnection"]
