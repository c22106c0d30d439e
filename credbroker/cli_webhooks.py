"""``credbroker webhooks ...``: the WebhookService use cases from a shell with database access
(the CLI equivalents of the gRPC methods). Signing secrets are printed once, alone on the last
line, like secret keys."""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from credbroker.app import key_service
from credbroker.bootstrap import Backend, verify_master_keys
from credbroker.config import Settings
from credbroker.crypto import Keyring
from credbroker.dispatch import webhook_service
from credbroker.domain.models import ALL_SCOPES, Principal
from credbroker.domain.webhooks import WebhookDelivery, WebhookEndpoint


def add_parser(
    commands: Any, common: argparse.ArgumentParser, duration: Callable[[str], timedelta]
) -> None:
    webhooks = commands.add_parser("webhooks", help="manage webhook endpoints and deliveries")
    sub = webhooks.add_subparsers(dest="webhooks_command", required=True)
    scoped = argparse.ArgumentParser(add_help=False, parents=[common])
    scoped.add_argument("--environment", required=True, help="the endpoints' environment")

    create = sub.add_parser(
        "create", parents=[scoped], help="add an endpoint; prints its signing secret last, once"
    )
    create.add_argument("--url", required=True, help="https URL that receives the events")
    create.add_argument("--events", default="", help="comma-separated event types (default: all)")
    create.add_argument("--description", default="", help="a note shown by `webhooks list`")
    sub.add_parser("list", parents=[scoped], help="list endpoints as JSON lines")
    update = sub.add_parser("update", parents=[scoped], help="change an endpoint")
    update.add_argument("endpoint_id", help="the endpoint's id (`webhooks list`)")
    update.add_argument("--url", help="a new https URL")
    update.add_argument("--events", help="comma-separated event types; '' for all")
    update.add_argument("--description", help="a new note")
    state = update.add_mutually_exclusive_group()
    state.add_argument("--enable", action="store_true", help="deliver to it again")
    state.add_argument("--disable", action="store_true", help="stop delivering to it")
    delete = sub.add_parser("delete", parents=[scoped], help="delete an endpoint")
    delete.add_argument("endpoint_id", help="the endpoint's id (`webhooks list`)")
    rotate = sub.add_parser(
        "rotate-secret",
        parents=[scoped],
        help="new signing secret (printed last, once); the old one signs for --overlap more",
    )
    rotate.add_argument("endpoint_id", help="the endpoint's id (`webhooks list`)")
    rotate.add_argument(
        "--overlap",
        type=duration,
        default=timedelta(hours=1),
        help="how long the old secret keeps signing too, e.g. 30m, 24h (default 1h)",
    )
    deliveries = sub.add_parser(
        "deliveries", parents=[scoped], help="recent deliveries with their attempts (JSON lines)"
    )
    deliveries.add_argument("--endpoint", default="", help="only this endpoint's deliveries")
    deliveries.add_argument("--event", default="", help="only this event's deliveries")
    deliveries.add_argument(
        "-n", "--limit", type=int, default=20, help="how many recent deliveries (default 20)"
    )
    redeliver = sub.add_parser("redeliver", parents=[scoped], help="send a retained event again")
    redeliver.add_argument("endpoint_id", help="the endpoint to send it to")
    redeliver.add_argument("event_id", help="the retained event's id (`webhooks deliveries`)")


def _events(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _json(value: Any) -> str:
    return json.dumps(value, default=str, separators=(",", ":"), sort_keys=True)


def endpoint_json(endpoint: WebhookEndpoint) -> str:
    return _json(dataclasses.asdict(endpoint))


def delivery_json(delivery: WebhookDelivery) -> str:
    document = dataclasses.asdict(delivery)
    document["event"] = {
        "event_id": str(delivery.event.event_id),
        "event_type": delivery.event.event_type.value,
        "integration_id": delivery.event.integration_id,
        "connection_id": delivery.event.connection_id,
    }
    return _json(document)


async def run(
    args: argparse.Namespace, settings: Settings, backend: Backend, keyring: Keyring
) -> None:
    await verify_master_keys(backend.db, keyring, accept_binding_v1=settings.accept_binding_v1)
    environment = await key_service(backend).environment(args.environment)
    principal = Principal("cli", environment.id, environment.name, ALL_SCOPES)
    service = webhook_service(settings, backend, keyring)
    command = args.webhooks_command
    if command == "create":
        endpoint, secret = await service.create(
            principal, url=args.url, events=_events(args.events), description=args.description
        )
        print(f"endpoint_id: {endpoint.id}")
        print("signing secret (shown once, store it now):")
        print(secret)
    elif command == "list":
        for endpoint in await service.list_endpoints(principal):
            print(endpoint_json(endpoint))
    elif command == "update":
        paths = {
            name
            for name, given in (
                ("url", args.url is not None),
                ("events", args.events is not None),
                ("description", args.description is not None),
                ("disabled", args.enable or args.disable),
            )
            if given
        }
        updated = await service.update(
            principal,
            args.endpoint_id,
            frozenset(paths),
            url=args.url or "",
            events=_events(args.events or ""),
            description=args.description or "",
            disabled=bool(args.disable),
        )
        print(endpoint_json(updated))
    elif command == "delete":
        await service.delete(principal, args.endpoint_id)
        print(f"deleted {args.endpoint_id}")
    elif command == "rotate-secret":
        endpoint, secret = await service.rotate_secret(principal, args.endpoint_id, args.overlap)
        until = endpoint.previous_secret_expire_time
        print(f"endpoint_id: {endpoint.id} (the old secret signs until {until})")
        print("signing secret (shown once, store it now):")
        print(secret)
    elif command == "deliveries":
        page = await service.list_deliveries(
            principal,
            endpoint_id=args.endpoint,
            event_id=args.event,
            page_size=args.limit,
            before=None,
        )
        for delivery in page.items:
            print(delivery_json(delivery))
    else:
        delivery = await service.redeliver(principal, args.endpoint_id, args.event_id)
        print(delivery_json(delivery))
