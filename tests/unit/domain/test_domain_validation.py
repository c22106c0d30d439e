"""Input rules: every check at and just past its limit; violations name fields, not values."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from credbroker.domain.errors import FieldViolation, InvalidArgumentError
from credbroker.domain.models import ApiKeyCredentials, BasicCredentials, Credentials
from credbroker.domain.validation import (
    DEFAULT_PAGE_SIZE,
    MAX_METADATA_BYTES,
    MAX_PAGE_SIZE,
    Violations,
    check_connection_config,
    check_connection_id,
    check_credentials,
    check_display_name,
    check_environment_name,
    check_integration_id,
    check_metadata,
    check_page_size,
    check_tags,
)


def violations_of(check: Callable[[Violations], object]) -> list[FieldViolation]:
    v = Violations()
    check(v)
    return v.items


def fields_of(check: Callable[[Violations], object]) -> list[str]:
    return [item.field for item in violations_of(check)]


# --- ids ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["a", "A", "0", "a" * 128, "openai-prod", "a.b_c-d:e@f~g", "9lives", "x" + "-" * 127],
)
def test_integration_id_accepted(value: str) -> None:
    assert violations_of(lambda v: check_integration_id(v, "integration_id", value)) == []


@pytest.mark.parametrize(
    ("value", "description"),
    [
        ("", "is required"),
        ("a" * 129, "at most 128"),
        ("-a", "must start with a letter or digit"),
        ("_a", "must start with a letter or digit"),
        (".a", "must start with a letter or digit"),
        ("a b", "must start with a letter or digit"),
        ("a/b", "must start with a letter or digit"),
        ("a+b", "must start with a letter or digit"),  # '+' is for connection ids only
        ("é", "must start with a letter or digit"),
        ("a\n", "must start with a letter or digit"),
        ("a\x00", "must start with a letter or digit"),
        ("٣", "must start with a letter or digit"),
    ],
)
def test_integration_id_refused(value: str, description: str) -> None:
    items = violations_of(lambda v: check_integration_id(v, "integration.integration_id", value))
    assert len(items) == 1
    assert items[0].field == "integration.integration_id"
    assert description in items[0].description
    if value:
        assert value not in items[0].description


@pytest.mark.parametrize("value", ["a", "a" * 255, "user+42@example.com", "U-1:2~3.4_5"])
def test_connection_id_accepted(value: str) -> None:
    assert violations_of(lambda v: check_connection_id(v, "connection_id", value)) == []


@pytest.mark.parametrize(
    ("value", "description"),
    [
        ("", "is required"),
        ("a" * 256, "at most 255"),
        ("+a", "must start with a letter or digit"),
        ("a/b", "must start with a letter or digit"),
        ("a b", "must start with a letter or digit"),
        ("a%b", "must start with a letter or digit"),
    ],
)
def test_connection_id_refused(value: str, description: str) -> None:
    items = violations_of(lambda v: check_connection_id(v, "connection.connection_id", value))
    assert [i.field for i in items] == ["connection.connection_id"]
    assert description in items[0].description


def test_connection_id_message_mentions_plus_but_integration_id_does_not() -> None:
    conn = violations_of(lambda v: check_connection_id(v, "c", "a/b"))[0].description
    integ = violations_of(lambda v: check_integration_id(v, "i", "a/b"))[0].description
    assert conn.endswith("+")
    assert "+" not in integ


# --- display name ---------------------------------------------------------------------------


def test_display_name_limits() -> None:
    assert fields_of(lambda v: check_display_name(v, "d", "")) == []
    assert fields_of(lambda v: check_display_name(v, "d", "x" * 255)) == []
    assert fields_of(lambda v: check_display_name(v, "d", "é" * 255)) == []
    assert fields_of(lambda v: check_display_name(v, "d", "x" * 256)) == ["d"]
    assert fields_of(lambda v: check_display_name(v, "d", "a\tb")) == ["d"]
    assert fields_of(lambda v: check_display_name(v, "d", "a\x7fb")) == ["d"]


# --- credentials ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("credentials", "fields"),
    [
        (None, ["c"]),
        (ApiKeyCredentials(""), ["c.api_key.api_key"]),
        (ApiKeyCredentials("k"), []),
        (ApiKeyCredentials("k" * 4096), []),
        (ApiKeyCredentials("k" * 4097), ["c.api_key.api_key"]),
        (ApiKeyCredentials("é" * 2048), []),
        (ApiKeyCredentials("é" * 2048 + "k"), ["c.api_key.api_key"]),
        (BasicCredentials("", ""), ["c.basic"]),
        (BasicCredentials("user", ""), []),
        (BasicCredentials("", "pass"), []),
        (BasicCredentials("u" * 1024, "p" * 4096), []),
        (BasicCredentials("u" * 1025, "p"), ["c.basic.username"]),
        (BasicCredentials("u", "p" * 4097), ["c.basic.password"]),
        (BasicCredentials("u" * 1025, "p" * 4097), ["c.basic.username", "c.basic.password"]),
    ],
)
def test_credentials(credentials: Credentials | None, fields: list[str]) -> None:
    items = violations_of(lambda v: check_credentials(v, "c", credentials))
    assert [i.field for i in items] == fields
    for item in items:
        assert "k" * 10 not in item.description
        assert "p" * 10 not in item.description


# --- connection config ----------------------------------------------------------------------


def test_config_value_size_boundary() -> None:
    assert fields_of(lambda v: check_connection_config(v, "cfg", {"k": "x" * 4096})) == []
    assert fields_of(lambda v: check_connection_config(v, "cfg", {"k": "x" * 4097})) == ["cfg[k]"]
    # Bytes, not characters.
    assert fields_of(lambda v: check_connection_config(v, "cfg", {"k": "é" * 2048})) == []
    assert fields_of(lambda v: check_connection_config(v, "cfg", {"k": "é" * 2049})) == ["cfg[k]"]


def test_config_entry_count_boundary() -> None:
    ok = {f"k{i}": "v" for i in range(32)}
    too_many = {f"k{i}": "v" for i in range(33)}
    assert fields_of(lambda v: check_connection_config(v, "cfg", ok)) == []
    assert fields_of(lambda v: check_connection_config(v, "cfg", too_many)) == ["cfg"]


@pytest.mark.parametrize(
    ("key", "valid"),
    [
        ("subdomain", True),
        ("Region", True),
        ("a" * 64, True),
        ("a" * 65, False),
        ("a.b-c_d9", True),
        ("1abc", False),
        ("_abc", False),
        ("", False),
        ("a b", False),
        ("a/b", False),
    ],
)
def test_config_key_pattern(key: str, valid: bool) -> None:
    fields = fields_of(lambda v: check_connection_config(v, "cfg", {key: "v"}))
    assert fields == ([] if valid else ["cfg"])


def test_config_empty_value_allowed() -> None:
    assert fields_of(lambda v: check_connection_config(v, "cfg", {"k": ""})) == []


# --- tags -----------------------------------------------------------------------------------


def test_tag_count_boundary() -> None:
    ten = {f"t{i}": "v" for i in range(10)}
    eleven = {f"t{i}": "v" for i in range(11)}
    assert fields_of(lambda v: check_tags(v, "tags", ten)) == []
    assert fields_of(lambda v: check_tags(v, "tags", eleven)) == ["tags"]


@pytest.mark.parametrize(
    ("key", "valid"),
    [
        ("env", True),
        ("end_user_id", True),
        ("a.b-c_9", True),
        ("a" * 64, True),
        ("a" * 65, False),
        ("Env", False),
        ("eNv", False),
        ("1env", False),
        ("_env", False),
        ("-env", False),
        ("", False),
        ("env:x", False),
        ("en v", False),
        ("é", False),
    ],
)
def test_tag_key_pattern(key: str, valid: bool) -> None:
    fields = fields_of(lambda v: check_tags(v, "tags", {key: "v"}))
    assert fields == ([] if valid else ["tags"])


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("v", True),
        ("x" * 255, True),
        ("é" * 255, True),
        ("x" * 256, False),
        ("", False),
        ("a\nb", False),
        ("a\x00", False),
        ("\x7f", False),
    ],
)
def test_tag_value(value: str, valid: bool) -> None:
    fields = fields_of(lambda v: check_tags(v, "tags", {"env": value}))
    assert fields == ([] if valid else ["tags[env]"])


# --- metadata -------------------------------------------------------------------------------


def _metadata_of_size(size: int) -> dict[str, str]:
    overhead = len(json.dumps({"k": ""}, separators=(",", ":")))
    document = {"k": "x" * (size - overhead)}
    assert len(json.dumps(document, separators=(",", ":")).encode()) == size
    return document


def test_metadata_size_boundary() -> None:
    assert MAX_METADATA_BYTES == 32 * 1024
    at_limit = _metadata_of_size(MAX_METADATA_BYTES)
    past_limit = _metadata_of_size(MAX_METADATA_BYTES + 1)
    assert fields_of(lambda v: check_metadata(v, "m", at_limit)) == []
    assert fields_of(lambda v: check_metadata(v, "m", past_limit)) == ["m"]


def test_metadata_size_counts_utf8_bytes() -> None:
    overhead = len('{"k":""}')
    chars = (MAX_METADATA_BYTES - overhead) // 2
    ok = {"k": "é" * chars}
    too_big = {"k": "é" * (chars + 1)}
    assert fields_of(lambda v: check_metadata(v, "m", ok)) == []
    assert fields_of(lambda v: check_metadata(v, "m", too_big)) == ["m"]


def test_metadata_nested_structures_are_counted() -> None:
    nested = {"a": [{"b": "x" * 20000}, {"c": "y" * 20000}]}
    assert fields_of(lambda v: check_metadata(v, "m", nested)) == ["m"]
    assert fields_of(lambda v: check_metadata(v, "m", {"a": [1, 2.5, None, True]})) == []


# --- page size ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("requested", "effective", "fields"),
    [
        (0, DEFAULT_PAGE_SIZE, []),
        (1, 1, []),
        (MAX_PAGE_SIZE - 1, MAX_PAGE_SIZE - 1, []),
        (MAX_PAGE_SIZE, MAX_PAGE_SIZE, []),
        (MAX_PAGE_SIZE + 1, MAX_PAGE_SIZE, []),
        (2**31 - 1, MAX_PAGE_SIZE, []),
        (-1, DEFAULT_PAGE_SIZE, ["page_size"]),
        (-(2**31), DEFAULT_PAGE_SIZE, ["page_size"]),
    ],
)
def test_page_size(requested: int, effective: int, fields: list[str]) -> None:
    v = Violations()
    assert check_page_size(v, "page_size", requested) == effective
    assert [i.field for i in v.items] == fields


def test_page_size_constants() -> None:
    assert DEFAULT_PAGE_SIZE == 50
    assert MAX_PAGE_SIZE == 1000


# --- environment names ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["prod", "p", "dev-1", "a" * 63, "a-b-c"])
def test_environment_name_accepted(name: str) -> None:
    check_environment_name(name)


@pytest.mark.parametrize(
    "name", ["", "Prod", "1prod", "-prod", "prod_1", "a" * 64, "pr od", "prod\n", "é"]
)
def test_environment_name_refused(name: str) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        check_environment_name(name)
    assert [v.field for v in caught.value.violations] == ["name"]


# --- Violations -----------------------------------------------------------------------------


def test_violations_collects_all_then_raises_once() -> None:
    v = Violations()
    v.raise_if_any()  # nothing yet
    check_integration_id(v, "a", "")
    check_connection_id(v, "b", "x" * 300)
    check_tags(v, "c", {"Bad": "v"})
    with pytest.raises(InvalidArgumentError) as caught:
        v.raise_if_any()
    assert [i.field for i in caught.value.violations] == ["a", "b", "c"]
    assert caught.value.reason == "INVALID_ARGUMENT"
    assert "a: is required" in caught.value.message
