"""HTTP form of a :class:`~credbroker.admission.errors.Failure`: the status from the one error
table and a body in the reference product's shape::

    {"error": {"code": "<reference code>", "message": "...",
               "errors": [{"path": "field", "message": "..."}],   # validation failures only
               "payload": {...}}}                                  # ErrorInfo metadata, if any

with ``Retry-After`` (seconds) when the failure knows when to retry (a 429 of the failed
authentication limit, like the reference product's rate limit).
"""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse

from credbroker.admission.errors import ErrorCode, Failure


def error_body(failure: Failure) -> dict[str, Any]:
    error: dict[str, Any] = {"code": failure.reference_code, "message": failure.message}
    if failure.violations:
        error["errors"] = [{"path": path, "message": text} for path, text in failure.violations]
    if failure.metadata:
        error["payload"] = dict(failure.metadata)
    return {"error": error}


def error_response(failure: Failure, headers: dict[str, str] | None = None) -> JSONResponse:
    response_headers = dict(headers or {})
    if failure.code is ErrorCode.UNAUTHENTICATED:
        response_headers.setdefault("www-authenticate", "Bearer")
    if failure.retry_after_seconds is not None:
        response_headers["retry-after"] = str(failure.retry_after_seconds)
    return JSONResponse(
        error_body(failure),
        status_code=failure.http_status or failure.code.http_status,
        headers=response_headers,
    )
