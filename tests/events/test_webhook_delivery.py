"""Webhook delivery over real server processes to a real HTTPS receiver: body and signatures,
order, kill -9 at any point between commit and delivery, a receiver down for 30 s, two servers
sharing the work, and a slow receiver beside a fast one."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import random
import time
from collections import Counter
from datetime import datetime
from typing import Any

from google.protobuf import field_mask_pb2

from credbroker.v1 import connection_service_pb2 as cpb
from credbroker.v1 import resources_pb2 as rpb
from credbroker.v1 import webhook_service_pb2 as wpb

from .conftest import create_endpoint, wait_until, webhook_environment, webhooks_stub


def _hmac(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


async def _deliveries(account: Any, endpoint_id: str) -> list[Any]:
    response = await webhooks_stub(account).ListWebhookDeliveries(
        wpb.ListWebhookDeliveriesRequest(endpoint_id=endpoint_id, page_size=1000),
        metadata=account.metadata,
    )
    return list(response.deliveries)


async def _replace(account: Any, connection_id: str) -> None:
    await account.connections.UpdateConnection(
        cpb.UpdateConnectionRequest(
            connection=rpb.Connection(
                integration_id="openai-prod",
                connection_id=connection_id,
                credentials=rpb.Credentials(api_key=rpb.ApiKeyCredentials(api_key="sk-2")),
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["credentials"]),
            skip_verification=True,
        ),
        metadata=account.metadata,
    )


async def test_body_signatures_and_order(
    servers: Any, account: Any, receiver: Any, events_database_url: str, keyring: Any, pki: Any
) -> None:
    server = servers.start(webhook_environment(events_database_url, keyring, pki))
    await account.use(server)
    await account.integration()
    endpoint_id, secret = await create_endpoint(account, receiver.url())
    assert secret.startswith("cbwhsec_") and len(secret) > 40
    await account.create("user-1", end_user_id="u1")
    await _replace(account, "user-1")
    await account.connections.DeleteConnection(
        cpb.DeleteConnectionRequest(integration_id="openai-prod", connection_id="user-1"),
        metadata=account.metadata,
    )
    assert await wait_until(lambda: _count(receiver, 3), within=10)
    got = receiver.received
    bodies = [r.json for r in got]
    assert [b["event_type"] for b in bodies] == [
        "connection.created",
        "connection.credentials_replaced",
        "connection.deleted",
    ]
    assert [b["operation"] for b in bodies] == ["creation", "override", "deletion"]
    first = bodies[0]
    assert first["from"] == "credbroker" and first["type"] == "auth" and first["success"] is True
    assert first["connectionId"] == "user-1" and first["providerConfigKey"] == "openai-prod"
    assert first["authMode"] == "API_KEY" and first["provider"] == "openai"
    assert first["environment"] == account.environment
    assert first["tags"] == {"end_user_id": "u1"}
    for received in got:
        headers = received.headers
        assert headers["content-type"] == "application/json"
        assert headers["x-nango-hmac-sha256"] == _hmac(secret, received.body)
        assert headers["credbroker-event-id"] == received.event_id
        t_part, v1_part = headers["credbroker-signature"].split(",")
        timestamp = t_part.removeprefix("t=")
        assert abs(int(timestamp) - time.time()) < 30
        assert v1_part == "v1=" + _hmac(secret, f"{timestamp}.".encode() + received.body)
        assert b"sk-e2e" not in received.body and b"sk-2" not in received.body
    assert await wait_until(lambda: _delivered(account, endpoint_id, 3), within=5)
    deliveries = await _deliveries(account, endpoint_id)
    assert [d.state for d in deliveries] == [wpb.WebhookDelivery.STATE_DELIVERED] * 3
    assert all(len(d.attempts) == 1 for d in deliveries)
    assert all(d.attempts[0].outcome == wpb.WebhookAttempt.OUTCOME_SUCCEEDED for d in deliveries)
    assert {d.event.event_id for d in deliveries} == {r.event_id for r in got}
    log = server.log_path.read_text("utf-8", "replace")
    assert "webhook attempt" in log and secret not in log and receiver.url() not in log


async def _count(receiver: Any, n: int) -> bool:
    return len(receiver.received) >= n


async def test_kill_9_during_the_attempt_then_restart_delivers(
    servers: Any, account: Any, receiver: Any, events_database_url: str, keyring: Any, pki: Any
) -> None:
    """The receiver holds the first request; the server is killed mid-attempt. A new server
    retries once the lease ends: same event id, the first attempt recorded as abandoned."""
    env = webhook_environment(events_database_url, keyring, pki, webhook_timeout=1)
    first = servers.start(env)
    await account.use(first)
    await account.integration()
    endpoint_id, _ = await create_endpoint(account, receiver.url())
    receiver.behave(lambda path, body: (200, 60.0))  # hang
    await account.create("crash-1")
    assert await wait_until(lambda: _arrived(receiver), within=10)
    first.kill9()
    receiver.release()
    receiver.behave(lambda path, body: (200, 0.0))
    second = servers.start(env)
    await account.use(second)
    assert await wait_until(lambda: _delivered(account, endpoint_id, 1), within=20)
    ids = [r.event_id for r in receiver.received]
    assert len(set(ids)) == 1
    (delivery,) = await _deliveries(account, endpoint_id)
    outcomes = [a.outcome for a in delivery.attempts]
    assert outcomes[0] == wpb.WebhookAttempt.OUTCOME_ABANDONED
    assert outcomes[-1] == wpb.WebhookAttempt.OUTCOME_SUCCEEDED


async def _arrived(receiver: Any) -> bool:
    return bool(receiver.arrivals)


async def _delivered(account: Any, endpoint_id: str, n: int) -> bool:
    deliveries = await _deliveries(account, endpoint_id)
    delivered = [d for d in deliveries if d.state == wpb.WebhookDelivery.STATE_DELIVERED]
    return len(delivered) >= n


async def test_kill_9_at_random_points_after_commit_loses_nothing(
    servers: Any, account: Any, receiver: Any, events_database_url: str, keyring: Any, pki: Any
) -> None:
    """Commit, then kill -9 0-40 ms later (before, during or after the attempt), restart:
    every event arrives. The first server has dispatch off, so at least one event surely
    waits in the outbox across a crash."""
    env = webhook_environment(events_database_url, keyring, pki, webhook_timeout=1)
    quiet = servers.start({**env, "CREDBROKER_WEBHOOK_DISPATCH": "false"})
    await account.use(quiet)
    await account.integration()
    endpoint_id, _ = await create_endpoint(account, receiver.url())
    await account.create("outbox-only")
    quiet.kill9()
    rng = random.Random(13)
    names = ["outbox-only"]
    for i in range(5):
        server = servers.start(env)
        await account.use(server)
        name = f"crash-{i}"
        await account.create(name)
        names.append(name)
        await asyncio.sleep(rng.uniform(0, 0.04))
        server.kill9()
    last = servers.start(env)
    await account.use(last)
    assert await wait_until(lambda: _delivered(account, endpoint_id, len(names)), within=40)
    arrived = {r.json["connectionId"] for r in receiver.received}
    assert arrived == set(names)


async def test_receiver_down_for_30_seconds(
    servers: Any, account: Any, receiver: Any, events_database_url: str, keyring: Any, pki: Any
) -> None:
    server = servers.start(webhook_environment(events_database_url, keyring, pki))
    await account.use(server)
    await account.integration()
    endpoint_id, _ = await create_endpoint(account, receiver.url())
    receiver.stop()
    down_at = time.monotonic()
    for name in ("down-1", "down-2", "down-3"):
        await account.create(name)
    await _replace(account, "down-1")
    await asyncio.sleep(30 - (time.monotonic() - down_at))
    during = await _deliveries(account, endpoint_id)
    assert all(d.state == wpb.WebhookDelivery.STATE_PENDING for d in during)
    receiver.start()  # same port
    assert await wait_until(lambda: _delivered(account, endpoint_id, 4), within=20)
    deliveries = await _deliveries(account, endpoint_id)
    attempts = {d.delivery_id: list(d.attempts) for d in deliveries}
    for d in deliveries:
        # The override of down-1 waited behind its creation (order per connection), so it
        # may have needed one attempt only.
        if d.event.operation == "creation":
            assert len(d.attempts) >= 2, d.event.connection_id
    for tries in attempts.values():
        assert all(a.outcome == wpb.WebhookAttempt.OUTCOME_FAILED for a in tries[:-1])
        assert tries[-1].outcome == wpb.WebhookAttempt.OUTCOME_SUCCEEDED
        assert all(a.error for a in tries[:-1])
    got = [(r.json["connectionId"], r.json["operation"]) for r in receiver.received]
    assert sorted(got) == sorted(
        [
            ("down-1", "creation"),
            ("down-1", "override"),
            ("down-2", "creation"),
            ("down-3", "creation"),
        ]
    )
    assert got.index(("down-1", "creation")) < got.index(("down-1", "override"))
    print(
        f"receiver down 30 s: {sum(len(t) for t in attempts.values())} attempts recorded "
        f"for {len(attempts)} deliveries"
    )


async def test_two_servers_share_the_work(
    servers: Any, account: Any, receiver: Any, events_database_url: str, keyring: Any, pki: Any
) -> None:
    """Every event arrives; an event arrives twice only after a failed attempt (the receiver
    fails the first try of every fourth event), with the same event id; order per connection
    holds."""
    env = webhook_environment(events_database_url, keyring, pki)
    one, two = servers.start(env), servers.start(env)
    await account.use(one)
    await account.integration()
    await create_endpoint(account, receiver.url())
    seen: Counter[str] = Counter()

    def behaviour(path: str, body: Any) -> tuple[int, float]:
        seen[body["event_id"]] += 1
        unlucky = int(hashlib.sha256(body["event_id"].encode()).hexdigest(), 16) % 4 == 0
        return (500 if unlucky and seen[body["event_id"]] == 1 else 200), 0.0

    receiver.behave(behaviour)
    accounts = [account, type(account)(account.environment, account.key)]
    await accounts[1].use(two)
    names = [f"pair-{i}" for i in range(20)]
    for i, name in enumerate(names):
        await accounts[i % 2].create(name)
    for i, name in enumerate(names):
        await _replace(accounts[(i + 1) % 2], name)
    total = 2 * len(names)
    assert await wait_until(lambda: _count_status(receiver, 200, total), within=30), (
        f"{len(receiver.received)} received"
    )
    await accounts[1].close()
    received = receiver.received
    ok = Counter(r.event_id for r in received if r.status == 200)
    assert len(ok) == total and set(ok.values()) == {1}
    failed = Counter(r.event_id for r in received if r.status != 200)
    for event_id, count in Counter(r.event_id for r in received).items():
        assert count == 1 + failed[event_id]  # a duplicate only after a failed attempt
    for name in names:
        order = [
            r.json["event_type"]
            for r in received
            if r.json["connectionId"] == name and r.status == 200
        ]
        assert order == ["connection.created", "connection.credentials_replaced"], name
    print(
        f"two servers: {total} events, {sum(failed.values())} failed first attempts, "
        f"{len(received) - total} duplicates"
    )


async def _count_status(receiver: Any, status: int, n: int) -> bool:
    return sum(1 for r in receiver.received if r.status == status) >= n


async def test_a_slow_receiver_does_not_hold_up_others(
    servers: Any, account: Any, receiver: Any, events_database_url: str, keyring: Any, pki: Any
) -> None:
    server = servers.start(
        webhook_environment(events_database_url, keyring, pki, webhook_timeout=10)
    )
    await account.use(server)
    await account.integration()
    await create_endpoint(account, receiver.url("/slow"))
    await create_endpoint(account, receiver.url("/fast"))
    receiver.behave(lambda path, body: (200, 8.0 if path == "/slow" else 0.0))
    started = time.monotonic()
    for i in range(10):
        await account.create(f"busy-{i}")

    async def fast_done() -> bool:
        return sum(1 for r in receiver.received if r.path == "/fast") >= 10

    assert await wait_until(fast_done, within=5)
    assert time.monotonic() - started < 5
    assert not any(r.path == "/slow" for r in receiver.received)  # still being held
    receiver.release()


async def test_a_failing_endpoint_opens_its_circuit_and_is_given_up_after_the_horizon(
    servers: Any, account: Any, receiver: Any, events_database_url: str, keyring: Any, pki: Any
) -> None:
    env = webhook_environment(
        events_database_url,
        keyring,
        pki,
        webhook_retry_base=0.2,
        webhook_retry_max=0.4,
        webhook_retry_horizon=4,
        webhook_circuit_failures=3,
        webhook_circuit_cooldown=1.5,
    )
    server = servers.start(env)
    await account.use(server)
    await account.integration()
    endpoint_id, _ = await create_endpoint(account, receiver.url())
    receiver.behave(lambda path, body: (503, 0.0))
    await account.create("doomed")

    async def given_up() -> bool:
        deliveries = await _deliveries(account, endpoint_id)
        return bool(deliveries) and deliveries[0].state == wpb.WebhookDelivery.STATE_FAILED

    assert await wait_until(given_up, within=15)
    (delivery,) = await _deliveries(account, endpoint_id)
    assert delivery.HasField("finish_time")
    assert all(a.http_status == 503 and a.error == "HTTP 503" for a in delivery.attempts)
    starts = [a.start_time.ToDatetime() for a in delivery.attempts]
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(starts)]
    # Three failures in a row open the circuit: the next attempt waits for the cool-down.
    assert len(delivery.attempts) >= 4 and max(gaps) >= 1.4, gaps
    endpoints = await webhooks_stub(account).ListWebhookEndpoints(
        wpb.ListWebhookEndpointsRequest(), metadata=account.metadata
    )
    assert endpoints.endpoints[0].consecutive_failures >= 3


async def test_events_reach_the_receiver_and_a_watch_stream_within_a_second(
    servers: Any, account: Any, receiver: Any, events_database_url: str, keyring: Any, pki: Any
) -> None:
    """The issue's bar, through CreateConnection (the connect page writes through the same
    ConnectionService): every event on both paths well within a second of its commit."""
    server = servers.start(webhook_environment(events_database_url, keyring, pki))
    await account.use(server)
    await account.integration()
    await create_endpoint(account, receiver.url())
    stream = account.connections.WatchConnections(
        cpb.WatchConnectionsRequest(), metadata=account.metadata
    )
    await stream.read()
    watched: list[float] = []
    for i in range(20):
        await account.create(f"fast-{i}")
        message = await asyncio.wait_for(stream.read(), 5)
        watched.append(time.time() - message.event.event_time.ToDatetime().timestamp())
    stream.cancel()
    assert await wait_until(lambda: _count(receiver, 20), within=5)
    hooked = [
        r.time - datetime.fromisoformat(r.json["event_time"]).timestamp() for r in receiver.received
    ]
    assert max(watched) < 1.0 and max(hooked) < 1.0, (watched, hooked)
