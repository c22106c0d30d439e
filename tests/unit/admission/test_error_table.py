"""The one error table: every domain error has a code, every code a gRPC status whose name it
carries and an HTTP status, and reasons map to the reference product's error codes."""

from __future__ import annotations

import grpc
import pytest

from credbroker.admission.errors import (
    DOMAIN_ERROR_CODES,
    ErrorCode,
    Failure,
    code_for,
    domain_failure,
    failure_for,
)
from credbroker.api.errors import STATUS_CODES, status_for
from credbroker.domain import errors as domain_errors
from credbroker.rest.errors import error_body


def _domain_error_classes() -> list[type[domain_errors.DomainError]]:
    return [
        value
        for value in vars(domain_errors).values()
        if isinstance(value, type)
        and issubclass(value, domain_errors.DomainError)
        and value is not domain_errors.DomainError
    ]


@pytest.mark.parametrize("cls", _domain_error_classes(), ids=lambda c: c.__name__)
def test_every_domain_error_has_a_code(cls: type[domain_errors.DomainError]) -> None:
    assert cls in DOMAIN_ERROR_CODES


@pytest.mark.parametrize("code", list(ErrorCode), ids=lambda c: c.label)
def test_codes_name_their_grpc_status(code: ErrorCode) -> None:
    assert STATUS_CODES[code].name == code.label
    assert 400 <= code.http_status < 600


def test_subclasses_inherit_their_parents_code() -> None:
    class SessionGone(domain_errors.FailedPreconditionError):
        reason = "SESSION_EXPIRED"

    assert code_for(SessionGone("gone")) is ErrorCode.FAILED_PRECONDITION
    assert domain_failure(SessionGone("gone")).reference_code == "connect_session_expired"


def test_reference_codes_follow_reasons_then_codes() -> None:
    missing = domain_errors.NotFoundError("connection not found", reason="CONNECTION_NOT_FOUND")
    assert domain_failure(missing).reference_code == "unknown_connection"
    other = domain_errors.NotFoundError("key not found", reason="KEY_NOT_FOUND")
    assert domain_failure(other).reference_code == "not_found"
    rejected = domain_errors.FailedPreconditionError("no", reason="CREDENTIALS_REJECTED")
    assert domain_failure(rejected).reference_code == "connection_test_failed"


def test_both_transports_carry_the_same_failure() -> None:
    error = domain_errors.InvalidArgumentError.single("connection.tags", "too many")
    failure = domain_failure(error)
    status = status_for(failure)
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert status.message == "connection.tags: too many"
    assert error_body(failure) == {
        "error": {
            "code": "invalid_body",
            "message": "connection.tags: too many",
            "errors": [{"path": "connection.tags", "message": "too many"}],
        }
    }


def test_unavailable_and_data_loss_hide_operator_detail() -> None:
    for error in (
        domain_errors.UnavailableError("database at 10.0.0.5 refused"),
        domain_errors.DataIntegrityError("blob 42 under key 7"),
    ):
        assert "10.0.0.5" not in domain_failure(error).message
        assert "42" not in domain_failure(error).message


def test_unexpected_errors_never_leak_their_text() -> None:
    failure = failure_for(RuntimeError("password=hunter2"), "abc123")
    assert failure == Failure(
        ErrorCode.INTERNAL, "internal error (ref abc123)", "INTERNAL", {"request_id": "abc123"}
    )
    assert failure_for(TimeoutError(), "x").code is ErrorCode.DEADLINE_EXCEEDED
    assert failure_for(NotImplementedError(), "x").code is ErrorCode.UNIMPLEMENTED
