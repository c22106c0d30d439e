"""Connection events as credbroker.v1 messages."""

from __future__ import annotations

from credbroker.api.convert import AUTH_MODE_TO_PROTO, timestamp
from credbroker.domain.events import ConnectionEvent
from credbroker.v1 import events_pb2


def event_to_proto(event: ConnectionEvent) -> events_pb2.ConnectionEvent:
    message = events_pb2.ConnectionEvent(
        event_id=str(event.event_id),
        event_type=event.event_type.value,
        event_time=timestamp(event.event_time),
        environment=event.environment,
        integration_id=event.integration_id,
        connection_id=event.connection_id,
        provider=event.provider,
        auth_mode=AUTH_MODE_TO_PROTO[event.auth_mode],
        tags=dict(event.tags),
        operation=event.operation,
        success=event.success,
    )
    if event.end_user is not None:
        message.end_user.CopyFrom(
            events_pb2.ConnectionEvent.EndUser(
                id=event.end_user.get("id", ""),
                email=event.end_user.get("email", ""),
                display_name=event.end_user.get("display_name", ""),
                organization_id=event.end_user.get("organization_id", ""),
            )
        )
    if event.error is not None:
        message.error.CopyFrom(
            events_pb2.ConnectionEvent.Error(
                type=event.error.type, description=event.error.description
            )
        )
    return message
