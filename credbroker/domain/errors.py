"""Domain errors. The one error table (``credbroker.admission.errors``) maps each class to a
transport-neutral code, hence to one gRPC status and one HTTP status.

    DomainError
    ├── InvalidArgumentError     bad input; carries field violations  -> INVALID_ARGUMENT
    ├── UnauthenticatedError     a known credential that no longer admits (e.g. an expired
    │                            connect session)                     -> UNAUTHENTICATED
    ├── PermissionDeniedError    the key lacks a scope the call needs -> PERMISSION_DENIED
    ├── NotFoundError            missing, or in another environment   -> NOT_FOUND
    ├── AlreadyExistsError       id taken within the environment       -> ALREADY_EXISTS
    ├── FailedPreconditionError  the state forbids the call            -> FAILED_PRECONDITION
    ├── ConflictError            concurrent change, stale etag         -> ABORTED
    ├── UnavailableError         database or dependency down           -> UNAVAILABLE
    ├── ResourceExhaustedError   a per-key or server limit is reached  -> RESOURCE_EXHAUSTED
    └── DataIntegrityError       stored ciphertext failed to verify    -> DATA_LOSS

Messages are public: they name fields and resource kinds, never secret values.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FieldViolation:
    """One invalid field: a dotted request path and what is wrong with it (never its value)."""

    field: str
    description: str


class DomainError(Exception):
    """Base class; ``reason`` is the stable UPPER_SNAKE_CASE code sent as ``ErrorInfo.reason``."""

    reason = "ERROR"

    def __init__(
        self, message: str, *, reason: str | None = None, metadata: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.metadata = metadata or {}
        if reason is not None:
            self.reason = reason


class InvalidArgumentError(DomainError):
    reason = "INVALID_ARGUMENT"

    def __init__(self, violations: list[FieldViolation], *, reason: str | None = None) -> None:
        message = "; ".join(f"{v.field}: {v.description}" for v in violations)
        super().__init__(message, reason=reason)
        self.violations = violations

    @classmethod
    def single(
        cls, field: str, description: str, *, reason: str | None = None
    ) -> InvalidArgumentError:
        return cls([FieldViolation(field, description)], reason=reason)


class UnauthenticatedError(DomainError):
    reason = "UNAUTHENTICATED"


class PermissionDeniedError(DomainError):
    reason = "MISSING_SCOPE"


class NotFoundError(DomainError):
    reason = "NOT_FOUND"


class AlreadyExistsError(DomainError):
    reason = "ALREADY_EXISTS"


class FailedPreconditionError(DomainError):
    reason = "FAILED_PRECONDITION"


class ConflictError(DomainError):
    reason = "CONFLICT"


class UnavailableError(DomainError):
    reason = "UNAVAILABLE"


class DataIntegrityError(DomainError):
    reason = "DATA_INTEGRITY"


class ResourceExhaustedError(DomainError):
    """A limit that protects the server was reached; retry later (after
    ``retry_after_seconds``, when the limit knows)."""

    reason = "RESOURCE_EXHAUSTED"

    def __init__(
        self, message: str, *, reason: str | None = None, retry_after_seconds: int | None = None
    ) -> None:
        super().__init__(message, reason=reason)
        self.retry_after_seconds = retry_after_seconds
