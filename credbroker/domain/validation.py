"""Input rules shared by every write path. Violations name the field, never echo its value."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from credbroker.domain.errors import FieldViolation, InvalidArgumentError
from credbroker.domain.models import ApiKeyCredentials, BasicCredentials, Credentials

INTEGRATION_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-:@~]{0,127}")
CONNECTION_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-:@~+]{0,254}")
CONFIG_KEY_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_.\-]{0,63}")
TAG_KEY_PATTERN = re.compile(r"[a-z][a-z0-9_.\-]{0,63}")
ENVIRONMENT_NAME_PATTERN = re.compile(r"[a-z][a-z0-9-]{0,62}")

MAX_DISPLAY_NAME = 255
MAX_API_KEY_BYTES = 4096
MAX_USERNAME_BYTES = 1024
MAX_PASSWORD_BYTES = 4096
MAX_CONFIG_ENTRIES = 32
MAX_CONFIG_VALUE_BYTES = 4096
MAX_TAGS = 10
MAX_TAG_VALUE = 255
MAX_METADATA_BYTES = 32 * 1024
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 50


class Violations:
    """Collects violations so one response reports every bad field at once."""

    def __init__(self) -> None:
        self.items: list[FieldViolation] = []

    def add(self, field: str, description: str) -> None:
        self.items.append(FieldViolation(field, description))

    def raise_if_any(self) -> None:
        if self.items:
            raise InvalidArgumentError(self.items)


_CONTROL_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def has_control_chars(value: str) -> bool:
    """C0 controls (CR, LF, NUL, ...), DEL, C1 controls and the Unicode line separators: none
    belongs in a value that may end up in an HTTP header, query string or URL. (A regular
    expression: it runs on every rendered value of every reveal.)"""
    return _CONTROL_CHARS.search(value) is not None


_has_control_chars = has_control_chars


def check_id(v: Violations, field: str, value: str, pattern: re.Pattern[str], limit: int) -> None:
    if not value:
        v.add(field, "is required")
    elif len(value) > limit:
        v.add(field, f"must be at most {limit} characters")
    elif not pattern.fullmatch(value):
        v.add(
            field,
            "must start with a letter or digit and use only A-Z a-z 0-9 . _ - : @ ~"
            + (" +" if pattern is CONNECTION_ID_PATTERN else ""),
        )


def check_integration_id(v: Violations, field: str, value: str) -> None:
    check_id(v, field, value, INTEGRATION_ID_PATTERN, 128)


def check_connection_id(v: Violations, field: str, value: str) -> None:
    check_id(v, field, value, CONNECTION_ID_PATTERN, 255)


def check_display_name(v: Violations, field: str, value: str) -> None:
    if len(value) > MAX_DISPLAY_NAME:
        v.add(field, f"must be at most {MAX_DISPLAY_NAME} characters")
    elif has_control_chars(value):
        v.add(field, "must not contain control characters")


def check_credentials(v: Violations, field: str, credentials: Credentials | None) -> None:
    if credentials is None:
        v.add(field, "is required")
    elif isinstance(credentials, ApiKeyCredentials):
        size = len(credentials.api_key.encode("utf-8"))
        if size == 0:
            v.add(f"{field}.api_key.api_key", "is required")
        elif size > MAX_API_KEY_BYTES:
            v.add(f"{field}.api_key.api_key", f"must be at most {MAX_API_KEY_BYTES} bytes")
        elif has_control_chars(credentials.api_key):
            # It goes into HTTP headers and query strings, where control characters break.
            v.add(f"{field}.api_key.api_key", "must not contain control characters")
    elif isinstance(credentials, BasicCredentials):
        if len(credentials.username.encode("utf-8")) > MAX_USERNAME_BYTES:
            v.add(f"{field}.basic.username", f"must be at most {MAX_USERNAME_BYTES} bytes")
        if len(credentials.password.encode("utf-8")) > MAX_PASSWORD_BYTES:
            v.add(f"{field}.basic.password", f"must be at most {MAX_PASSWORD_BYTES} bytes")
        if "\x00" in credentials.username or "\x00" in credentials.password:
            v.add(f"{field}.basic", "must not contain NUL characters")
        if not credentials.username and not credentials.password:
            v.add(f"{field}.basic", "needs a username, a password or both")


def check_connection_config(v: Violations, field: str, config: Mapping[str, str]) -> None:
    if len(config) > MAX_CONFIG_ENTRIES:
        v.add(field, f"must have at most {MAX_CONFIG_ENTRIES} entries")
        return
    for key, value in config.items():
        if not CONFIG_KEY_PATTERN.fullmatch(key):
            v.add(field, "keys must match [A-Za-z][A-Za-z0-9_.-]{0,63}")
        elif len(value.encode("utf-8")) > MAX_CONFIG_VALUE_BYTES:
            v.add(f"{field}[{key}]", f"must be at most {MAX_CONFIG_VALUE_BYTES} bytes")


def check_tags(v: Violations, field: str, tags: Mapping[str, str]) -> None:
    if len(tags) > MAX_TAGS:
        v.add(field, f"must have at most {MAX_TAGS} entries")
        return
    for key, value in tags.items():
        if not TAG_KEY_PATTERN.fullmatch(key):
            v.add(field, "keys must match [a-z][a-z0-9_.-]{0,63}")
        elif not 1 <= len(value) <= MAX_TAG_VALUE or has_control_chars(value):
            v.add(
                f"{field}[{key}]",
                f"must be 1-{MAX_TAG_VALUE} characters without control characters",
            )


def _contains_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, Mapping):
        return any(_contains_nul(k) or _contains_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_contains_nul(item) for item in value)
    return False


def check_metadata(v: Violations, field: str, metadata: Mapping[str, Any]) -> None:
    size = len(json.dumps(metadata, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
    if size > MAX_METADATA_BYTES:
        v.add(field, f"must be at most {MAX_METADATA_BYTES} bytes as JSON")
    elif _contains_nul(metadata):
        v.add(field, "must not contain NUL characters")


MAX_SEARCH = 255


def check_search(v: Violations, field: str, value: str) -> None:
    if len(value) > MAX_SEARCH:
        v.add(field, f"must be at most {MAX_SEARCH} characters")
    elif has_control_chars(value):
        v.add(field, "must not contain control characters")


def check_page_size(v: Violations, field: str, page_size: int) -> int:
    """Returns the effective page size (0 → default, above the max → the max)."""
    if page_size < 0:
        v.add(field, "must not be negative")
        return DEFAULT_PAGE_SIZE
    if page_size == 0:
        return DEFAULT_PAGE_SIZE
    return min(page_size, MAX_PAGE_SIZE)


def check_environment_name(name: str) -> None:
    if not ENVIRONMENT_NAME_PATTERN.fullmatch(name):
        raise InvalidArgumentError.single("name", "must match [a-z][a-z0-9-]{0,62}")


_has_control_chars = has_control_chars  # the earlier private name
