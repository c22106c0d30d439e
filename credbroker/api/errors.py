"""The one table that maps domain errors to gRPC status codes, and rich-status abort helpers.

Every failed RPC ends through :func:`abort` with a ``google.rpc.Status`` in the trailing metadata
(``grpc-status-details-bin``) carrying an ``ErrorInfo`` (reason, domain ``credbroker.dev``) and,
for validation errors, a ``BadRequest`` listing each field violation.
"""

from __future__ import annotations

from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from credbroker.domain.errors import (
    AlreadyExistsError,
    ConflictError,
    DataIntegrityError,
    DomainError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    UnavailableError,
)

ERROR_DOMAIN = "credbroker.dev"
UNAUTHENTICATED_MESSAGE = "invalid credentials"

STATUS_BY_ERROR: dict[type[DomainError], grpc.StatusCode] = {
    InvalidArgumentError: grpc.StatusCode.INVALID_ARGUMENT,
    NotFoundError: grpc.StatusCode.NOT_FOUND,
    PermissionDeniedError: grpc.StatusCode.PERMISSION_DENIED,
    AlreadyExistsError: grpc.StatusCode.ALREADY_EXISTS,
    FailedPreconditionError: grpc.StatusCode.FAILED_PRECONDITION,
    ConflictError: grpc.StatusCode.ABORTED,
    UnavailableError: grpc.StatusCode.UNAVAILABLE,
    DataIntegrityError: grpc.StatusCode.DATA_LOSS,
}

# Public messages for codes whose domain message may carry operator detail.
_GENERIC_MESSAGES = {
    grpc.StatusCode.UNAVAILABLE: "service temporarily unavailable; retry with backoff",
    grpc.StatusCode.DATA_LOSS: "stored data failed an integrity check",
}


def status_code_for(error: DomainError) -> grpc.StatusCode:
    """Looks the error up by walking its class hierarchy, so subclasses inherit a mapping."""
    for cls in type(error).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]
    return grpc.StatusCode.INTERNAL


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def build_status(
    code: grpc.StatusCode,
    message: str,
    reason: str,
    *,
    metadata: dict[str, str] | None = None,
    violations: list[tuple[str, str]] | None = None,
) -> status_pb2.Status:
    status = status_pb2.Status(code=code.value[0], message=message)
    status.details.append(
        _pack(
            error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata=metadata or {})
        )
    )
    if violations:
        status.details.append(
            _pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                        for f, d in violations
                    ]
                )
            )
        )
    return status


async def abort(context: grpc.aio.ServicerContext[Any, Any], status: status_pb2.Status) -> NoReturn:
    rich = rpc_status.to_status(status)
    await context.abort(rich.code, rich.details, trailing_metadata=rich.trailing_metadata)
    raise AssertionError("context.abort returned")  # pragma: no cover


def status_for_domain_error(error: DomainError) -> status_pb2.Status:
    code = status_code_for(error)
    message = _GENERIC_MESSAGES.get(code, error.message)
    violations = None
    if isinstance(error, InvalidArgumentError):
        violations = [(v.field, v.description) for v in error.violations]
    return build_status(code, message, error.reason, metadata=error.metadata, violations=violations)


def unauthenticated_status() -> status_pb2.Status:
    return build_status(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE, "UNAUTHENTICATED")


def permission_denied_status(scope: str) -> status_pb2.Status:
    return build_status(
        grpc.StatusCode.PERMISSION_DENIED,
        f"missing scope {scope}",
        "MISSING_SCOPE",
        metadata={"scope": scope},
    )


def internal_status(request_id: str) -> status_pb2.Status:
    return build_status(
        grpc.StatusCode.INTERNAL,
        f"internal error (ref {request_id})",
        "INTERNAL",
        metadata={"request_id": request_id},
    )


def unimplemented_status() -> status_pb2.Status:
    return build_status(grpc.StatusCode.UNIMPLEMENTED, "method not implemented", "UNIMPLEMENTED")


def deadline_status() -> status_pb2.Status:
    return build_status(
        grpc.StatusCode.DEADLINE_EXCEEDED, "request took too long", "DEADLINE_EXCEEDED"
    )
