"""Every entry of the shipped catalog is usable: its config patterns compile, its defaults and
examples match them, and resolving its auth with synthetic credentials and config gives an
https base URL with the credential placed where the provider reads it."""

from __future__ import annotations

import base64
import re
from urllib.parse import urlsplit

import pytest

from credbroker.domain.injection import check_config, resolve_auth, verification_for
from credbroker.domain.models import ApiKeyCredentials, AuthMode, BasicCredentials
from credbroker.domain.providers import ConfigField, Provider, default_catalog
from credbroker.domain.validation import Violations

CATALOG = default_catalog()
NAMES = sorted(CATALOG.providers)
API_KEY = "sk-SYNTH-7f3a9c"
USERNAME, PASSWORD = "synth-user", "synth-pass"

# Tried in order for a field without an example or default; the first that fits is used.
CANDIDATES = (
    "acme",
    "us1",
    "datadoghq.com",
    "abcdefghij",
    "1",
    "2024-01-01",
    "2024-01",
    "20240101",
    "0123456789abcdef0123456789abcdef",
    "https://api.example.com",
    "/v1/me",
)


def synthetic_value(config_field: ConfigField) -> str | None:
    """A value for the field: its example, its default, or the first fitting candidate."""
    for value in (config_field.example, config_field.default, *CANDIDATES):
        if value is None:
            continue
        if config_field.pattern is None or config_field.pattern.fullmatch(value):
            return value
    return None


def synthetic_config(fields: tuple[ConfigField, ...]) -> dict[str, str]:
    values: dict[str, str] = {}
    for config_field in fields:
        value = synthetic_value(config_field)
        if value is None:
            assert config_field.optional or config_field.default is not None, (
                f"no synthetic value fits the required field {config_field.name}"
            )
            continue
        values[config_field.name] = value
    return values


def test_catalog_size_and_both_modes() -> None:
    assert len(NAMES) >= 60
    assert CATALOG.list(AuthMode.API_KEY)
    assert CATALOG.list(AuthMode.BASIC)
    assert {p.name for p in CATALOG.list()} == set(NAMES)
    assert all(p.generic for p in CATALOG.list() if p.name in {"api-key", "basic"})


@pytest.mark.parametrize("name", NAMES)
def test_config_patterns_defaults_and_examples(name: str) -> None:
    provider = CATALOG.providers[name]
    assert provider.name == name
    for config_field in (*provider.connection_config, *provider.integration_config):
        where = f"{name}.{config_field.name}"
        if config_field.pattern is not None:
            re.compile(config_field.pattern.pattern)  # compiles on its own, from the text
        if config_field.default is not None and config_field.pattern is not None:
            assert config_field.pattern.fullmatch(config_field.default), f"{where} default"
        if config_field.example is not None and config_field.pattern is not None:
            assert config_field.pattern.fullmatch(config_field.example), f"{where} example"


def _placeholder_free(provider: Provider, *texts: str) -> None:
    for text in texts:
        assert "${" not in text, f"{provider.name}: unresolved placeholder in {text!r}"


@pytest.mark.parametrize("name", NAMES)
def test_resolves_to_https_with_the_credential(name: str) -> None:
    provider = CATALOG.providers[name]
    connection_config = synthetic_config(provider.connection_config)
    integration_config = synthetic_config(provider.integration_config)
    v = Violations()
    check_config(v, "c", provider.connection_config, connection_config)
    check_config(v, "i", provider.integration_config, integration_config)
    assert v.items == [], f"synthetic config refused: {v.items}"

    if provider.auth_mode is AuthMode.API_KEY:
        auth = resolve_auth(
            provider, integration_config, ApiKeyCredentials(API_KEY), connection_config
        )
    else:
        auth = resolve_auth(
            provider, integration_config, BasicCredentials(USERNAME, PASSWORD), connection_config
        )

    parts = urlsplit(auth.base_url)
    assert parts.scheme == "https", f"{name}: {auth.base_url!r}"
    assert parts.hostname, f"{name}: {auth.base_url!r}"
    assert not parts.query and not parts.fragment and "@" not in parts.netloc
    _placeholder_free(provider, auth.base_url, *auth.headers, *auth.headers.values())
    _placeholder_free(provider, *auth.query_params, *auth.query_params.values())
    assert all(h == h.lower() for h in auth.headers), f"{name}: header names must be lowercase"

    if provider.auth_mode is AuthMode.API_KEY:
        assert API_KEY not in parts.netloc, f"{name}: the key must not become a host name"
        places = [auth.base_url, *auth.headers.values(), *auth.query_params.values()]
        assert any(API_KEY in place for place in places), f"{name}: the key is not sent"
        assert not auth.headers.get("authorization", "").startswith("Basic ")
    else:
        expected = "Basic " + base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()
        assert auth.headers.get("authorization") == expected, name
        assert USERNAME not in auth.base_url and PASSWORD not in auth.base_url


@pytest.mark.parametrize("name", NAMES)
def test_verification_request_shape(name: str) -> None:
    provider = CATALOG.providers[name]
    verification = verification_for(provider, synthetic_config(provider.integration_config))
    if provider.generic:
        assert verification is not None
        assert verification.paths == ("/v1/me",)
        return
    if verification is None:
        return
    assert verification.method in {"GET", "POST", "HEAD"}
    assert verification.paths
    for path in verification.paths:
        assert path.startswith("/") and not path.startswith("//")
        assert "${" not in path


def test_generic_providers_only_store_without_a_base_url() -> None:
    for name in ("api-key", "basic"):
        provider = CATALOG.providers[name]
        credentials = (
            ApiKeyCredentials(API_KEY)
            if provider.auth_mode is AuthMode.API_KEY
            else BasicCredentials(USERNAME, PASSWORD)
        )
        assert resolve_auth(provider, {}, credentials, {}).base_url == ""
        assert verification_for(provider, {"verification_path": "/me"}) is None
