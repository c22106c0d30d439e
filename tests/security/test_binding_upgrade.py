"""Issue 9, finding 11, for rows written before binding v2: a database whose blobs are format 1
(bound to the row id, environment and integration, not the connection id) is refused by default,
served while ``CREDBROKER_ACCEPT_BINDING_V1`` is on (where the connection_id swap still works:
the reason the default refuses), moved to binding v2 by the real ``credbroker keyring rewrap``,
and after that every swap of connection_id, integration_id or environment between two rows is
DATA_LOSS, and a format 1 blob written into the database later is refused."""

from __future__ import annotations

import asyncio
import os
import sys
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

from credbroker.app import key_service, start_server
from credbroker.bootstrap import StartupError, bound_cipher, open_backend
from credbroker.config import Settings
from credbroker.crypto import FORMAT_V1, EnvelopeCipher, Keyring, encryption_context
from credbroker.crypto import generate_keyring as new_keyring
from credbroker.domain.connections import CONFIG_PURPOSE, CREDENTIALS_PURPOSE, binding
from credbroker.domain.models import ALL_SCOPES
from credbroker.domain.webhooks import SECRET_PURPOSE, endpoint_binding
from credbroker.v1 import connection_service_pb2 as cpb
from credbroker.v1 import connection_service_pb2_grpc as cpb_grpc
from credbroker.v1 import integration_service_pb2 as ipb
from credbroker.v1 import integration_service_pb2_grpc as ipb_grpc
from credbroker.v1 import resources_pb2 as rpb
from credbroker.v1 import webhook_service_pb2 as wpb
from credbroker.v1 import webhook_service_pb2_grpc as wpb_grpc

CLI_TIMEOUT = 60.0
_CANDIDATES = (
    Path(sys.executable).parent / "credbroker",
    Path(__file__).resolve().parents[2] / ".venv" / "bin" / "credbroker",
)


def executable() -> Path:
    for candidate in _CANDIDATES:
        if candidate.exists():
            return candidate
    raise AssertionError(f"credbroker console script not found in {_CANDIDATES}")


@asynccontextmanager
async def own_database(admin_url: str) -> AsyncIterator[str]:
    name = f"credbroker_bind_{uuid.uuid4().hex[:12]}"
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


def settings_for(url: str, keyring: Keyring, *, accept_v1: bool = False) -> Settings:
    return Settings.model_validate(
        {
            "database_url": url,
            "keyring": keyring.to_json(),
            "listen": "127.0.0.1:0",
            "http_listen": "",
            "db_pool_min": 1,
            "verify_credentials": False,
            "recheck_interval": 0,
            "webhook_dispatch": False,
            "outbound_allow": "127.0.0.0/8",
            "accept_binding_v1": accept_v1,
        }
    )


@dataclass
class Api:
    tokens: dict[str, str]
    integrations: Any
    connections: Any
    webhooks: Any

    def metadata(self, environment: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.tokens[environment]}"),)

    async def access(self, environment: str, integration_id: str, connection_id: str) -> str:
        reply = await self.connections.AccessCredentials(
            cpb.AccessCredentialsRequest(
                integration_id=integration_id, connection_id=connection_id
            ),
            metadata=self.metadata(environment),
            timeout=10,
        )
        return str(reply.credentials.api_key.api_key)

    async def refused(self, environment: str, integration_id: str, connection_id: str) -> None:
        """DATA_LOSS, once the server's cache has heard of the change (bounded poll)."""
        for _ in range(100):
            try:
                await self.access(environment, integration_id, connection_id)
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.DATA_LOSS, error.details()
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"{environment}/{integration_id}/{connection_id} is still served")


@asynccontextmanager
async def serving(
    url: str, keyring: Keyring, tokens: dict[str, str], **kw: bool
) -> AsyncIterator[Api]:
    settings = settings_for(url, keyring, **kw)
    backend = await open_backend(settings)
    try:
        running = await start_server(settings, backend, keyring)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
                yield Api(
                    tokens,
                    ipb_grpc.IntegrationServiceStub(channel),
                    cpb_grpc.ConnectionServiceStub(channel),
                    wpb_grpc.WebhookServiceStub(channel),
                )
        finally:
            await running.stop(0)
    finally:
        await backend.close()


async def cli(url: str, keyring: Keyring, *args: str, accept_v1: bool) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CREDBROKER_")}
    env.update(
        CREDBROKER_LOG_FORMAT="json",
        CREDBROKER_DATABASE_URL=url,
        CREDBROKER_KEYRING=keyring.to_json(),
        CREDBROKER_ACCEPT_BINDING_V1="true" if accept_v1 else "false",
    )
    process = await asyncio.create_subprocess_exec(
        str(executable()),
        *args,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), CLI_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"credbroker {' '.join(args)} ran over {CLI_TIMEOUT} s") from None
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def api_key(value: str) -> rpb.Credentials:
    return rpb.Credentials(api_key=rpb.ApiKeyCredentials(api_key=value))


async def seed(
    url: str, keyring: Keyring
) -> tuple[dict[str, str], dict[tuple[str, str, str], str]]:
    """Two environments; in the first two integrations, alice and bob in one and carol in the
    other; in the second, the same integration and connection ids as the first's alice; a
    webhook endpoint. Returns the tokens and (environment, integration, connection) -> secret."""
    backend = await open_backend(settings_for(url, keyring))
    tokens = {}
    try:
        keys = key_service(backend)
        for environment in ("prod", "staging"):
            await keys.create_environment(environment)
            tokens[environment], _ = await keys.create_key(environment, ALL_SCOPES)
    finally:
        await backend.close()
    secrets: dict[tuple[str, str, str], str] = {}
    async with serving(url, keyring, tokens) as api:
        for environment, integration_id, connection_id in (
            ("prod", "openai", "alice"),
            ("prod", "openai", "bob"),
            ("prod", "other", "alice"),
            ("staging", "openai", "alice"),
        ):
            if (environment, integration_id) not in {(e, i) for e, i, _ in secrets}:
                await api.integrations.CreateIntegration(
                    ipb.CreateIntegrationRequest(
                        integration=rpb.Integration(
                            integration_id=integration_id, provider="openai"
                        )
                    ),
                    metadata=api.metadata(environment),
                )
            secret = f"sk-{environment}-{integration_id}-{connection_id}-{uuid.uuid4().hex}"
            await api.connections.CreateConnection(
                cpb.CreateConnectionRequest(
                    connection=rpb.Connection(
                        integration_id=integration_id,
                        connection_id=connection_id,
                        credentials=api_key(secret),
                        connection_config={"secondary": connection_id},
                    )
                ),
                metadata=api.metadata(environment),
            )
            secrets[(environment, integration_id, connection_id)] = secret
        await api.webhooks.CreateWebhookEndpoint(
            wpb.CreateWebhookEndpointRequest(url="https://127.0.0.1:9/hook"),
            metadata=api.metadata("prod"),
        )
    return tokens, secrets


async def rewrite_as_v1(url: str, keyring: Keyring) -> None:
    """Turns every blob into what the release before binding v2 wrote: format 1, bound to the
    v1 ids (the plaintext comes from the v2 blob; nothing else in the row changes)."""
    cipher = bound_cipher(settings_for(url, keyring), keyring)
    envelope = EnvelopeCipher(keyring)

    def as_v1(blob: bytes, purpose: str, bound: Any) -> bytes:
        plaintext = cipher.decrypt(blob, purpose=purpose, binding=bound)
        context = encryption_context(purpose, *bound.legacy_ids, format=FORMAT_V1)
        return envelope.encrypt(plaintext, context, format=FORMAT_V1)

    db = await asyncpg.connect(url)
    try:
        for row in await db.fetch("SELECT * FROM connections"):
            bound = binding(
                row["environment_id"], row["integration_id"], row["connection_id"], row["id"]
            )
            await db.execute(
                "UPDATE connections SET credentials_blob = $1, config_blob = $2 WHERE id = $3",
                as_v1(bytes(row["credentials_blob"]), CREDENTIALS_PURPOSE, bound),
                as_v1(bytes(row["config_blob"]), CONFIG_PURPOSE, bound),
                row["id"],
            )
        for row in await db.fetch("SELECT * FROM webhook_endpoints"):
            bound = endpoint_binding(row["environment_id"], row["id"])
            await db.execute(
                "UPDATE webhook_endpoints SET secret_blob = $1 WHERE id = $2",
                as_v1(bytes(row["secret_blob"]), SECRET_PURPOSE, bound),
                row["id"],
            )
    finally:
        await db.close()


async def row_id(
    db: asyncpg.Connection, environment: str, integration_id: str, connection: str
) -> Any:
    return await db.fetchval(
        """SELECT c.id FROM connections c JOIN environments e ON e.id = c.environment_id
           WHERE e.name = $1 AND c.integration_id = $2 AND c.connection_id = $3""",
        environment,
        integration_id,
        connection,
    )


async def swap(
    url: str, column: str, first: tuple[str, str, str], second: tuple[str, str, str]
) -> None:
    """Swaps ``column`` between two rows in one transaction (parking the first row's
    connection_id meanwhile: the ids are unique together)."""
    db = await asyncpg.connect(url)
    try:
        async with db.transaction():
            one, two = await row_id(db, *first), await row_id(db, *second)
            select = "SELECT {} FROM connections WHERE id = $1"
            a = await db.fetchval(select.format(column), one)
            b = await db.fetchval(select.format(column), two)
            parked = await db.fetchval(select.format("connection_id"), one)
            update = "UPDATE connections SET {} = $1 WHERE id = $2"
            await db.execute(update.format("connection_id"), "swap-in-progress", one)
            await db.execute(update.format(column), a, two)
            await db.execute(update.format(column), b, one)
            if column != "connection_id":
                await db.execute(update.format("connection_id"), parked, one)
    finally:
        await db.close()


async def formats(url: str) -> list[int]:
    db = await asyncpg.connect(url)
    try:
        rows = await db.fetch(
            """SELECT credentials_format AS f FROM connections
               UNION ALL SELECT config_format FROM connections
               UNION ALL SELECT secret_format FROM webhook_endpoints"""
        )
        return sorted(row["f"] for row in rows)
    finally:
        await db.close()


SWAPS = [
    ("connection_id", ("prod", "openai", "alice"), ("prod", "openai", "bob")),
    ("integration_id", ("prod", "openai", "alice"), ("prod", "other", "alice")),
    ("environment_id", ("prod", "openai", "alice"), ("staging", "openai", "alice")),
]


@pytest.mark.slow
async def test_legacy_rows_are_refused_then_rebound_by_the_rewrap(admin_database_url: str) -> None:
    async with own_database(admin_database_url) as url:
        keyring = new_keyring()
        tokens, secrets = await seed(url, keyring)
        await rewrite_as_v1(url, keyring)
        assert set(await formats(url)) == {FORMAT_V1}

        # Refused by default: the server does not start; status names every blob.
        backend = await open_backend(settings_for(url, keyring))
        try:
            with pytest.raises(StartupError, match="CREDBROKER_ACCEPT_BINDING_V1=true"):
                await start_server(settings_for(url, keyring), backend, keyring)
        finally:
            await backend.close()
        code, status, err = await cli(url, keyring, "keyring", "status", accept_v1=False)
        assert code == 0, err
        assert "v1\t9  (legacy: refused)" in status and "unreadable blobs: 9" in status
        assert status.count("legacy binding (format 1), refused") == 9

        # Accepted for the upgrade: served, and a connection_id swap between two v1 rows is
        # still served, the other user's secret under the name: why v1 is refused by default.
        async with serving(url, keyring, tokens, accept_v1=True) as api:
            for (environment, integration_id, connection_id), secret in secrets.items():
                assert await api.access(environment, integration_id, connection_id) == secret
            await swap(url, *SWAPS[0])
            bob = secrets[("prod", "openai", "bob")]
            for _ in range(100):
                if await api.access("prod", "openai", "alice") == bob:
                    break
                await asyncio.sleep(0.02)
            assert await api.access("prod", "openai", "alice") == bob
            await swap(url, *SWAPS[0])  # put them back
        db = await asyncpg.connect(url)
        try:
            legacy_alice = bytes(
                await db.fetchval(
                    "SELECT credentials_blob FROM connections WHERE id = $1",
                    await row_id(db, "prod", "openai", "alice"),
                )
            )
        finally:
            await db.close()

        # The real CLI moves every blob to binding v2 (same master key: no rotation needed).
        code, out, err = await cli(url, keyring, "keyring", "rewrap", accept_v1=True)
        assert code == 0, err
        assert "rewrap complete: 5 rows now under master key 1 and binding v2" in out, out
        assert set(await formats(url)) == {2}
        code, status, err = await cli(url, keyring, "keyring", "status", accept_v1=False)
        assert code == 0 and "v1\t0" in status and "unreadable blobs: 0" in status, status

        # Refusing v1 again, everything is served; each swap is DATA_LOSS for both rows.
        async with serving(url, keyring, tokens) as api:
            for (environment, integration_id, connection_id), secret in secrets.items():
                assert await api.access(environment, integration_id, connection_id) == secret
            for column, first, second in SWAPS:
                await swap(url, column, first, second)
                await api.refused(*first)
                await api.refused(*second)
                await swap(url, column, first, second)
                assert await api.access(*first) == secrets[first]
            # A format 1 blob put back into the database (an old copy of alice's) is refused.
            db = await asyncpg.connect(url)
            try:
                await db.execute(
                    "UPDATE connections SET credentials_blob = $1 WHERE id = $2",
                    legacy_alice,
                    await row_id(db, "prod", "openai", "alice"),
                )
            finally:
                await db.close()
            await api.refused("prod", "openai", "alice")
        code, out, err = await cli(url, keyring, "keyring", "rewrap", accept_v1=False)
        assert code == 1 and "legacy binding (format 1), refused" in out, (out, err)
