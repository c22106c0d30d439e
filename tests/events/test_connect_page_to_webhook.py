"""Issue 13's bar, end to end with real parts only: a connection made on the hosted connect page
(headless Chromium, a real ``credbroker serve`` verifying the key with a stand-in provider on
127.0.0.1) reaches a real HTTPS webhook receiver and a WatchConnections stream (opened by a
backend key before the end user acts) within a second of the page's submit completing, and
survives ``kill -9`` of the server at each point between the submit and the delivery:

* while the provider check runs (nothing committed): the end user tries again on the restarted
  server and the event then arrives, and a Watch resumed with its last token gets it;
* after the commit, before the page got its answer (the session's row is locked from a test
  transaction, so the server's consume waits), the receiver failing every attempt;
* after the page reported success, the receiver holding the first attempt.

A reconnect session's page sends ``connection.credentials_replaced`` (operation ``override``)
the same way, before and after a crash.

The HTTP port is fixed for the module (SO_REUSEADDR), so a page opened before a crash talks to
the restarted server as an end user's would. Latencies are printed (``-s`` shows them).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import socket
import statistics
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import grpc
import httpx
import pytest
import pytest_asyncio

from credbroker.app import key_service
from credbroker.domain.models import Scope
from credbroker.v1 import connection_service_pb2 as cpb
from credbroker.v1 import connection_service_pb2_grpc as cgrpc
from credbroker.v1 import events_pb2 as epb
from credbroker.v1 import integration_service_pb2 as ipb
from credbroker.v1 import integration_service_pb2_grpc as igrpc
from credbroker.v1 import resources_pb2 as rpb
from credbroker.v1 import webhook_service_pb2 as wpb

from .browser import CHROMIUM, CHROMIUM_FLAGS, StandInProvider, require_browser
from .conftest import (
    READ_TIMEOUT,
    Account,
    ServerProcess,
    Servers,
    create_endpoint,
    wait_until,
    webhook_environment,
    webhooks_stub,
)
from .receiver import Received, Receiver

pytestmark = pytest.mark.slow

BAR = 1.0  # seconds from the page's submit completing to the webhook and to the Watch stream
PAGE_TIMEOUT_MS = 15_000
LATENCIES: dict[str, list[float]] = {"webhook": [], "watch": []}
# When the page received the whole answer to its last request to this URL, in Unix ms.
SUBMIT_DONE = """url => {
  const entry = performance.getEntriesByName(url, "resource").pop();
  return entry ? performance.timeOrigin + entry.responseEnd : null;
}"""


# ---------------------------------------------------------------------------------------------
# fixtures


@pytest_asyncio.fixture(scope="module")
async def browser() -> AsyncIterator[Any]:
    require_browser()
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS
        )
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture(scope="module", autouse=True)
def latency_report() -> Iterator[None]:
    yield
    for kind, values in LATENCIES.items():
        if values:
            print(
                f"\npage submit -> {kind}: {len(values)} runs, median "
                f"{statistics.median(values) * 1000:.0f} ms, max {max(values) * 1000:.0f} ms"
            )


@pytest.fixture(scope="module")
def provider() -> Iterator[StandInProvider]:
    started = StandInProvider()
    started.start()
    yield started
    started.stop()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Watcher:
    """A WatchConnections stream of a backend key (``connections:read`` only), read in the
    background; keeps the last resume token, and resumes with it after a crash."""

    metadata: tuple[tuple[str, str], ...]
    token: str = ""
    events: list[tuple[float, epb.ConnectionEvent]] = field(default_factory=list)
    error: grpc.aio.AioRpcError | None = None
    _call: Any = None
    _task: asyncio.Task[None] | None = None

    async def open(self, channel: grpc.aio.Channel) -> None:
        """Returns once the stream is live (its opening heartbeat arrived)."""
        self.error = None
        self._call = cgrpc.ConnectionServiceStub(channel).WatchConnections(
            cpb.WatchConnectionsRequest(start_after=self.token), metadata=self.metadata
        )
        first = await asyncio.wait_for(self._call.read(), READ_TIMEOUT)
        assert first is not grpc.aio.EOF and not first.HasField("event")
        self.token = first.resume_token
        self._task = asyncio.create_task(self._read(self._call))

    async def _read(self, call: Any) -> None:
        try:
            while (message := await call.read()) is not grpc.aio.EOF:
                arrived = time.time()
                self.token = message.resume_token
                if message.HasField("event"):
                    self.events.append((arrived, message.event))
        except grpc.aio.AioRpcError as error:
            self.error = error

    @property
    def ids(self) -> list[str]:
        return [e.event_id for _, e in self.events]

    async def wait(
        self, within: float, *, event_id: str = "", connection_id: str = ""
    ) -> tuple[float, epb.ConnectionEvent]:
        """The first event received with this id (or of this connection, or at all), and when
        it arrived."""

        def matching() -> list[tuple[float, epb.ConnectionEvent]]:
            return [
                (t, e)
                for t, e in self.events
                if event_id in ("", e.event_id) and connection_id in ("", e.connection_id)
            ]

        async def seen() -> bool:
            return bool(matching())

        assert await wait_until(seen, within=within, interval=0.01), (
            f"Watch did not get {event_id or connection_id or 'an event'}: {self.ids}"
        )
        return matching()[0]

    async def ended(self) -> bool:
        return self._task is not None and self._task.done()

    async def close(self) -> None:
        if self._call is not None:
            self._call.cancel()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)


@dataclass
class Submitted:
    connection_id: str
    done: float  # Unix time when the page had the whole answer to its submit


@dataclass
class Stage:
    """One environment, its server (restartable on the same HTTP port), webhook endpoint,
    stand-in provider integration, a Watch stream and a browser context."""

    servers: Servers
    env: dict[str, str]
    account: Account
    receiver: Receiver
    provider: StandInProvider
    context: Any
    watcher: Watcher
    server: ServerProcess | None = None
    integration_id: str = "stand-in"
    secret: str = ""
    endpoint_id: str = ""

    async def start(self) -> ServerProcess:
        self.server = self.servers.start(self.env)
        await self.account.use(self.server)
        return self.server

    @property
    def channel(self) -> grpc.aio.Channel:
        assert self.account.channel is not None
        return self.account.channel

    async def set_up(self) -> None:
        await self.start()
        await igrpc.IntegrationServiceStub(self.channel).CreateIntegration(
            ipb.CreateIntegrationRequest(
                integration=rpb.Integration(
                    integration_id=self.integration_id,
                    provider="api-key",
                    display_name="Stand-in API",
                    integration_config={
                        "base_url": self.provider.url,
                        "verification_path": "/check",
                    },
                )
            ),
            metadata=self.account.metadata,
            timeout=READ_TIMEOUT,
        )
        self.endpoint_id, self.secret = await create_endpoint(self.account, self.receiver.url())
        await self.watcher.open(self.channel)

    async def crash(self) -> None:
        """kill -9; the Watch stream sees the server go."""
        assert self.server is not None
        self.server.kill9()
        assert await wait_until(self.watcher.ended, within=READ_TIMEOUT)
        assert self.watcher.error is not None
        assert self.watcher.error.code() == grpc.StatusCode.UNAVAILABLE

    async def restart(self) -> None:
        """A new server on the same database and HTTP port; the Watch resumed with its last
        resume token."""
        await self.start()
        await self.watcher.open(self.channel)

    async def session(self, path: str = "/connect/sessions", **body: Any) -> dict[str, str]:
        """The backend's side: a connect session (``connect_link``, ``session_id``, ...)."""
        assert self.server is not None
        async with httpx.AsyncClient(base_url=self.server.http_url) as http:
            response = await http.post(
                path, json=body, headers={"authorization": f"Bearer {self.account.key}"}
            )
        assert response.status_code == 201, response.text
        data: dict[str, str] = response.json()["data"]
        return data

    async def session_for(self, user: str) -> dict[str, str]:
        return await self.session(
            end_user={"id": user, "email": f"{user}@example.com", "display_name": user.title()},
            organization={"id": "org-7", "display_name": "Org Seven"},
            tags={"team": "core"},
            allowed_integrations=[self.integration_id],
        )

    async def open_page(self, link: str) -> Any:
        page = await self.context.new_page()
        page.set_default_timeout(PAGE_TIMEOUT_MS)
        await page.goto(link)
        await page.get_by_label("API key").wait_for()
        return page

    async def submit(self, page: Any, api_key: str, button: str = "Connect") -> Submitted:
        """Fills in the key and submits; returns when the page shows success."""
        await page.get_by_label("API key").fill(api_key)
        response, done = await self.press(page, button)
        assert response.status == 200, await response.text()
        await page.get_by_text("is connected").wait_for()
        return Submitted(str((await response.json())["connectionId"]), done)

    async def connect(self, user: str, api_key: str) -> Submitted:
        """The end user connects with a new session's link."""
        page = await self.open_page((await self.session_for(user))["connect_link"])
        submitted = await self.submit(page, api_key)
        await page.close()
        return submitted

    async def reconnect(self, connection_id: str, api_key: str) -> Submitted:
        """The end user replaces the connection's key with a reconnect session's link."""
        session = await self.session(
            "/connect/sessions/reconnect",
            integration_id=self.integration_id,
            connection_id=connection_id,
        )
        page = await self.open_page(session["connect_link"])
        await page.get_by_role("heading", name="Update your Stand-in API credentials").wait_for()
        submitted = await self.submit(page, api_key, button="Update")
        await page.close()
        assert submitted.connection_id == connection_id
        return submitted

    @staticmethod
    async def press(page: Any, button: str = "Connect") -> tuple[Any, float]:
        """Clicks the submit button; the submit's response and when the page had all of it
        (the browser's own resource timing, on the machine's clock like the receiver's)."""
        async with page.expect_response(lambda r: "/api-auth/api-key/" in r.url) as answer:
            await page.get_by_role("button", name=button).click()
        response = await answer.value
        await response.finished()
        done = await page.evaluate(SUBMIT_DONE, response.url)
        assert done is not None, "no resource timing entry for the submit"
        return response, float(done) / 1000

    async def press_while_claimed(self, page: Any, within: float) -> tuple[Any, float]:
        """What an end user does after an error: press again. A submission that a crash cut
        short still claims the session (409) until its lease ends: press until it does not."""
        deadline = time.monotonic() + within
        while True:
            response, done = await self.press(page)
            if response.status != 409 or time.monotonic() > deadline:
                return response, done
            await asyncio.sleep(0.25)

    def delivered(self, event_type: str, connection_id: str) -> list[Received]:
        """Answered (200) deliveries of this event type for the connection."""
        return [
            r
            for r in self.receiver.received
            if r.status == 200
            and r.json["event_type"] == event_type
            and r.json["connectionId"] == connection_id
        ]

    async def wait_delivered(self, event_type: str, connection_id: str, within: float) -> Received:
        async def arrived() -> bool:
            return bool(self.delivered(event_type, connection_id))

        assert await wait_until(arrived, within=within), (
            f"no {event_type} for {connection_id}: {[r.json for r in self.receiver.received]}"
        )
        (first, *_) = self.delivered(event_type, connection_id)
        return first

    async def deliveries(self) -> list[Any]:
        response = await webhooks_stub(self.account).ListWebhookDeliveries(
            wpb.ListWebhookDeliveriesRequest(endpoint_id=self.endpoint_id, page_size=100),
            metadata=self.account.metadata,
            timeout=READ_TIMEOUT,
        )
        return list(response.deliveries)

    async def all_delivered(self, count: int) -> bool:
        """``count`` deliveries, each recorded as delivered (the answer's record follows the
        receiver's 200 by a moment)."""
        deliveries = await self.deliveries()
        states = {d.state for d in deliveries}
        return len(deliveries) == count and states == {wpb.WebhookDelivery.STATE_DELIVERED}

    async def connections(self) -> list[rpb.Connection]:
        response = await self.account.connections.ListConnections(
            cpb.ListConnectionsRequest(integration_id=self.integration_id),
            metadata=self.account.metadata,
            timeout=READ_TIMEOUT,
        )
        return list(response.connections)


@pytest.fixture(scope="module")
def http_listen() -> str:
    return f"127.0.0.1:{_free_port()}"


@pytest_asyncio.fixture
async def stage(
    servers: Servers,
    account: Account,
    receiver: Receiver,
    provider: StandInProvider,
    browser: Any,
    events_backend: Any,
    events_database_url: str,
    keyring: Any,
    pki: Any,
    http_listen: str,
) -> AsyncIterator[Stage]:
    env = webhook_environment(
        events_database_url,
        keyring,
        pki,
        http_listen=http_listen,
        verify_credentials="true",
        verify_timeout=3,
        webhook_timeout=2,  # a held attempt's lease: 2 s + 5 s
        rpc_timeout=4,  # a submission cut short by a crash claims its session 4 s + 5 s
    )
    token, _ = await key_service(events_backend).create_key(
        account.environment, frozenset({Scope.CONNECTIONS_READ})
    )
    context = await browser.new_context(viewport={"width": 760, "height": 640})
    made = Stage(
        servers,
        env,
        account,
        receiver,
        provider,
        context,
        Watcher((("authorization", f"Bearer {token}"),)),
    )
    try:
        await made.set_up()
        yield made
    finally:
        await made.watcher.close()
        await context.close()


# ---------------------------------------------------------------------------------------------
# checks


def _hmac(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def check_signed(received: Received, secret: str) -> None:
    headers = received.headers
    assert headers["content-type"] == "application/json"
    assert hmac.compare_digest(headers["x-nango-hmac-sha256"], _hmac(secret, received.body))
    assert headers["credbroker-event-id"] == received.event_id
    t_part, v1_part = headers["credbroker-signature"].split(",")
    timestamp = t_part.removeprefix("t=")
    assert abs(int(timestamp) - time.time()) < 60
    assert v1_part == "v1=" + _hmac(secret, f"{timestamp}.".encode() + received.body)


def check_body(
    stage: Stage,
    received: Received,
    user: str,
    connection_id: str,
    *,
    event_type: str,
    operation: str,
) -> None:
    """The reference auth-webhook shape, the end user of the session, no secret."""
    tags = {
        "end_user_id": user,
        "end_user_email": f"{user}@example.com",
        "organization_id": "org-7",
        "team": "core",
    }
    assert received.json == {
        "from": "credbroker",
        "type": "auth",
        "operation": operation,
        "success": True,
        "connectionId": connection_id,
        "providerConfigKey": stage.integration_id,
        "authMode": "API_KEY",
        "provider": "api-key",
        "environment": stage.account.environment,
        "tags": tags,
        "endUser": {
            "endUserId": user,
            "endUserEmail": f"{user}@example.com",
            "organizationId": "org-7",
            "tags": tags,
        },
        "event_id": received.event_id,
        "event_type": event_type,
        "event_time": received.json["event_time"],
    }
    uuid.UUID(received.event_id)
    check_signed(received, stage.secret)
    assert b"sk-" not in received.body


def check_watched(
    event: epb.ConnectionEvent, user: str, connection_id: str, event_type: str
) -> None:
    assert event.event_type == event_type
    assert event.connection_id == connection_id and event.provider == "api-key"
    assert event.end_user.id == user and event.end_user.email == f"{user}@example.com"
    assert event.end_user.display_name == user.title()
    assert event.end_user.organization_id == "org-7"
    assert dict(event.tags)["end_user_id"] == user


def record_latency(label: str, submitted: Submitted, hooked: float, watched: float) -> None:
    to_hook, to_watch = hooked - submitted.done, watched - submitted.done
    LATENCIES["webhook"].append(to_hook)
    LATENCIES["watch"].append(to_watch)
    print(
        f"{label}: page submit -> webhook {to_hook * 1000:.0f} ms, Watch {to_watch * 1000:.0f} ms"
    )
    assert to_hook < BAR and to_watch < BAR, (label, to_hook, to_watch)


# ---------------------------------------------------------------------------------------------
# tests


async def test_page_connections_reach_the_webhook_and_watch_within_a_second(
    stage: Stage,
) -> None:
    runs = 5
    for run in range(runs):
        user = f"ada-{run}"
        key = f"sk-page-{run}-{uuid.uuid4().hex[:8]}"
        stage.provider.accept(key)
        submitted = await stage.connect(user, key)
        hooked = await stage.wait_delivered("connection.created", submitted.connection_id, 5)
        check_body(
            stage,
            hooked,
            user,
            submitted.connection_id,
            event_type="connection.created",
            operation="creation",
        )
        watched, event = await stage.watcher.wait(5, event_id=hooked.event_id)
        check_watched(event, user, submitted.connection_id, "connection.created")
        record_latency(f"run {run}", submitted, hooked.time, watched)
        assert stage.provider.arrivals(key) == 1  # verified once, with the stand-in provider
    assert await wait_until(lambda: stage.all_delivered(runs), within=5)
    assert all(len(d.attempts) == 1 for d in await stage.deliveries())
    assert len(stage.receiver.received) == runs  # no duplicate without a failed attempt
    assert len(stage.watcher.ids) == runs == len(set(stage.watcher.ids))


async def test_reconnect_on_the_page_sends_credentials_replaced(stage: Stage) -> None:
    first_key, new_key = f"sk-old-{uuid.uuid4().hex[:8]}", f"sk-new-{uuid.uuid4().hex[:8]}"
    stage.provider.accept(first_key)
    stage.provider.accept(new_key)
    created = await stage.connect("grace", first_key)
    creation = await stage.wait_delivered("connection.created", created.connection_id, 5)
    replaced = await stage.reconnect(created.connection_id, new_key)
    hooked = await stage.wait_delivered("connection.credentials_replaced", created.connection_id, 5)
    check_body(
        stage,
        hooked,
        "grace",
        created.connection_id,
        event_type="connection.credentials_replaced",
        operation="override",
    )
    watched, event = await stage.watcher.wait(5, event_id=hooked.event_id)
    record_latency("reconnect", replaced, hooked.time, watched)
    assert stage.watcher.ids == [creation.event_id, hooked.event_id]
    check_watched(event, "grace", created.connection_id, "connection.credentials_replaced")
    assert stage.provider.arrivals(new_key) == 1


async def test_kill_9_during_the_provider_check_then_the_end_user_tries_again(
    stage: Stage,
) -> None:
    """Nothing is committed yet: no event, no connection. The end user presses Connect again
    on the restarted server; the event then reaches the receiver and the Watch resumed with
    the token it had before the crash, once."""
    key = f"sk-crash-{uuid.uuid4().hex[:8]}"
    stage.provider.accept(key)
    stage.provider.hold(key)
    page = await stage.open_page((await stage.session_for("lin"))["connect_link"])
    await page.get_by_label("API key").fill(key)
    await page.get_by_role("button", name="Connect").click()

    async def checking() -> bool:
        return stage.provider.arrivals(key) == 1

    assert await wait_until(checking, within=READ_TIMEOUT)
    token_before = stage.watcher.token
    await stage.crash()
    await page.locator("#form-message[data-error-code=network]").wait_for()
    stage.provider.release()  # its answer goes to a dead process
    await stage.restart()
    assert await stage.connections() == []
    assert stage.receiver.arrivals == 0 and stage.watcher.events == []

    response, done = await stage.press_while_claimed(page, within=20)
    assert response.status == 200, await response.text()
    await page.get_by_text("is connected").wait_for()
    submitted = Submitted(str((await response.json())["connectionId"]), done)
    hooked = await stage.wait_delivered("connection.created", submitted.connection_id, 5)
    check_body(
        stage,
        hooked,
        "lin",
        submitted.connection_id,
        event_type="connection.created",
        operation="creation",
    )
    watched, event = await stage.watcher.wait(5, event_id=hooked.event_id)
    check_watched(event, "lin", submitted.connection_id, "connection.created")
    record_latency("after a crash during the provider check", submitted, hooked.time, watched)
    assert stage.watcher.ids == [hooked.event_id]
    assert stage.provider.arrivals(key) == 2
    assert [c.connection_id for c in await stage.connections()] == [submitted.connection_id]
    # A watcher that was away all along comes back with the token it had before the crash.
    late = Watcher(stage.watcher.metadata, token=token_before)
    await late.open(stage.channel)
    try:
        await late.wait(5)
        assert late.ids == [hooked.event_id]
    finally:
        await late.close()


async def test_kill_9_after_the_commit_before_the_page_got_its_answer(
    stage: Stage, events_database_url: str
) -> None:
    """The connection and its event are committed, then the server dies before it answers
    the page (a test transaction holds the session's row, so the server's consume waits; the
    receiver fails every attempt until after the restart). The event arrives after the
    restart, with the id the Watch saw; the end user who presses again learns the link was
    used."""
    healthy = threading.Event()
    stage.receiver.behave(lambda path, body: (200 if healthy.is_set() else 503, 0.0))
    key = f"sk-commit-{uuid.uuid4().hex[:8]}"
    stage.provider.accept(key)
    stage.provider.hold(key)
    session = await stage.session_for("mae")
    page = await stage.open_page(session["connect_link"])
    await page.get_by_label("API key").fill(key)
    await page.get_by_role("button", name="Connect").click()

    async def checking() -> bool:
        return stage.provider.arrivals(key) == 1

    assert await wait_until(checking, within=READ_TIMEOUT)  # the session is claimed
    blocker = await asyncpg.connect(events_database_url)
    try:
        locked = blocker.transaction()
        await locked.start()
        await blocker.execute(
            "SELECT 1 FROM connect_sessions WHERE id = $1 FOR UPDATE",
            uuid.UUID(session["session_id"]),
        )
        stage.provider.release()

        _, event = await stage.watcher.wait(READ_TIMEOUT)  # committed
        check_watched(event, "mae", event.connection_id, "connection.created")
        assert await page.get_by_text("is connected").count() == 0  # no answer yet
        await stage.crash()
        await locked.rollback()
    finally:
        await blocker.close()
    await page.locator("#form-message[data-error-code=network]").wait_for()
    await stage.restart()
    assert all(r.status == 503 for r in stage.receiver.received)
    healthy.set()
    hooked = await stage.wait_delivered("connection.created", event.connection_id, 15)
    assert hooked.event_id == event.event_id
    check_body(
        stage,
        hooked,
        "mae",
        event.connection_id,
        event_type="connection.created",
        operation="creation",
    )
    assert {r.event_id for r in stage.receiver.received} == {event.event_id}
    assert await wait_until(lambda: stage.all_delivered(1), within=5)
    (delivery,) = await stage.deliveries()
    outcomes = [a.outcome for a in delivery.attempts]
    assert outcomes[-1] == wpb.WebhookAttempt.OUTCOME_SUCCEEDED
    assert wpb.WebhookAttempt.OUTCOME_SUCCEEDED not in outcomes[:-1]
    (connection,) = await stage.connections()
    assert connection.connection_id == event.connection_id
    assert connection.end_user.id == "mae"
    assert connection.verification.state == rpb.Verification.VERIFIED

    response, _ = await stage.press_while_claimed(page, within=20)
    assert response.status == 401
    assert (await response.json())["error"]["code"] == "connect_session_consumed"
    await page.locator("[data-error-code=connect_session_consumed]").wait_for()
    assert stage.watcher.ids == [event.event_id]  # the resumed Watch: no repeat


async def test_kill_9_after_the_page_reported_success_while_the_first_attempt_is_held(
    stage: Stage,
) -> None:
    """The page shows success and the Watch has the event; the receiver holds the first
    attempt and the server dies mid-attempt. The restarted server sends the same event again
    once the attempt's lease ends; the Watch resumed with its last token gets the next event
    (a reconnect on the restarted server) and nothing twice."""
    attempts: Counter[str] = Counter()

    def hold_the_first(path: str, body: Any) -> tuple[int, float]:
        attempts[body["event_id"]] += 1
        return 200, (60.0 if attempts[body["event_id"]] == 1 else 0.0)

    stage.receiver.behave(hold_the_first)
    key, new_key = f"sk-held-{uuid.uuid4().hex[:8]}", f"sk-after-{uuid.uuid4().hex[:8]}"
    stage.provider.accept(key)
    stage.provider.accept(new_key)
    submitted = await stage.connect("noor", key)
    watched_at, event = await stage.watcher.wait(5, connection_id=submitted.connection_id)
    assert watched_at - submitted.done < BAR

    async def held() -> bool:
        return stage.receiver.arrivals == 1

    assert await wait_until(held, within=5)
    assert stage.receiver.received == []  # the only attempt is still being held
    await stage.crash()
    stage.receiver.release()  # its answer goes to a dead process
    await stage.restart()

    async def sent_again() -> bool:
        return len(stage.receiver.received) == 2

    # The held attempt, answered after the crash, and the new one once its lease (2 + 5 s) ended.
    assert await wait_until(sent_again, within=15)
    assert attempts == {event.event_id: 2}
    hooked = stage.receiver.received[-1]
    assert hooked.event_id == event.event_id
    assert await wait_until(lambda: stage.all_delivered(1), within=5)
    check_body(
        stage,
        hooked,
        "noor",
        submitted.connection_id,
        event_type="connection.created",
        operation="creation",
    )
    (delivery,) = await stage.deliveries()
    assert [a.outcome for a in delivery.attempts] == [
        wpb.WebhookAttempt.OUTCOME_ABANDONED,
        wpb.WebhookAttempt.OUTCOME_SUCCEEDED,
    ]

    replaced = await stage.reconnect(submitted.connection_id, new_key)
    hooked = await stage.wait_delivered(
        "connection.credentials_replaced", submitted.connection_id, 5
    )
    watched, _ = await stage.watcher.wait(5, event_id=hooked.event_id)
    record_latency("reconnect after a crash", replaced, hooked.time, watched)
    assert stage.watcher.ids == [event.event_id, hooked.event_id]
