"""Ready-to-use auth: the base URL, headers and query parameters a caller adds to each request
to a provider, computed from the catalog entry, the integration's and the connection's config."""

from __future__ import annotations

import base64
import functools
from collections.abc import Mapping
from dataclasses import dataclass, field

from credbroker.domain.errors import FailedPreconditionError, InvalidArgumentError
from credbroker.domain.models import ApiKeyCredentials, Credentials
from credbroker.domain.providers import PLACEHOLDER, ConfigField, Provider, Verification
from credbroker.domain.validation import Violations, has_control_chars


@dataclass(frozen=True)
class ResolvedAuth:
    base_url: str
    headers: Mapping[str, str] = field(repr=False)
    query_params: Mapping[str, str] = field(repr=False)

    def __repr__(self) -> str:
        return f"ResolvedAuth(base_url={self.base_url!r}, <redacted>)"


class _Missing(Exception):
    """A template names an optional config value that is absent."""


def with_defaults(fields: tuple[ConfigField, ...], values: Mapping[str, str]) -> dict[str, str]:
    resolved = {f.name: f.default for f in fields if f.default is not None}
    resolved.update(values)
    return resolved


def check_config(
    v: Violations, field_path: str, fields: tuple[ConfigField, ...], values: Mapping[str, str]
) -> None:
    """Required fields are present and every declared field matches its pattern. Undeclared
    keys are allowed (callers may keep their own settings there)."""
    for config_field in fields:
        value = values.get(config_field.name)
        if value is None:
            if not config_field.optional and config_field.default is None:
                v.add(f"{field_path}[{config_field.name}]", "is required by the provider")
        elif has_control_chars(value):
            # Declared fields are rendered into URLs and headers: no CR/LF/NUL smuggling.
            v.add(f"{field_path}[{config_field.name}]", "must not contain control characters")
        elif config_field.pattern is not None and not config_field.pattern.fullmatch(value):
            v.add(f"{field_path}[{config_field.name}]", "does not match the provider's pattern")


@functools.lru_cache(maxsize=1024)
def _compiled(template: str) -> tuple[str, tuple[tuple[tuple[str, str], str], ...]]:
    """A template split once: its leading text, then (placeholder, text after it) pairs."""
    pieces = PLACEHOLDER.split(template)  # text, kind, name, text, kind, name, text ...
    return pieces[0], tuple(
        ((pieces[i], pieces[i + 1]), pieces[i + 2]) for i in range(1, len(pieces), 3)
    )


def _render(template: str, variables: Mapping[tuple[str, str], str]) -> str:
    head, rest = _compiled(template)
    if not rest:
        return head
    out = [head]
    for key, text in rest:
        value = variables.get(key)
        if value is None:
            raise _Missing(key)
        out.append(value)
        out.append(text)
    return "".join(out)


def resolve_auth(
    provider: Provider,
    integration_config: Mapping[str, str],
    credentials: Credentials,
    connection_config: Mapping[str, str],
) -> ResolvedAuth:
    """Computes what a caller sends to ``provider``. Raises FailedPreconditionError when stored
    config no longer resolves the base URL (e.g. a required field was removed)."""
    variables: dict[tuple[str, str], str] = {}
    if isinstance(credentials, ApiKeyCredentials):
        variables[("credentials", "api_key")] = credentials.api_key
    else:
        variables[("credentials", "username")] = credentials.username
        variables[("credentials", "password")] = credentials.password
    for kind, fields, values in (
        ("connection_config", provider.connection_config, connection_config),
        ("integration_config", provider.integration_config, integration_config),
    ):
        for name, value in with_defaults(fields, values).items():
            variables[(kind, name)] = value
    try:
        base_url = _render(provider.base_url, variables).rstrip("/")
    except _Missing:
        if provider.generic:  # a generic integration without a base URL only stores keys
            base_url = ""
        else:
            raise FailedPreconditionError(
                "the provider's base URL needs config the connection lacks",
                reason="CONNECTION_CONFIG_INCOMPLETE",
            ) from None
    headers: dict[str, str] = {}
    query: dict[str, str] = {}
    for target, templates in ((headers, provider.headers), (query, provider.query)):
        for name, template in templates.items():
            try:
                target[name] = _render(template, variables)
            except _Missing:
                continue  # optional header or parameter whose config value is absent
    if not isinstance(credentials, ApiKeyCredentials):
        pair = f"{credentials.username}:{credentials.password}".encode()
        headers["authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
    elif provider.generic:
        _inject_generic_key(provider, variables, headers, query)
    _check_rendered(base_url, headers, query)
    return ResolvedAuth(base_url, headers, query)


def _check_rendered(base_url: str, headers: Mapping[str, str], query: Mapping[str, str]) -> None:
    """Checked again at render time: values stored before the write-time check existed, or
    placed by a template, never reach a caller's HTTP request with control characters."""
    values = [base_url, *headers.keys(), *headers.values(), *query.keys(), *query.values()]
    if any(has_control_chars(value) for value in values):
        raise FailedPreconditionError(
            "stored config renders a header, query parameter or URL with control characters; "
            "update the connection or integration config",
            reason="CONFIG_HAS_CONTROL_CHARACTERS",
        )


def _inject_generic_key(
    provider: Provider,
    variables: Mapping[tuple[str, str], str],
    headers: dict[str, str],
    query: dict[str, str],
) -> None:
    """The generic ``api-key`` provider places the key as its integration config says."""
    config = {
        name: value for (kind, name), value in variables.items() if kind == "integration_config"
    }
    api_key = variables[("credentials", "api_key")]
    if config.get("query_param"):
        query[config["query_param"]] = api_key
        return
    template = config.get("value_template", "${credentials.api_key}")
    headers[config.get("header_name", "authorization")] = template.replace(
        "${credentials.api_key}", api_key
    )


def verification_for(
    provider: Provider, integration_config: Mapping[str, str]
) -> Verification | None:
    """The provider's verification request; generic providers take the path from config."""
    if provider.generic:
        path = integration_config.get("verification_path")
        has_base = bool(integration_config.get("base_url"))
        return Verification("GET", (path,)) if path and has_base else None
    return provider.verification


def check_integration_config(provider: Provider, values: Mapping[str, str]) -> None:
    v = Violations()
    check_config(v, "integration.integration_config", provider.integration_config, values)
    template = values.get("value_template")
    if template is not None and "${credentials.api_key}" not in template:
        v.add(
            "integration.integration_config[value_template]", "must contain ${credentials.api_key}"
        )
    if v.items:
        raise InvalidArgumentError(v.items)
