"""PostgreSQL restarts under a bounded load: the service degrades to UNAVAILABLE (never UNKNOWN
or INTERNAL), recovers by itself once the database is back, and loses nothing it acknowledged.

The machine's shared PostgreSQL is never touched: the test starts a private one with the
``pgserver`` package in ``tmp_path`` and restarts that one with its own ``pg_ctl`` (run as
pgserver's unprivileged system user when the tests run as root)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from credbroker.app import HEALTH_PROBE_SECONDS, key_service, start_server
from credbroker.bootstrap import open_backend
from credbroker.config import Settings
from credbroker.crypto import generate_keyring
from credbroker.domain.models import ALL_SCOPES
from credbroker.v1 import connection_service_pb2 as cpb
from credbroker.v1 import connection_service_pb2_grpc as cpb_grpc
from credbroker.v1 import integration_service_pb2 as ipb
from credbroker.v1 import integration_service_pb2_grpc as ipb_grpc
from credbroker.v1 import resources_pb2 as rpb

RATE_PER_SECOND = 50
MAX_IN_FLIGHT = 64
RPC_TIMEOUT = 8.0
# The service must answer again within this long of PostgreSQL being back (measured: well under
# a second). The load runs on until every outage shows TRAILING_CALLS successful calls in a row
# after its last failure, or this bound passed: how long pg_ctl takes on a loaded machine no
# longer eats into the window that judges recovery.
RECOVERY_SECONDS = 10.0
TRAILING_CALLS = 20
QUIET_SECONDS = 3.0  # steady load before the first outage, and after each recovery
HEALTH_SECONDS = 3 * HEALTH_PROBE_SECONDS + RECOVERY_SECONDS
PG_CTL_TIMEOUT = 60.0
INTEGRATION = "openai"
# No outbound calls: credential verification off (the generic providers used here have no
# verification request anyway) and no background re-checks. Unknown settings are ignored.
NO_OUTBOUND: dict[str, object] = {"verify_credentials": False, "recheck_interval": 0}


_START_SCRIPT = """
import json, sys, warnings
warnings.simplefilter("ignore")
import pgserver
from pgserver._commands import POSTGRES_BIN_PATH
server = pgserver.get_server(sys.argv[1], cleanup_mode=None)
info = server.get_postmaster_info()
print(json.dumps({
    "uri": server.get_uri(),
    "user": server.system_user,
    "socket_dir": str(info.socket_dir) if info.socket_dir else None,
    "log": str(server.log),
    "pg_ctl": str(POSTGRES_BIN_PATH / "pg_ctl"),
}))
"""


class PrivatePostgres:
    """A pgserver-managed PostgreSQL in a temporary folder of its own, restartable with pg_ctl.

    pgserver runs its commands with ``subprocess.run(user=...)`` when root, which forks; forking
    this process while gRPC threads run can crash the child (gRPC's fork handlers), so pgserver
    starts the server from a helper interpreter and pg_ctl runs through ``runuser`` (a plain
    vfork+exec). The folder is not under ``tmp_path``: pytest resets its base folder to mode
    0700 whenever another session starts, which would lock the unprivileged user out."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="credbroker-pg-restart-"))
        self.pgdata = self.folder / "pgdata"
        self._output = self.folder / "commands.out"
        with self._output.open("w") as out:
            subprocess.run(
                [sys.executable, "-c", _START_SCRIPT, str(self.pgdata)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=PG_CTL_TIMEOUT,
                check=False,
            )
        lines = self._output.read_text().splitlines()
        try:
            info = json.loads(lines[-1])
        except (IndexError, ValueError):
            raise RuntimeError("pgserver did not start: " + "\n".join(lines[-20:])) from None
        self.uri: str = info["uri"]
        self.socket_dir: str | None = info["socket_dir"]
        self.log = Path(info["log"])
        self._pg_ctl = [info["pg_ctl"], "-D", str(self.pgdata)]
        if info["user"]:
            runuser = shutil.which("runuser")
            if runuser is None:
                raise RuntimeError("running as root and runuser is missing")
            self._pg_ctl = [runuser, "-u", info["user"], "--", *self._pg_ctl]

    def pg_ctl(self, *args: str) -> None:
        """Blocking: call it in a thread. Output goes to a file, never a pipe: postgres
        inherits pg_ctl's descriptors, so a pipe would never close."""
        with self._output.open("a") as out:
            subprocess.run(
                [*self._pg_ctl, *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=PG_CTL_TIMEOUT,
                check=True,
            )

    def restart_fast(self) -> None:
        self.pg_ctl("-w", "-t", "30", "-m", "fast", "-l", str(self.log), "restart")

    def stop_fast(self) -> None:
        self.pg_ctl("-w", "-t", "30", "-m", "fast", "stop")

    def start(self) -> None:
        # The options pgserver itself starts with: no TCP, a socket in its socket folder.
        options = ["-o", '-h ""'] + (["-o", f"-k {self.socket_dir}"] if self.socket_dir else [])
        self.pg_ctl("-w", "-t", "30", "-l", str(self.log), *options, "start")

    def cleanup(self) -> None:
        for mode in ("fast", "immediate"):
            try:
                self.pg_ctl("-w", "-t", "30", "-m", mode, "stop")
                break
            except subprocess.SubprocessError:
                continue
        shutil.rmtree(self.folder, ignore_errors=True)

    def diagnostics(self) -> str:
        text = ""
        for path in (self._output, self.log):
            with contextlib.suppress(OSError):
                text += f"--- {path.name}\n{path.read_text()[-2000:]}\n"
        return text


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    try:
        postgres = PrivatePostgres()
    except Exception as exc:  # noqa: BLE001 - any failure here means "cannot run", not a bug
        pytest.skip(f"pgserver could not start a private PostgreSQL: {type(exc).__name__}: {exc}")
    try:
        yield postgres
    finally:
        postgres.cleanup()


@dataclass
class Op:
    kind: str
    start: float
    end: float
    code: str  # "OK" or a status code name


@dataclass
class Outage:
    name: str
    down: float
    back: float


@dataclass
class Load:
    connections: cpb_grpc.ConnectionServiceAsyncStub
    metadata: tuple[tuple[str, str], ...]
    t0: float
    ops: list[Op] = field(default_factory=list)
    acked: dict[str, str] = field(default_factory=dict)
    wrong: list[str] = field(default_factory=list)

    def now(self) -> float:
        return time.monotonic() - self.t0

    async def create(self) -> None:
        connection_id = f"c-{uuid.uuid4().hex[:12]}"
        value = f"sk-{uuid.uuid4().hex}"
        start = self.now()
        try:
            await self.connections.CreateConnection(
                cpb.CreateConnectionRequest(
                    connection=rpb.Connection(
                        integration_id=INTEGRATION,
                        connection_id=connection_id,
                        credentials=rpb.Credentials(api_key=rpb.ApiKeyCredentials(api_key=value)),
                    )
                ),
                metadata=self.metadata,
                timeout=RPC_TIMEOUT,
            )
        except grpc.aio.AioRpcError as error:
            self.ops.append(Op("create", start, self.now(), error.code().name))
            return
        self.ops.append(Op("create", start, self.now(), "OK"))
        self.acked[connection_id] = value

    async def read(self, rng: random.Random) -> None:
        if not self.acked:
            await self.create()
            return
        connection_id, value = rng.choice(list(self.acked.items()))
        start = self.now()
        try:
            reply = await self.connections.AccessCredentials(
                cpb.AccessCredentialsRequest(
                    integration_id=INTEGRATION, connection_id=connection_id
                ),
                metadata=self.metadata,
                timeout=RPC_TIMEOUT,
            )
        except grpc.aio.AioRpcError as error:
            self.ops.append(Op("read", start, self.now(), error.code().name))
            return
        self.ops.append(Op("read", start, self.now(), "OK"))
        if reply.credentials.api_key.api_key != value:
            self.wrong.append(connection_id)

    def recovered_at(self, outage: Outage, until: float) -> tuple[float | None, int]:
        """When calls started working again after ``outage`` (the start of the first of the
        successful calls that follow its last failure, among the calls started after it began
        and done before ``until``, when the next outage began), and how many such calls there
        are; None while the last call failed."""
        window = [op for op in self.ops if outage.down <= op.start and op.end < until]
        last_failure = max((op.end for op in window if op.code != "OK"), default=None)
        trailing = [op for op in window if last_failure is None or op.start > last_failure]
        if not trailing or any(op.code != "OK" for op in trailing):
            return None, 0
        return min(op.start for op in trailing), len(trailing)

    async def wait_recovered(self, outage: Outage) -> None:
        """Until TRAILING_CALLS calls in a row worked after ``outage``, or RECOVERY_SECONDS
        after it ended (the assertions then tell which); then QUIET_SECONDS more."""
        while self.now() < outage.back + RECOVERY_SECONDS:
            if self.recovered_at(outage, float("inf"))[1] >= TRAILING_CALLS:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(QUIET_SECONDS)

    async def run(self, stop: asyncio.Event) -> None:
        """About RATE_PER_SECOND calls a second, at most MAX_IN_FLIGHT at once, until ``stop``."""
        rng = random.Random(7)
        slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        tasks: set[asyncio.Task[None]] = set()

        async def one(kind: str) -> None:
            try:
                await (self.create() if kind == "create" else self.read(rng))
            finally:
                slots.release()

        issued = 0
        while not stop.is_set():
            await slots.acquire()
            task = asyncio.create_task(one("create" if rng.random() < 0.5 else "read"))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            issued += 1
            await asyncio.sleep(max(0.0, issued / RATE_PER_SECOND - self.now()))
        await asyncio.gather(*tasks)


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_postgres_restart_under_load(private_postgres: PrivatePostgres) -> None:
    postgres = private_postgres
    keyring = generate_keyring()
    settings = Settings.model_validate(
        {
            "database_url": postgres.uri,
            "keyring": keyring.to_json(),
            "listen": "127.0.0.1:0",
            "http_listen": "127.0.0.1:0",
            "db_pool_min": 2,
            "db_pool_max": 10,
            **NO_OUTBOUND,
        }
    )
    backend = await open_backend(settings)
    running = await start_server(settings, backend, keyring)
    try:
        keys = key_service(backend)
        await keys.create_environment("prod")
        token, _ = await keys.create_key("prod", ALL_SCOPES)
        metadata = (("authorization", f"Bearer {token}"),)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            await ipb_grpc.IntegrationServiceStub(channel).CreateIntegration(
                ipb.CreateIntegrationRequest(
                    integration=rpb.Integration(integration_id=INTEGRATION, provider="api-key")
                ),
                metadata=metadata,
                timeout=RPC_TIMEOUT,
            )
            load = Load(cpb_grpc.ConnectionServiceStub(channel), metadata, time.monotonic())
            outages: list[Outage] = []
            stop = asyncio.Event()

            async def disturb() -> None:
                try:
                    await asyncio.sleep(QUIET_SECONDS)
                    down = load.now()
                    await asyncio.to_thread(postgres.restart_fast)
                    outages.append(Outage("pg_ctl restart -m fast", down, load.now()))
                    await load.wait_recovered(outages[-1])
                    down = load.now()
                    await asyncio.to_thread(postgres.stop_fast)
                    await asyncio.sleep(2)  # a real outage window, not only a blip
                    await asyncio.to_thread(postgres.start)
                    outages.append(Outage("pg_ctl stop -m fast; 2 s; start", down, load.now()))
                    await load.wait_recovered(outages[-1])
                finally:
                    stop.set()

            results = await asyncio.gather(load.run(stop), disturb(), return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException):
                    raise AssertionError(postgres.diagnostics()) from result

            duration = load.now()
            failed = [op for op in load.ops if op.code != "OK"]
            timeline = ", ".join(
                f"{o.name}: down {o.down:.2f}s back {o.back:.2f}s" for o in outages
            )
            recoveries = []
            for index, outage in enumerate(outages):
                until = outages[index + 1].down if index + 1 < len(outages) else duration
                recoveries.append(load.recovered_at(outage, until))
            measured = ", ".join(
                "never" if at is None else f"{at - o.back:+.2f}s after back ({n} calls after)"
                for o, (at, n) in zip(outages, recoveries, strict=True)
            )
            summary = (
                f"{len(load.ops)} calls in {duration:.1f}s ({len(failed)} failed, codes "
                f"{sorted({op.code for op in failed})}); {timeline}; recovered: {measured}"
            )
            print(summary)
            assert len(outages) == 2, summary
            assert len(load.ops) >= RATE_PER_SECOND * duration * 0.6, summary

            # Only UNAVAILABLE, and only around an outage.
            assert {op.code for op in failed} <= {"UNAVAILABLE"}, summary
            for op in failed:
                assert any(
                    op.end >= o.down - 0.5 and op.start <= o.back + RECOVERY_SECONDS
                    for o in outages
                ), f"{op} failed away from any outage; {summary}"
            # The stop/start window really was an outage (else this test proves nothing).
            gap = outages[1]
            assert any(gap.down <= op.start <= gap.back for op in failed), summary

            # Recovered by itself within RECOVERY_SECONDS of each outage ending, for good.
            for outage, (recovered_at, trailing) in zip(outages, recoveries, strict=True):
                assert recovered_at is not None, (
                    f"{outage.name}: calls still failed at the end of its window (the load ran "
                    f"{RECOVERY_SECONDS} s past PostgreSQL being back); {summary}"
                )
                assert recovered_at - outage.back <= RECOVERY_SECONDS, (
                    f"{outage.name}: calls failed until {recovered_at - outage.back:.1f}s after "
                    f"PostgreSQL was back (bound {RECOVERY_SECONDS} s); {summary}"
                )
                assert trailing >= TRAILING_CALLS, f"{outage.name}: too few calls after; {summary}"

            assert load.wrong == [], f"reads returned another value: {load.wrong[:5]}"

            # Nothing acknowledged was lost.
            connections = cpb_grpc.ConnectionServiceStub(channel)
            lost = []
            for connection_id, value in load.acked.items():
                reply = await connections.AccessCredentials(
                    cpb.AccessCredentialsRequest(
                        integration_id=INTEGRATION, connection_id=connection_id
                    ),
                    metadata=metadata,
                    timeout=RPC_TIMEOUT,
                )
                if reply.credentials.api_key.api_key != value:
                    lost.append(connection_id)
            assert lost == [], f"{len(lost)} acknowledged creates lost; {summary}"
            assert len(load.acked) >= 100, summary

            # Health turns SERVING again by itself (probed every HEALTH_PROBE_SECONDS).
            deadline = time.monotonic() + HEALTH_SECONDS
            while True:
                health = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=5
                )
                if health.status == health_pb2.HealthCheckResponse.SERVING:
                    break
                assert time.monotonic() < deadline, f"not SERVING {HEALTH_SECONDS} s after"
                await asyncio.sleep(0.1)
    finally:
        await running.stop(0)
        await backend.close()
