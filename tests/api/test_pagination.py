"""Keyset pagination of ListIntegrations and ListConnections: complete, ordered, duplicate-free
across pages, stable under concurrent inserts, with filters, default and capped page sizes."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Iterable
from typing import Any

import pytest

from credbroker.v1 import connection_service_pb2 as cpb
from credbroker.v1 import integration_service_pb2 as ipb
from credbroker.v1 import resources_pb2 as rpb

ConnectionKey = tuple[str, str]


def api_key(value: str) -> rpb.Credentials:
    return rpb.Credentials(api_key=rpb.ApiKeyCredentials(api_key=value))


async def gather_in_chunks(calls: Iterable[Awaitable[Any]], size: int = 50) -> None:
    pending = list(calls)
    for start in range(0, len(pending), size):
        await asyncio.gather(*pending[start : start + size])


async def create_integration(tenant: Any, integration_id: str) -> rpb.Integration:
    result: rpb.Integration = await tenant.integrations.CreateIntegration(
        ipb.CreateIntegrationRequest(
            integration=rpb.Integration(integration_id=integration_id, provider="openai")
        ),
        metadata=tenant.metadata,
    )
    return result


async def create_integrations(tenant: Any, ids: Iterable[str]) -> None:
    shuffled = list(ids)
    random.Random(7).shuffle(shuffled)  # creation order must not matter
    # Coroutines, not stub calls: a stub call starts its RPC at once, chunking would not bound it.
    await gather_in_chunks(create_integration(tenant, i) for i in shuffled)


async def create_connection(
    tenant: Any, integration_id: str, connection_id: str, tags: dict[str, str] | None = None
) -> rpb.Connection:
    result: rpb.Connection = await tenant.connections.CreateConnection(
        cpb.CreateConnectionRequest(
            connection=rpb.Connection(
                integration_id=integration_id,
                connection_id=connection_id,
                credentials=api_key(f"sk-{connection_id}"),
                tags=tags or {},
            )
        ),
        metadata=tenant.metadata,
    )
    return result


async def create_connections(
    tenant: Any,
    keys: Iterable[ConnectionKey],
    tags: dict[ConnectionKey, dict[str, str]] | None = None,
) -> None:
    shuffled = list(keys)
    random.Random(11).shuffle(shuffled)
    await gather_in_chunks(
        create_connection(tenant, i, c, (tags or {}).get((i, c))) for i, c in shuffled
    )


async def all_integration_pages(tenant: Any, page_size: int) -> list[list[str]]:
    pages: list[list[str]] = []
    token = ""
    while True:
        response = await tenant.integrations.ListIntegrations(
            ipb.ListIntegrationsRequest(page_size=page_size, page_token=token),
            metadata=tenant.metadata,
        )
        pages.append([i.integration_id for i in response.integrations])
        token = response.next_page_token
        if not token:
            return pages
        assert len(pages) < 1000, "pagination does not terminate"


async def all_connection_pages(
    tenant: Any, page_size: int, integration_id: str = "", tags: dict[str, str] | None = None
) -> list[list[ConnectionKey]]:
    pages: list[list[ConnectionKey]] = []
    token = ""
    while True:
        response = await tenant.connections.ListConnections(
            cpb.ListConnectionsRequest(
                integration_id=integration_id,
                tags=tags or {},
                page_size=page_size,
                page_token=token,
            ),
            metadata=tenant.metadata,
        )
        for connection in response.connections:
            assert not connection.HasField("credentials")
            assert connection.credentials_set
        pages.append([(c.integration_id, c.connection_id) for c in response.connections])
        token = response.next_page_token
        if not token:
            return pages
        assert len(pages) < 1000, "pagination does not terminate"


def flatten(pages: list[list[Any]]) -> list[Any]:
    return [item for page in pages for item in page]


# ---------------------------------------------------------------------------------------------


async def test_empty_lists(tenant: Any) -> None:
    assert await all_integration_pages(tenant, 5) == [[]]
    assert await all_connection_pages(tenant, 5) == [[]]


async def test_list_integrations_across_pages(tenant: Any) -> None:
    ids = [f"int-{n:02d}" for n in range(23)]
    await create_integrations(tenant, ids)
    pages = await all_integration_pages(tenant, 5)
    assert [len(p) for p in pages] == [5, 5, 5, 5, 3]
    assert flatten(pages) == sorted(ids)


async def test_list_connections_across_pages(tenant: Any) -> None:
    await create_integrations(tenant, ["alpha", "beta", "gamma"])
    keys = [("alpha", f"c{n:02d}") for n in range(8)]
    keys += [("beta", f"c{n:02d}") for n in range(7)]
    keys += [("gamma", f"c{n:02d}") for n in range(8)]
    await create_connections(tenant, keys)
    pages = await all_connection_pages(tenant, 5)
    assert [len(p) for p in pages] == [5, 5, 5, 5, 3]
    assert flatten(pages) == sorted(keys)


async def test_exact_multiple_has_no_empty_trailing_page(tenant: Any) -> None:
    ids = [f"i{n:02d}" for n in range(20)]
    await create_integrations(tenant, ids)
    pages = await all_integration_pages(tenant, 5)
    assert [len(p) for p in pages] == [5, 5, 5, 5]
    await create_connections(tenant, [("i00", f"c{n:02d}") for n in range(10)])
    connection_pages = await all_connection_pages(tenant, 5)
    assert [len(p) for p in connection_pages] == [5, 5]


@pytest.mark.parametrize("page_size", [1, 2, 3, 7, 23, 24, 1000])
async def test_every_page_size_yields_each_item_once(tenant: Any, page_size: int) -> None:
    await create_integrations(tenant, ["a", "b"])
    keys = [(i, f"u{n:02d}") for i in ("a", "b") for n in range(12)][:23]
    await create_connections(tenant, keys)
    pages = await all_connection_pages(tenant, page_size)
    assert flatten(pages) == sorted(keys)
    assert all(len(p) == page_size for p in pages[:-1])
    assert 1 <= len(pages[-1]) <= page_size


async def test_ids_with_punctuation_page_consistently(tenant: Any) -> None:
    """Pages concatenate to the single-page listing whatever the collation orders first."""
    integration_ids = ["a", "a-b", "a.b", "a:b", "a@b", "a~b", "a_b", "A", "B1", "b", "0x"]
    await create_integrations(tenant, integration_ids)
    connection_ids = ["u", "u+1", "u-1", "u.1", "u:1", "u@1", "u~1", "u_1", "U", "u10", "u2"]
    keys = [(i, c) for i in integration_ids[:3] for c in connection_ids]
    await create_connections(tenant, keys)

    (single,) = await all_integration_pages(tenant, 1000)
    assert sorted(single) == sorted(integration_ids)
    for page_size in (1, 2, 4):
        assert flatten(await all_integration_pages(tenant, page_size)) == single

    (single_connections,) = await all_connection_pages(tenant, 1000)
    assert sorted(single_connections) == sorted(keys)
    for page_size in (1, 3, 5):
        paged = flatten(await all_connection_pages(tenant, page_size))
        assert paged == single_connections


async def test_integration_filter_with_paging(tenant: Any) -> None:
    await create_integrations(tenant, ["a", "b", "c"])
    keys = [(i, f"u{n:02d}") for i in ("a", "b", "c") for n in range(7)]
    await create_connections(tenant, keys)
    pages = await all_connection_pages(tenant, 3, integration_id="b")
    assert [len(p) for p in pages] == [3, 3, 1]
    assert flatten(pages) == [("b", f"u{n:02d}") for n in range(7)]
    assert await all_connection_pages(tenant, 3, integration_id="nope") == [[]]


async def test_tags_filter_requires_every_tag_with_paging(tenant: Any) -> None:
    await create_integrations(tenant, ["a", "b"])
    keys: list[ConnectionKey] = []
    tags: dict[ConnectionKey, dict[str, str]] = {}
    for n in range(23):
        key = ("a" if n % 2 else "b", f"u{n:02d}")
        keys.append(key)
        tags[key] = {"team": "red" if n % 3 else "blue", "tier": "gold" if n % 4 else "free"}
        if n % 5 == 0:
            tags[key]["extra"] = "x"  # superset of the filter: still a match
    keys.append(("a", "team-only"))
    tags[("a", "team-only")] = {"team": "red"}
    keys.append(("a", "untagged"))
    await create_connections(tenant, keys, tags)

    wanted = {"team": "red", "tier": "gold"}
    expected = sorted(
        k for k in keys if all(tags.get(k, {}).get(t) == v for t, v in wanted.items())
    )
    assert 5 < len(expected) < len(keys) - 2
    pages = await all_connection_pages(tenant, 2, tags=wanted)
    assert flatten(pages) == expected
    assert ("a", "team-only") not in flatten(pages)

    # Combined with the integration filter.
    pages = await all_connection_pages(tenant, 2, integration_id="a", tags=wanted)
    assert flatten(pages) == [k for k in expected if k[0] == "a"]

    # A single tag, and a value nobody has.
    pages = await all_connection_pages(tenant, 4, tags={"team": "blue"})
    assert flatten(pages) == sorted(k for k in keys if tags.get(k, {}).get("team") == "blue")
    assert await all_connection_pages(tenant, 4, tags={"team": "green"}) == [[]]


async def test_tag_filter_order_does_not_invalidate_the_token(tenant: Any) -> None:
    await create_integrations(tenant, ["a"])
    keys = [("a", f"u{n}") for n in range(4)]
    await create_connections(tenant, keys, {k: {"x": "1", "y": "2", "z": "3"} for k in keys})
    first = await tenant.connections.ListConnections(
        cpb.ListConnectionsRequest(tags={"x": "1", "y": "2", "z": "3"}, page_size=2),
        metadata=tenant.metadata,
    )
    request = cpb.ListConnectionsRequest(page_size=2, page_token=first.next_page_token)
    for key in ("z", "y", "x"):  # the same filter, built in another order
        request.tags[key] = {"x": "1", "y": "2", "z": "3"}[key]
    second = await tenant.connections.ListConnections(request, metadata=tenant.metadata)
    assert [c.connection_id for c in first.connections] == ["u0", "u1"]
    assert [c.connection_id for c in second.connections] == ["u2", "u3"]
    assert second.next_page_token == ""


async def test_inserts_between_pages_cause_no_duplicates(tenant: Any) -> None:
    ids = [f"m{n:02d}" for n in range(23)]
    await create_integrations(tenant, ids)
    first = await tenant.integrations.ListIntegrations(
        ipb.ListIntegrationsRequest(page_size=5), metadata=tenant.metadata
    )
    seen = [i.integration_id for i in first.integrations]
    assert seen == ids[:5]
    # Before the cursor (and before everything): must not show up, nor shift later pages.
    await create_integrations(tenant, ["a-early", "m00a", "m03z"])
    # After the cursor: keyset pagination picks it up.
    await create_integrations(tenant, ["m10a", "z-late"])
    # Deleting a row already returned must not make the next page skip anything.
    await tenant.integrations.DeleteIntegration(
        ipb.DeleteIntegrationRequest(integration_id="m04"), metadata=tenant.metadata
    )
    token = first.next_page_token
    while token:
        page = await tenant.integrations.ListIntegrations(
            ipb.ListIntegrationsRequest(page_size=5, page_token=token), metadata=tenant.metadata
        )
        seen += [i.integration_id for i in page.integrations]
        token = page.next_page_token
    assert len(seen) == len(set(seen))
    assert seen == sorted([*ids, "m10a", "z-late"])


async def test_connection_inserts_between_pages_cause_no_duplicates(tenant: Any) -> None:
    await create_integrations(tenant, ["a", "b"])
    keys = [(i, f"u{n:02d}") for i in ("a", "b") for n in range(10)]
    await create_connections(tenant, keys)
    first = await tenant.connections.ListConnections(
        cpb.ListConnectionsRequest(page_size=6), metadata=tenant.metadata
    )
    seen = [(c.integration_id, c.connection_id) for c in first.connections]
    assert seen == sorted(keys)[:6]
    await create_connections(tenant, [("a", "u00a"), ("a", "t"), ("a", "u04a")])  # before cursor
    await create_connections(tenant, [("a", "u07a"), ("b", "u99")])  # after cursor
    token = first.next_page_token
    while token:
        page = await tenant.connections.ListConnections(
            cpb.ListConnectionsRequest(page_size=6, page_token=token), metadata=tenant.metadata
        )
        seen += [(c.integration_id, c.connection_id) for c in page.connections]
        token = page.next_page_token
    assert len(seen) == len(set(seen))
    assert seen == sorted([*keys, ("a", "u07a"), ("b", "u99")])


async def test_page_size_zero_means_fifty(tenant: Any) -> None:
    ids = [f"i{n:02d}" for n in range(55)]
    await create_integrations(tenant, ids)
    first = await tenant.integrations.ListIntegrations(
        ipb.ListIntegrationsRequest(page_size=0), metadata=tenant.metadata
    )
    assert [i.integration_id for i in first.integrations] == ids[:50]
    assert first.next_page_token
    rest = await tenant.integrations.ListIntegrations(
        ipb.ListIntegrationsRequest(page_token=first.next_page_token), metadata=tenant.metadata
    )
    assert [i.integration_id for i in rest.integrations] == ids[50:]
    assert rest.next_page_token == ""

    keys = [("i00", f"c{n:02d}") for n in range(55)]
    await create_connections(tenant, keys)
    page = await tenant.connections.ListConnections(
        cpb.ListConnectionsRequest(), metadata=tenant.metadata
    )
    assert [(c.integration_id, c.connection_id) for c in page.connections] == keys[:50]
    assert page.next_page_token


@pytest.mark.slow
async def test_page_size_above_1000_is_capped_for_integrations(tenant: Any) -> None:
    ids = [f"i{n:04d}" for n in range(1003)]
    await create_integrations(tenant, ids)
    for page_size in (1001, 5000, 2**31 - 1):
        first = await tenant.integrations.ListIntegrations(
            ipb.ListIntegrationsRequest(page_size=page_size), metadata=tenant.metadata
        )
        assert [i.integration_id for i in first.integrations] == ids[:1000], page_size
        assert first.next_page_token
        rest = await tenant.integrations.ListIntegrations(
            ipb.ListIntegrationsRequest(page_size=page_size, page_token=first.next_page_token),
            metadata=tenant.metadata,
        )
        assert [i.integration_id for i in rest.integrations] == ids[1000:]
        assert rest.next_page_token == ""
    exact = await tenant.integrations.ListIntegrations(
        ipb.ListIntegrationsRequest(page_size=1000), metadata=tenant.metadata
    )
    assert len(exact.integrations) == 1000


@pytest.mark.slow
async def test_page_size_above_1000_is_capped_for_connections(tenant: Any) -> None:
    await create_integrations(tenant, ["a"])
    keys = [("a", f"c{n:04d}") for n in range(1002)]
    await create_connections(tenant, keys)
    first = await tenant.connections.ListConnections(
        cpb.ListConnectionsRequest(page_size=2**31 - 1), metadata=tenant.metadata
    )
    assert [(c.integration_id, c.connection_id) for c in first.connections] == keys[:1000]
    assert first.next_page_token
    rest = await tenant.connections.ListConnections(
        cpb.ListConnectionsRequest(page_size=1001, page_token=first.next_page_token),
        metadata=tenant.metadata,
    )
    assert [(c.integration_id, c.connection_id) for c in rest.connections] == keys[1000:]
    assert rest.next_page_token == ""
