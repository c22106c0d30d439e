"""Reading JSON request bodies strictly: every problem becomes a field violation naming its
path (never its value), and unknown fields are refused, like the reference product's strict
schemas."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from credbroker.domain.validation import Violations


def known_fields(
    v: Violations, document: Mapping[str, Any], allowed: Collection[str], path: str
) -> None:
    for key in document:
        if key not in allowed:
            v.add(f"{path}.{key}" if path else key, "is not a known field")


def text(
    v: Violations, document: Mapping[str, Any], key: str, path: str, *, required: bool = False
) -> str:
    value = document.get(key)
    if value is None:
        if required:
            v.add(path, "is required")
        return ""
    if not isinstance(value, str):
        v.add(path, "must be a string")
        return ""
    return value


def obj(v: Violations, document: Mapping[str, Any], key: str, path: str) -> dict[str, Any] | None:
    value = document.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        v.add(path, "must be an object")
        return None
    return value


def string_map(v: Violations, document: Mapping[str, Any], key: str, path: str) -> dict[str, str]:
    value = obj(v, document, key, path)
    if value is None:
        return {}
    result: dict[str, str] = {}
    for name, item in value.items():
        if not isinstance(item, str):
            v.add(f"{path}[{name}]", "must be a string")
        else:
            result[name] = item
    return result


def string_list(v: Violations, document: Mapping[str, Any], key: str, path: str) -> list[str]:
    value = document.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        v.add(path, "must be a list of strings")
        return []
    result: list[str] = []
    for index, item in enumerate(value):
        if not isinstance(item, str):
            v.add(f"{path}[{index}]", "must be a string")
        else:
            result.append(item)
    return result


def integer(v: Violations, document: Mapping[str, Any], key: str, path: str) -> int | None:
    value = document.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        v.add(path, "must be an integer")
        return None
    return value
