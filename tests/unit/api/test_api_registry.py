"""The gRPC registry serves every method through one generic handler and registers none with
grpc: grpc.aio's server re-waits on one pending call request per registered method for every
call it accepts, so fifty registered methods cost every call (issue 14)."""

from __future__ import annotations

from typing import Any

import grpc

from credbroker.admission import Admission, Auditor
from credbroker.api.connections import ConnectionServicer
from credbroker.api.handlers import GrpcRegistry
from credbroker.api.scopes import REQUIRED_SCOPES
from credbroker.v1 import connection_service_pb2, connection_service_pb2_grpc


class _ServerSurface:
    """What GrpcRegistry may call on a grpc.aio.Server, recorded."""

    def __init__(self) -> None:
        self.generic: list[Any] = []
        self.registered: dict[str, Any] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self.generic.extend(handlers)

    def add_registered_method_handlers(self, service: str, handlers: Any) -> None:
        self.registered[service] = handlers


class _Details(grpc.HandlerCallDetails):
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


def test_one_generic_handler_finds_every_method_and_none_is_registered() -> None:
    server = _ServerSurface()
    admission = Admission({}, Auditor(None), max_seconds=1.0)  # type: ignore[arg-type]
    registry = GrpcRegistry(server, admission, REQUIRED_SCOPES)  # type: ignore[arg-type]
    registry.add(
        connection_service_pb2_grpc.add_ConnectionServiceServicer_to_server,
        ConnectionServicer(None, None),  # type: ignore[arg-type]
    )
    assert server.generic == [registry]
    assert server.registered == {}
    service = connection_service_pb2.DESCRIPTOR.services_by_name["ConnectionService"]
    names = [method.name for method in service.methods]
    assert "AccessCredentials" in names
    for name in names:
        handler = registry.service(_Details(f"/credbroker.v1.ConnectionService/{name}"))
        assert isinstance(handler, grpc.RpcMethodHandler)
        assert handler.request_streaming  # unary requests served as streams (admission)
    assert registry.service(_Details("/credbroker.v1.ConnectionService/Nope")) is None
    assert registry.service(_Details("/credbroker.v1.Other/AccessCredentials")) is None
