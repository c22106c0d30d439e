"""Shared fixtures: a real PostgreSQL database and a real credbroker server on a loopback port.

The database comes from ``CREDBROKER_TEST_DATABASE_URL`` when set (CI points it at the machine's
PostgreSQL), else from a testcontainers PostgreSQL when a Docker engine answers and the container
actually starts (its image may not be pullable), else from an embedded pgserver. Each test
session creates its own database and drops it at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import grpc
import pytest
import pytest_asyncio

from credbroker.app import RunningServer, key_service, start_server
from credbroker.bootstrap import Backend, open_backend
from credbroker.config import Settings
from credbroker.crypto import Keyring, generate_keyring
from credbroker.domain.keys import KeyService
from credbroker.domain.models import ALL_SCOPES, Scope
from credbroker.storage.changes import LIVENESS_SECONDS
from credbroker.v1 import connection_service_pb2_grpc, integration_service_pb2_grpc


def _docker_available() -> bool:
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env(timeout=2).ping()
        return True
    except Exception:  # noqa: BLE001 - any failure means "no usable Docker engine"
        return False


def _docker_postgres(stack: contextlib.ExitStack) -> str | None:
    """A URL of a started testcontainers PostgreSQL, or None (no engine, the image cannot be
    pulled, the container does not start...): then the caller falls back to the embedded one."""
    if not _docker_available():
        return None
    with warnings.catch_warnings():  # testcontainers 4.x deprecates its own module layout
        warnings.simplefilter("ignore", DeprecationWarning)
        from testcontainers.postgres import PostgresContainer
    container = PostgresContainer("postgres:16-alpine", driver=None)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            container.start()
        url: str = container.get_connection_url()
    except Exception as exc:  # noqa: BLE001 - any failure means "use the embedded PostgreSQL"
        print(
            f"\ntests: the Docker PostgreSQL did not start ({type(exc).__name__}); "
            "using the embedded one (set CREDBROKER_TEST_DATABASE_URL to choose)",
            file=sys.stderr,
        )
        with contextlib.suppress(Exception):
            container.stop()
        return None
    stack.callback(container.stop)
    return url


@pytest.fixture(scope="session")
def admin_database_url() -> Iterator[str]:
    """A URL of a PostgreSQL server where the tests may create databases."""
    configured = os.environ.get("CREDBROKER_TEST_DATABASE_URL")
    if configured:
        yield configured
        return
    with contextlib.ExitStack() as stack:
        docker_url = _docker_postgres(stack)
        if docker_url is not None:
            yield docker_url
            return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pgserver import get_server  # type: ignore[attr-defined]

    folder = tempfile.mkdtemp(prefix="credbroker-test-pg-")
    server = get_server(folder, cleanup_mode="delete")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
        shutil.rmtree(folder, ignore_errors=True)


def _with_database(url: str, database: str) -> str:
    """``url`` pointing at another database (keeps host, user and query such as ``host=/sock``)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


@pytest_asyncio.fixture(scope="session")
async def database_url(admin_database_url: str) -> AsyncIterator[str]:
    name = f"credbroker_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(admin_database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield _with_database(admin_database_url, name)
    admin = await asyncpg.connect(admin_database_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture(scope="session")
def keyring() -> Keyring:
    return generate_keyring()


def make_settings(url: str, ring: Keyring, **overrides: object) -> Settings:
    """Test settings; ``overrides`` may replace any field, ``database_url`` and ``keyring`` too."""
    values: dict[str, object] = {
        "database_url": url,
        "keyring": ring.to_json(),
        "listen": "127.0.0.1:0",
        "http_listen": "127.0.0.1:0",
        "db_pool_min": 1,
        "db_pool_max": 10,
        "verify_credentials": False,  # no internet here; verification tests use a fake provider
        "webhook_dispatch": False,  # nothing leaves the machine; webhook tests start their own
        # Every test calls from 127.0.0.1, so the suite's failed authentications add up on one
        # address; the rate-limit tests (tests/security/test_forged_keys.py) set their own.
        "auth_failure_burst": 1_000_000,
    }
    values.update(overrides)
    return Settings.model_validate(values)


@pytest.fixture(scope="session")
def settings(database_url: str, keyring: Keyring) -> Settings:
    return make_settings(database_url, keyring)


@pytest_asyncio.fixture(scope="session")
async def backend(settings: Settings) -> AsyncIterator[Backend]:
    opened = await open_backend(settings)
    yield opened
    await opened.close()


@pytest_asyncio.fixture(scope="session")
async def keys(backend: Backend) -> KeyService:
    return key_service(backend)


@pytest_asyncio.fixture(scope="session")
async def server(
    settings: Settings, backend: Backend, keyring: Keyring
) -> AsyncIterator[RunningServer]:
    running = await start_server(settings, backend, keyring)
    yield running
    await running.stop(0)


@pytest_asyncio.fixture(scope="session")
async def channel(server: RunningServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as opened:
        yield opened


@dataclass
class Tenant:
    """A fresh environment with an all-scopes key: tests isolate themselves by environment."""

    environment: str
    key: str
    keys: KeyService
    integrations: integration_service_pb2_grpc.IntegrationServiceStub
    connections: connection_service_pb2_grpc.ConnectionServiceStub

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.key}"),)

    async def key_with(self, *scopes: Scope) -> tuple[tuple[str, str], ...]:
        token, _ = await self.keys.create_key(self.environment, frozenset(scopes))
        return (("authorization", f"Bearer {token}"),)


TenantFactory = Callable[[], Awaitable[Tenant]]


@pytest.fixture
def make_tenant(keys: KeyService, channel: grpc.aio.Channel) -> TenantFactory:
    """Creates tenants (environments) on demand, for tests that need more than one."""

    async def create() -> Tenant:
        name = f"t-{uuid.uuid4().hex[:12]}"
        await keys.create_environment(name)
        token, _ = await keys.create_key(name, ALL_SCOPES)
        return Tenant(
            name,
            token,
            keys,
            integration_service_pb2_grpc.IntegrationServiceStub(channel),
            connection_service_pb2_grpc.ConnectionServiceStub(channel),
        )

    return create


@pytest_asyncio.fixture
async def tenant(make_tenant: TenantFactory) -> Tenant:
    return await make_tenant()


@pytest.fixture(scope="session")
def settings_factory(database_url: str, keyring: Keyring) -> Callable[..., Settings]:
    """Settings for the test database, with overrides (e.g. another keyring)."""
    return lambda **overrides: make_settings(database_url, keyring, **overrides)


# ---------------------------------------------------------------------------------------------
# a change made elsewhere reaches a server within the documented bound

CHANGE_BOUND_SECONDS = LIVENESS_SECONDS
"""README ("Scaling and observing") and docs/operators.md: a change committed by another process
(``credbroker keys revoke``, another server, a statement in psql) takes effect on a server within
1 s at worst. Precisely: every call that *starts* more than this long after the change committed
sees it (credbroker/storage/changes.py: caches are trusted only while the listener's last answered
ping was sent less than LIVENESS_SECONDS ago, and PostgreSQL answers a ping only after the
announcements committed before it was sent). A call that starts earlier may still be served from
a cache: a test that asserts on the very next call races the announcement."""

ChangeTakesEffect = Callable[[Callable[[], Awaitable[bool]], float, str], Awaitable[float]]


async def _change_takes_effect(
    seen: Callable[[], Awaitable[bool]], since: float, what: str
) -> float:
    """Calls ``seen()`` (one call to a server: True once it reflects the change, False while it
    does not; anything else should raise) until it returns True, and returns how long after
    ``since`` (``time.monotonic()`` once the change was committed) that call started. Fails as
    soon as a call that started more than CHANGE_BOUND_SECONDS after ``since`` still missed the
    change, so a broken invalidation (cached entries live 10 s or more) fails at once."""
    calls = 0
    while True:
        started = time.monotonic()
        calls += 1
        if await seen():
            return started - since
        late = started - since
        if late > CHANGE_BOUND_SECONDS:
            raise AssertionError(
                f"{what}: not in effect for a call that started {late:.2f} s after the change "
                f"(documented bound {CHANGE_BOUND_SECONDS} s; {calls} calls)"
            )
        await asyncio.sleep(0.02)


@pytest.fixture
def change_takes_effect() -> ChangeTakesEffect:
    """``await change_takes_effect(seen, since, what)``: see :func:`_change_takes_effect`."""
    return _change_takes_effect


@dataclass
class StalledListenerServer:
    """A server of its own whose change listener trusts its caches for 30 s without an answer,
    so that :meth:`announcements_stalled` (its listener's database backend stopped with
    SIGSTOP) leaves the caches trusted while no announcement can arrive: whatever the next call
    sees then comes from the caches and this process's own write paths."""

    running: RunningServer
    channel: grpc.aio.Channel
    listener_pid: int

    @contextlib.asynccontextmanager
    async def announcements_stalled(self) -> AsyncIterator[None]:
        os.kill(self.listener_pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(self.listener_pid, signal.SIGCONT)
        assert self.running.listener is not None and self.running.listener.healthy, (
            "the caches were not trusted throughout: the test proves nothing"
        )


@pytest_asyncio.fixture
async def stalled_listener_server(
    settings: Settings, backend: Backend, keyring: Keyring, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[StalledListenerServer]:
    import credbroker.app
    from credbroker.storage.changes import ChangeListener

    query = """SELECT pid FROM pg_stat_activity
               WHERE datname = current_database() AND application_name = 'credbroker-listener'"""
    before = {row["pid"] for row in await backend.db.fetch(query)}
    monkeypatch.setattr(
        credbroker.app, "ChangeListener", lambda dsn: ChangeListener(dsn, liveness_seconds=30.0)
    )
    running = await start_server(settings, backend, keyring)
    try:
        new = {row["pid"] for row in await backend.db.fetch(query)} - before
        assert len(new) == 1, f"cannot tell this server's listener backend among {new}"
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            yield StalledListenerServer(running, channel, new.pop())
    finally:
        await running.stop(0)


# ---------------------------------------------------------------------------------------------
# a bare HTTP/2 client, for frames a grpc client refuses to send (issue 9)


@dataclass
class RawStream:
    """What came back on one stream of :class:`RawHttp2`."""

    headers: dict[bytes, bytes]
    data: bytes = b""
    ended: bool = False
    reset: bool = False

    @property
    def grpc_status(self) -> int | None:
        status = self.headers.get(b"grpc-status")
        return int(status) if status is not None else None


class RawHttp2:
    """One cleartext HTTP/2 connection driven with ``h2``: opens gRPC streams with any headers
    (bytes no grpc client would send, headers without a message, ...) and records replies."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int):
        import h2.config
        import h2.connection

        self._reader, self._writer, self.port = reader, writer, port
        config = h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_outbound_headers=False
        )
        self._h2 = h2.connection.H2Connection(config=config)
        self._h2.initiate_connection()
        self.streams: dict[int, RawStream] = {}
        self.closed = False
        self._task = asyncio.create_task(self._pump())

    @classmethod
    async def connect(cls, port: int) -> RawHttp2:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer, port)
        await client.flush()
        return client

    async def flush(self) -> None:
        self._writer.write(self._h2.data_to_send())
        await self._writer.drain()

    def open(
        self,
        path: str,
        *,
        extra: tuple[tuple[bytes, bytes], ...] = (),
        message: bytes | None = None,
        end: bool = True,
    ) -> int:
        """Starts a stream; sends ``message`` (gRPC-framed) if given, then half-closes if
        ``end``. Call :meth:`flush` to put it on the wire."""
        stream_id = self._h2.get_next_available_stream_id()
        headers = [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", path.encode()),
            (b":authority", f"127.0.0.1:{self.port}".encode()),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
            *extra,
        ]
        self.streams[stream_id] = RawStream({})
        self._h2.send_headers(stream_id, headers, end_stream=message is None and end)
        if message is not None:
            framed = b"\x00" + len(message).to_bytes(4, "big") + message
            self._h2.send_data(stream_id, framed, end_stream=end)
        return stream_id

    async def _pump(self) -> None:
        import h2.events
        import h2.exceptions

        try:
            while True:
                data = await self._reader.read(65536)
                if not data:
                    break
                for event in self._h2.receive_data(data):
                    stream = self.streams.get(getattr(event, "stream_id", 0) or 0)
                    if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                        if stream is not None:
                            stream.headers.update(dict(event.headers))
                    elif isinstance(event, h2.events.DataReceived):
                        self._h2.acknowledge_received_data(
                            event.flow_controlled_length, event.stream_id
                        )
                        if stream is not None:
                            stream.data += event.data
                    elif isinstance(event, h2.events.StreamEnded) and stream is not None:
                        stream.ended = True
                    elif isinstance(event, h2.events.StreamReset) and stream is not None:
                        stream.reset = True
                    elif isinstance(event, h2.events.ConnectionTerminated):
                        self.closed = True
                self._writer.write(self._h2.data_to_send())
                await self._writer.drain()
        except (OSError, asyncio.CancelledError, h2.exceptions.ProtocolError):
            pass
        finally:
            self.closed = True

    def finished(self, stream_id: int) -> bool:
        stream = self.streams[stream_id]
        return stream.ended or stream.reset or self.closed

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, OSError):
            await self._task
        self._writer.close()
        with contextlib.suppress(OSError, ConnectionError):
            await self._writer.wait_closed()


@pytest_asyncio.fixture
async def raw_h2() -> AsyncIterator[Callable[[int], Awaitable[RawHttp2]]]:
    """``await raw_h2(port)``: a :class:`RawHttp2` connection to 127.0.0.1, closed after."""
    opened: list[RawHttp2] = []

    async def connect(port: int) -> RawHttp2:
        connection = await RawHttp2.connect(port)
        opened.append(connection)
        return connection

    yield connect
    for connection in opened:
        await connection.close()


# ---------------------------------------------------------------------------------------------
# no test leaves a process behind

LEFTOVER_GRACE_SECONDS = 5.0


def _command_line(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return raw.replace(b"\0", b" ").decode("utf-8", "replace").strip()[:300]


def descendants(pid: int) -> dict[int, str]:
    """pid -> command line of every live process below ``pid`` (children, their children, ...),
    from Linux's /proc; {} where there is none. Zombies (exited, not yet reaped) are not live."""
    proc = Path("/proc")
    if not proc.is_dir():
        return {}
    parents: dict[int, int] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]
        if state not in {"Z", "X"}:
            parents[int(entry.name)] = int(ppid)
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return {child: _command_line(child) for child in sorted(found)}


PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>


def pytest_configure(config: pytest.Config) -> None:
    """Makes this process the subreaper of everything the tests start (Linux): a process whose
    parent dies (a server's worker, a daemonized PostgreSQL, a browser's helper) is adopted here
    instead of by init, so the session-end check below still sees it."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fails the run when a process started by the tests (a server, PostgreSQL, chromium, node,
    ...) is still alive once every fixture is torn down, naming it; then kills it."""
    leftovers = descendants(os.getpid())
    deadline = time.monotonic() + LEFTOVER_GRACE_SECONDS
    while leftovers and time.monotonic() < deadline:  # some may be exiting right now
        time.sleep(0.1)
        leftovers = descendants(os.getpid())
    if not leftovers:
        return
    listing = "\n".join(f"  pid {pid}: {command}" for pid, command in leftovers.items())
    message = (
        f"{len(leftovers)} process(es) started by the tests outlived the session "
        f"(killed now; fix the test that started them):\n{listing}"
    )
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.ensure_newline()
        reporter.write_sep("=", "leftover processes", red=True, bold=True)
        reporter.write_line(message)
    else:
        print(message, file=sys.stderr)
    for pid in leftovers:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    if session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def process_tree() -> Callable[[int], dict[int, str]]:
    """``process_tree(pid)``: see :func:`descendants`."""
    return descendants
