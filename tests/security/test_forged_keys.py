"""Issue 9, finding 7: forged well-formed keys cost no database work once seen (unknown key ids
are cached negatively), failed authentication is rate-limited per client address, and an unknown
key id answers as fast as a known one with a wrong secret."""

from __future__ import annotations

import statistics
import time
import zlib
from typing import Any, cast

import grpc
import httpx
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

import credbroker.storage.environments as environments
from credbroker.app import start_server
from credbroker.bootstrap import open_backend
from credbroker.domain.models import ALL_SCOPES
from credbroker.domain.secret_keys import _base62, generate_key
from credbroker.v1 import integration_service_pb2 as ipb
from credbroker.v1 import integration_service_pb2_grpc as igrpc


def forged(key_id: str | None = None) -> str:
    """A well-formed key (valid checksum) that no server issued."""
    _, parsed = generate_key()
    body = f"cbsk_{key_id or parsed.key_id}_{parsed.secret}"
    return body + _base62(zlib.crc32(body.encode()), 6)


@pytest.fixture
def lookups(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every key lookup that reaches PostgreSQL."""
    seen: list[str] = []
    original = environments.PostgresSecretKeyRepository.get

    async def counting(self: Any, key_id: str) -> Any:
        seen.append(key_id)
        return await original(self, key_id)

    monkeypatch.setattr(environments.PostgresSecretKeyRepository, "get", counting)
    return seen


async def _code(stub: Any, token: str) -> grpc.StatusCode:
    try:
        await stub.ListIntegrations(
            ipb.ListIntegrationsRequest(),
            metadata=(("authorization", f"Bearer {token}"),),
            timeout=5,
        )
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def test_forged_keys_cost_no_database_work(
    settings_factory: Any, keyring: Any, keys: Any, tenant: Any, lookups: list[str]
) -> None:
    settings = settings_factory(auth_failures_per_second=1.0, auth_failure_burst=5)
    backend = await open_backend(settings)
    running = await start_server(settings, backend, keyring)
    try:
        good, _ = await keys.create_key(tenant.environment, ALL_SCOPES)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = igrpc.IntegrationServiceStub(channel)
            assert await _code(stub, good) == grpc.StatusCode.OK  # now cached
            same = forged()
            for _ in range(3):  # the same forged id, again and again: one lookup
                assert await _code(stub, same) == grpc.StatusCode.UNAUTHENTICATED
            assert lookups.count(same.split("_")[1]) == 1
            lookups.clear()
            codes = [await _code(stub, forged()) for _ in range(50)]
            # A burst of 5 failures (one used above), then refused without any lookup.
            assert codes.count(grpc.StatusCode.UNAUTHENTICATED) <= 6, codes
            assert codes[-1] == grpc.StatusCode.RESOURCE_EXHAUSTED, codes
            assert len(lookups) <= 6, len(lookups)
            # A valid key in use keeps working from the same address while it is throttled.
            assert await _code(stub, good) == grpc.StatusCode.OK
    finally:
        await running.stop(0)
        await backend.close()


async def test_unknown_key_id_costs_the_same_as_a_known_one(
    channel: grpc.aio.Channel, keys: Any, tenant: Any
) -> None:
    token, record = await keys.create_key(tenant.environment, ALL_SCOPES)
    stub = igrpc.IntegrationServiceStub(channel)
    known_wrong = forged(record.key_id)
    unknown = forged()
    for token_ in (token, known_wrong, unknown):  # warm both caches
        await _code(stub, token_)
    timings: dict[str, list[float]] = {"known": [], "unknown": []}
    for _ in range(60):
        for label, presented in (("known", known_wrong), ("unknown", unknown)):
            started = time.perf_counter()
            assert await _code(stub, presented) == grpc.StatusCode.UNAUTHENTICATED
            timings[label].append(time.perf_counter() - started)
    known, unknown_ = (statistics.median(timings[k]) for k in ("known", "unknown"))
    print(f"median known-id/wrong-secret {known * 1e3:.2f} ms, unknown id {unknown_ * 1e3:.2f} ms")
    assert unknown_ <= known * 1.12, (known, unknown_)


async def test_forged_keys_over_http_share_the_budget_and_get_429(
    settings_factory: Any, keyring: Any, keys: Any, tenant: Any, lookups: list[str]
) -> None:
    """The HTTP transport feeds the client address into the same limiter: a forged key seen
    before costs no lookup, a flood of forged keys is cut off after the burst with 429 in the
    reference product's shape and a Retry-After, the gRPC port then refuses that address too
    (one budget), and a cached valid key keeps working on both."""
    settings = settings_factory(auth_failures_per_second=0.5, auth_failure_burst=5)
    backend = await open_backend(settings)
    running = await start_server(settings, backend, keyring)
    try:
        good, _ = await keys.create_key(tenant.environment, ALL_SCOPES)
        async with (
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{running.http_port}", timeout=5) as http,
            grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
        ):

            async def get(token: str) -> httpx.Response:
                return await http.get("/connections", headers={"authorization": f"Bearer {token}"})

            assert (await get(good)).status_code == 200  # now cached
            same = forged()
            for _ in range(3):
                assert (await get(same)).status_code == 401
            assert lookups.count(same.split("_")[1]) == 1
            lookups.clear()
            statuses = []
            refused = None
            for _ in range(30):
                response = await get(forged())
                statuses.append(response.status_code)
                if response.status_code == 429:
                    refused = response
            assert statuses.count(401) <= 5, statuses
            assert statuses[-1] == 429 and refused is not None, statuses
            assert len(lookups) <= 5, len(lookups)
            assert refused.json() == {
                "error": {
                    "code": "too_many_request",
                    "message": "too many failed authentications from this address; retry later",
                }
            }
            assert 1 <= int(refused.headers["retry-after"]) <= 2, refused.headers
            stub = igrpc.IntegrationServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.ListIntegrations(
                    ipb.ListIntegrationsRequest(),
                    metadata=(("authorization", f"Bearer {forged()}"),),
                    timeout=5,
                )
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            status = rpc_status.from_call(cast(grpc.Call, caught.value))
            assert status is not None
            retry = error_details_pb2.RetryInfo()
            assert any(detail.Unpack(retry) for detail in status.details)
            assert 1 <= retry.retry_delay.seconds <= 2
            assert len(lookups) <= 5, len(lookups)
            assert (await get(good)).status_code == 200
            assert await _code(stub, good) == grpc.StatusCode.OK
    finally:
        await running.stop(0)
        await backend.close()
