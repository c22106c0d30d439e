"""Strict reading of query strings and JSON bodies for the reference-shaped API: unknown or
repeated parameters and unknown body fields are refused with a message naming the field, never
its value (query strings and bodies may carry secrets)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping
from typing import Any

from credbroker.domain.errors import FieldViolation, InvalidArgumentError
from credbroker.domain.validation import CONNECTION_ID_PATTERN, INTEGRATION_ID_PATTERN
from credbroker.rest.endpoints import HttpCall

QUERY_REASON = "INVALID_QUERY_PARAMS"
_TAG_PARAM = re.compile(r"tags\[([^\[\]]{1,64})\]")


def invalid_query(field: str, description: str) -> InvalidArgumentError:
    return InvalidArgumentError.single(field, description, reason=QUERY_REASON)


def query(call: HttpCall, allowed: frozenset[str], *, tags: bool = False) -> dict[str, str]:
    """The query parameters as a dict; refuses unknown and repeated ones. With ``tags``,
    ``tags[KEY]=VALUE`` parameters are allowed too (read them with :func:`tag_filter`)."""
    values: dict[str, str] = {}
    for name, value in call.query.multi_items():
        tag = tags and _TAG_PARAM.fullmatch(name) is not None
        if name not in allowed and not tag:
            # The name itself is not echoed: a pasted secret may sit where a name belongs.
            known = ", ".join(sorted(allowed | ({"tags[KEY]"} if tags else set()))) or "none"
            raise invalid_query("query", f"has an unknown parameter (known: {known})")
        if name in values:
            raise invalid_query("tags" if tag else name, "must be given at most once")
        values[name] = value
    return values


def tag_filter(values: Mapping[str, str]) -> dict[str, str]:
    """``tags[KEY]=VALUE`` parameters as a tag filter; keys are lowercased as the reference
    does (two that differ only in case are refused)."""
    tags: dict[str, str] = {}
    for name, value in values.items():
        match = _TAG_PARAM.fullmatch(name)
        if match is None:
            continue
        key = match.group(1).lower()
        if key in tags:
            raise invalid_query("tags", "names a key twice (keys are case-insensitive)")
        tags[key] = value
    return tags


def boolean(values: Mapping[str, str], name: str) -> bool:
    value = values.get(name, "false")
    if value not in {"true", "false"}:
        raise invalid_query(name, "must be true or false")
    return value == "true"


def required(values: Mapping[str, str], name: str) -> str:
    value = values.get(name, "")
    if not value:
        raise invalid_query(name, "is required")
    return value


def body_fields(document: Mapping[str, Any], allowed: frozenset[str]) -> None:
    """Refuses body fields outside ``allowed`` (the reference's bodies are strict too)."""
    if set(document) - allowed:
        # The name itself is not echoed: a pasted secret may sit where a name belongs.
        known = ", ".join(sorted(allowed))
        raise InvalidArgumentError.single("body", f"has an unknown field (known: {known})")


def string_map(value: Any, field: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise InvalidArgumentError.single(field, "must be an object of strings")
    return dict(value)


def normalized_tags(value: Any, field: str = "tags") -> dict[str, str]:
    """Tags with lowercased keys, as the reference stores them."""
    tags = string_map(value, field)
    lowered = {key.lower(): item for key, item in tags.items()}
    if len(lowered) != len(tags):
        raise InvalidArgumentError.single(field, "has keys that differ only in case")
    return lowered


def recordable(value: Any, pattern: re.Pattern[str]) -> str:
    """An id fit for the audit trail: itself if well-formed, else a marker (never the input)."""
    if not isinstance(value, str) or not value:
        return ""
    return value if pattern.fullmatch(value) else "<invalid>"


def recordable_ids(integration_id: Any, connection_id: Any) -> tuple[str, str]:
    return (
        recordable(integration_id, INTEGRATION_ID_PATTERN),
        recordable(connection_id, CONNECTION_ID_PATTERN),
    )


# Domain field paths (shared with gRPC) -> the names the reference's bodies use.
_FIELD_NAMES = (
    ("connection.credentials.api_key.api_key", "credentials.apiKey"),
    ("connection.credentials.basic.username", "credentials.username"),
    ("connection.credentials.basic.password", "credentials.password"),
    ("connection.credentials.basic", "credentials"),
    ("connection.integration_id", "provider_config_key"),
    ("integration.integration_id", "unique_key"),
    ("integration_id", "provider_config_key"),
    ("connection.", ""),
    ("integration.", ""),
)


def _renamed(field: str, renames: tuple[tuple[str, str], ...]) -> str:
    for old, new in renames:
        if old.endswith("."):
            if field.startswith(old):
                return new + field[len(old) :]
        elif field == old or field.startswith((old + ".", old + "[")):
            return new + field[len(old) :]
    return field


@contextlib.contextmanager
def reference_fields(
    extra: tuple[tuple[str, str], ...] = (),
) -> Iterator[None]:
    """Re-raises validation errors of the shared use cases with the reference's field names."""
    try:
        yield
    except InvalidArgumentError as error:
        renames = extra + _FIELD_NAMES
        violations = [
            FieldViolation(_renamed(v.field, renames), v.description) for v in error.violations
        ]
        reason = None if error.reason == InvalidArgumentError.reason else error.reason
        raise InvalidArgumentError(violations, reason=reason) from None
