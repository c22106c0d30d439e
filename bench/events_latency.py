"""Commit-to-receiver and commit-to-Watch latency of connection events over a real server.

Starts ``credbroker serve`` (one process) on a fresh database, a local HTTPS webhook receiver
(the test suite's, with its own CA) and one WatchConnections stream, then creates connections
one at a time at a fixed rate and measures, per event, the time from the event's commit stamp
(``event_time``: the database clock inside the committing transaction, the same machine's clock)
to its arrival at the receiver and on the stream. Prints medians, p99 and max; loopback only,
bounded in count and time.

    .venv/bin/python bench/events_latency.py [--events 300] [--rate 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from credbroker.app import key_service  # noqa: E402
from credbroker.bootstrap import open_backend  # noqa: E402
from credbroker.config import Settings  # noqa: E402
from credbroker.crypto import generate_keyring  # noqa: E402
from credbroker.domain.models import ALL_SCOPES  # noqa: E402
from credbroker.v1 import connection_service_pb2 as cpb  # noqa: E402
from credbroker.v1 import connection_service_pb2_grpc as cgrpc  # noqa: E402
from credbroker.v1 import integration_service_pb2 as ipb  # noqa: E402
from credbroker.v1 import integration_service_pb2_grpc as igrpc  # noqa: E402
from credbroker.v1 import resources_pb2 as rpb  # noqa: E402
from credbroker.v1 import webhook_service_pb2 as wpb  # noqa: E402
from credbroker.v1 import webhook_service_pb2_grpc as wgrpc  # noqa: E402
from tests.events.receiver import Receiver, make_pki  # noqa: E402

ADMIN_URL = os.environ.get(
    "BENCH_DATABASE_URL",
    os.environ.get("CREDBROKER_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
)


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _summary(name: str, values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return (
        f"{name}: n={len(ms)} median={statistics.median(ms):.1f} ms "
        f"p99={_percentile(ms, 0.99):.1f} ms max={max(ms):.1f} ms"
    )


async def main(events: int, rate: float) -> None:
    name = f"credbroker_latency_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(ADMIN_URL)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    url = urlunsplit(urlsplit(ADMIN_URL)._replace(path="/" + name))
    folder = Path(tempfile.mkdtemp(prefix="credbroker-latency-"))
    keyring = generate_keyring()
    pki = make_pki(folder)
    receiver = Receiver(pki)
    receiver.start()
    process = None
    try:
        backend = await open_backend(
            Settings.model_validate({"database_url": url, "keyring": keyring.to_json()})
        )
        keys = key_service(backend)
        await keys.create_environment("bench")
        token, _ = await keys.create_key("bench", ALL_SCOPES)
        await backend.close()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CREDBROKER_")}
        env.update(
            CREDBROKER_DATABASE_URL=url,
            CREDBROKER_KEYRING=keyring.to_json(),
            CREDBROKER_LOG_FORMAT="json",
            CREDBROKER_LOG_LEVEL="warning",
            CREDBROKER_HTTP_LISTEN="127.0.0.1:0",
            CREDBROKER_VERIFY_CREDENTIALS="false",
            CREDBROKER_RECHECK_INTERVAL="0",
            CREDBROKER_OUTBOUND_ALLOW="127.0.0.0/8",
            CREDBROKER_OUTBOUND_CA_FILE=str(pki.ca_file),
        )
        log = folder / "server.log"
        with log.open("wb") as out:
            process = subprocess.Popen(  # noqa: ASYNC220, S603 - our own server, started once
                [str(ROOT / ".venv" / "bin" / "credbroker"), "serve", "--listen", "127.0.0.1:0"],
                env={**env, "CREDBROKER_LOG_LEVEL": "info"},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        port = 0
        for _ in range(300):
            for line in log.read_text().splitlines():
                if '"serving"' in line:
                    port = int(json.loads(line)["port"])
            if port:
                break
            await asyncio.sleep(0.1)
        assert port, log.read_text()
        metadata = (("authorization", f"Bearer {token}"),)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await igrpc.IntegrationServiceStub(channel).CreateIntegration(
                ipb.CreateIntegrationRequest(
                    integration=rpb.Integration(integration_id="openai", provider="openai")
                ),
                metadata=metadata,
            )
            await wgrpc.WebhookServiceStub(channel).CreateWebhookEndpoint(
                wpb.CreateWebhookEndpointRequest(url=receiver.url()), metadata=metadata
            )
            stream = cgrpc.ConnectionServiceStub(channel).WatchConnections(
                cpb.WatchConnectionsRequest(), metadata=metadata
            )
            await stream.read()
            watch_latency: list[float] = []

            async def watch() -> None:
                while len(watch_latency) < events:
                    message = await stream.read()
                    arrived = time.time()
                    if message.HasField("event"):
                        stamp = message.event.event_time.ToDatetime().timestamp()
                        watch_latency.append(arrived - stamp)

            watcher = asyncio.create_task(watch())
            stub = cgrpc.ConnectionServiceStub(channel)
            for i in range(events):
                await stub.CreateConnection(
                    cpb.CreateConnectionRequest(
                        connection=rpb.Connection(
                            integration_id="openai",
                            connection_id=f"c-{i}",
                            credentials=rpb.Credentials(
                                api_key=rpb.ApiKeyCredentials(api_key="sk-bench")
                            ),
                        ),
                        skip_verification=True,
                    ),
                    metadata=metadata,
                )
                await asyncio.sleep(1 / rate)
            await asyncio.wait_for(watcher, 30)
            stream.cancel()
            deadline = time.monotonic() + 30
            while len(receiver.received) < events and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        hook_latency = [
            r.time - datetime.fromisoformat(r.json["event_time"]).timestamp()
            for r in receiver.received
        ]
        print(f"{events} events at {rate}/s, one server process, loopback")
        print(_summary("commit -> webhook receiver", hook_latency))
        print(_summary("commit -> WatchConnections", watch_latency))
    finally:
        if process is not None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
        receiver.stop()
        admin = await asyncpg.connect(ADMIN_URL)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=300)
    parser.add_argument("--rate", type=float, default=20.0, help="connections created per second")
    args = parser.parse_args()
    asyncio.run(main(min(args.events, 5000), min(args.rate, 200.0)))
