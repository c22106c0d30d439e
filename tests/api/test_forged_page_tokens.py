"""Issue 9, finding 5: a forged page token (well-formed, with the right filter digest, but with
parts no listing produces) is INVALID_ARGUMENT, never INTERNAL, and its input is never logged."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from typing import Any

import grpc
import pytest

from credbroker.v1 import audit_service_pb2 as apb
from credbroker.v1 import audit_service_pb2_grpc as apb_grpc
from credbroker.v1 import connection_service_pb2 as cpb
from credbroker.v1 import integration_service_pb2 as ipb


def forge(filters: dict[str, Any], parts: list[Any]) -> str:
    canonical = json.dumps(filters, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:16]
    raw = json.dumps({"v": 1, "k": parts, "f": digest}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


CONNECTIONS = {
    "method": "ListConnections",
    "integration_id": "",
    "tags": {},
    "verification_state": 0,
}
INTEGRATIONS = {"method": "ListIntegrations"}
AUDIT = {"method": "ListAuditEvents", "integration_id": "", "connection_id": ""}
MARK = "FORGEDMARK"

CASES = [
    ("connections", [MARK + "\x00", "c"]),
    ("connections", ["openai", MARK + "\ud800"]),
    ("connections", [MARK + " with spaces", "c"]),
    ("integrations", [MARK + "\x00"]),
    ("integrations", [MARK + "\udfff"]),
    ("audit", ["²"]),
    ("audit", ["9" * 19]),
    ("audit", ["99999999999999999999999" + MARK]),
    ("audit", ["-1"]),
    ("audit", ["١٢٣"]),  # Arabic-Indic digits: isdigit() is true
]


@pytest.mark.parametrize(("listing", "parts"), CASES)
async def test_forged_page_token_is_invalid_argument(
    channel: grpc.aio.Channel,
    tenant: Any,
    listing: str,
    parts: list[Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    if listing == "connections":
        call = tenant.connections.ListConnections(
            cpb.ListConnectionsRequest(page_token=forge(CONNECTIONS, parts)),
            metadata=tenant.metadata,
        )
    elif listing == "integrations":
        call = tenant.integrations.ListIntegrations(
            ipb.ListIntegrationsRequest(page_token=forge(INTEGRATIONS, parts)),
            metadata=tenant.metadata,
        )
    else:
        call = apb_grpc.AuditServiceStub(channel).ListAuditEvents(
            apb.ListAuditEventsRequest(page_token=forge(AUDIT, parts)), metadata=tenant.metadata
        )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    logged = "\n".join(f"{r.getMessage()} {r.__dict__!r}" for r in caplog.records)
    assert MARK not in logged
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
