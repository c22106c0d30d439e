"""Secret-key lifecycle through a real server: revocation takes effect on the very next call when
the serving process revokes, and within the documented bound when another process does; expiry
takes effect on time; rolling keeps both keys working for the grace period only; last-use times
are batched (never written per request); every way of presenting a bad key looks the same to
the caller."""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest

import credbroker.app
import credbroker.storage.environments
from credbroker.app import RunningServer
from credbroker.config import Settings
from credbroker.domain import secret_keys
from credbroker.domain.errors import FailedPreconditionError, NotFoundError
from credbroker.domain.keys import KeyService
from credbroker.domain.models import ALL_SCOPES, Scope
from credbroker.v1 import integration_service_pb2 as ipb
from credbroker.v1 import integration_service_pb2_grpc as igrpc
from credbroker.v1 import resources_pb2 as rpb

TIMEOUT = 10.0
Metadata = tuple[tuple[str, str], ...]
BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


# ---------------------------------------------------------------------------------------------
# helpers


def bearer(token: str) -> Metadata:
    return (("authorization", f"Bearer {token}"),)


def key_id_of(token: str) -> str:
    parsed = secret_keys.parse_key(token)
    assert parsed is not None
    return parsed.key_id


def _base62(number: int, width: int) -> str:
    digits = ""
    while number:
        number, rem = divmod(number, 62)
        digits = BASE62[rem] + digits
    return digits.rjust(width, "0")


def with_checksum(body: str) -> str:
    """``body`` plus a correct checksum (the documented CRC32, base62, 6 characters)."""
    return body + _base62(zlib.crc32(body.encode("ascii")), secret_keys.CHECKSUM_LENGTH)


def random_secret() -> str:
    return _base62(int.from_bytes(uuid.uuid4().bytes + uuid.uuid4().bytes, "big"), 43)[-43:]


async def call(channel: grpc.aio.Channel, metadata: Metadata) -> grpc.StatusCode:
    """ListIntegrations (any key with integrations:read); OK or the failure code."""
    try:
        await igrpc.IntegrationServiceStub(channel).ListIntegrations(
            ipb.ListIntegrationsRequest(), metadata=metadata, timeout=TIMEOUT
        )
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def failure(
    channel: grpc.aio.Channel, metadata: Metadata
) -> tuple[grpc.StatusCode, str, tuple[tuple[str, Any], ...]]:
    try:
        await igrpc.IntegrationServiceStub(channel).ListIntegrations(
            ipb.ListIntegrationsRequest(), metadata=metadata, timeout=TIMEOUT
        )
    except grpc.aio.AioRpcError as error:
        trailers = tuple((k, v) for k, v in error.trailing_metadata() or ())
        return error.code(), error.details() or "", trailers
    raise AssertionError("the call succeeded")


async def last_used_time(backend: Any, key_id: str) -> datetime | None:
    async with backend.db.pool.acquire() as connection:
        value = await connection.fetchval(
            "SELECT last_used_time FROM secret_keys WHERE key_id = $1", key_id
        )
    assert value is None or isinstance(value, datetime)
    return value


@asynccontextmanager
async def own_server(
    settings_factory: Callable[..., Settings], backend: Any, keyring: Any
) -> AsyncIterator[tuple[RunningServer, grpc.aio.Channel]]:
    """A server of its own: its periodic last-use flusher first runs 30 s after start, so the
    test alone decides when last-use times are written."""
    running = await credbroker.app.start_server(settings_factory(), backend, keyring)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            yield running, channel
    finally:
        await running.stop(0)


# ---------------------------------------------------------------------------------------------
# revocation and expiry


async def refused(channel: grpc.aio.Channel, metadata: Metadata) -> bool:
    """One call: True if refused as unauthenticated, False if it worked (anything else fails)."""
    code = await call(channel, metadata)
    assert code in {grpc.StatusCode.OK, grpc.StatusCode.UNAUTHENTICATED}, code
    return code == grpc.StatusCode.UNAUTHENTICATED


async def test_lifecycle_revoked_key_is_rejected_within_the_bound(
    channel: grpc.aio.Channel, tenant: Any, keys: KeyService, change_takes_effect: Any
) -> None:
    """Revoked by another process (``keys`` is not the server's: like ``credbroker keys
    revoke``), the key is refused by every call that starts past the documented bound, and
    stays refused."""
    token, record = await keys.create_key(tenant.environment)
    assert await call(channel, bearer(token)) == grpc.StatusCode.OK
    await keys.revoke_key(record.key_id)
    await change_takes_effect(lambda: refused(channel, bearer(token)), time.monotonic(), "revoke")
    # Revoking again is harmless, and the tenant's other key is unaffected.
    await keys.revoke_key(record.key_id)
    assert await call(channel, bearer(token)) == grpc.StatusCode.UNAUTHENTICATED
    assert await call(channel, tenant.metadata) == grpc.StatusCode.OK


async def test_lifecycle_revoked_key_is_rejected_on_a_warm_connection(
    channel: grpc.aio.Channel, tenant: Any, keys: KeyService, change_takes_effect: Any
) -> None:
    """Many successful calls first (anything cached per key would be warm), then revoke."""
    token, record = await keys.create_key(tenant.environment)
    for _ in range(20):
        assert await call(channel, bearer(token)) == grpc.StatusCode.OK
    await keys.revoke_key(record.key_id)
    await change_takes_effect(lambda: refused(channel, bearer(token)), time.monotonic(), "revoke")
    for _ in range(5):
        assert await call(channel, bearer(token)) == grpc.StatusCode.UNAUTHENTICATED


async def test_lifecycle_revocation_by_the_serving_process_takes_effect_on_the_next_call(
    stalled_listener_server: Any, tenant: Any
) -> None:
    """A revocation made by the server's own process (its KeyService) drops the cached key in
    the write path, so the very next call is refused without waiting for the announcement,
    which cannot arrive here (the listener's backend is stopped)."""
    running, channel = stalled_listener_server.running, stalled_listener_server.channel
    token, record = await running.keys.create_key(tenant.environment)
    for _ in range(3):
        assert await call(channel, bearer(token)) == grpc.StatusCode.OK
    assert running.keys.authenticate_cached(token) is not None, "the key is cached"
    async with stalled_listener_server.announcements_stalled():
        await running.keys.revoke_key(record.key_id)
        assert await call(channel, bearer(token)) == grpc.StatusCode.UNAUTHENTICATED


async def test_lifecycle_expired_key_is_rejected(
    channel: grpc.aio.Channel, tenant: Any, keys: KeyService
) -> None:
    expired, _ = await keys.create_key(
        tenant.environment, expire_time=datetime.now(UTC) - timedelta(seconds=1)
    )
    assert await call(channel, bearer(expired)) == grpc.StatusCode.UNAUTHENTICATED


async def test_lifecycle_key_stops_working_at_its_expiry(
    channel: grpc.aio.Channel, tenant: Any, keys: KeyService
) -> None:
    token, _ = await keys.create_key(
        tenant.environment, expire_time=datetime.now(UTC) + timedelta(seconds=1)
    )
    assert await call(channel, bearer(token)) == grpc.StatusCode.OK
    await asyncio.sleep(1.5)
    assert await call(channel, bearer(token)) == grpc.StatusCode.UNAUTHENTICATED


async def test_lifecycle_revoking_unknown_or_malformed_key_id_is_not_found(
    keys: KeyService,
) -> None:
    for key_id in ("0" * 16, "not-a-key-id", "", "'; DROP TABLE secret_keys; --"):
        with pytest.raises(NotFoundError):
            await keys.revoke_key(key_id)


# ---------------------------------------------------------------------------------------------
# rolling


async def test_lifecycle_roll_keeps_both_keys_for_the_grace_period_only(
    channel: grpc.aio.Channel, tenant: Any, keys: KeyService
) -> None:
    old, old_record = await keys.create_key(tenant.environment)
    new, new_record = await keys.roll_key(old_record.key_id, timedelta(seconds=1))
    assert new != old and new_record.key_id != old_record.key_id
    assert new_record.environment_name == tenant.environment
    assert await call(channel, bearer(old)) == grpc.StatusCode.OK
    assert await call(channel, bearer(new)) == grpc.StatusCode.OK
    await asyncio.sleep(1.5)
    assert await call(channel, bearer(old)) == grpc.StatusCode.UNAUTHENTICATED
    assert await call(channel, bearer(new)) == grpc.StatusCode.OK


async def test_lifecycle_rolled_key_keeps_scopes_and_environment(
    channel: grpc.aio.Channel, tenant: Any, keys: KeyService
) -> None:
    """The successor of a read-only key is read-only too (rolling is no privilege escalation)."""
    _, old_record = await keys.create_key(tenant.environment, frozenset({Scope.INTEGRATIONS_READ}))
    new, new_record = await keys.roll_key(old_record.key_id, timedelta(minutes=5))
    assert new_record.scopes == frozenset({Scope.INTEGRATIONS_READ})
    assert new_record.environment_id == old_record.environment_id
    assert await call(channel, bearer(new)) == grpc.StatusCode.OK
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await igrpc.IntegrationServiceStub(channel).CreateIntegration(
            ipb.CreateIntegrationRequest(
                integration=rpb.Integration(integration_id="roll-escalation", provider="openai")
            ),
            metadata=bearer(new),
            timeout=TIMEOUT,
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_lifecycle_rolled_key_keeps_an_earlier_expiry(
    channel: grpc.aio.Channel, tenant: Any, keys: KeyService
) -> None:
    """Rolling must not outlive the old key's own expiry, for the old or the new key."""
    expiry = datetime.now(UTC) + timedelta(seconds=1)
    old, old_record = await keys.create_key(tenant.environment, expire_time=expiry)
    new, new_record = await keys.roll_key(old_record.key_id, timedelta(hours=1))
    assert new_record.expire_time is not None and new_record.expire_time <= expiry
    await asyncio.sleep(1.5)
    assert await call(channel, bearer(old)) == grpc.StatusCode.UNAUTHENTICATED
    assert await call(channel, bearer(new)) == grpc.StatusCode.UNAUTHENTICATED


async def test_lifecycle_rolling_again_cannot_extend_the_grace(
    channel: grpc.aio.Channel, tenant: Any, keys: KeyService
) -> None:
    old, old_record = await keys.create_key(tenant.environment)
    await keys.roll_key(old_record.key_id, timedelta(seconds=1))
    await keys.roll_key(old_record.key_id, timedelta(hours=1))  # still active: allowed
    await asyncio.sleep(1.5)
    assert await call(channel, bearer(old)) == grpc.StatusCode.UNAUTHENTICATED


async def test_lifecycle_rolling_with_zero_grace_stops_the_old_key_now(
    channel: grpc.aio.Channel, tenant: Any, keys: KeyService
) -> None:
    old, old_record = await keys.create_key(tenant.environment)
    new, _ = await keys.roll_key(old_record.key_id, timedelta(0))
    assert await call(channel, bearer(old)) == grpc.StatusCode.UNAUTHENTICATED
    assert await call(channel, bearer(new)) == grpc.StatusCode.OK


async def test_lifecycle_rolling_a_revoked_key_fails(tenant: Any, keys: KeyService) -> None:
    _, record = await keys.create_key(tenant.environment)
    await keys.revoke_key(record.key_id)
    before = len(await keys.list_keys(tenant.environment))
    with pytest.raises(FailedPreconditionError):
        await keys.roll_key(record.key_id, timedelta(minutes=5))
    assert len(await keys.list_keys(tenant.environment)) == before  # no successor created


async def test_lifecycle_rolling_an_expired_key_fails(tenant: Any, keys: KeyService) -> None:
    _, record = await keys.create_key(
        tenant.environment, expire_time=datetime.now(UTC) - timedelta(seconds=1)
    )
    with pytest.raises(FailedPreconditionError):
        await keys.roll_key(record.key_id, timedelta(minutes=5))


async def test_lifecycle_rolling_an_unknown_key_fails(keys: KeyService) -> None:
    for key_id in ("0" * 16, "bad id", ""):
        with pytest.raises(NotFoundError):
            await keys.roll_key(key_id, timedelta(minutes=5))


# ---------------------------------------------------------------------------------------------
# last use


async def test_lifecycle_last_used_is_batched_not_written_per_request(
    settings_factory: Callable[..., Settings],
    backend: Any,
    keyring: Any,
    tenant: Any,
    keys: KeyService,
) -> None:
    token, record = await keys.create_key(tenant.environment)
    async with own_server(settings_factory, backend, keyring) as (running, channel):
        started = datetime.now(UTC)
        for _ in range(50):
            assert await call(channel, bearer(token)) == grpc.StatusCode.OK
        assert await last_used_time(backend, record.key_id) is None, "written per request"
        await running.keys.flush_last_used()
        used = await last_used_time(backend, record.key_id)
        assert used is not None
        assert started - timedelta(seconds=5) <= used <= datetime.now(UTC) + timedelta(seconds=5)
        # A second flush with nothing new changes nothing.
        await running.keys.flush_last_used()
        assert await last_used_time(backend, record.key_id) == used


async def test_lifecycle_failed_authentication_is_not_recorded_as_use(
    settings_factory: Callable[..., Settings],
    backend: Any,
    keyring: Any,
    tenant: Any,
    keys: KeyService,
) -> None:
    """A wrong secret for a real key id, and the right secret of a revoked key, are not uses."""
    _, record = await keys.create_key(tenant.environment)
    revoked, revoked_record = await keys.create_key(tenant.environment)
    await keys.revoke_key(revoked_record.key_id)
    wrong = with_checksum(f"cbsk_{record.key_id}_{random_secret()}")
    async with own_server(settings_factory, backend, keyring) as (running, channel):
        assert await call(channel, bearer(wrong)) == grpc.StatusCode.UNAUTHENTICATED
        assert await call(channel, bearer(revoked)) == grpc.StatusCode.UNAUTHENTICATED
        await running.keys.flush_last_used()
        assert await last_used_time(backend, record.key_id) is None
        assert await last_used_time(backend, revoked_record.key_id) is None


async def test_lifecycle_last_used_is_flushed_on_shutdown(
    settings_factory: Callable[..., Settings],
    backend: Any,
    keyring: Any,
    tenant: Any,
    keys: KeyService,
) -> None:
    token, record = await keys.create_key(tenant.environment)
    async with own_server(settings_factory, backend, keyring) as (_, channel):
        assert await call(channel, bearer(token)) == grpc.StatusCode.OK
        assert await last_used_time(backend, record.key_id) is None
    assert await last_used_time(backend, record.key_id) is not None


async def test_lifecycle_session_server_records_last_use(
    server: RunningServer, channel: grpc.aio.Channel, backend: Any, tenant: Any
) -> None:
    """The same through the shared server fixture (``server.keys`` is its KeyService)."""
    assert await call(channel, tenant.metadata) == grpc.StatusCode.OK
    await server.keys.flush_last_used()
    assert await last_used_time(backend, key_id_of(tenant.key)) is not None


# ---------------------------------------------------------------------------------------------
# indistinguishable failures


async def test_lifecycle_unknown_key_id_and_wrong_secret_look_identical(
    channel: grpc.aio.Channel, tenant: Any
) -> None:
    """Same code, details and trailing metadata (rich status included) for a well-formed key with
    an unknown key id and for a known key id with the wrong secret.

    Timing: over 300 alternating tries each, the median latencies differ by less than 5 ms. The
    bound is loose on purpose: it guards against an early-exit path (e.g. skipping the hash or a
    second query for one of the two cases), not against micro-timing side channels.
    """
    known_id = key_id_of(tenant.key)
    unknown, _ = secret_keys.generate_key()
    wrong = with_checksum(f"cbsk_{known_id}_{random_secret()}")
    assert secret_keys.parse_key(wrong) is not None and wrong != tenant.key
    first = await failure(channel, bearer(unknown))
    second = await failure(channel, bearer(wrong))
    assert first[0] == grpc.StatusCode.UNAUTHENTICATED
    assert first == second
    # ...and the same as presenting no key at all.
    assert await failure(channel, ()) == first

    timings: dict[str, list[float]] = {"unknown": [], "wrong": []}
    for _ in range(300):
        for name, token in (("unknown", unknown), ("wrong", wrong)):
            started = time.perf_counter()
            await failure(channel, bearer(token))
            timings[name].append(time.perf_counter() - started)
    difference = abs(statistics.median(timings["unknown"]) - statistics.median(timings["wrong"]))
    assert difference < 0.005, f"median latency differs by {difference * 1000:.2f} ms"


async def test_lifecycle_revoked_and_expired_keys_look_like_unknown_keys(
    channel: grpc.aio.Channel, tenant: Any, keys: KeyService
) -> None:
    revoked, revoked_record = await keys.create_key(tenant.environment)
    await keys.revoke_key(revoked_record.key_id)
    expired, _ = await keys.create_key(
        tenant.environment, expire_time=datetime.now(UTC) - timedelta(seconds=1)
    )
    unknown, _ = secret_keys.generate_key()
    reference = await failure(channel, bearer(unknown))
    assert await failure(channel, bearer(revoked)) == reference
    assert await failure(channel, bearer(expired)) == reference


# ---------------------------------------------------------------------------------------------
# malformed keys need no database


def _malformed(valid: str) -> dict[str, str]:
    body, checksum = valid[: -secret_keys.CHECKSUM_LENGTH], valid[-secret_keys.CHECKSUM_LENGTH :]
    flipped = ("1" if checksum[0] == "0" else "0") + checksum[1:]
    return {
        "bad-checksum": body + flipped,
        "bad-checksum-case": body + checksum.swapcase()
        if checksum.swapcase() != checksum
        else body + flipped,
        "truncated": valid[:-1],
        "extended": valid + "0",
        "uppercase-prefix": "CBSK_" + valid[5:],
        "other-prefix": "ghp_" + valid[4:],
        "symbol-in-secret": valid[:30] + "-" + valid[31:],
        "symbol-in-key-id": valid[:10] + "_" + valid[11:],
        "empty-secret": with_checksum(f"cbsk_{valid[5:21]}_"),
        "sql": "' OR 1=1 --",
    }


async def test_lifecycle_malformed_keys_are_refused_without_a_query(
    channel: grpc.aio.Channel, tenant: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    repository = credbroker.storage.environments.PostgresSecretKeyRepository
    original = repository.get
    lookups: list[str] = []

    async def counting_get(self: Any, key_id: str) -> Any:
        lookups.append(key_id)
        return await original(self, key_id)

    monkeypatch.setattr(repository, "get", counting_get)

    for name, token in _malformed(tenant.key).items():
        lookups.clear()
        code = await call(channel, bearer(token))
        assert code == grpc.StatusCode.UNAUTHENTICATED, name
        assert lookups == [], f"{name}: looked up {lookups}"

    unknown, parsed = secret_keys.generate_key()
    lookups.clear()
    assert await call(channel, bearer(unknown)) == grpc.StatusCode.UNAUTHENTICATED
    assert lookups == [parsed.key_id]

    lookups.clear()
    assert await call(channel, tenant.metadata) == grpc.StatusCode.OK
    assert lookups == [key_id_of(tenant.key)]


async def test_lifecycle_key_without_scopes_cannot_act(
    channel: grpc.aio.Channel, tenant: Any, keys: KeyService
) -> None:
    """A key created with no scopes at all may authenticate but not act."""
    token, _ = await keys.create_key(tenant.environment, frozenset())
    assert await call(channel, bearer(token)) == grpc.StatusCode.PERMISSION_DENIED
    full, _ = await keys.create_key(tenant.environment, ALL_SCOPES)
    assert await call(channel, bearer(full)) == grpc.StatusCode.OK
