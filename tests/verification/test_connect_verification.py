"""Connect-session submissions are verified with the provider exactly like CreateConnection,
against the local fake provider: a refused key stores nothing and counts as a failed attempt, an
unreachable provider says so, an accepted key makes a VERIFIED connection."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc
import httpx
import pytest
import pytest_asyncio

from credbroker.app import RunningServer
from credbroker.domain.connect_sessions import ATTEMPT_LEASE_MARGIN, token_hash
from credbroker.v1 import connection_service_pb2 as cpb
from credbroker.v1 import integration_service_pb2_grpc
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


@pytest.mark.parametrize("rpc_timeout", [4.0, 120.0])
async def test_a_submission_claims_its_session_for_the_call_deadline_and_a_margin(
    start_vserver: Any,
    make_vclient: Any,
    fake: FakeProvider,
    vbackend: Any,
    poll: Any,
    rpc_timeout: float,
) -> None:
    """A submission holds its session as long as the server's deadline per call lets it run,
    plus a margin: not a fixed minute (after a crash mid-submission the end user waited a full
    minute however short the deadline, and a deadline above a minute let a second submission
    start beside a live one)."""
    server = await start_vserver(rpc_timeout=rpc_timeout)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        client = await make_vclient()
        client.integrations = integration_service_pb2_grpc.IntegrationServiceStub(channel)
        integration_id = await client.integration("openai")
    async with httpx.AsyncClient(base_url=server.public_url, timeout=10) as http:
        token = await _token(http, client)
        fake.accept("sk-slow")
        fake.delay("sk-slow", 0.6)  # under verify_timeout (1 s)
        submission = asyncio.create_task(
            http.post(
                f"/api-auth/api-key/{integration_id}",
                json={"apiKey": "sk-slow"},
                headers={"authorization": f"Bearer {token}"},
            )
        )

        async def lease_left() -> float | None:
            left: float | None = await vbackend.db.fetchval(
                """SELECT extract(epoch FROM attempt_until - now())::float8 FROM connect_sessions
                   WHERE token_hash = $1""",
                token_hash(token),
            )
            return left

        seen: list[float] = []

        async def claimed() -> bool:
            left = await lease_left()
            seen.extend([left] if left is not None else [])
            return left is not None

        assert await poll(claimed, within=5, interval=0.02), "the submission claimed nothing"
        left = seen[0]
        margin = ATTEMPT_LEASE_MARGIN.total_seconds()
        assert rpc_timeout + margin - 1 <= left <= rpc_timeout + margin, left
        assert (await submission).status_code == 200
    assert await lease_left() is None  # released once done
