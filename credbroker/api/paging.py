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
import re
from typing import Any

from credbroker.domain.errors import InvalidArgumentError
from credbroker.domain.validation import has_control_chars

_VERSION = 1
_MAX_TOKEN_LENGTH = 2048
_MAX_PART_LENGTH = 512
AUDIT_CURSOR = re.compile(r"[0-9]{1,18}", re.ASCII)  # an event id: at most 18 digits < 2**63


def _filter_digest(filters: Any) -> str:
    canonical = json.dumps(filters, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def encode_page_token(cursor: tuple[str, ...] | None, filters: Any) -> str:
    if cursor is None:
        return ""
    document = {"v": _VERSION, "k": list(cursor), "f": _filter_digest(filters)}
    raw = json.dumps(document, separators=(",", ":")).encode("utf-8")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _valid_part(part: Any, pattern: re.Pattern[str] | None) -> bool:
    """A cursor part a real listing could have produced: text that encodes (no lone
    surrogates), without NUL or control characters, short, and matching ``pattern``. Every
    part is checked so a forged token fails here (INVALID_ARGUMENT), never in the database."""
    if not isinstance(part, str) or not 0 < len(part) <= _MAX_PART_LENGTH:
        return False
    try:
        part.encode("utf-8")
    except UnicodeEncodeError:
        return False
    if has_control_chars(part):
        return False
    return pattern is None or pattern.fullmatch(part) is not None


def decode_page_token(
    token: str, filters: Any, size: int, *, pattern: re.Pattern[str] | None = None
) -> tuple[str, ...] | None:
    """The cursor inside ``token`` (None for an empty token); INVALID_ARGUMENT if it is not a
    token this server issued for the same filters, or holds a part that no listing produces
    (``pattern``: what every part must fully match)."""
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
        or not all(_valid_part(part, pattern) for part in document["k"])
    ):
        raise invalid
    return tuple(document["k"])
