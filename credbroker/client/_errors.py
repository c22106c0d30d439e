"""Exceptions raised by the SDK, one class per gRPC status code the server uses.

The server ends every failed call with a ``google.rpc.Status`` in the trailing metadata
(``grpc-status-details-bin``): an ``ErrorInfo`` (``reason``, ``domain``, ``metadata``) and, for
validation errors, a ``BadRequest`` listing the violated fields. The exceptions carry those
details as plain Python values.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import NamedTuple

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

_DETAILS_KEY = "grpc-status-details-bin"

__all__ = [
    "Aborted",
    "AlreadyExists",
    "CredBrokerError",
    "DataLoss",
    "DeadlineExceeded",
    "FailedPrecondition",
    "FieldViolation",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
]


class FieldViolation(NamedTuple):
    """One invalid request field: its path (e.g. ``connection.tags``) and what is wrong."""

    field: str
    description: str


class CredBrokerError(Exception):
    """A call failed. Subclasses name the gRPC status code; codes without a subclass raise this.

    Attributes:
        code: the gRPC status code.
        message: the server's message (never contains secret values).
        reason: the ``ErrorInfo`` reason, e.g. ``CONNECTION_NOT_FOUND``; ``""`` when the error
            carries no details (e.g. a deadline that expired on the client side).
        domain: the ``ErrorInfo`` domain (``credbroker.dev``) or ``""``.
        metadata: the ``ErrorInfo`` metadata, e.g. ``{"scope": "credentials:read"}``.
        field_violations: the ``BadRequest`` field violations, in the server's order.
    """

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        reason: str = "",
        domain: str = "",
        metadata: Mapping[str, str] | None = None,
        field_violations: Iterable[tuple[str, str]] = (),
    ) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.reason = reason
        self.domain = domain
        self.metadata: dict[str, str] = dict(metadata or {})
        self.field_violations: list[FieldViolation] = [
            FieldViolation(field, description) for field, description in field_violations
        ]

    def __str__(self) -> str:
        text = f"{self.code.name}: {self.message}"
        if self.reason:
            text += f" (reason {self.reason})"
        if self.field_violations:
            text += "; " + "; ".join(f"{v.field}: {v.description}" for v in self.field_violations)
        return text

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code.name}, message={self.message!r}, "
            f"reason={self.reason!r}, metadata={self.metadata!r}, "
            f"field_violations={self.field_violations!r})"
        )


class InvalidArgument(CredBrokerError):
    """INVALID_ARGUMENT: the request is malformed; see ``field_violations``."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(CredBrokerError):
    """NOT_FOUND: the resource does not exist (or belongs to another environment)."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(CredBrokerError):
    """ALREADY_EXISTS: the id is taken."""

    code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(CredBrokerError):
    """PERMISSION_DENIED: the secret key lacks a scope (``metadata["scope"]`` names it)."""

    code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(CredBrokerError):
    """UNAUTHENTICATED: the secret key is missing, malformed, unknown, expired or revoked."""

    code = grpc.StatusCode.UNAUTHENTICATED


class FailedPrecondition(CredBrokerError):
    """FAILED_PRECONDITION: e.g. the provider rejected the credentials (``CREDENTIALS_REJECTED``)
    or an integration still has connections."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(CredBrokerError):
    """ABORTED: a concurrent change won (``ETAG_MISMATCH``); read again and retry."""

    code = grpc.StatusCode.ABORTED


class Unavailable(CredBrokerError):
    """UNAVAILABLE: the server (or the provider checking credentials) could not answer now.
    Already retried by the client; raised once the retries or the deadline are used up."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(CredBrokerError):
    """DEADLINE_EXCEEDED: the call did not finish within its timeout."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class DataLoss(CredBrokerError):
    """DATA_LOSS: stored ciphertext failed its integrity check."""

    code = grpc.StatusCode.DATA_LOSS


class Internal(CredBrokerError):
    """INTERNAL: an unexpected server failure; ``metadata["request_id"]`` finds it in the logs."""

    code = grpc.StatusCode.INTERNAL


class ResourceExhausted(CredBrokerError):
    """RESOURCE_EXHAUSTED: too many concurrent calls, or a message too large."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


_BY_CODE: dict[grpc.StatusCode, type[CredBrokerError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        Unauthenticated,
        FailedPrecondition,
        Aborted,
        Unavailable,
        DeadlineExceeded,
        DataLoss,
        Internal,
        ResourceExhausted,
    )
}


def error_for(
    code: grpc.StatusCode, message: str, status: status_pb2.Status | None
) -> CredBrokerError:
    """The exception for ``code``, with the details unpacked from ``status`` (if any)."""
    reason = domain = ""
    metadata: dict[str, str] = {}
    violations: list[tuple[str, str]] = []
    if status is not None:
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            bad_request = error_details_pb2.BadRequest()
            if detail.Unpack(info):
                reason, domain, metadata = info.reason, info.domain, dict(info.metadata)
            elif detail.Unpack(bad_request):
                violations += [(v.field, v.description) for v in bad_request.field_violations]
    cls = _BY_CODE.get(code, CredBrokerError)
    return cls(
        message,
        code=code,
        reason=reason,
        domain=domain,
        metadata=metadata,
        field_violations=violations,
    )


def from_sync_error(error: grpc.RpcError) -> CredBrokerError:
    """Maps an error of the synchronous stack (a ``grpc.Call`` as well as an ``RpcError``)."""
    if not isinstance(error, grpc.Call):  # not raised by unary calls; kept for safety
        return CredBrokerError(str(error), code=grpc.StatusCode.UNKNOWN)
    status: status_pb2.Status | None
    try:
        status = rpc_status.from_call(error)
    except (ValueError, DecodeError):  # details inconsistent with the status: ignore them
        status = None
    return error_for(error.code(), error.details() or "", status)


def from_aio_error(error: grpc.aio.AioRpcError) -> CredBrokerError:
    """Maps an error of ``grpc.aio``. ``rpc_status.aio.from_call`` awaits the error's (sync)
    ``trailing_metadata()`` and fails, so the status is read from the trailer directly."""
    code = error.code()
    message = error.details() or ""
    status: status_pb2.Status | None = None
    for key, value in error.trailing_metadata() or ():
        if key == _DETAILS_KEY and isinstance(value, bytes):
            try:
                parsed = status_pb2.Status.FromString(value)
            except DecodeError:
                break
            if parsed.code == code.value[0]:
                status = parsed
            break
    return error_for(code, message, status)
