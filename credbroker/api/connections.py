"""ConnectionService servicer: proto in, domain use case, proto out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from google.protobuf import empty_pb2

from credbroker.admission import current_principal
from credbroker.api.convert import (
    AUTH_MODE_TO_PROTO,
    VERIFICATION_STATE_FROM_PROTO,
    connection_to_proto,
    credentials_from_proto,
    fill_map,
    set_credentials,
    struct_to_dict,
)
from credbroker.api.events import event_to_proto
from credbroker.api.paging import decode_page_token, encode_page_token
from credbroker.domain.connections import UPDATABLE_PATHS, ConnectionDraft, ConnectionService
from credbroker.domain.errors import InvalidArgumentError
from credbroker.domain.events import ConnectionEventService
from credbroker.domain.validation import CONNECTION_ID_PATTERN
from credbroker.v1 import connection_service_pb2 as pb
from credbroker.v1 import connection_service_pb2_grpc as pb_grpc
from credbroker.v1 import resources_pb2

Context = Any  # grpc.aio.ServicerContext; admission (api.handlers) handles every failure path


def _draft(connection: resources_pb2.Connection) -> ConnectionDraft:
    return ConnectionDraft(
        integration_id=connection.integration_id,
        connection_id=connection.connection_id,
        credentials=credentials_from_proto(connection.credentials)
        if connection.HasField("credentials")
        else None,
        metadata=_metadata(connection) if connection.HasField("metadata") else None,
        connection_config=dict(connection.connection_config),
        tags=dict(connection.tags),
    )


def _metadata(connection: resources_pb2.Connection) -> dict[str, Any]:
    try:
        return struct_to_dict(connection.metadata)
    except ValueError:  # NaN and infinities have no JSON form
        raise InvalidArgumentError.single("connection.metadata", "numbers must be finite") from None


def _update_paths(request: pb.UpdateConnectionRequest) -> frozenset[str]:
    """The mask's paths; ``*`` means all updatable fields, an empty mask the fields set."""
    paths = frozenset(request.update_mask.paths)
    if "*" in paths:
        return UPDATABLE_PATHS
    if paths:
        return paths
    connection = request.connection
    populated = {
        "credentials": connection.HasField("credentials"),
        "metadata": connection.HasField("metadata"),
        "connection_config": bool(connection.connection_config),
        "tags": bool(connection.tags),
    }
    return frozenset(path for path, present in populated.items() if present)


class ConnectionServicer(pb_grpc.ConnectionServiceServicer):
    def __init__(self, service: ConnectionService, events: ConnectionEventService) -> None:
        self._service = service
        self._events = events

    async def CreateConnection(
        self, request: pb.CreateConnectionRequest, context: Context
    ) -> resources_pb2.Connection:
        connection = await self._service.create(
            current_principal(),
            _draft(request.connection),
            skip_verification=request.skip_verification,
        )
        return connection_to_proto(connection)

    async def GetConnection(
        self, request: pb.GetConnectionRequest, context: Context
    ) -> resources_pb2.Connection:
        connection = await self._service.get(
            current_principal(), request.integration_id, request.connection_id
        )
        return connection_to_proto(connection)

    async def ListConnections(
        self, request: pb.ListConnectionsRequest, context: Context
    ) -> pb.ListConnectionsResponse:
        tags = dict(request.tags)
        state = None
        if request.verification_state != resources_pb2.Verification.STATE_UNSPECIFIED:
            state = VERIFICATION_STATE_FROM_PROTO.get(request.verification_state)
            if state is None:
                raise InvalidArgumentError.single("verification_state", "is not a known state")
        filters = {
            "method": "ListConnections",
            "integration_id": request.integration_id,
            "tags": tags,
            "verification_state": int(request.verification_state),
        }
        cursor = decode_page_token(
            request.page_token, filters, size=2, pattern=CONNECTION_ID_PATTERN
        )
        page = await self._service.list(
            current_principal(),
            integration_id=request.integration_id,
            tags=tags,
            page_size=request.page_size,
            after=(cursor[0], cursor[1]) if cursor else None,
            verification_state=state,
        )
        return pb.ListConnectionsResponse(
            connections=[connection_to_proto(c) for c in page.items],
            next_page_token=encode_page_token(page.next_cursor, filters),
        )

    async def UpdateConnection(
        self, request: pb.UpdateConnectionRequest, context: Context
    ) -> resources_pb2.Connection:
        connection = await self._service.update(
            current_principal(),
            _draft(request.connection),
            _update_paths(request),
            etag=request.connection.etag,
            allow_missing=request.allow_missing,
            skip_verification=request.skip_verification,
        )
        return connection_to_proto(connection)

    async def DeleteConnection(
        self, request: pb.DeleteConnectionRequest, context: Context
    ) -> empty_pb2.Empty:
        await self._service.delete(
            current_principal(), request.integration_id, request.connection_id
        )
        return empty_pb2.Empty()

    async def AccessCredentials(
        self, request: pb.AccessCredentialsRequest, context: Context
    ) -> pb.AccessCredentialsResponse:
        revealed = await self._service.access(
            current_principal(), request.integration_id, request.connection_id
        )
        # Filled in place: building nested messages first and copying them in, or passing the
        # maps to the constructor, costs twice as much, on every reveal.
        response = pb.AccessCredentialsResponse(
            auth_mode=AUTH_MODE_TO_PROTO[revealed.connection.auth_mode],
            base_url=revealed.base_url,
        )
        fill_map(response.connection_config, revealed.connection_config)
        fill_map(response.headers, revealed.headers)
        fill_map(response.query_params, revealed.query_params)
        set_credentials(response.credentials, revealed.credentials)
        return response

    async def VerifyConnection(
        self, request: pb.VerifyConnectionRequest, context: Context
    ) -> resources_pb2.Connection:
        connection = await self._service.verify(
            current_principal(), request.integration_id, request.connection_id
        )
        return connection_to_proto(connection)

    async def WatchConnections(
        self, request: pb.WatchConnectionsRequest, context: Context
    ) -> AsyncIterator[pb.WatchConnectionsResponse]:
        items = self._events.watch(
            current_principal(),
            start_after=request.start_after,
            integration_id=request.integration_id,
            event_types=list(request.event_types),
        )
        async for item in items:
            response = pb.WatchConnectionsResponse(resume_token=str(item.position))
            if item.event is not None:
                response.event.CopyFrom(event_to_proto(item.event))
            yield response
