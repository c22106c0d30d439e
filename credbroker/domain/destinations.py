"""Which settings decide where stored credentials are sent, and who may change them.

A setting is *destination-deciding* when its value reaches the URL credentials are sent to: every
``${connection_config.X}`` or ``${integration_config.X}`` placeholder of a provider's ``base_url``
(which the verification request and AccessCredentials' ``base_url`` both start from), and every
setting of a generic provider's integration config (base URL, verification path and where the key
goes). The set is derived from the catalog templates, so a provider added later is covered
without a list to maintain.

Rule: such a setting changes only for a caller who could read the credentials anyway
(``credentials:read``), or in the same call that replaces the credentials (the caller then sends
its own secret, not a stored one). Otherwise a key holding only ``connections:write`` could point
a stored PAT at a host it controls and let verification, re-checks or the app deliver it there.
"""

from __future__ import annotations

from collections.abc import Mapping

from credbroker.domain.errors import PermissionDeniedError
from credbroker.domain.models import Principal, Scope
from credbroker.domain.providers import PLACEHOLDER, Provider


def destination_fields(provider: Provider, kind: str) -> frozenset[str]:
    """Names of the ``kind`` (``connection_config`` or ``integration_config``) settings that
    decide where ``provider``'s credentials go."""
    templates = [provider.base_url]
    if provider.verification is not None:
        templates += provider.verification.paths
    names = {name for k, name in PLACEHOLDER.findall(" ".join(templates)) if k == kind}
    if provider.generic and kind == "integration_config":
        names |= {f.name for f in provider.integration_config}
    return frozenset(names)


def _effective(provider: Provider, kind: str, values: Mapping[str, str]) -> dict[str, str | None]:
    fields = (
        provider.connection_config if kind == "connection_config" else provider.integration_config
    )
    defaults = {f.name: f.default for f in fields}
    return {
        name: values.get(name, defaults.get(name)) for name in destination_fields(provider, kind)
    }


def destination_changes(
    provider: Provider, kind: str, before: Mapping[str, str] | None, after: Mapping[str, str]
) -> bool:
    """Whether going from ``before`` (None: unknown, e.g. unreadable) to ``after`` moves the
    destination. Defaults count, so removing a setting that had a custom value is a change."""
    if not destination_fields(provider, kind):
        return False
    if before is None:
        return True
    return _effective(provider, kind, before) != _effective(provider, kind, after)


def require_credentials_read(principal: Principal, what: str) -> None:
    """Raises PERMISSION_DENIED (scope credentials:read) unless the caller holds it."""
    if Scope.CREDENTIALS_READ not in principal.scopes:
        raise PermissionDeniedError(
            f"missing scope credentials:read ({what} decides where stored credentials are sent; "
            "change it together with the credentials, or with a key that may read them)",
            metadata={"scope": Scope.CREDENTIALS_READ.value},
        )
