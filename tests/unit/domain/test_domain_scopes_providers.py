"""Scope lists (CLI ``--scopes``) and the provider catalog."""

from __future__ import annotations

import textwrap

import pytest

from credbroker.domain.keys import parse_scopes
from credbroker.domain.models import ALL_SCOPES, AuthMode, Scope
from credbroker.domain.providers import CatalogError, ProviderCatalog, default_catalog

# --- parse_scopes ---------------------------------------------------------------------------


def test_parse_scopes_valid() -> None:
    assert parse_scopes("connections:read") == frozenset({Scope.CONNECTIONS_READ})
    assert parse_scopes("connections:read,credentials:read") == frozenset(
        {Scope.CONNECTIONS_READ, Scope.CREDENTIALS_READ}
    )
    assert parse_scopes(" integrations:read , integrations:write ,") == frozenset(
        {Scope.INTEGRATIONS_READ, Scope.INTEGRATIONS_WRITE}
    )
    assert parse_scopes("connections:read,connections:read") == frozenset({Scope.CONNECTIONS_READ})
    assert parse_scopes(",".join(s.value for s in Scope)) == ALL_SCOPES
    assert parse_scopes("") == frozenset()


@pytest.mark.parametrize(
    ("text", "unknown"),
    [
        ("connections:delete", "connections:delete"),
        ("connections:read,admin", "admin"),
        ("Connections:read", "Connections:read"),
        ("connections", "connections"),
        ("*", "*"),
    ],
)
def test_parse_scopes_unknown_names_it(text: str, unknown: str) -> None:
    with pytest.raises(ValueError, match="unknown scope") as caught:
        parse_scopes(text)
    assert repr(unknown) in str(caught.value)
    # The message lists the valid scopes to help the operator.
    assert "connections:read" in str(caught.value)


# --- shipped catalog ------------------------------------------------------------------------

REQUIRED = {
    "api-key": AuthMode.API_KEY,
    "basic": AuthMode.BASIC,
    "openai": AuthMode.API_KEY,
    "anthropic": AuthMode.API_KEY,
    "stripe": AuthMode.API_KEY,
    "github-pat": AuthMode.API_KEY,
    "twilio": AuthMode.BASIC,
    "jira-basic": AuthMode.BASIC,
}


def test_shipped_catalog_loads_with_required_providers() -> None:
    catalog = default_catalog()
    for name, mode in REQUIRED.items():
        provider = catalog.get(name)
        assert provider is not None, name
        assert provider.name == name
        assert provider.auth_mode is mode, name


def test_shipped_catalog_entries_are_valid() -> None:
    catalog = default_catalog()
    assert len(catalog.providers) >= len(REQUIRED)
    for name, provider in catalog.providers.items():
        assert provider.name == name
        assert isinstance(provider.auth_mode, AuthMode)
        assert provider.display_name.strip()
        assert provider.docs.startswith("https://")
        assert "github.com/credbroker" not in provider.docs, name  # no placeholder links
        if not provider.generic:
            assert provider.base_url.startswith("https://"), name
    assert list(catalog.providers) == sorted(catalog.providers)


def test_unknown_provider_is_none() -> None:
    assert default_catalog().get("nope") is None
    assert default_catalog().get("") is None
    assert default_catalog().get("OpenAI") is None


def test_default_catalog_is_cached() -> None:
    assert default_catalog() is default_catalog()


def _catalog(text: str) -> ProviderCatalog:
    return ProviderCatalog.from_yaml(textwrap.dedent(text))


def test_valid_custom_catalog() -> None:
    catalog = _catalog(
        """
        acme:
          display_name: Acme
          auth_mode: basic
          docs: https://acme.example/docs
          base_url: https://api.acme.example
        bare:
          display_name: Bare
          auth_mode: api_key
          docs: https://bare.example
          base_url: https://api.bare.example
          headers:
            authorization: Bearer ${credentials.api_key}
        """
    )
    acme = catalog.get("acme")
    bare = catalog.get("bare")
    assert acme is not None and bare is not None
    assert acme.auth_mode is AuthMode.BASIC
    assert acme.base_url == "https://api.acme.example"
    assert bare.auth_mode is AuthMode.API_KEY
    assert list(catalog.providers) == ["acme", "bare"]


# A valid Basic-auth entry; each case below breaks exactly one thing.
_VALID = {
    "display_name": "display_name: Acme",
    "auth_mode": "auth_mode: basic",
    "docs": "docs: https://acme.example",
    "base_url": "base_url: https://api.acme.example",
}


def _entry(name: str = "acme", drop: str = "", **replace: str) -> str:
    lines = [replace.get(k, v) for k, v in _VALID.items() if k != drop]
    lines += [v for k, v in replace.items() if k not in _VALID]
    return f"{name}:\n" + "".join(f"  {line}\n" for line in lines)


def test_entry_helper_is_valid() -> None:
    assert _catalog(_entry()).get("acme") is not None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (_entry(extra="scopes: [read]"), "unknown fields"),
        (_entry(extra="auth: basic"), "unknown fields"),
        (_entry("Acme"), "invalid name"),
        (_entry("acme_corp"), "invalid name"),
        (_entry("-acme"), "invalid name"),
        (_entry("a" * 64), "invalid name"),
        (_entry(base_url="base_url: http://api.acme.example"), "https"),
        (_entry(base_url="base_url: ftp://api.acme.example"), "https"),
        (_entry(base_url="base_url: api.acme.example"), "https"),
        (_entry(drop="auth_mode"), "auth_mode"),
        (_entry(auth_mode="auth_mode: oauth2"), "oauth2"),
        (_entry(drop="display_name"), "display_name"),
        (_entry(drop="docs"), "docs"),
        ("acme: just a string\n", "mapping"),
        ("- acme\n- other\n", "mapping"),
        ("", "mapping"),
    ],
)
def test_invalid_catalog_refused(text: str, message: str) -> None:
    with pytest.raises(CatalogError) as caught:
        _catalog(text)
    assert message in str(caught.value)


def test_one_bad_entry_refuses_the_whole_catalog() -> None:
    text = _entry("good") + _entry("bad", base_url="base_url: http://insecure.example")
    with pytest.raises(CatalogError, match="bad"):
        _catalog(text)


def test_non_string_provider_name_refused_with_catalog_error() -> None:
    """YAML turns ``404:`` or ``yes:`` into non-string keys; that must be a CatalogError, not a
    TypeError (also when mixed with string names, which cannot be sorted together)."""
    for name in ["404", "yes", "null", "1.5"]:
        with pytest.raises(CatalogError, match="invalid name"):
            _catalog(_entry(name))
        with pytest.raises(CatalogError):
            _catalog(_entry("good") + _entry(name))
