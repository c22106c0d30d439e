"""IntegrationService servicer: proto in, domain use case, proto out."""

from __future__ import annotations

from typing import Any

from google.protobuf import empty_pb2

from credbroker.admission import current_principal
from credbroker.api.convert import AUTH_MODE_FROM_PROTO, integration_to_proto, provider_to_proto
from credbroker.api.paging import decode_page_token, encode_page_token
from credbroker.domain.errors import InvalidArgumentError
from credbroker.domain.integrations import IntegrationDraft, IntegrationService
from credbroker.domain.providers import PROVIDER_NAME_PATTERN
from credbroker.domain.validation import INTEGRATION_ID_PATTERN
from credbroker.v1 import integration_service_pb2 as pb
from credbroker.v1 import integration_service_pb2_grpc as pb_grpc
from credbroker.v1 import resources_pb2

Context = Any  # grpc.aio.ServicerContext; admission (api.handlers) handles every failure path


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
            integration_config=dict(request.integration.integration_config),
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
        cursor = decode_page_token(
            request.page_token, filters, size=1, pattern=INTEGRATION_ID_PATTERN
        )
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
            paths = frozenset({"display_name", "provider", "integration_config"})
        elif not paths:
            populated = {
                "display_name": request.integration.display_name,
                "provider": request.integration.provider,
                "integration_config": bool(request.integration.integration_config),
            }
            paths = frozenset(name for name, value in populated.items() if value)
        integration = await self._service.update(
            current_principal(),
            request.integration.integration_id,
            paths,
            request.integration.display_name,
            request.integration.provider,
            dict(request.integration.integration_config),
        )
        return integration_to_proto(integration)

    async def ListProviders(
        self, request: pb.ListProvidersRequest, context: Context
    ) -> pb.ListProvidersResponse:
        auth_mode = None
        if request.auth_mode != resources_pb2.AUTH_MODE_UNSPECIFIED:
            auth_mode = AUTH_MODE_FROM_PROTO.get(request.auth_mode)
            if auth_mode is None:
                raise InvalidArgumentError.single("auth_mode", "is not a known auth mode")
        filters = {"method": "ListProviders", "auth_mode": int(request.auth_mode)}
        cursor = decode_page_token(
            request.page_token, filters, size=1, pattern=PROVIDER_NAME_PATTERN
        )
        page = self._service.list_providers(
            auth_mode, page_size=request.page_size, after=cursor[0] if cursor else None
        )
        return pb.ListProvidersResponse(
            providers=[provider_to_proto(p) for p in page.items],
            next_page_token=encode_page_token(page.next_cursor, filters),
        )

    async def GetProvider(
        self, request: pb.GetProviderRequest, context: Context
    ) -> resources_pb2.Provider:
        return provider_to_proto(self._service.provider(request.name))

    async def DeleteIntegration(
        self, request: pb.DeleteIntegrationRequest, context: Context
    ) -> empty_pb2.Empty:
        await self._service.delete(current_principal(), request.integration_id, force=request.force)
        return empty_pb2.Empty()
