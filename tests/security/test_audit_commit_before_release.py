"""A reveal's audit record is committed before its response leaves, under concurrency too.

Audit records of concurrent reveals are written in shared batches (several in flight, see
``credbroker.storage.audit.GroupCommitAuditLog``). Here PostgreSQL itself refuses to commit some
of them: a deferred constraint trigger fails at COMMIT (after the INSERT succeeded) for part of
the rows, so a whole batch rolls back at the last moment. Hundreds of concurrent reveals of
twenty connections then must each either return the key with its OK row committed, or fail
UNAVAILABLE without the key; per connection, the OK answers equal the committed OK rows.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from credbroker.v1 import connection_service_pb2 as cpb
from credbroker.v1 import integration_service_pb2 as ipb
from credbroker.v1 import resources_pb2 as rpb

CONNECTIONS = 20
CALLS_EACH = 12
IN_FLIGHT = 64
ACCESS = "/credbroker.v1.ConnectionService/AccessCredentials"


async def _connections(tenant: Any) -> dict[str, str]:
    await tenant.integrations.CreateIntegration(
        ipb.CreateIntegrationRequest(
            integration=rpb.Integration(integration_id="openai", provider="openai")
        ),
        metadata=tenant.metadata,
    )
    secrets = {}
    for n in range(CONNECTIONS):
        secret = f"sk-commit-before-release-{n:02d}"
        created = await tenant.connections.CreateConnection(
            cpb.CreateConnectionRequest(
                connection=rpb.Connection(
                    integration_id="openai",
                    connection_id=f"c{n:02d}",
                    credentials=rpb.Credentials(api_key=rpb.ApiKeyCredentials(api_key=secret)),
                ),
                skip_verification=True,
            ),
            metadata=tenant.metadata,
        )
        secrets[created.connection_id] = secret
    return secrets


async def _refuse_some_commits(backend: Any, environment: str, modulus: int = 4) -> None:
    """Rows of this environment whose request id hashes to 0 mod ``modulus`` fail at COMMIT."""
    async with backend.db.pool.acquire() as connection:
        await connection.execute(
            """CREATE OR REPLACE FUNCTION test_refuse_commit() RETURNS trigger AS $$
               BEGIN RAISE EXCEPTION 'commit refused'; END $$ LANGUAGE plpgsql"""
        )
        await connection.execute(
            f"""CREATE CONSTRAINT TRIGGER test_refuse_commit AFTER INSERT ON audit_events
                DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
                WHEN (NEW.environment = '{environment}' AND NEW.outcome = 'OK'
                      AND abs(hashtext(NEW.request_id)) % {modulus} = 0)
                EXECUTE FUNCTION test_refuse_commit()"""
        )


async def _drop_trigger(backend: Any) -> None:
    async with backend.db.pool.acquire() as connection:
        await connection.execute("DROP TRIGGER IF EXISTS test_refuse_commit ON audit_events")


async def test_no_reveal_answers_without_its_committed_record(tenant: Any, backend: Any) -> None:
    secrets = await _connections(tenant)
    await _refuse_some_commits(backend, tenant.environment)
    gate = asyncio.Semaphore(IN_FLIGHT)

    async def reveal(connection_id: str) -> tuple[str, str | None, grpc.StatusCode]:
        async with gate:
            try:
                reply = await tenant.connections.AccessCredentials(
                    cpb.AccessCredentialsRequest(
                        integration_id="openai", connection_id=connection_id
                    ),
                    metadata=tenant.metadata,
                    timeout=30,
                )
            except grpc.aio.AioRpcError as error:
                assert secrets[connection_id] not in str(error.details())
                assert "commit refused" not in str(error.details())
                return connection_id, None, error.code()
            return connection_id, reply.credentials.api_key.api_key, grpc.StatusCode.OK

    try:
        results = await asyncio.gather(
            *(reveal(connection_id) for connection_id in secrets for _ in range(CALLS_EACH))
        )
    finally:
        await _drop_trigger(backend)

    answered: dict[str, int] = dict.fromkeys(secrets, 0)
    for connection_id, key, code in results:
        if code is grpc.StatusCode.OK:
            assert key == secrets[connection_id]
            answered[connection_id] += 1
        else:
            assert code is grpc.StatusCode.UNAVAILABLE, code
    ok = sum(answered.values())
    assert 0 < ok < len(results), "the fault must hit some batches and spare others"

    rows = await backend.db.fetch(
        """SELECT connection_id, count(*) AS n FROM audit_events
           WHERE environment = $1 AND method = $2 AND outcome = 'OK' GROUP BY connection_id""",
        tenant.environment,
        ACCESS,
    )
    committed = dict.fromkeys(secrets, 0) | {row["connection_id"]: row["n"] for row in rows}
    assert committed == answered


async def test_group_commit_with_several_batches_in_flight_returns_only_committed_ids(
    tenant: Any, backend: Any
) -> None:
    """The same rule for the group-commit writer itself with several batches in flight: an
    append returns an id only for a committed row, and raises for every record of a batch whose
    commit was refused."""
    from credbroker.domain.audit import AuditRecord
    from credbroker.domain.models import ALL_SCOPES, Principal
    from credbroker.storage.audit import GroupCommitAuditLog, PostgresAuditLog

    environment = await tenant.keys.environment(tenant.environment)
    principal = Principal("k" * 16, environment.id, tenant.environment, ALL_SCOPES)
    batches: list[int] = []
    log = GroupCommitAuditLog(
        PostgresAuditLog(backend.db), max_in_flight=3, on_batch=batches.append
    )
    await _refuse_some_commits(backend, tenant.environment, modulus=40)

    async def append(n: int) -> tuple[str, int | None]:
        await asyncio.sleep(n % 25 / 500)  # spread the records over many batches
        record = AuditRecord(f"gc-{n}", principal, ACCESS, "openai", "c00", "OK")
        try:
            return record.request_id, await log.append(record)
        except Exception:  # noqa: BLE001 - a refused commit, whatever the driver raised
            return record.request_id, None

    try:
        results = await asyncio.gather(*(append(n) for n in range(300)))
    finally:
        await _drop_trigger(backend)
    returned = {request_id: event_id for request_id, event_id in results if event_id is not None}
    assert 0 < len(returned) < len(results)
    assert len(batches) > 1
    rows = await backend.db.fetch(
        "SELECT id, request_id FROM audit_events WHERE environment = $1 AND method = $2",
        tenant.environment,
        ACCESS,
    )
    assert {row["request_id"]: row["id"] for row in rows} == returned
