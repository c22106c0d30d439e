"""Transport-neutral admission: what every call passes through, over gRPC (``credbroker.api``)
and HTTP (``credbroker.rest``) alike. See :mod:`credbroker.admission.gate` for the flow and
:mod:`credbroker.admission.errors` for the one error table."""

from credbroker.admission.audit import Audit, Auditor, no_created_id, no_resources
from credbroker.admission.errors import ErrorCode, Failure, Refused, failure_for
from credbroker.admission.gate import (
    Admission,
    Authenticator,
    Credential,
    Operation,
    current_principal,
    current_request_id,
    start_request,
)

__all__ = [
    "Admission",
    "Audit",
    "Auditor",
    "Authenticator",
    "Credential",
    "ErrorCode",
    "Failure",
    "Operation",
    "Refused",
    "current_principal",
    "current_request_id",
    "failure_for",
    "no_created_id",
    "no_resources",
    "start_request",
]
