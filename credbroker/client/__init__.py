"""Python SDK for credbroker: typed sync and async clients for every RPC.

```python
from credbroker.client import CredBroker

with CredBroker("localhost:50051", secret_key) as client:
    creds = client.access_credentials("openai-prod", "user-42")
    httpx.get(creds.base_url + "/v1/models", headers=creds.headers, params=creds.query_params)
```

See ``docs/sdk-python.md``.
"""

from credbroker.client._async import AsyncCredBroker
from credbroker.client._errors import (
    Aborted,
    AlreadyExists,
    CredBrokerError,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    FieldViolation,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from credbroker.client._models import (
    AccessedCredentials,
    AuditEvent,
    AuthMode,
    ConfigField,
    Connection,
    Integration,
    Provider,
    Verification,
    VerificationState,
)
from credbroker.client._sync import CredBroker

__all__ = [
    "Aborted",
    "AccessedCredentials",
    "AlreadyExists",
    "AsyncCredBroker",
    "AuditEvent",
    "AuthMode",
    "ConfigField",
    "Connection",
    "CredBroker",
    "CredBrokerError",
    "DataLoss",
    "DeadlineExceeded",
    "FailedPrecondition",
    "FieldViolation",
    "Integration",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "Provider",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "Verification",
    "VerificationState",
]
