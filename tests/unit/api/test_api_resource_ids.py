"""The audit ids of a request, read by the extractor resolved per message class at registration,
are the ones the generic extractor finds, for every request message of every service."""

from __future__ import annotations

from typing import Any

import pytest

from credbroker.admission.audit import INVALID_ID
from credbroker.api.audit import resource_ids, resource_ids_of
from credbroker.v1 import (
    audit_service_pb2,
    connect_session_service_pb2,
    connection_service_pb2,
    integration_service_pb2,
    webhook_service_pb2,
)

MODULES = (
    audit_service_pb2,
    connect_session_service_pb2,
    connection_service_pb2,
    integration_service_pb2,
    webhook_service_pb2,
)
REQUESTS = [
    getattr(module, name)
    for module in MODULES
    for name in module.DESCRIPTOR.message_types_by_name
    if name.endswith("Request")
]


def _filled(cls: Any, integration_id: str, connection_id: str) -> Any:
    message = cls()
    for target in (
        message,
        *(
            getattr(message, n)
            for n in ("connection", "integration")
            if n in cls.DESCRIPTOR.fields_by_name
        ),
    ):
        fields = target.DESCRIPTOR.fields_by_name
        if "integration_id" in fields:
            target.integration_id = integration_id
        if "connection_id" in fields:
            target.connection_id = connection_id
    return message


@pytest.mark.parametrize("cls", REQUESTS, ids=lambda c: c.__name__)
@pytest.mark.parametrize(
    ("integration_id", "connection_id"),
    [("openai", "c1"), ("", ""), ("bad id\n", "also/bad"), ("x" * 500, "ok")],
)
def test_resolved_extractor_agrees_with_the_generic_one(
    cls: Any, integration_id: str, connection_id: str
) -> None:
    message = _filled(cls, integration_id, connection_id)
    assert resource_ids_of(cls)(message) == resource_ids(message)
    assert resource_ids_of(cls)(cls()) == resource_ids(cls())


def test_access_credentials_ids_are_read_directly_and_invalid_ones_not_copied() -> None:
    cls = connection_service_pb2.AccessCredentialsRequest
    extract = resource_ids_of(cls)
    assert extract is not resource_ids
    assert extract(cls(integration_id="openai", connection_id="c1")) == ("openai", "c1")
    assert extract(cls(integration_id="a\nb", connection_id="c1")) == (INVALID_ID, "c1")


def test_unknown_request_types_use_the_generic_extractor() -> None:
    assert resource_ids_of(None) is resource_ids
    assert resource_ids_of(bytes) is resource_ids
