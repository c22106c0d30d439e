"""Wiring of webhook endpoints and delivery for one server process (used by ``app.py`` and the
CLI): the endpoint use cases, and the dispatcher that sends deliveries through the outbound
guard."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from credbroker import background
from credbroker.bootstrap import Backend, bound_cipher
from credbroker.config import Settings
from credbroker.crypto import Keyring
from credbroker.domain.delivery import DeliveryDispatcher, RetryPolicy
from credbroker.domain.webhooks import DeliveryWaker, WebhookService
from credbroker.outbound import AddressGuard, HttpWebhookSender, parse_networks
from credbroker.storage.events import EventHub
from credbroker.storage.webhooks import PostgresDeliveryStore, PostgresWebhookRepository


def retry_policy(settings: Settings) -> RetryPolicy:
    return RetryPolicy(
        base_seconds=settings.webhook_retry_base,
        max_seconds=settings.webhook_retry_max,
        horizon_seconds=settings.webhook_retry_horizon,
        timeout_seconds=settings.webhook_timeout,
        circuit_failures=settings.webhook_circuit_failures,
        circuit_cooldown_seconds=settings.webhook_circuit_cooldown,
    )


def webhook_service(
    settings: Settings, backend: Backend, keyring: Keyring, waker: DeliveryWaker | None = None
) -> WebhookService:
    return WebhookService(
        PostgresWebhookRepository(backend.db),
        bound_cipher(settings, keyring),
        AddressGuard(parse_networks(settings.outbound_allow)),
        waker,
    )


@dataclass
class RunningDispatcher:
    dispatcher: DeliveryDispatcher
    sender: HttpWebhookSender
    task: asyncio.Task[None]

    async def stop(self, grace: float) -> None:
        """Stops claiming, gives attempts in flight ``grace`` seconds, then closes."""
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.dispatcher.stop(grace)
        await self.sender.close()


def start_dispatcher(
    settings: Settings, backend: Backend, keyring: Keyring, hub: EventHub
) -> RunningDispatcher:
    sender = HttpWebhookSender(
        AddressGuard(parse_networks(settings.outbound_allow)),
        timeout=settings.webhook_timeout,
        ca_file=settings.outbound_ca_file,
        max_connections=settings.webhook_concurrency,
    )
    dispatcher = DeliveryDispatcher(
        PostgresDeliveryStore(backend.db),
        sender,
        bound_cipher(settings, keyring),
        hub,
        retry_policy(settings),
        concurrency=settings.webhook_concurrency,
        per_endpoint=settings.webhook_endpoint_concurrency,
    )
    return RunningDispatcher(
        dispatcher, sender, background.start("webhook dispatcher", dispatcher.run())
    )
