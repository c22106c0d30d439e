"""ConnectSessionService servicer: proto in, domain use case, proto out."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf import empty_pb2

from credbroker.admission import current_principal
from credbroker.api.convert import end_user_to_proto, timestamp
from credbroker.api.paging import decode_page_token, encode_page_token
from credbroker.domain.connect_sessions import ConnectSessionService, SessionDraft
from credbroker.domain.errors import InvalidArgumentError
from credbroker.domain.models import ConnectSession, EndUser, Organization, ReconnectTarget
from credbroker.v1 import connect_session_service_pb2 as pb
from credbroker.v1 import connect_session_service_pb2_grpc as pb_grpc

Context = Any  # grpc.aio.ServicerContext; admission (api.handlers) handles every failure path
State = pb.ConnectSession.State


def session_state(session: ConnectSession, max_attempts: int) -> State.ValueType:
    if session.consume_time is not None:
        return State.STATE_CONSUMED
    if session.is_expired(datetime.now(UTC)):
        return State.STATE_EXPIRED
    if session.failed_attempts >= max_attempts:
        return State.STATE_LOCKED
    return State.STATE_ACTIVE


def _draft(request: pb.CreateConnectSessionRequest) -> SessionDraft:
    organization = None
    if request.organization_id or request.organization_display_name:
        organization = Organization(request.organization_id, request.organization_display_name)
    ttl = None
    if request.HasField("ttl"):
        if request.ttl.seconds < 0 or request.ttl.nanos < 0:
            raise InvalidArgumentError.single("ttl", "must be between 1 minute and 24 hours")
        ttl = timedelta(seconds=request.ttl.seconds, microseconds=request.ttl.nanos // 1000)
    return SessionDraft(
        end_user=EndUser(request.end_user.id, request.end_user.email, request.end_user.display_name)
        if request.HasField("end_user")
        else None,
        organization=organization,
        tags=dict(request.tags),
        allowed_integrations=list(request.allowed_integrations),
        allowed_origins=list(request.allowed_origins),
        integrations_config_defaults={
            key: dict(value.connection_config)
            for key, value in request.integrations_config_defaults.items()
        },
        ttl=ttl,
        reconnect=ReconnectTarget(request.reconnect.integration_id, request.reconnect.connection_id)
        if request.HasField("reconnect")
        else None,
    )


class ConnectSessionServicer(pb_grpc.ConnectSessionServiceServicer):
    def __init__(self, service: ConnectSessionService, *, max_attempts: int) -> None:
        self._service = service
        self._max_attempts = max_attempts

    def _to_proto(self, session: ConnectSession) -> pb.ConnectSession:
        message = pb.ConnectSession(
            session_id=str(session.id),
            tags=dict(session.tags),
            allowed_integrations=list(session.allowed_integrations),
            allowed_origins=list(session.allowed_origins),
            integrations_config_defaults={
                key: pb.ConnectionConfigDefaults(connection_config=dict(config))
                for key, config in session.integrations_config_defaults.items()
            },
            create_time=timestamp(session.create_time),
            expire_time=timestamp(session.expire_time),
            state=session_state(session, self._max_attempts),
            failed_attempts=session.failed_attempts,
        )
        if session.end_user is not None:
            message.end_user.CopyFrom(end_user_to_proto(session.end_user))
        if session.organization is not None:
            message.organization_id = session.organization.id
            message.organization_display_name = session.organization.display_name
        if session.reconnect is not None:
            message.reconnect.integration_id = session.reconnect.integration_id
            message.reconnect.connection_id = session.reconnect.connection_id
        if session.consume_time is not None:
            message.consume_time.CopyFrom(timestamp(session.consume_time))
            message.integration_id = session.consumed_integration_id
        if session.consume_time is not None or session.reconnect is not None:
            message.connection_id = session.connection_id
        return message

    async def CreateConnectSession(
        self, request: pb.CreateConnectSessionRequest, context: Context
    ) -> pb.ConnectSession:
        session, token = await self._service.create(current_principal(), _draft(request))
        message = self._to_proto(session)
        message.token = token
        message.connect_url = self._service.connect_url(token)
        return message

    async def GetConnectSession(
        self, request: pb.GetConnectSessionRequest, context: Context
    ) -> pb.ConnectSession:
        return self._to_proto(await self._service.get(current_principal(), request.session_id))

    async def ListConnectSessions(
        self, request: pb.ListConnectSessionsRequest, context: Context
    ) -> pb.ListConnectSessionsResponse:
        filters = {"method": "ListConnectSessions"}
        cursor = decode_page_token(request.page_token, filters, size=2)
        after = None
        if cursor is not None:
            try:
                after = (datetime.fromisoformat(cursor[0]), uuid.UUID(cursor[1]))
                if after[0].tzinfo is None:
                    raise ValueError("naive time")
            except ValueError:
                raise InvalidArgumentError.single(
                    "page_token", "is not a valid page token for this request"
                ) from None
        page = await self._service.list(
            current_principal(), page_size=request.page_size, after=after
        )
        return pb.ListConnectSessionsResponse(
            connect_sessions=[self._to_proto(s) for s in page.items],
            next_page_token=encode_page_token(page.next_cursor, filters),
        )

    async def DeleteConnectSession(
        self, request: pb.DeleteConnectSessionRequest, context: Context
    ) -> empty_pb2.Empty:
        await self._service.delete(current_principal(), request.session_id)
        return empty_pb2.Empty()
