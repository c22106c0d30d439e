"""Connect-session submissions are verified with the provider exactly like CreateConnection,
against the local fake provider: a refused key stores nothing and counts as a failed attempt, an
unreachable provider says so, an accepted key makes a VERIFIED connection."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import httpx
import pytest_asyncio

from credbroker.app import RunningServer
from credbroker.v1 import connection_service_pb2 as cpb
from credbroker.v1 import resources_pb2 as rpb

if TYPE_CHECKING:
    from verification.conftest import Client, FakeProvider


@pytest_asyncio.fixture
async def vhttp(vserver: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=vserver.public_url, timeout=10) as client:
        yield client


async def _token(vhttp: httpx.AsyncClient, vclient: Client, **body: Any) -> str:
    response = await vhttp.post(
        "/connect/sessions", json=body, headers={"authorization": f"Bearer {vclient.key}"}
    )
    assert response.status_code == 201, response.text
    return str(response.json()["data"]["token"])


async def test_refused_key_stores_nothing_and_counts(
    vhttp: httpx.AsyncClient, vclient: Client, fake: FakeProvider
) -> None:
    integration_id = await vclient.integration("openai")
    token = await _token(vhttp, vclient, end_user={"id": "u1"})
    auth = {"authorization": f"Bearer {token}"}
    refused = await vhttp.post(
        f"/api-auth/api-key/{integration_id}", json={"apiKey": "sk-refused-by-fake"}, headers=auth
    )
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["code"] == "connection_test_failed"
    assert error["payload"] == {"provider": "openai", "provider_status": "401"}
    assert "sk-refused-by-fake" not in refused.text
    listed = await vclient.connections.ListConnections(
        cpb.ListConnectionsRequest(integration_id=integration_id), metadata=vclient.metadata
    )
    assert list(listed.connections) == []
    assert fake.requests_with("sk-refused-by-fake")  # the provider was asked

    fake.accept("sk-accepted")
    accepted = await vhttp.post(
        f"/api-auth/api-key/{integration_id}", json={"apiKey": "sk-accepted"}, headers=auth
    )
    assert accepted.status_code == 200, accepted.text
    connection = await vclient.get(integration_id, accepted.json()["connectionId"])
    assert connection.verification.state == rpb.Verification.VERIFIED
    assert connection.end_user.id == "u1"


async def test_unreachable_provider_says_so(
    vhttp: httpx.AsyncClient, vclient: Client, fake: FakeProvider
) -> None:
    integration_id = await vclient.integration("openai")
    token = await _token(vhttp, vclient)
    fake.fail("/openai/v1/models", 503)
    response = await vhttp.post(
        f"/api-auth/api-key/{integration_id}",
        json={"apiKey": "sk-any"},
        headers={"authorization": f"Bearer {token}"},
    )
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "provider_unavailable"
