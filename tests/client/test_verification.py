"""Credential verification through the SDK, against a server whose outbound checks reach a fake
provider on 127.0.0.1: verified and rejected credentials, ``verify_connection``, and retries of
UNAVAILABLE counted where they land (at the provider)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio

import credbroker.app
from credbroker.app import RunningServer
from credbroker.client import FailedPrecondition, Unavailable, VerificationState
from credbroker.config import Settings

Invoke = Callable[..., Awaitable[Any]]


@dataclass
class FakeProvider:
    """``GET /me`` answers by the bearer token: ``good`` 200, ``down`` 503, ``flaky-*`` 503
    twice and then 200, anything else 401. Counts the requests per token."""

    hits: Counter[str] = field(default_factory=Counter)

    def status(self, token: str) -> int:
        self.hits[token] += 1
        if token == "good":
            return 200
        if token == "down":
            return 503
        if token.startswith("flaky-"):
            return 503 if self.hits[token] <= 2 else 200
        return 401

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            writer.close()
            return
        lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
        authorization = {k.lower(): v for k, v in headers.items()}.get("authorization", "")
        code = self.status(authorization.removeprefix("Bearer "))
        writer.write(
            f"HTTP/1.1 {code} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode()
        )
        with contextlib.suppress(OSError):
            await writer.drain()
        writer.close()


@dataclass
class Verifying:
    target: str
    provider: FakeProvider
    base_url: str


@pytest_asyncio.fixture(scope="module")
async def verifying(
    settings_factory: Callable[..., Settings], backend: Any, keyring: Any
) -> AsyncIterator[Verifying]:
    provider = FakeProvider()
    listener = await asyncio.start_server(provider.handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    settings = settings_factory(
        verify_credentials=True, outbound_allow="127.0.0.1/32", recheck_interval=0
    )
    running: RunningServer = await credbroker.app.start_server(settings, backend, keyring)
    try:
        yield Verifying(f"127.0.0.1:{running.port}", provider, f"http://127.0.0.1:{port}")
    finally:
        await running.stop(0)
        listener.close()
        await listener.wait_closed()


@pytest_asyncio.fixture
async def checked(invoke: Invoke, tenant: Any, verifying: Verifying) -> Invoke:
    """``invoke`` on the verifying server, with an integration ``checked`` whose keys are
    verified with ``GET /me`` at the fake provider."""

    async def call(key: str, method: str, *args: Any, **kwargs: Any) -> Any:
        return await invoke(key, method, *args, target=verifying.target, **kwargs)

    await call(
        tenant.key,
        "create_integration",
        "checked",
        "api-key",
        integration_config={"base_url": verifying.base_url, "verification_path": "/me"},
    )
    return call


async def test_accepted_credentials_are_verified(checked: Invoke, tenant: Any) -> None:
    stored = await checked(tenant.key, "create_connection", "checked", api_key="good")
    assert stored.verification.state is VerificationState.VERIFIED
    assert stored.verification.http_status == 200
    assert stored.verification.verify_time is not None
    again = await checked(tenant.key, "verify_connection", "checked", stored.connection_id)
    assert again.verification.state is VerificationState.VERIFIED
    assert again.verification.verify_time >= stored.verification.verify_time
    assert again.verification.consecutive_failures == 0


async def test_rejected_credentials_are_not_stored(
    checked: Invoke, tenant: Any, verifying: Verifying, waits: list[float]
) -> None:
    token = f"rejected-{uuid.uuid4()}"
    with pytest.raises(FailedPrecondition) as caught:
        await checked(tenant.key, "create_connection", "checked", api_key=token)
    error = caught.value
    assert error.reason == "CREDENTIALS_REJECTED"
    assert error.metadata == {"provider": "api-key", "provider_status": "401"}
    assert verifying.provider.hits[token] == 1 and waits == []
    assert await checked(tenant.key, "list_connections", "checked") == []

    skipped = await checked(
        tenant.key, "create_connection", "checked", api_key=token, skip_verification=True
    )
    assert skipped.verification.state is VerificationState.UNVERIFIED
    rechecked = await checked(tenant.key, "verify_connection", "checked", skipped.connection_id)
    assert rechecked.verification.state is VerificationState.REJECTED
    assert rechecked.verification.http_status == 401
    assert rechecked.verification.consecutive_failures == 1
    verdicts = await checked(
        tenant.key, "list_connections", verification_state=VerificationState.REJECTED
    )
    assert [c.connection_id for c in verdicts] == [skipped.connection_id]


async def test_unavailable_provider_is_retried_then_raised(
    checked: Invoke, tenant: Any, verifying: Verifying, waits: list[float]
) -> None:
    before = verifying.provider.hits["down"]
    with pytest.raises(Unavailable) as caught:
        await checked(
            tenant.key, "create_connection", "checked", api_key="down", options={"retries": 2}
        )
    assert caught.value.reason == "PROVIDER_UNAVAILABLE"
    assert verifying.provider.hits["down"] - before == 3  # the first attempt and two retries
    assert len(waits) == 2


async def test_a_retried_create_succeeds(
    checked: Invoke, tenant: Any, verifying: Verifying, waits: list[float]
) -> None:
    token = f"flaky-{uuid.uuid4()}"
    stored = await checked(
        tenant.key, "create_connection", "checked", connection_id="flaky", api_key=token
    )
    assert stored.verification.state is VerificationState.VERIFIED
    assert verifying.provider.hits[token] == 3
    assert len(waits) == 2
