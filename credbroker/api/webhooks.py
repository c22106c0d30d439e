"""WebhookService servicer: proto in, domain use case, proto out."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from google.protobuf import empty_pb2

from credbroker.admission import current_principal
from credbroker.api.convert import timestamp
from credbroker.api.events import event_to_proto
from credbroker.api.paging import decode_page_token, encode_page_token
from credbroker.domain.errors import InvalidArgumentError
from credbroker.domain.webhooks import (
    AttemptOutcome,
    DeliveryState,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookService,
)
from credbroker.v1 import webhook_service_pb2 as pb
from credbroker.v1 import webhook_service_pb2_grpc as pb_grpc

Context = Any

_STATES = {
    DeliveryState.PENDING: pb.WebhookDelivery.STATE_PENDING,
    DeliveryState.DELIVERED: pb.WebhookDelivery.STATE_DELIVERED,
    DeliveryState.FAILED: pb.WebhookDelivery.STATE_FAILED,
}
_OUTCOMES = {
    AttemptOutcome.IN_PROGRESS: pb.WebhookAttempt.OUTCOME_IN_PROGRESS,
    AttemptOutcome.SUCCEEDED: pb.WebhookAttempt.OUTCOME_SUCCEEDED,
    AttemptOutcome.FAILED: pb.WebhookAttempt.OUTCOME_FAILED,
    AttemptOutcome.ABANDONED: pb.WebhookAttempt.OUTCOME_ABANDONED,
}


def endpoint_to_proto(endpoint: WebhookEndpoint) -> pb.WebhookEndpoint:
    message = pb.WebhookEndpoint(
        endpoint_id=str(endpoint.id),
        url=endpoint.url,
        events=list(endpoint.event_types),
        description=endpoint.description,
        disabled=endpoint.disabled,
        create_time=timestamp(endpoint.create_time),
        update_time=timestamp(endpoint.update_time),
        consecutive_failures=endpoint.consecutive_failures,
    )
    if endpoint.previous_secret_expire_time is not None:
        message.previous_secret_expire_time.CopyFrom(
            timestamp(endpoint.previous_secret_expire_time)
        )
    if endpoint.circuit_open_until is not None:
        message.circuit_open_until.CopyFrom(timestamp(endpoint.circuit_open_until))
    return message


def delivery_to_proto(delivery: WebhookDelivery) -> pb.WebhookDelivery:
    message = pb.WebhookDelivery(
        delivery_id=str(delivery.delivery_id),
        endpoint_id=str(delivery.endpoint_id),
        event=event_to_proto(delivery.event),
        state=_STATES[delivery.state],
        redelivery=delivery.redelivery,
        attempt_count=delivery.attempt_count,
        create_time=timestamp(delivery.create_time),
        attempts=[
            pb.WebhookAttempt(
                attempt_number=a.attempt_number,
                start_time=timestamp(a.start_time),
                duration_ms=a.duration_ms,
                outcome=_OUTCOMES[a.outcome],
                http_status=a.http_status,
                error=a.error,
            )
            for a in delivery.attempts
        ],
    )
    if delivery.next_attempt_time is not None:
        message.next_attempt_time.CopyFrom(timestamp(delivery.next_attempt_time))
    if delivery.finish_time is not None:
        message.finish_time.CopyFrom(timestamp(delivery.finish_time))
    return message


class WebhookServicer(pb_grpc.WebhookServiceServicer):
    def __init__(self, service: WebhookService) -> None:
        self._service = service

    async def CreateWebhookEndpoint(
        self, request: pb.CreateWebhookEndpointRequest, context: Context
    ) -> pb.CreateWebhookEndpointResponse:
        endpoint, secret = await self._service.create(
            current_principal(),
            url=request.url,
            events=list(request.events),
            description=request.description,
        )
        return pb.CreateWebhookEndpointResponse(
            endpoint=endpoint_to_proto(endpoint), signing_secret=secret
        )

    async def ListWebhookEndpoints(
        self, request: pb.ListWebhookEndpointsRequest, context: Context
    ) -> pb.ListWebhookEndpointsResponse:
        endpoints = await self._service.list_endpoints(current_principal())
        return pb.ListWebhookEndpointsResponse(endpoints=[endpoint_to_proto(e) for e in endpoints])

    async def UpdateWebhookEndpoint(
        self, request: pb.UpdateWebhookEndpointRequest, context: Context
    ) -> pb.WebhookEndpoint:
        endpoint = request.endpoint
        updated = await self._service.update(
            current_principal(),
            endpoint.endpoint_id,
            frozenset(request.update_mask.paths),
            url=endpoint.url,
            events=list(endpoint.events),
            description=endpoint.description,
            disabled=endpoint.disabled,
        )
        return endpoint_to_proto(updated)

    async def DeleteWebhookEndpoint(
        self, request: pb.DeleteWebhookEndpointRequest, context: Context
    ) -> empty_pb2.Empty:
        await self._service.delete(current_principal(), request.endpoint_id)
        return empty_pb2.Empty()

    async def RotateWebhookSecret(
        self, request: pb.RotateWebhookSecretRequest, context: Context
    ) -> pb.RotateWebhookSecretResponse:
        overlap = None
        if request.HasField("overlap"):
            if request.overlap.seconds < 0 or request.overlap.nanos < 0:
                raise InvalidArgumentError.single("overlap", "must be between 0 and 7 days")
            overlap = timedelta(seconds=request.overlap.seconds)
        endpoint, secret = await self._service.rotate_secret(
            current_principal(), request.endpoint_id, overlap
        )
        return pb.RotateWebhookSecretResponse(
            endpoint=endpoint_to_proto(endpoint), signing_secret=secret
        )

    async def ListWebhookDeliveries(
        self, request: pb.ListWebhookDeliveriesRequest, context: Context
    ) -> pb.ListWebhookDeliveriesResponse:
        filters = {
            "method": "ListWebhookDeliveries",
            "endpoint_id": request.endpoint_id,
            "event_id": request.event_id,
        }
        cursor = decode_page_token(request.page_token, filters, size=1)
        before = None
        if cursor is not None:
            if not (cursor[0].isascii() and cursor[0].isdigit()) or len(cursor[0]) > 18:
                raise InvalidArgumentError.single(
                    "page_token", "is not a valid page token for this request"
                )
            before = int(cursor[0])
        page = await self._service.list_deliveries(
            current_principal(),
            endpoint_id=request.endpoint_id,
            event_id=request.event_id,
            page_size=request.page_size,
            before=before,
        )
        return pb.ListWebhookDeliveriesResponse(
            deliveries=[delivery_to_proto(d) for d in page.items],
            next_page_token=encode_page_token(page.next_cursor, filters),
        )

    async def RedeliverWebhookEvent(
        self, request: pb.RedeliverWebhookEventRequest, context: Context
    ) -> pb.WebhookDelivery:
        delivery = await self._service.redeliver(
            current_principal(), request.endpoint_id, request.event_id
        )
        return delivery_to_proto(delivery)
