"""Issue 9, finding 8: an undecryptable blob does not stop ``credbroker keyring rewrap``.

A real database gets connections and webhook endpoints from a real server, then blobs are
tampered with behind its back (a bit flipped, a blob copied from another row, a row moved to
another integration, a header naming a master key nobody has). The real CLI, run as a
subprocess, must skip and name each of them (table, row id, column, reason; never blob bytes or
secrets), move every other blob (the good blob of a bad row too), exit 1 with a summary line,
do the same again on a rerun without looping, and ``keyring status`` must list them while
``keyring retire`` refuses the old key. Once the rows are repaired, the rewrap completes and the
old key can be retired."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import grpc
import pytest
from google.protobuf import field_mask_pb2

from credbroker.app import key_service, start_server
from credbroker.bootstrap import open_backend
from credbroker.config import Settings
from credbroker.crypto import Keyring, generate_keyring
from credbroker.domain.models import ALL_SCOPES
from credbroker.v1 import connection_service_pb2 as cpb
from credbroker.v1 import connection_service_pb2_grpc as cpb_grpc
from credbroker.v1 import integration_service_pb2 as ipb
from credbroker.v1 import integration_service_pb2_grpc as ipb_grpc
from credbroker.v1 import resources_pb2 as rpb
from credbroker.v1 import webhook_service_pb2 as wpb
from credbroker.v1 import webhook_service_pb2_grpc as wpb_grpc

CLI_TIMEOUT = 60.0
GOOD_CONNECTIONS = 40
SUMMARY = re.compile(
    r"credbroker: rewrap incomplete: (\d+) rows rewrapped, (\d+) rows? skipped with "
    r"(\d+) unreadable blobs? \(listed above\)"
)


@dataclass
class Cli:
    executable: Path
    database_url: str

    async def __call__(self, *args: str, keyring: Keyring | None = None) -> tuple[int, str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CREDBROKER_")}
        env.update(
            CREDBROKER_LOG_FORMAT="json",
            CREDBROKER_DATABASE_URL=self.database_url,
            CREDBROKER_VERIFY_CREDENTIALS="false",
        )
        if keyring is not None:
            env["CREDBROKER_KEYRING"] = keyring.to_json()
        process = await asyncio.create_subprocess_exec(
            str(self.executable),
            *args,
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdin = keyring.to_json().encode() if keyring is not None and "--file" in args else b""
        try:
            out, err = await asyncio.wait_for(process.communicate(stdin), CLI_TIMEOUT)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise AssertionError(f"credbroker {' '.join(args)} ran over {CLI_TIMEOUT} s") from None
        assert process.returncode is not None
        return process.returncode, out.decode(), err.decode()


@asynccontextmanager
async def own_database(admin_url: str) -> AsyncIterator[str]:
    name = f"credbroker_bad_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield urlunsplit(urlsplit(admin_url)._replace(path="/" + name))
    finally:
        admin = await asyncpg.connect(admin_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


def settings_for(database_url: str, keyring: Keyring) -> Settings:
    return Settings.model_validate(
        {
            "database_url": database_url,
            "keyring": keyring.to_json(),
            "listen": "127.0.0.1:0",
            "http_listen": "",
            "db_pool_min": 1,
            "verify_credentials": False,
            "recheck_interval": 0,
            "webhook_dispatch": False,
            "outbound_allow": "127.0.0.0/8",
        }
    )


@dataclass
class Api:
    metadata: tuple[tuple[str, str], ...]
    integrations: Any
    connections: Any
    webhooks: Any

    async def access(self, integration_id: str, connection_id: str) -> str:
        reply = await self.connections.AccessCredentials(
            cpb.AccessCredentialsRequest(
                integration_id=integration_id, connection_id=connection_id
            ),
            metadata=self.metadata,
            timeout=10,
        )
        return str(reply.credentials.api_key.api_key)


@asynccontextmanager
async def serving(database_url: str, keyring: Keyring, token: str) -> AsyncIterator[Api]:
    settings = settings_for(database_url, keyring)
    backend = await open_backend(settings)
    try:
        running = await start_server(settings, backend, keyring)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
                yield Api(
                    (("authorization", f"Bearer {token}"),),
                    ipb_grpc.IntegrationServiceStub(channel),
                    cpb_grpc.ConnectionServiceStub(channel),
                    wpb_grpc.WebhookServiceStub(channel),
                )
        finally:
            await running.stop(0)
    finally:
        await backend.close()


async def new_tenant(database_url: str, keyring: Keyring) -> str:
    backend = await open_backend(settings_for(database_url, keyring))
    try:
        keys = key_service(backend)
        await keys.create_environment("prod")
        token, _ = await keys.create_key("prod", ALL_SCOPES)
        return token
    finally:
        await backend.close()


def api_key(value: str) -> rpb.Credentials:
    return rpb.Credentials(api_key=rpb.ApiKeyCredentials(api_key=value))


async def fill(api: Api) -> dict[tuple[str, str], str]:
    """Two integrations, connections with a secret and config each, and three endpoints (one
    rotated, so it has a previous secret too). Returns (integration, connection) -> secret."""
    for integration_id in ("openai", "other"):
        await api.integrations.CreateIntegration(
            ipb.CreateIntegrationRequest(
                integration=rpb.Integration(integration_id=integration_id, provider="openai")
            ),
            metadata=api.metadata,
        )
    secrets: dict[tuple[str, str], str] = {}
    for i in range(GOOD_CONNECTIONS + 3):
        secret = f"sk-{i}-{uuid.uuid4().hex}"
        await api.connections.CreateConnection(
            cpb.CreateConnectionRequest(
                connection=rpb.Connection(
                    integration_id="openai",
                    connection_id=f"c{i}",
                    credentials=api_key(secret),
                    connection_config={"secondary": f"cfg-{i}"},
                )
            ),
            metadata=api.metadata,
        )
        secrets[("openai", f"c{i}")] = secret
    endpoints = []
    for i in range(3):
        created = await api.webhooks.CreateWebhookEndpoint(
            wpb.CreateWebhookEndpointRequest(url=f"https://127.0.0.1:9/hook-{i}"),
            metadata=api.metadata,
        )
        endpoints.append(created.endpoint.endpoint_id)
    await api.webhooks.RotateWebhookSecret(
        wpb.RotateWebhookSecretRequest(endpoint_id=endpoints[2]), metadata=api.metadata
    )
    return secrets


@dataclass(frozen=True)
class Tampered:
    table: str
    row_id: uuid.UUID
    column: str


async def tamper(database_url: str) -> tuple[list[Tampered], dict[str, bytes]]:
    """Damages five blobs, one way each; returns them and the untouched endpoint blob whose
    header was changed (to put it back later)."""
    db = await asyncpg.connect(database_url)
    try:
        ids = {
            row["connection_id"]: row["id"]
            for row in await db.fetch("SELECT id, connection_id FROM connections")
        }
        endpoints = [
            row["id"] for row in await db.fetch("SELECT id FROM webhook_endpoints ORDER BY id")
        ]
        rotated = await db.fetchval(
            "SELECT id FROM webhook_endpoints WHERE previous_secret_blob IS NOT NULL"
        )

        async def flip(table: str, column: str, row_id: uuid.UUID, offset: int) -> None:
            blob = bytearray(
                await db.fetchval(f"SELECT {column} FROM {table} WHERE id = $1", row_id)
            )
            blob[offset] ^= 0x01
            await db.execute(f"UPDATE {table} SET {column} = $1 WHERE id = $2", bytes(blob), row_id)

        # 1. a bit flipped in the payload's tag (only a check of the payload finds it)
        await flip("connections", "credentials_blob", ids["c0"], -1)
        # 2. wrong associated data: another row's config blob
        await db.execute(
            """UPDATE connections SET config_blob = (SELECT config_blob FROM connections
                                                      WHERE id = $1) WHERE id = $2""",
            ids["c2"],
            ids["c1"],
        )
        # 3. the row moved to another integration (its blobs are bound to the old one)
        await db.execute("UPDATE connections SET integration_id = 'other' WHERE id = $1", ids["c3"])
        # 4. a header naming master key 7, which no keyring has (once refused the whole start)
        plain = next(e for e in endpoints if e != rotated)
        original = bytes(
            await db.fetchval("SELECT secret_blob FROM webhook_endpoints WHERE id = $1", plain)
        )
        await db.execute(
            "UPDATE webhook_endpoints SET secret_blob = $1 WHERE id = $2",
            original[:2] + (7).to_bytes(4, "big") + original[6:],
            plain,
        )
        # 5. a bit flipped in a previous signing secret's wrapped data key
        await flip("webhook_endpoints", "previous_secret_blob", rotated, 40)
    finally:
        await db.close()
    tampered = [
        Tampered("connections", ids["c0"], "credentials_blob"),
        Tampered("connections", ids["c1"], "config_blob"),
        Tampered("connections", ids["c3"], "credentials_blob"),
        Tampered("connections", ids["c3"], "config_blob"),
        Tampered("webhook_endpoints", plain, "secret_blob"),
        Tampered("webhook_endpoints", rotated, "previous_secret_blob"),
    ]
    return tampered, {str(plain): original}


async def blobs(database_url: str) -> dict[tuple[str, str, str], bytes]:
    db = await asyncpg.connect(database_url)
    try:
        found: dict[tuple[str, str, str], bytes] = {}
        for table, columns in (
            ("connections", ("credentials_blob", "config_blob")),
            ("webhook_endpoints", ("secret_blob", "previous_secret_blob")),
        ):
            for row in await db.fetch(f"SELECT id, {', '.join(columns)} FROM {table}"):
                for column in columns:
                    if row[column] is not None:
                        found[(table, str(row["id"]), column)] = bytes(row[column])
        return found
    finally:
        await db.close()


def key_id(blob: bytes) -> int:
    return int.from_bytes(blob[2:6], "big")


def assert_no_blob_bytes(text: str, stored: dict[tuple[str, str, str], bytes]) -> None:
    lowered = text.lower()
    for blob in stored.values():
        for chunk in (blob[6:30], blob[66:90]):
            assert chunk.hex() not in lowered
            assert base64.b64encode(chunk).decode()[:24].lower() not in lowered


def reported(stdout: str, prefix: str) -> set[Tampered]:
    found = set()
    for line in stdout.splitlines():
        match = re.fullmatch(prefix + r"(\w+) ([0-9a-f-]{36}) (\w+): (.+)", line)
        if match:
            found.add(Tampered(match.group(1), uuid.UUID(match.group(2)), match.group(3)))
    return found


@pytest.mark.slow
async def test_rewrap_skips_and_names_unreadable_blobs(
    admin_database_url: str, credbroker_executable: Path
) -> None:
    async with own_database(admin_database_url) as url:
        cli = Cli(credbroker_executable, url)
        k1 = generate_keyring()
        token = await new_tenant(url, k1)
        async with serving(url, k1, token) as api:
            secrets = await fill(api)
        tampered, originals = await tamper(url)
        k2 = k1.with_new_key(primary=True)
        before = await blobs(url)

        code, out, err = await cli("keyring", "rewrap", "--batch-size", "7", keyring=k2)

        assert code == 1, (out, err)
        print(out + err)  # the report, for the record
        summary = SUMMARY.search(err)
        assert summary, err
        rows_bad = {(t.table, t.row_id) for t in tampered}
        total_rows = GOOD_CONNECTIONS + 3 + 3
        assert int(summary.group(2)) == len(rows_bad)
        assert int(summary.group(3)) == len(tampered)
        # The bad rows' good blobs moved too: c0's config, c1's credentials, the rotated
        # endpoint's current secret.
        assert int(summary.group(1)) == total_rows - len(rows_bad) + 3
        assert reported(out, "skipped ") == set(tampered), out
        assert "fails authentication for this row and column" in out
        assert "names master key 7, which this keyring cannot use" in out
        assert_no_blob_bytes(out + err, before)
        for secret in secrets.values():
            assert secret not in out + err
        after = await blobs(url)
        bad = {(t.table, str(t.row_id), t.column) for t in tampered}
        for where, blob in after.items():
            if where in bad:
                assert blob == before[where], f"{where}: an unreadable blob was changed"
            else:
                assert key_id(blob) == 2, f"{where} still under key {key_id(blob)}"
                assert blob[66:] == before[where][66:], f"{where}: payload changed"

        # A rerun reports the same rows, changes nothing and ends (no loop on them).
        started = time.monotonic()
        code, again, err = await cli("keyring", "rewrap", keyring=k2)
        assert code == 1 and time.monotonic() - started < 30, err
        assert reported(again, "skipped ") == set(tampered)
        summary = SUMMARY.search(err)
        assert summary and summary.group(1) == "0", err
        assert await blobs(url) == after

        # status lists them (key 7's blob included) and retire refuses key 1.
        code, status, err = await cli("keyring", "status", keyring=k2)
        assert code == 0, err
        assert "unreadable blobs: 6" in status
        assert reported(status, "  ") == set(tampered)
        assert "  7\t1  (NOT CONFIGURED)" in status
        code, out, err = await cli("keyring", "retire", "1", "--file", "-", keyring=k2)
        assert code == 1 and out == "", err
        assert "master key 1 still encrypts" in err

        # Repair: put the endpoint header back, replace the bad connections, delete the endpoint
        # whose previous secret is gone. Then the rewrap completes and key 1 can go.
        db = await asyncpg.connect(url)
        try:
            for endpoint_id, original in originals.items():
                await db.execute(
                    "UPDATE webhook_endpoints SET secret_blob = $1 WHERE id = $2",
                    original,
                    uuid.UUID(endpoint_id),
                )
        finally:
            await db.close()
        async with serving(url, k2, token) as api:
            for (integration_id, connection_id), secret in secrets.items():
                if connection_id in {"c0", "c1", "c3"}:
                    continue
                assert await api.access(integration_id, connection_id) == secret
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await api.access("openai", "c0")
            assert caught.value.code() == grpc.StatusCode.DATA_LOSS
            for integration_id, connection_id in (
                ("openai", "c0"),
                ("openai", "c1"),
                ("other", "c3"),
            ):
                await api.connections.UpdateConnection(
                    cpb.UpdateConnectionRequest(
                        connection=rpb.Connection(
                            integration_id=integration_id,
                            connection_id=connection_id,
                            credentials=api_key("replaced"),
                            connection_config={"secondary": "again"},
                        ),
                        update_mask=field_mask_pb2.FieldMask(
                            paths=["credentials", "connection_config"]
                        ),
                    ),
                    metadata=api.metadata,
                )
            rotated = next(t for t in tampered if t.column == "previous_secret_blob")
            await api.webhooks.DeleteWebhookEndpoint(
                wpb.DeleteWebhookEndpointRequest(endpoint_id=str(rotated.row_id)),
                metadata=api.metadata,
            )
        code, out, err = await cli("keyring", "rewrap", keyring=k2)
        assert code == 0, err
        assert re.search(r"rewrap complete: 1 rows now under master key 2", out), out
        code, status, err = await cli("keyring", "status", keyring=k2)
        assert code == 0 and "unreadable blobs: 0" in status, (status, err)
        code, out, err = await cli("keyring", "retire", "1", "--file", "-", keyring=k2)
        assert code == 0, err
        assert sorted(Keyring.from_json(out).keys) == [2]
