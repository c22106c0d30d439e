"""Malformed client input reaching a real server must come back as INVALID_ARGUMENT, never as
INTERNAL (an unexpected exception): page tokens, etags and metadata numbers."""

from __future__ import annotations

import base64
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2, struct_pb2

from credbroker.v1 import connection_service_pb2 as cpb
from credbroker.v1 import resources_pb2 as rpb


async def _code(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    code: grpc.StatusCode = caught.value.code()
    return code


async def test_deeply_nested_page_token_is_invalid_argument(tenant: Any) -> None:
    token = base64.urlsafe_b64encode(b"[" * 1536).decode().rstrip("=")
    call = tenant.connections.ListConnections(
        cpb.ListConnectionsRequest(page_token=token), metadata=tenant.metadata, timeout=10
    )
    assert await _code(call) == grpc.StatusCode.INVALID_ARGUMENT


async def test_garbage_page_token_is_invalid_argument(tenant: Any) -> None:
    call = tenant.connections.ListConnections(
        cpb.ListConnectionsRequest(page_token="not-a-token"), metadata=tenant.metadata, timeout=10
    )
    assert await _code(call) == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("etag", ["abc", "²", "１"])
async def test_malformed_etag_is_invalid_argument(tenant: Any, etag: str) -> None:
    call = tenant.connections.UpdateConnection(
        cpb.UpdateConnectionRequest(
            connection=rpb.Connection(
                integration_id="some-integration", connection_id="some-connection", etag=etag
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["tags"]),
        ),
        metadata=tenant.metadata,
        timeout=10,
    )
    assert await _code(call) == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("number", [float("nan"), float("inf"), float("-inf")])
async def test_non_finite_metadata_number_is_invalid_argument(tenant: Any, number: float) -> None:
    metadata = struct_pb2.Struct()
    metadata.update({"score": number})
    call = tenant.connections.CreateConnection(
        cpb.CreateConnectionRequest(
            connection=rpb.Connection(
                integration_id="some-integration",
                connection_id="some-connection",
                credentials=rpb.Credentials(api_key=rpb.ApiKeyCredentials(api_key="sk-1")),
                metadata=metadata,
            )
        ),
        metadata=tenant.metadata,
        timeout=10,
    )
    assert await _code(call) == grpc.StatusCode.INVALID_ARGUMENT
