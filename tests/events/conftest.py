"""Fixtures for the event tests that need real ``credbroker serve`` processes: a database of the
module's own, servers started and killed (``kill -9``) as subprocesses on free loopback ports,
and an environment with a key, made in-process over the same database."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import grpc
import pytest
import pytest_asyncio

from credbroker.app import key_service
from credbroker.bootstrap import Backend, open_backend
from credbroker.crypto import Keyring
from credbroker.domain.models import ALL_SCOPES
from credbroker.v1 import connection_service_pb2 as cpb
from credbroker.v1 import connection_service_pb2_grpc as cgrpc
from credbroker.v1 import integration_service_pb2 as ipb
from credbroker.v1 import integration_service_pb2_grpc as igrpc
from credbroker.v1 import resources_pb2 as rpb

EXECUTABLE = Path(sys.executable).parent / "credbroker"
START_TIMEOUT = 60.0  # a loaded 2-core machine took more than 15 s to start serve
READ_TIMEOUT = 15.0


@pytest_asyncio.fixture(scope="module")
async def events_database_url(admin_database_url: str) -> AsyncIterator[str]:
    name = f"credbroker_events_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(admin_database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield urlunsplit(urlsplit(admin_database_url)._replace(path="/" + name))
    finally:
        admin = await asyncpg.connect(admin_database_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest_asyncio.fixture(scope="module")
async def events_backend(events_database_url: str, settings_factory: Any) -> AsyncIterator[Backend]:
    opened = await open_backend(settings_factory(database_url=events_database_url))
    yield opened
    await opened.close()


def server_environment(database_url: str, keyring: Keyring, **settings: object) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CREDBROKER_")}
    env.update(
        {
            "CREDBROKER_DATABASE_URL": database_url,
            "CREDBROKER_KEYRING": keyring.to_json(),
            "CREDBROKER_LOG_FORMAT": "json",
            "CREDBROKER_VERIFY_CREDENTIALS": "false",
            "CREDBROKER_RECHECK_INTERVAL": "0",
            "CREDBROKER_SHUTDOWN_GRACE": "1",
            "CREDBROKER_DB_POOL_MIN": "1",
            "CREDBROKER_HTTP_LISTEN": "127.0.0.1:0",  # never the fixed default port
        }
    )
    env.update({f"CREDBROKER_{k.upper()}": str(v) for k, v in settings.items()})
    return env


@dataclass
class ServerProcess:
    """One ``credbroker serve`` subprocess on a free port (the OS picks it); its own log file.
    Start a new one to restart."""

    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    port: int = 0
    http_port: int = 0
    _log: Any = field(default=None, repr=False)

    def start(self) -> ServerProcess:
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [str(EXECUTABLE), "serve", "--listen", "127.0.0.1:0"],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        self.port, self.http_port = self._wait_for_ports()
        return self

    def _wait_for_ports(self) -> tuple[int, int]:
        """(gRPC port, HTTP port or 0) from the "serving" log line."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"server exited:\n{self.log()}")
            for line in self.log_path.read_text("utf-8", "replace").splitlines():
                if '"serving"' in line:
                    serving = json.loads(line)
                    return int(serving["port"]), int(serving.get("http_port") or 0)
            time.sleep(0.05)
        raise AssertionError(f"server did not start in time:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text("utf-8", "replace")[-6000:]

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def kill9(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None


class Servers:
    """Starts servers with given settings; stops every one (SIGTERM) at the end of the test."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        self.started: list[ServerProcess] = []

    def start(self, env: dict[str, str]) -> ServerProcess:
        log = self._folder / f"server-{len(self.started)}.log"
        server = ServerProcess(env, log)
        self.started.append(server)
        return server.start()

    def stop_all(self) -> None:
        for server in self.started:
            server.stop()


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    started = Servers(tmp_path)
    yield started
    started.stop_all()


@dataclass
class Account:
    """An environment with an all-scopes key, reached through one server's channel."""

    environment: str
    key: str
    channel: grpc.aio.Channel | None = None

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.key}"),)

    @property
    def connections(self) -> Any:
        assert self.channel is not None
        return cgrpc.ConnectionServiceStub(self.channel)

    async def use(self, server: ServerProcess) -> None:
        if self.channel is not None:
            await self.channel.close()
        self.channel = grpc.aio.insecure_channel(server.target)

    async def close(self) -> None:
        if self.channel is not None:
            await self.channel.close()
            self.channel = None

    async def integration(self, integration_id: str = "openai-prod") -> None:
        assert self.channel is not None
        await igrpc.IntegrationServiceStub(self.channel).CreateIntegration(
            ipb.CreateIntegrationRequest(
                integration=rpb.Integration(integration_id=integration_id, provider="openai")
            ),
            metadata=self.metadata,
            timeout=READ_TIMEOUT,
        )

    async def create(
        self, connection_id: str, integration_id: str = "openai-prod", **tags: str
    ) -> Any:
        return await self.connections.CreateConnection(
            cpb.CreateConnectionRequest(
                connection=rpb.Connection(
                    integration_id=integration_id,
                    connection_id=connection_id,
                    credentials=rpb.Credentials(api_key=rpb.ApiKeyCredentials(api_key="sk-e2e")),
                    tags=tags,
                ),
                skip_verification=True,
            ),
            metadata=self.metadata,
            timeout=READ_TIMEOUT,
        )


@pytest_asyncio.fixture
async def account(events_backend: Backend) -> AsyncIterator[Account]:
    keys = key_service(events_backend)
    name = f"e-{uuid.uuid4().hex[:12]}"
    await keys.create_environment(name)
    token, _ = await keys.create_key(name, ALL_SCOPES)
    made = Account(name, token)
    yield made
    await made.close()


async def wait_until(check: Any, *, within: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(interval)
    return bool(await check())


# ---------------------------------------------------------------------------------------------
# webhooks


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from .receiver import make_pki

    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def receiver(pki: Any) -> Iterator[Any]:
    from .receiver import Receiver

    started = Receiver(pki)
    started.start()
    yield started
    started.stop()


def webhook_environment(
    database_url: str, keyring: Keyring, pki: Any, **settings: object
) -> dict[str, str]:
    """Server settings for webhook tests: the receiver's CA trusted, loopback allowed, and
    short retries so that bounded tests see several attempts."""
    values: dict[str, object] = {
        "outbound_allow": "127.0.0.0/8",
        "outbound_ca_file": str(pki.ca_file),
        "webhook_timeout": 2,
        "webhook_retry_base": 0.5,
        "webhook_retry_max": 4,
        "webhook_circuit_failures": 5,
        "webhook_circuit_cooldown": 2,
    }
    values.update(settings)
    return server_environment(database_url, keyring, **values)


async def create_endpoint(account: Account, url: str, *events: str) -> tuple[str, str]:
    """(endpoint id, signing secret)."""
    from credbroker.v1 import webhook_service_pb2 as wpb
    from credbroker.v1 import webhook_service_pb2_grpc as wgrpc

    assert account.channel is not None
    stub: Any = wgrpc.WebhookServiceStub(account.channel)
    response = await stub.CreateWebhookEndpoint(
        wpb.CreateWebhookEndpointRequest(url=url, events=list(events)),
        metadata=account.metadata,
        timeout=READ_TIMEOUT,
    )
    return response.endpoint.endpoint_id, response.signing_secret


def webhooks_stub(account: Account) -> Any:
    from credbroker.v1 import webhook_service_pb2_grpc as wgrpc

    assert account.channel is not None
    return wgrpc.WebhookServiceStub(account.channel)
