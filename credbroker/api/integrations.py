"""IntegrationService servicer: proto in, domain use case, proto out."""

from __future__ import annotations

from typing import Any

from google.protobuf import empty_pb2

from credbroker.api.convert import integration_to_proto
from credbroker.api.interceptors import current_principal
from credbroker.api.paging import decode_page_token, encode_page_token
from credbroker.domain.integrations import IntegrationDraft, IntegrationService
from credbroker.v1 import integration_service_pb2 as pb
from credbroker.v1 import integration_service_pb2_grpc as pb_grpc
from credbroker.v1 import resources_pb2

Context = Any  # grpc.aio.ServicerContext; the interceptor handles every failure path


class IntegrationServicer(pb_grpc.IntegrationServiceServicer):
    def __init__(self, service: IntegrationService) -> None:
        self._service = service

    async def CreateIntegration(
        self, request: pb.CreateIntegrationRequest, context: Context
    ) -> resources_pb2.Integration:
        draft = IntegrationDraft(
            integration_id=request.integration.integration_id,
            provider=request.integration.provider,
            display_name=request.integration.display_name,
        )
        return integration_to_proto(await self._service.create(current_principal(), draft))

    async def GetIntegration(
        self, request: pb.GetIntegrationRequest, context: Context
    ) -> resources_pb2.Integration:
        integration = await self._service.get(current_principal(), request.integration_id)
        return integration_to_proto(integration)

    async def ListIntegrations(
        self, request: pb.ListIntegrationsRequest, context: Context
    ) -> pb.ListIntegrationsResponse:
        filters = {"method": "ListIntegrations"}
        cursor = decode_page_token(request.page_token, filters, size=1)
        page = await self._service.list(
            current_principal(), page_size=request.page_size, after=cursor[0] if cursor else None
        )
        return pb.ListIntegrationsResponse(
            integrations=[integration_to_proto(i) for i in page.items],
            next_page_token=encode_page_token(page.next_cursor, filters),
        )

    async def UpdateIntegration(
        self, request: pb.UpdateIntegrationRequest, context: Context
    ) -> resources_pb2.Integration:
        paths = frozenset(request.update_mask.paths)
        if "*" in paths:
            paths = frozenset({"display_name", "provider"})
        elif not paths:
            populated = {
                "display_name": request.integration.display_name,
                "provider": request.integration.provider,
            }
            paths = frozenset(name for name, value in populated.items() if value)
        integration = await self._service.update(
            current_principal(),
            request.integration.integration_id,
            paths,
            request.integration.display_name,
            request.integration.provider,
        )
        return integration_to_proto(integration)

    async def DeleteIntegration(
        self, request: pb.DeleteIntegrationRequest, context: Context
    ) -> empty_pb2.Empty:
        await self._service.delete(current_principal(), request.integration_id, force=request.force)
        return empty_pb2.Empty()
