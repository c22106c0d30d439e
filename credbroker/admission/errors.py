"""The one error table: every failure of a call, whatever the transport, becomes a
:class:`Failure` with a transport-neutral :class:`ErrorCode`; each code carries its gRPC status
number and its HTTP status, and the reference (Nango-shaped) error code for HTTP bodies is
derived from the failure's reason, falling back to the code's own.

    domain error ──(DOMAIN_ERROR_CODES, by MRO)──> ErrorCode ──> gRPC status  (api/errors.py)
                                                           └──> HTTP status  (rest/errors.py)
    reason ──(REFERENCE_CODES)──> reference code, else ErrorCode.reference

Nothing here imports a transport or a driver. Messages are public: they never carry exception
text of unexpected errors, secrets or submitted values.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

import structlog

from credbroker.admission.limits import FirstMessageTimeout
from credbroker.domain.errors import (
    AlreadyExistsError,
    ConflictError,
    DataIntegrityError,
    DomainError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
)

log = structlog.get_logger("credbroker.admission")


class ErrorCode(enum.Enum):
    """Transport-neutral outcome codes: (name, gRPC status number, HTTP status, default
    reference code). The names are the gRPC code names, used in audit records and metrics."""

    INVALID_ARGUMENT = ("INVALID_ARGUMENT", 3, 400, "invalid_body")
    DEADLINE_EXCEEDED = ("DEADLINE_EXCEEDED", 4, 504, "request_timeout")
    NOT_FOUND = ("NOT_FOUND", 5, 404, "not_found")
    ALREADY_EXISTS = ("ALREADY_EXISTS", 6, 409, "already_exists")
    PERMISSION_DENIED = ("PERMISSION_DENIED", 7, 403, "forbidden")
    RESOURCE_EXHAUSTED = ("RESOURCE_EXHAUSTED", 8, 429, "too_many_request")
    FAILED_PRECONDITION = ("FAILED_PRECONDITION", 9, 400, "failed_precondition")
    ABORTED = ("ABORTED", 10, 409, "conflict")
    UNIMPLEMENTED = ("UNIMPLEMENTED", 12, 501, "not_implemented")
    INTERNAL = ("INTERNAL", 13, 500, "server_error")
    UNAVAILABLE = ("UNAVAILABLE", 14, 503, "service_unavailable")
    DATA_LOSS = ("DATA_LOSS", 15, 500, "server_error")
    UNAUTHENTICATED = ("UNAUTHENTICATED", 16, 401, "unknown_account")

    def __init__(self, label: str, grpc_code: int, http_status: int, reference: str) -> None:
        self.label = label
        self.grpc_code = grpc_code
        self.http_status = http_status
        self.reference = reference


DOMAIN_ERROR_CODES: dict[type[DomainError], ErrorCode] = {
    InvalidArgumentError: ErrorCode.INVALID_ARGUMENT,
    UnauthenticatedError: ErrorCode.UNAUTHENTICATED,
    NotFoundError: ErrorCode.NOT_FOUND,
    PermissionDeniedError: ErrorCode.PERMISSION_DENIED,
    AlreadyExistsError: ErrorCode.ALREADY_EXISTS,
    FailedPreconditionError: ErrorCode.FAILED_PRECONDITION,
    ConflictError: ErrorCode.ABORTED,
    UnavailableError: ErrorCode.UNAVAILABLE,
    DataIntegrityError: ErrorCode.DATA_LOSS,
    ResourceExhaustedError: ErrorCode.RESOURCE_EXHAUSTED,
}

# Reason -> the reference product's error code (HTTP bodies). Reasons not listed use the code's.
REFERENCE_CODES: dict[str, str] = {
    "MISSING_AUTH_HEADER": "missing_auth_header",
    "MALFORMED_AUTH_HEADER": "malformed_auth_header",
    "UNAUTHENTICATED": "unknown_account",
    "INVALID_CONNECT_SESSION_TOKEN_FORMAT": "invalid_connect_session_token_format",
    "UNKNOWN_CONNECT_SESSION_TOKEN": "unknown_connect_session_token",
    "MISSING_SCOPE": "forbidden",
    "INVALID_ARGUMENT": "invalid_body",
    "INVALID_QUERY_PARAMS": "invalid_query_params",
    "INVALID_URI_PARAMS": "invalid_uri_params",
    "CONNECTION_NOT_FOUND": "unknown_connection",
    "INTEGRATION_NOT_FOUND": "unknown_provider_config",
    "PROVIDER_NOT_FOUND": "unknown_provider_template",
    "PROVIDER_NOT_IN_CATALOG": "unknown_provider_template",
    "CREDENTIALS_AUTH_MODE_MISMATCH": "invalid_auth_mode",
    "CREDENTIALS_REJECTED": "connection_test_failed",
    "PROVIDER_UNAVAILABLE": "provider_unavailable",
    "DESTINATION_NOT_ALLOWED": "destination_not_allowed",
    "INTEGRATION_NOT_ALLOWED": "integration_not_allowed",
    "ORIGIN_NOT_ALLOWED": "origin_not_allowed",
    "CONNECTION_ID_NOT_ALLOWED": "invalid_query_params",
    "SESSION_EXPIRED": "connect_session_expired",
    "SESSION_CONSUMED": "connect_session_consumed",
    "TOO_MANY_ATTEMPTS": "too_many_request",
    "PAYLOAD_TOO_LARGE": "payload_too_large",
    "UNKNOWN_ROUTE": "unknown_route",
    "METHOD_NOT_ALLOWED": "method_not_allowed",
    "DEADLINE_EXCEEDED": "request_timeout",
    "REQUEST_MESSAGE_TIMEOUT": "request_timeout",
    "CONCURRENCY_LIMIT": "too_many_request",
    "TOO_MANY_REQUESTS": "too_many_request",
    "AUTHENTICATION_RATE_LIMITED": "too_many_request",
    "INTERNAL": "server_error",
}

# Public messages for codes whose domain message may carry operator detail.
GENERIC_MESSAGES = {
    ErrorCode.UNAVAILABLE: "service temporarily unavailable; retry with backoff",
    ErrorCode.DATA_LOSS: "stored data failed an integrity check",
}

UNAUTHENTICATED_MESSAGE = "invalid credentials"


@dataclass(frozen=True)
class Failure:
    """How a call ended when it did not succeed: safe to send to the caller as is."""

    code: ErrorCode
    message: str
    reason: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    violations: tuple[tuple[str, str], ...] = ()
    retry_after_seconds: int | None = None
    """When to try again, if known (gRPC ``RetryInfo``, HTTP ``Retry-After``)."""
    http_status: int | None = None
    """A more precise HTTP status than the code's (413 for a body over the limit)."""

    @property
    def reference_code(self) -> str:
        return REFERENCE_CODES.get(self.reason) or self.code.reference


class Refused(Exception):
    """Ends a call with ``failure`` (an expected outcome, raised by the admission layer)."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.reason)
        self.failure = failure


def code_for(error: DomainError) -> ErrorCode:
    """Looks the error up by walking its class hierarchy, so subclasses inherit a mapping."""
    for cls in type(error).__mro__:
        code = DOMAIN_ERROR_CODES.get(cls)
        if code is not None:
            return code
    return ErrorCode.INTERNAL


def domain_failure(error: DomainError) -> Failure:
    code = code_for(error)
    violations: tuple[tuple[str, str], ...] = ()
    if isinstance(error, InvalidArgumentError):
        violations = tuple((v.field, v.description) for v in error.violations)
    retry_after = error.retry_after_seconds if isinstance(error, ResourceExhaustedError) else None
    return Failure(
        code,
        GENERIC_MESSAGES.get(code, error.message),
        error.reason,
        error.metadata,
        violations,
        retry_after,
    )


def unauthenticated(reason: str = "UNAUTHENTICATED") -> Failure:
    """The one answer to every authentication failure (the reason only says what was sent)."""
    return Failure(ErrorCode.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE, reason)


def permission_denied(scope: str) -> Failure:
    return Failure(
        ErrorCode.PERMISSION_DENIED, f"missing scope {scope}", "MISSING_SCOPE", {"scope": scope}
    )


def internal(request_id: str) -> Failure:
    return Failure(
        ErrorCode.INTERNAL,
        f"internal error (ref {request_id})",
        "INTERNAL",
        {"request_id": request_id},
    )


def unimplemented() -> Failure:
    return Failure(ErrorCode.UNIMPLEMENTED, "method not implemented", "UNIMPLEMENTED")


def deadline_exceeded() -> Failure:
    return Failure(ErrorCode.DEADLINE_EXCEEDED, "request took too long", "DEADLINE_EXCEEDED")


def failure_for(error: Exception, request_id: str) -> Failure:
    """The failure ending a call that raised ``error``; never carries exception text of
    unexpected errors (those are logged with their traceback and answered INTERNAL)."""
    if isinstance(error, Refused):
        return error.failure
    if isinstance(error, DomainError):
        failure = domain_failure(error)
        log.info("rpc failed", code=failure.code.label, reason=error.reason)
        return failure
    if isinstance(error, FirstMessageTimeout):
        log.info("rpc refused", code="DEADLINE_EXCEEDED", reason="REQUEST_MESSAGE_TIMEOUT")
        return Failure(
            ErrorCode.DEADLINE_EXCEEDED,
            "no request message arrived in time",
            "REQUEST_MESSAGE_TIMEOUT",
        )
    if isinstance(error, TimeoutError):
        log.warning("rpc exceeded the server deadline")
        return deadline_exceeded()
    if isinstance(error, NotImplementedError):  # e.g. grpc.health.v1.Health/List
        return unimplemented()
    log.error("unexpected error", error_type=type(error).__name__, exc_info=error)
    return internal(request_id)
