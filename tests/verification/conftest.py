"""Fixtures for the provider-catalog and credential-verification tests.

* ``FakeProvider``: a stdlib HTTP server on 127.0.0.1 (one thread per request) standing in for
  the providers. The first path segment names the provider whose way of presenting a credential
  is expected (``/openai/...`` wants ``authorization: Bearer``, ``/google-gemini/...`` a ``key``
  query parameter, ...). Only credentials the test accepted get 200, others 401. Every request
  is recorded, and paths can be made slow, redirecting or failing.
* A catalog equal to the shipped one except that a few providers point at the fake.
* A dedicated database (``recheck_stale`` works across all environments of a database, so the
  re-check tests must not touch the rest of the suite's connections) and a credbroker server
  with ``verify_credentials=True`` over it.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit, urlunsplit

import asyncpg
import grpc
import pytest
import pytest_asyncio
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from credbroker.app import RunningServer, key_service, start_server
from credbroker.bootstrap import Backend, open_backend
from credbroker.config import Settings
from credbroker.crypto import Keyring
from credbroker.domain.keys import KeyService
from credbroker.domain.models import ALL_SCOPES, Scope
from credbroker.domain.providers import ProviderCatalog, default_catalog
from credbroker.v1 import (
    connection_service_pb2,
    connection_service_pb2_grpc,
    integration_service_pb2,
    integration_service_pb2_grpc,
    resources_pb2,
)

ERROR_DOMAIN = "credbroker.dev"

# How each provider prefix presents its credential to the fake.
STYLES = {
    "openai": "bearer",
    "anthropic": "x-api-key",
    "google-gemini": "query-key",
    "twilio": "basic",
    "stripe-api-key": "basic",
    "datadog": "dd-api-key",
    "generic": "bearer",
}
FAKED_PROVIDERS = ("openai", "anthropic", "google-gemini", "twilio", "stripe-api-key", "datadog")


# ---------------------------------------------------------------------------------------------
# the fake provider


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    credential: str | None
    status: int
    start: float
    end: float


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeProvider

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that gave up (timeouts) leave broken pipes behind: not interesting."""


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:
        self.server.fake.handle(self)

    do_POST = do_GET
    do_HEAD = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        pass


class FakeProvider:
    """See the module docstring. Thread-safe; all accessors return copies."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._accepted: set[str] = set()
        self._requests: list[Recorded] = []
        self._behaviours: dict[str, tuple[str, Any]] = {}
        self._delays: dict[str, float] = {}
        self._in_flight: Counter[str] = Counter()
        self._max_in_flight: Counter[str] = Counter()
        self._generation = 0
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.fake = self
        self.port = int(self._server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def reset(self) -> None:
        with self._lock:
            self._release.set()  # wake handlers still sleeping for an earlier test
            self._release = threading.Event()
            self._generation += 1  # handlers of an earlier test no longer record
            self._accepted.clear()
            self._requests.clear()
            self._behaviours.clear()
            self._delays.clear()
            self._max_in_flight.clear()

    # --- configuration

    def accept(self, credential: str) -> None:
        """Accepts an API key, or ``user:pass`` for Basic."""
        with self._lock:
            self._accepted.add(credential)

    def refuse(self, credential: str) -> None:
        with self._lock:
            self._accepted.discard(credential)

    def slow(self, path: str, seconds: float) -> None:
        with self._lock:
            self._behaviours[path] = ("slow", seconds)

    def redirect(self, path: str, location: str) -> None:
        with self._lock:
            self._behaviours[path] = ("redirect", location)

    def fail(self, path: str, status: int = 500) -> None:
        with self._lock:
            self._behaviours[path] = ("status", status)

    def delay(self, credential: str, seconds: float) -> None:
        """Every request presenting ``credential`` takes ``seconds``."""
        with self._lock:
            self._delays[credential] = seconds

    # --- observation

    @property
    def requests(self) -> list[Recorded]:
        with self._lock:
            return list(self._requests)

    def requests_with(self, credential: str) -> list[Recorded]:
        return [r for r in self.requests if r.credential == credential]

    def max_in_flight(self, credential: str) -> int:
        with self._lock:
            return self._max_in_flight[credential]

    # --- serving

    @staticmethod
    def _credential(style: str, headers: dict[str, str], query: dict[str, str]) -> str | None:
        authorization = headers.get("authorization", "")
        if style == "bearer":
            return authorization[len("Bearer ") :] if authorization.startswith("Bearer ") else None
        if style == "basic":
            if not authorization.startswith("Basic "):
                return None
            return base64.b64decode(authorization[len("Basic ") :]).decode()
        if style == "query-key":
            return query.get("key")
        return headers.get(style)  # x-api-key, dd-api-key

    def handle(self, request: _Handler) -> None:
        start = time.monotonic()
        split = urlsplit(request.path)
        query = {k: v[0] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        headers = {k.lower(): v for k, v in request.headers.items()}
        prefix = split.path.split("/")[1] if split.path.count("/") >= 1 else ""
        style = STYLES.get(prefix)
        credential = self._credential(style, headers, query) if style else None
        with self._lock:
            release, generation = self._release, self._generation
            behaviour = self._behaviours.get(split.path)
            delay = self._delays.get(credential or "", 0.0)
            accepted = credential is not None and credential in self._accepted
            if credential is not None:
                self._in_flight[credential] += 1
                self._max_in_flight[credential] = max(
                    self._max_in_flight[credential], self._in_flight[credential]
                )
        status, location = (200 if accepted else 401), None
        try:
            if delay:
                release.wait(delay)
            if behaviour is not None:
                kind, value = behaviour
                if kind == "slow":
                    release.wait(value)
                elif kind == "redirect":
                    status, location = 302, value
                else:
                    status = value
            if style is None:
                status = 404
        finally:
            with self._lock:
                if credential is not None:
                    self._in_flight[credential] -= 1
                if generation == self._generation:
                    self._requests.append(
                        Recorded(
                            request.command,
                            split.path,
                            query,
                            headers,
                            credential,
                            status,
                            start,
                            time.monotonic(),
                        )
                    )
        body = b'{"ok": true}' if status == 200 else b'{"error": "nope"}'
        request.send_response(status)
        if location is not None:
            request.send_header("location", location)
        request.send_header("content-type", "application/json")
        request.send_header("content-length", str(len(body)))
        request.end_headers()
        if request.command != "HEAD":
            request.wfile.write(body)


@pytest.fixture(scope="session")
def fake_pair() -> Iterator[tuple[FakeProvider, FakeProvider]]:
    """The fake provider and a second one on another port (another origin)."""
    main, other = FakeProvider(), FakeProvider()
    main.start()
    other.start()
    yield main, other
    main.stop()
    other.stop()


@pytest.fixture
def fake(fake_pair: tuple[FakeProvider, FakeProvider]) -> FakeProvider:
    for provider in fake_pair:
        provider.reset()
    return fake_pair[0]


@pytest.fixture
def other_origin(fake_pair: tuple[FakeProvider, FakeProvider], fake: FakeProvider) -> FakeProvider:
    return fake_pair[1]


@pytest.fixture(scope="session")
def test_catalog(fake_pair: tuple[FakeProvider, FakeProvider]) -> ProviderCatalog:
    """The shipped catalog with FAKED_PROVIDERS pointing at ``<fake>/<provider name>``."""
    real = default_catalog()
    providers = dict(real.providers)
    for name in FAKED_PROVIDERS:
        providers[name] = dataclasses.replace(
            providers[name], base_url=f"{fake_pair[0].url}/{name}"
        )
    return ProviderCatalog(providers)


# ---------------------------------------------------------------------------------------------
# a database and servers of our own


@pytest_asyncio.fixture(scope="session")
async def verification_database_url(admin_database_url: str) -> AsyncIterator[str]:
    name = f"credbroker_verify_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(admin_database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield urlunsplit(urlsplit(admin_database_url)._replace(path="/" + name))
    admin = await asyncpg.connect(admin_database_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


VerifySettings = Callable[..., Settings]


@pytest.fixture(scope="session")
def verify_settings(
    settings_factory: Callable[..., Settings], verification_database_url: str
) -> VerifySettings:
    """Settings over our database with verification on against the loopback fake."""

    def make(**overrides: object) -> Settings:
        values: dict[str, object] = {
            "database_url": verification_database_url,
            "verify_credentials": True,
            "outbound_allow": "127.0.0.0/8",
            "recheck_interval": 0,
            "verify_timeout": 1.0,
        }
        values.update(overrides)
        return settings_factory(**values)

    return make


@pytest_asyncio.fixture(scope="session")
async def vbackend(verify_settings: VerifySettings) -> AsyncIterator[Backend]:
    opened = await open_backend(verify_settings())
    yield opened
    await opened.close()


@pytest_asyncio.fixture(scope="session")
async def vkeys(vbackend: Backend) -> KeyService:
    return key_service(vbackend)


@pytest_asyncio.fixture(scope="session")
async def vserver(
    verify_settings: VerifySettings,
    vbackend: Backend,
    keyring: Keyring,
    test_catalog: ProviderCatalog,
) -> AsyncIterator[RunningServer]:
    running = await start_server(verify_settings(), vbackend, keyring, catalog=test_catalog)
    yield running
    await running.stop(0)


@pytest_asyncio.fixture(scope="session")
async def vchannel(vserver: RunningServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{vserver.port}") as opened:
        yield opened


StartServer = Callable[..., Awaitable[RunningServer]]


@pytest_asyncio.fixture
async def start_vserver(
    verify_settings: VerifySettings,
    vbackend: Backend,
    keyring: Keyring,
    test_catalog: ProviderCatalog,
) -> AsyncIterator[StartServer]:
    """Starts extra servers over our database (settings overrides as keywords; ``own_backend``
    gives the server its own connection pool, like a separate process); stops them after."""
    started: list[RunningServer] = []
    backends: list[Backend] = []

    async def start(*, own_backend: bool = False, **overrides: object) -> RunningServer:
        settings = verify_settings(**overrides)
        backend = vbackend
        if own_backend:
            backend = await open_backend(settings)
            backends.append(backend)
        running = await start_server(settings, backend, keyring, catalog=test_catalog)
        started.append(running)
        return running

    yield start
    for running in started:
        await running.stop(0)
    for backend in backends:
        await backend.close()


# ---------------------------------------------------------------------------------------------
# clients


def api_key(key: str) -> resources_pb2.Credentials:
    return resources_pb2.Credentials(api_key=resources_pb2.ApiKeyCredentials(api_key=key))


def basic(username: str, password: str) -> resources_pb2.Credentials:
    return resources_pb2.Credentials(
        basic=resources_pb2.BasicCredentials(username=username, password=password)
    )


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(cast(grpc.Call, error))
    assert status is not None, "the error carries no google.rpc.Status trailer"
    infos = []
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            infos.append(info)
    assert len(infos) == 1, f"expected exactly one ErrorInfo, got {infos}"
    assert infos[0].domain == ERROR_DOMAIN
    return infos[0]


def violated_fields(error: grpc.aio.AioRpcError) -> list[str]:
    status = rpc_status.from_call(cast(grpc.Call, error))
    assert status is not None
    fields: list[str] = []
    for detail in status.details:
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(bad_request):
            fields.extend(v.field for v in bad_request.field_violations)
    return fields


def error_text(error: grpc.aio.AioRpcError) -> bytes:
    """Everything the client sees of an error, as bytes (to search for leaked secrets)."""
    parts = [str(error.details()).encode(), str(error.debug_error_string()).encode()]
    for metadata in (error.trailing_metadata(), error.initial_metadata()):
        for _, value in metadata or ():
            parts.append(value if isinstance(value, bytes) else str(value).encode())
    status = rpc_status.from_call(cast(grpc.Call, error))
    if status is not None:
        parts.append(status.SerializeToString())
        parts.append(str(status).encode())
    return b"\n".join(parts)


@dataclass
class Client:
    """One environment with an all-scopes key, and helpers for the calls the tests make."""

    environment: str
    key: str
    keys: KeyService
    integrations: integration_service_pb2_grpc.IntegrationServiceAsyncStub
    connections: connection_service_pb2_grpc.ConnectionServiceAsyncStub
    _counter: list[int] = field(default_factory=lambda: [0])

    api_key = staticmethod(api_key)
    basic = staticmethod(basic)
    error_info = staticmethod(error_info)
    error_text = staticmethod(error_text)
    violated_fields = staticmethod(violated_fields)

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.key}"),)

    async def key_with(self, *scopes: Scope) -> tuple[tuple[str, str], ...]:
        token, _ = await self.keys.create_key(self.environment, frozenset(scopes))
        return (("authorization", f"Bearer {token}"),)

    async def integration(
        self,
        provider: str,
        config: dict[str, str] | None = None,
        *,
        metadata: tuple[tuple[str, str], ...] | None = None,
    ) -> str:
        self._counter[0] += 1
        integration_id = f"{provider}-{self._counter[0]}"
        await self.integrations.CreateIntegration(
            integration_service_pb2.CreateIntegrationRequest(
                integration=resources_pb2.Integration(
                    integration_id=integration_id,
                    provider=provider,
                    integration_config=config or {},
                )
            ),
            metadata=metadata or self.metadata,
        )
        return integration_id

    async def create(
        self,
        integration_id: str,
        credentials: resources_pb2.Credentials,
        *,
        connection_id: str = "",
        config: dict[str, str] | None = None,
        skip: bool = False,
    ) -> resources_pb2.Connection:
        return await self.connections.CreateConnection(
            connection_service_pb2.CreateConnectionRequest(
                connection=resources_pb2.Connection(
                    integration_id=integration_id,
                    connection_id=connection_id or f"c-{uuid.uuid4().hex[:10]}",
                    credentials=credentials,
                    connection_config=config or {},
                ),
                skip_verification=skip,
            ),
            metadata=self.metadata,
        )

    async def get(self, integration_id: str, connection_id: str) -> resources_pb2.Connection:
        return await self.connections.GetConnection(
            connection_service_pb2.GetConnectionRequest(
                integration_id=integration_id, connection_id=connection_id
            ),
            metadata=self.metadata,
        )

    async def access(
        self, integration_id: str, connection_id: str
    ) -> connection_service_pb2.AccessCredentialsResponse:
        return await self.connections.AccessCredentials(
            connection_service_pb2.AccessCredentialsRequest(
                integration_id=integration_id, connection_id=connection_id
            ),
            metadata=self.metadata,
        )

    async def verify(self, integration_id: str, connection_id: str) -> resources_pb2.Connection:
        return await self.connections.VerifyConnection(
            connection_service_pb2.VerifyConnectionRequest(
                integration_id=integration_id, connection_id=connection_id
            ),
            metadata=self.metadata,
        )

    @staticmethod
    async def fails(
        call: Awaitable[Any], code: grpc.StatusCode
    ) -> tuple[grpc.aio.AioRpcError, error_details_pb2.ErrorInfo]:
        """Awaits an RPC that must fail with ``code``; returns the error and its ErrorInfo."""
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        error = caught.value
        assert error.code() == code, (
            f"expected {code.name}, got {error.code().name}: {error.details()}"
        )
        return error, error_info(error)


ClientFactory = Callable[[], Awaitable[Client]]


def _client_factory(keys: KeyService, channel: grpc.aio.Channel) -> ClientFactory:
    async def create() -> Client:
        name = f"v-{uuid.uuid4().hex[:12]}"
        await keys.create_environment(name)
        token, _ = await keys.create_key(name, ALL_SCOPES)
        return Client(
            name,
            token,
            keys,
            integration_service_pb2_grpc.IntegrationServiceStub(channel),
            connection_service_pb2_grpc.ConnectionServiceStub(channel),
        )

    return create


@pytest_asyncio.fixture
async def vclient(vkeys: KeyService, vchannel: grpc.aio.Channel) -> Client:
    """A fresh environment on the verifying server (fake-provider catalog)."""
    return await _client_factory(vkeys, vchannel)()


@pytest.fixture
def make_vclient(vkeys: KeyService, vchannel: grpc.aio.Channel) -> ClientFactory:
    return _client_factory(vkeys, vchannel)


@pytest_asyncio.fixture
async def session_client(keys: KeyService, channel: grpc.aio.Channel) -> Client:
    """A fresh environment on the suite's session server (shipped catalog, no verification)."""
    return await _client_factory(keys, channel)()


async def eventually(
    check: Callable[[], Awaitable[bool]], *, within: float, interval: float = 0.1
) -> bool:
    """Polls ``check`` until it returns True or ``within`` seconds pass."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(interval)
    return await check()


@pytest.fixture(scope="session")
def poll() -> Callable[..., Awaitable[bool]]:
    return eventually
