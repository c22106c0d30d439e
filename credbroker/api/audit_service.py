"""AuditService servicer."""

from __future__ import annotations

from typing import Any

from credbroker.admission import current_principal
from credbroker.api.convert import timestamp
from credbroker.api.paging import AUDIT_CURSOR, decode_page_token, encode_page_token
from credbroker.domain.audit import AuditEvent, AuditService
from credbroker.v1 import audit_service_pb2 as pb
from credbroker.v1 import audit_service_pb2_grpc as pb_grpc

Context = Any  # grpc.aio.ServicerContext; admission (api.handlers) handles every failure path


def _event_to_proto(event: AuditEvent) -> pb.AuditEvent:
    return pb.AuditEvent(
        event_id=str(event.event_id),
        event_time=timestamp(event.event_time),
        request_id=event.request_id,
        key_id=event.key_id,
        environment=event.environment,
        method=event.method,
        integration_id=event.integration_id,
        connection_id=event.connection_id,
        outcome=event.outcome,
    )


class AuditServicer(pb_grpc.AuditServiceServicer):
    def __init__(self, service: AuditService) -> None:
        self._service = service

    async def ListAuditEvents(
        self, request: pb.ListAuditEventsRequest, context: Context
    ) -> pb.ListAuditEventsResponse:
        filters = {
            "method": "ListAuditEvents",
            "integration_id": request.integration_id,
            "connection_id": request.connection_id,
        }
        cursor = decode_page_token(request.page_token, filters, size=1, pattern=AUDIT_CURSOR)
        page = await self._service.list(
            current_principal(),
            integration_id=request.integration_id,
            connection_id=request.connection_id,
            page_size=request.page_size,
            before=int(cursor[0]) if cursor else None,
        )
        return pb.ListAuditEventsResponse(
            audit_events=[_event_to_proto(e) for e in page.items],
            next_page_token=encode_page_token(page.next_cursor, filters),
        )
