"""Opaque page tokens for keyset pagination.

A token is base64url of a JSON document holding the last item's sort key and a digest of the
request's filters; a token replayed with other filters is refused. Tokens grant nothing: every
query is still scoped to the caller's environment.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Any

from credbroker.domain.errors import InvalidArgumentError

_VERSION = 1
_MAX_TOKEN_LENGTH = 2048


def _filter_digest(filters: Any) -> str:
    canonical = json.dumps(filters, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def encode_page_token(cursor: tuple[str, ...] | None, filters: Any) -> str:
    if cursor is None:
        return ""
    document = {"v": _VERSION, "k": list(cursor), "f": _filter_digest(filters)}
    raw = json.dumps(document, separators=(",", ":")).encode("utf-8")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_page_token(token: str, filters: Any, size: int) -> tuple[str, ...] | None:
    """The cursor inside ``token`` (None for an empty token); INVALID_ARGUMENT if it is not a
    token this server issued for the same filters."""
    if not token:
        return None
    invalid = InvalidArgumentError.single(
        "page_token", "is not a valid page token for this request"
    )
    if len(token) > _MAX_TOKEN_LENGTH:
        raise invalid
    try:
        padded = token + "=" * (-len(token) % 4)
        document = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (ValueError, UnicodeError, binascii.Error, RecursionError):
        raise invalid from None
    if (
        not isinstance(document, dict)
        or document.get("v") != _VERSION
        or document.get("f") != _filter_digest(filters)
        or not isinstance(document.get("k"), list)
        or len(document["k"]) != size
        or not all(isinstance(part, str) for part in document["k"])
    ):
        raise invalid
    return tuple(document["k"])
