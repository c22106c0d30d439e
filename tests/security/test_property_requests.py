"""Property-based requests (hypothesis) against a real server: whatever the fields hold, the
server answers with a deliberate status (never UNKNOWN or INTERNAL) and never echoes a secret.

Hypothesis drives synchronous tests, and the session server lives on the test event loop, so
this module runs its own server on a background thread with its own loop and database pool.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from credbroker.app import start_server
from credbroker.bootstrap import open_backend
from credbroker.domain.keys import KeyService
from credbroker.domain.models import ALL_SCOPES
from credbroker.storage.environments import (
    PostgresEnvironmentRepository,
    PostgresSecretKeyRepository,
)
from credbroker.v1 import connection_service_pb2 as cpb
from credbroker.v1 import connection_service_pb2_grpc as cgrpc
from credbroker.v1 import integration_service_pb2 as ipb
from credbroker.v1 import integration_service_pb2_grpc as igrpc
from credbroker.v1 import resources_pb2 as rpb

DELIBERATE = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


class _ThreadServer:
    """A credbroker server with its own event loop on a daemon thread."""

    def __init__(self, settings: Any, keyring: Any) -> None:
        self.port = 0
        self.key = ""
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(settings, keyring), daemon=True)
        self._thread.start()
        if not self._ready.wait(60) or self._error is not None:
            raise RuntimeError("background server did not start") from self._error

    def _run(self, settings: Any, keyring: Any) -> None:
        try:
            asyncio.run(self._serve(settings, keyring))
        except BaseException as exc:  # noqa: BLE001 - re-raised by __init__ on the test thread
            self._error = exc
            self._ready.set()

    async def _serve(self, settings: Any, keyring: Any) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        backend = await open_backend(settings)
        running = await start_server(settings, backend, keyring)
        keys = KeyService(
            PostgresEnvironmentRepository(backend.db), PostgresSecretKeyRepository(backend.db)
        )
        environment = f"p-{uuid.uuid4().hex[:12]}"
        await keys.create_environment(environment)
        self.key, _ = await keys.create_key(environment, ALL_SCOPES)
        self.port = running.port
        self._ready.set()
        await self._stop.wait()
        await running.stop(0)
        await backend.close()

    def close(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


@pytest.fixture(scope="module")
def property_server(settings_factory: Any, keyring: Any) -> Iterator[_ThreadServer]:
    server = _ThreadServer(settings_factory(), keyring)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        igrpc.IntegrationServiceStub(channel).CreateIntegration(
            ipb.CreateIntegrationRequest(
                integration=rpb.Integration(integration_id="openai", provider="openai")
            ),
            metadata=(("authorization", f"Bearer {server.key}"),),
            timeout=10,
        )
    yield server
    server.close()


# Each strategy mixes valid values with hostile ones, so that many requests are valid except in
# one field: that is where an unchecked value would reach the database and fail there.
text = st.text(max_size=300)
valid_id = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:@~+-]{0,40}", fullmatch=True)
ids = st.one_of(valid_id, valid_id, text)
valid_tags = st.dictionaries(
    st.from_regex(r"[a-z][a-z0-9_.-]{0,20}", fullmatch=True),
    st.text(min_size=1, max_size=40),
    max_size=5,
)
valid_config = st.dictionaries(
    st.from_regex(r"[A-Za-z][A-Za-z0-9_.-]{0,20}", fullmatch=True), text, max_size=5
)
maps = st.dictionaries(text, text, max_size=12)
hostile_text = st.one_of(text, st.sampled_from(["\x00", "a\x00b", "\ud7ff", "\U0010ffff", "\n"]))


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    integration_id=st.one_of(st.just("openai"), st.just("openai"), ids),
    connection_id=ids,
    api_key=st.one_of(st.text(min_size=1, max_size=5000), hostile_text),
    config=st.one_of(valid_config, maps),
    tags=st.one_of(valid_tags, maps),
    metadata=st.dictionaries(
        hostile_text,
        st.one_of(hostile_text, st.floats(allow_nan=False, allow_infinity=False), st.booleans()),
        max_size=5,
    ),
)
def test_create_connection_answers_deliberately(
    property_server: _ThreadServer,
    integration_id: str,
    connection_id: str,
    api_key: str,
    config: dict[str, str],
    tags: dict[str, str],
    metadata: dict[str, Any],
) -> None:
    connection = rpb.Connection(
        integration_id=integration_id,
        connection_id=connection_id,
        credentials=rpb.Credentials(api_key=rpb.ApiKeyCredentials(api_key=api_key)),
        connection_config=config,
        tags=tags,
    )
    connection.metadata.update(metadata)
    with grpc.insecure_channel(f"127.0.0.1:{property_server.port}") as channel:
        stub: Any = cgrpc.ConnectionServiceStub(channel)
        try:
            stub.CreateConnection(
                cpb.CreateConnectionRequest(connection=connection),
                metadata=(("authorization", f"Bearer {property_server.key}"),),
                timeout=10,
            )
        except grpc.RpcError as error:
            code = error.code()
            details = error.details() or ""
            assert code in DELIBERATE, (code, details)
            if len(api_key) >= 8:
                assert api_key not in details
