"""Checking stored credentials again: VerifyConnection on demand, ``recheck_stale`` and the
background runner (one server at a time, through a PostgreSQL advisory lock)."""

from __future__ import annotations

import itertools
import uuid
from datetime import timedelta
from typing import Any

from credbroker.v1 import connection_service_pb2 as cpb
from credbroker.v1 import resources_pb2 as rpb

VERIFIED = rpb.Verification.VERIFIED
REJECTED = rpb.Verification.REJECTED
ERROR = rpb.Verification.ERROR


def new_key() -> str:
    return f"sk-{uuid.uuid4().hex}"


async def listed(
    client: Any, state: rpb.Verification.State.ValueType, integration_id: str
) -> list[str]:
    response = await client.connections.ListConnections(
        cpb.ListConnectionsRequest(integration_id=integration_id, verification_state=state),
        metadata=client.metadata,
    )
    return [c.connection_id for c in response.connections]


async def test_verify_connection_records_each_outcome(vclient: Any, fake: Any) -> None:
    key = new_key()
    fake.accept(key)
    integration_id = await vclient.integration("openai")
    created = await vclient.create(integration_id, vclient.api_key(key), connection_id="v")

    fake.refuse(key)
    rejected = await vclient.verify(integration_id, "v")
    assert rejected.verification.state == REJECTED
    assert rejected.verification.http_status == 401
    assert rejected.verification.consecutive_failures == 1
    assert rejected.verification.verify_time.ToDatetime() >= (
        created.verification.verify_time.ToDatetime()
    )
    assert (await vclient.get(integration_id, "v")).verification == rejected.verification

    fake.fail("/openai/v1/models", 503)
    errored = await vclient.verify(integration_id, "v")
    assert errored.verification.state == ERROR
    assert errored.verification.http_status == 503
    assert errored.verification.consecutive_failures == 2

    fake.reset()
    fake.accept(key)
    verified = await vclient.verify(integration_id, "v")
    assert verified.verification.state == VERIFIED
    assert verified.verification.http_status == 200
    assert verified.verification.consecutive_failures == 0
    # The credentials themselves are untouched by a verification.
    assert (await vclient.access(integration_id, "v")).credentials.api_key.api_key == key


async def test_recheck_stale_flags_and_clears_a_rejected_key(
    vclient: Any, fake: Any, vserver: Any
) -> None:
    good, revoked = new_key(), new_key()
    fake.accept(good)
    fake.accept(revoked)
    integration_id = await vclient.integration("openai")
    await vclient.create(integration_id, vclient.api_key(good), connection_id="good")
    await vclient.create(integration_id, vclient.api_key(revoked), connection_id="revoked")
    fake.refuse(revoked)

    checked = await vserver.connections.recheck_stale(timedelta(0), 1000)
    assert checked >= 2

    flagged = await vclient.get(integration_id, "revoked")
    assert flagged.verification.state == REJECTED
    assert flagged.verification.http_status == 401
    assert flagged.verification.consecutive_failures == 1
    still_good = await vclient.get(integration_id, "good")
    assert still_good.verification.state == VERIFIED
    assert still_good.verification.consecutive_failures == 0
    assert await listed(vclient, REJECTED, integration_id) == ["revoked"]
    assert await listed(vclient, VERIFIED, integration_id) == ["good"]
    assert len(fake.requests_with(revoked)) == 2  # once when stored, once re-checked

    await vserver.connections.recheck_stale(timedelta(0), 1000)
    assert (await vclient.get(integration_id, "revoked")).verification.consecutive_failures == 2

    fake.accept(revoked)
    await vserver.connections.recheck_stale(timedelta(0), 1000)
    cleared = await vclient.get(integration_id, "revoked")
    assert cleared.verification.state == VERIFIED
    assert cleared.verification.consecutive_failures == 0
    assert await listed(vclient, REJECTED, integration_id) == []
    assert await listed(vclient, VERIFIED, integration_id) == ["good", "revoked"]


async def test_recheck_stale_skips_recently_verified(vclient: Any, fake: Any, vserver: Any) -> None:
    key = new_key()
    fake.accept(key)
    integration_id = await vclient.integration("openai")
    await vclient.create(integration_id, vclient.api_key(key), connection_id="fresh")
    fake.refuse(key)

    await vserver.connections.recheck_stale(timedelta(hours=1), 1000)
    assert len(fake.requests_with(key)) == 1
    assert (await vclient.get(integration_id, "fresh")).verification.state == VERIFIED


async def test_background_runner_flags_a_revoked_key(
    vclient: Any, fake: Any, start_vserver: Any, poll: Any
) -> None:
    key = new_key()
    fake.accept(key)
    integration_id = await vclient.integration("openai")
    await vclient.create(integration_id, vclient.api_key(key), connection_id="bg")
    fake.refuse(key)

    await start_vserver(recheck_interval=0.5, recheck_max_age=0.5)

    async def flagged() -> bool:
        connection = await vclient.get(integration_id, "bg")
        return bool(connection.verification.state == REJECTED)

    assert await poll(flagged, within=8.0), "the background runner never re-checked the key"
    connection = await vclient.get(integration_id, "bg")
    assert connection.verification.http_status == 401
    assert connection.verification.consecutive_failures >= 1


async def test_two_servers_never_check_the_same_connection_concurrently(
    vclient: Any, fake: Any, start_vserver: Any, poll: Any
) -> None:
    """Each probe of these keys takes 0.3 s at the provider. Two servers re-checking every 0.2 s
    without mutual exclusion would probe the same key at the same time."""
    keys = [new_key() for _ in range(3)]
    integration_id = await vclient.integration("openai")
    for index, key in enumerate(keys):
        fake.accept(key)
        await vclient.create(integration_id, vclient.api_key(key), connection_id=f"k{index}")
        fake.delay(key, 0.3)

    for _ in range(2):
        await start_vserver(own_backend=True, recheck_interval=0.2, recheck_max_age=0.1)

    async def several_rounds() -> bool:
        return all(len(fake.requests_with(key)) >= 4 for key in keys)

    await poll(several_rounds, within=15.0)

    for key in keys:
        rechecks = fake.requests_with(key)[1:]  # the first one was CreateConnection's
        assert len(rechecks) >= 2, f"expected several re-checks, got {len(rechecks)}"
        assert fake.max_in_flight(key) == 1, "two servers verified the same connection at once"
        spans = sorted((r.start, r.end) for r in rechecks)
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert start >= end - 0.01, "overlapping verification requests for one connection"


async def test_a_connection_that_cannot_be_checked_does_not_block_the_others(
    vclient: Any, fake: Any, vserver: Any, vbackend: Any
) -> None:
    """A re-check that ends in an error (here: the generic integration points at an address
    the outbound policy forbids) must still move the batch on; otherwise such connections are
    returned first by every round and, once there are ``recheck_batch`` of them, nothing else is
    ever re-checked."""
    await vserver.connections.recheck_stale(timedelta(days=1), 10_000)  # settle older rows
    blocked = await vclient.integration(
        "api-key", {"base_url": "https://10.255.255.1", "verification_path": "/me"}
    )
    await vclient.create(blocked, vclient.api_key(new_key()), connection_id="blocked", skip=True)
    key = new_key()
    fake.accept(key)
    integration_id = await vclient.integration("openai")
    await vclient.create(integration_id, vclient.api_key(key), connection_id="target")
    fake.refuse(key)
    async with vbackend.db.connection() as connection:
        await connection.execute(
            """UPDATE connections SET verify_time = now() - interval '2 days'
               WHERE integration_id = $1 AND connection_id = 'target'""",
            integration_id,
        )

    rounds = [await vserver.connections.recheck_stale(timedelta(days=1), 1) for _ in range(3)]
    assert rounds == [1, 1, 0]  # the blocked one, then the stale one, then nothing is stale

    assert len(fake.requests_with(key)) == 2, "the stale connection was never re-checked"
    assert (await vclient.get(integration_id, "target")).verification.state == REJECTED
