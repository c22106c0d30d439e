"""The provider catalog shipped with the package (``providers.yaml``), validated at load.

Each entry says how a third-party API takes its credential. Templates in ``base_url``,
``headers`` and ``query`` use ``${credentials.api_key}``, ``${credentials.username}``,
``${credentials.password}``, ``${connection_config.NAME}`` and ``${integration_config.NAME}``.
Basic-mode providers always get ``Authorization: Basic base64(username:password)``. A header or
query parameter whose template names an optional config field that is absent is left out.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

import yaml

from credbroker.domain.models import AuthMode

PROVIDER_NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
PLACEHOLDER = re.compile(r"\$\{([a-z_]+)\.([A-Za-z0-9_.\-]+)\}")
CREDENTIAL_FIELDS = {
    AuthMode.API_KEY: frozenset({"api_key"}),
    AuthMode.BASIC: frozenset({"username", "password"}),
}
HEADER_NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9\-]*")
_ENTRY_FIELDS = {
    "display_name",
    "auth_mode",
    "docs",
    "categories",
    "base_url",
    "headers",
    "query",
    "connection_config",
    "integration_config",
    "verification",
    "generic",
}
_FIELD_FIELDS = {"title", "description", "pattern", "optional", "secret", "default", "example"}


class CatalogError(ValueError):
    """The catalog is invalid: for the shipped one, a packaging bug caught by the tests."""


@dataclass(frozen=True)
class ConfigField:
    """A setting a connection (``connection_config``) or integration (``integration_config``)
    provides, such as a subdomain."""

    name: str
    title: str
    description: str = ""
    pattern: re.Pattern[str] | None = None
    optional: bool = False
    secret: bool = False
    default: str | None = None
    example: str | None = None


@dataclass(frozen=True)
class Verification:
    """A request that succeeds (2xx) only with valid credentials; paths are tried in order."""

    method: str
    paths: tuple[str, ...]


@dataclass(frozen=True)
class Provider:
    name: str
    display_name: str
    auth_mode: AuthMode
    docs: str
    base_url: str
    categories: tuple[str, ...] = ()
    headers: Mapping[str, str] = field(default_factory=dict)
    query: Mapping[str, str] = field(default_factory=dict)
    connection_config: tuple[ConfigField, ...] = ()
    integration_config: tuple[ConfigField, ...] = ()
    verification: Verification | None = None
    generic: bool = False
    """Generic providers take base URL and injection from the integration's config."""


def _fail(name: Any, message: str) -> CatalogError:
    return CatalogError(f"provider {name!r}: {message}")


def _parse_field(provider: str, kind: str, name: Any, raw: Any) -> ConfigField:
    where = f"{kind}.{name}"
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_.\-]{0,63}", name):
        raise _fail(provider, f"{where}: invalid field name")
    if not isinstance(raw, dict):
        raise _fail(provider, f"{where}: must be a mapping")
    unknown = set(raw) - _FIELD_FIELDS
    if unknown:
        raise _fail(provider, f"{where}: unknown keys {sorted(unknown)}")
    pattern = None
    if "pattern" in raw:
        try:
            pattern = re.compile(str(raw["pattern"]))
        except re.error as exc:
            raise _fail(provider, f"{where}: pattern does not compile ({exc})") from None
    default = None if raw.get("default") is None else str(raw["default"])
    if default is not None and pattern is not None and not pattern.fullmatch(default):
        raise _fail(provider, f"{where}: default does not match the pattern")
    return ConfigField(
        name=name,
        title=str(raw.get("title", name)),
        description=str(raw.get("description", "")),
        pattern=pattern,
        optional=bool(raw.get("optional", False)),
        secret=bool(raw.get("secret", False)),
        default=default,
        example=None if raw.get("example") is None else str(raw["example"]),
    )


def _check_templates(provider: Provider) -> None:
    """Every placeholder names a known credential part or a declared config field, and config
    values that reach the base URL are constrained by a pattern (no host injection)."""
    fields = {
        "credentials": CREDENTIAL_FIELDS[provider.auth_mode],
        "connection_config": {f.name for f in provider.connection_config},
        "integration_config": {f.name for f in provider.integration_config},
    }
    declared = {("connection_config", f.name): f for f in provider.connection_config} | {
        ("integration_config", f.name): f for f in provider.integration_config
    }
    templates = [("base_url", provider.base_url)]
    templates += [(f"headers.{k}", v) for k, v in provider.headers.items()]
    templates += [(f"query.{k}", v) for k, v in provider.query.items()]
    for where, template in templates:
        for kind, name in PLACEHOLDER.findall(template):
            if name not in fields.get(kind, ()):
                raise _fail(provider.name, f"{where}: unknown placeholder ${{{kind}.{name}}}")
            if where == "base_url":
                if kind == "credentials":
                    raise _fail(provider.name, "base_url must not contain credentials")
                config_field = declared[(kind, name)]
                if config_field.pattern is None and not provider.generic:
                    raise _fail(provider.name, f"base_url uses {name} which has no pattern")
        leftover = PLACEHOLDER.sub("", template)
        if "${" in leftover:
            raise _fail(provider.name, f"{where}: malformed placeholder")


def _parse_entry(name: Any, raw: Any) -> Provider:
    if not isinstance(name, str) or not PROVIDER_NAME_PATTERN.fullmatch(name):
        raise _fail(name, "invalid name")
    if not isinstance(raw, dict):
        raise _fail(name, "entry must be a mapping")
    unknown = set(raw) - _ENTRY_FIELDS
    if unknown:
        raise _fail(name, f"unknown fields {sorted(unknown)}")
    try:
        auth_mode = AuthMode(raw["auth_mode"])
        display_name = str(raw["display_name"])
        docs = str(raw["docs"])
        base_url = str(raw["base_url"])
    except KeyError as exc:
        raise _fail(name, f"missing {exc.args[0]}") from None
    except ValueError as exc:
        raise _fail(name, str(exc)) from None
    generic = bool(raw.get("generic", False))
    if not generic and not base_url.startswith("https://"):
        raise _fail(name, "base_url must be https")
    headers = {str(k): str(v) for k, v in (raw.get("headers") or {}).items()}
    for header in headers:
        if not HEADER_NAME_PATTERN.fullmatch(header):
            raise _fail(name, f"header {header!r} must be lowercase")
    verification = None
    if raw.get("verification") is not None:
        spec = raw["verification"]
        method = str(spec.get("method", "GET")).upper()
        paths = tuple(str(p) for p in spec.get("paths", ()))
        if method not in {"GET", "POST", "HEAD"} or not paths:
            raise _fail(name, "verification needs a GET/POST/HEAD method and at least one path")
        if not all(p.startswith("/") for p in paths):
            raise _fail(name, "verification paths must start with /")
        verification = Verification(method, paths)
    provider = Provider(
        name=name,
        display_name=display_name,
        auth_mode=auth_mode,
        docs=docs,
        base_url=base_url,
        categories=tuple(str(c) for c in raw.get("categories", ())),
        headers=headers,
        query={str(k): str(v) for k, v in (raw.get("query") or {}).items()},
        connection_config=tuple(
            _parse_field(name, "connection_config", k, v)
            for k, v in (raw.get("connection_config") or {}).items()
        ),
        integration_config=tuple(
            _parse_field(name, "integration_config", k, v)
            for k, v in (raw.get("integration_config") or {}).items()
        ),
        verification=verification,
        generic=generic,
    )
    _check_templates(provider)
    if auth_mode is AuthMode.API_KEY and not generic:
        used = " ".join([*provider.headers.values(), *provider.query.values(), provider.base_url])
        if "${credentials.api_key}" not in used:
            raise _fail(name, "the API key is never injected (headers, query or base_url)")
    return provider


@dataclass(frozen=True)
class ProviderCatalog:
    providers: dict[str, Provider]

    def get(self, name: str) -> Provider | None:
        return self.providers.get(name)

    def list(self, auth_mode: AuthMode | None = None) -> list[Provider]:
        return [p for p in self.providers.values() if auth_mode is None or p.auth_mode is auth_mode]

    @classmethod
    def from_yaml(cls, text: str) -> ProviderCatalog:
        raw = yaml.safe_load(text)
        if not isinstance(raw, dict):
            raise CatalogError("catalog must be a mapping of provider name to entry")
        entries = [_parse_entry(name, entry) for name, entry in raw.items()]
        return cls({p.name: p for p in sorted(entries, key=lambda p: p.name)})


@cache
def default_catalog() -> ProviderCatalog:
    """The catalog shipped in the package, parsed once."""
    text = resources.files("credbroker.domain").joinpath("providers.yaml").read_text("utf-8")
    return ProviderCatalog.from_yaml(text)
