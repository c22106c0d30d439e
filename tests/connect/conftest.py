"""Helpers for connect-session tests against the suite's shared server (gRPC and HTTP on one
process): a tenant with integrations, sessions made over gRPC, and an HTTP client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import pytest
import pytest_asyncio
from google.protobuf import duration_pb2

from credbroker.app import RunningServer
from credbroker.v1 import connect_session_service_pb2 as spb
from credbroker.v1 import connect_session_service_pb2_grpc as sgrpc
from credbroker.v1 import integration_service_pb2 as ipb
from credbroker.v1 import resources_pb2 as rpb


@pytest_asyncio.fixture(scope="session")
async def http(server: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.public_url, timeout=10) as client:
        yield client


@dataclass
class Connect:
    """A tenant with an API-key integration ``openai``, a Basic one ``twilio`` and a
    connection-config one ``jira`` (``jira-basic``: needs ``subdomain``)."""

    tenant: Any
    sessions: sgrpc.ConnectSessionServiceAsyncStub
    http: httpx.AsyncClient

    @property
    def metadata(self) -> Any:
        return self.tenant.metadata

    async def session(self, **fields: Any) -> spb.ConnectSession:
        ttl = fields.pop("ttl", None)
        request = spb.CreateConnectSessionRequest(**fields)
        if ttl is not None:
            request.ttl.CopyFrom(duration_pb2.Duration(seconds=ttl))
        created: spb.ConnectSession = await self.sessions.CreateConnectSession(
            request, metadata=self.metadata
        )
        return created

    def secret_headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.tenant.key}"}


@pytest_asyncio.fixture
async def connect(tenant: Any, channel: grpc.aio.Channel, http: httpx.AsyncClient) -> Connect:
    for integration_id, provider in (
        ("openai", "openai"),
        ("twilio", "twilio"),
        ("jira", "jira-basic"),
    ):
        await tenant.integrations.CreateIntegration(
            ipb.CreateIntegrationRequest(
                integration=rpb.Integration(
                    integration_id=integration_id,
                    provider=provider,
                    display_name=f"<b>{provider}</b>",
                )
            ),
            metadata=tenant.metadata,
        )
    return Connect(tenant, sgrpc.ConnectSessionServiceStub(channel), http)


def session_auth(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@pytest.fixture
def end_user() -> rpb.EndUser:
    return rpb.EndUser(id="user-42", email="ada@example.com", display_name="Ada <script>")
