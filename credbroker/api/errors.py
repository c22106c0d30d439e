"""gRPC form of a :class:`~credbroker.admission.errors.Failure` (the one error table lives in
:mod:`credbroker.admission.errors`), and the rich-status abort helper.

Every failed RPC ends through :func:`abort` with a ``google.rpc.Status`` in the trailing metadata
(``grpc-status-details-bin``) carrying an ``ErrorInfo`` (reason, domain ``credbroker.dev``), for
validation errors a ``BadRequest`` listing each field violation, and for a limit that knows when
it frees up a ``RetryInfo``.
"""

from __future__ import annotations

from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from credbroker.admission.errors import ErrorCode, Failure

ERROR_DOMAIN = "credbroker.dev"

STATUS_CODES: dict[ErrorCode, grpc.StatusCode] = {
    code: next(s for s in grpc.StatusCode if s.value[0] == code.grpc_code) for code in ErrorCode
}


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
    retry_after_seconds: int | None = None,
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
    if retry_after_seconds is not None:
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.seconds = retry_after_seconds
        status.details.append(_pack(retry))
    return status


def status_for(failure: Failure) -> status_pb2.Status:
    return build_status(
        STATUS_CODES[failure.code],
        failure.message,
        failure.reason,
        metadata=dict(failure.metadata),
        violations=list(failure.violations),
        retry_after_seconds=failure.retry_after_seconds,
    )


async def abort(context: grpc.aio.ServicerContext[Any, Any], failure: Failure) -> NoReturn:
    rich = rpc_status.to_status(status_for(failure))
    await context.abort(rich.code, rich.details, trailing_metadata=rich.trailing_metadata)
    raise AssertionError("context.abort returned")  # pragma: no cover
