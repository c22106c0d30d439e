"""The provider catalog shipped with the package (``providers.yaml``), validated at load."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import yaml

from credbroker.domain.models import AuthMode

PROVIDER_NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


@dataclass(frozen=True)
class Provider:
    name: str
    display_name: str
    auth_mode: AuthMode
    docs: str
    base_url: str | None = None


class CatalogError(ValueError):
    """The shipped catalog is invalid: a packaging bug, raised at import of the catalog."""


def _parse_entry(name: Any, raw: Any) -> Provider:
    if not isinstance(name, str) or not PROVIDER_NAME_PATTERN.fullmatch(name):
        raise CatalogError(f"provider {name!r}: invalid name")
    if not isinstance(raw, dict):
        raise CatalogError(f"provider {name!r}: entry must be a mapping")
    unknown = set(raw) - {"display_name", "auth_mode", "docs", "base_url"}
    if unknown:
        raise CatalogError(f"provider {name!r}: unknown fields {sorted(unknown)}")
    try:
        auth_mode = AuthMode(raw["auth_mode"])
        display_name = str(raw["display_name"])
        docs = str(raw["docs"])
    except (KeyError, ValueError) as exc:
        raise CatalogError(f"provider {name!r}: {exc}") from None
    base_url = raw.get("base_url")
    if base_url is not None and not str(base_url).startswith("https://"):
        raise CatalogError(f"provider {name!r}: base_url must be https")
    return Provider(name, display_name, auth_mode, docs, base_url)


@dataclass(frozen=True)
class ProviderCatalog:
    providers: dict[str, Provider]

    def get(self, name: str) -> Provider | None:
        return self.providers.get(name)

    @classmethod
    def from_yaml(cls, text: str) -> ProviderCatalog:
        raw = yaml.safe_load(text)
        if not isinstance(raw, dict):
            raise CatalogError("catalog must be a mapping of provider name to entry")
        return cls({name: _parse_entry(name, entry) for name, entry in sorted(raw.items())})


@cache
def default_catalog() -> ProviderCatalog:
    """The catalog shipped in the package, parsed once."""
    text = resources.files("credbroker.domain").joinpath("providers.yaml").read_text("utf-8")
    return ProviderCatalog.from_yaml(text)
