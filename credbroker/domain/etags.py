"""Etags bound to the connection they were read from: ``<version>.<tag>`` where ``tag`` is the
first 12 hex digits of SHA-256 over a domain string, the row's immutable id and the version. An
etag read from connection A is refused on connection B (same version or not), and a bare version
number is not an etag."""

from __future__ import annotations

import hashlib
import re
from uuid import UUID

from credbroker.domain.errors import InvalidArgumentError

_FORMAT = re.compile(r"([0-9]{1,18})\.([0-9a-f]{12})")
_DOMAIN = b"credbroker/etag/v1\x00"


def _tag(row_id: UUID, version: int) -> str:
    digest = hashlib.sha256(_DOMAIN + row_id.bytes + version.to_bytes(8, "big")).hexdigest()
    return digest[:12]


def etag_for(row_id: UUID, version: int) -> str:
    return f"{version}.{_tag(row_id, version)}"


def _invalid(description: str = "is not an etag returned by the server") -> InvalidArgumentError:
    return InvalidArgumentError.single("connection.etag", description)


def parse_etag(etag: str) -> int | None:
    """The version an etag names (None for no etag); INVALID_ARGUMENT if it is malformed."""
    if not etag:
        return None
    match = _FORMAT.fullmatch(etag)
    if match is None:
        raise _invalid()
    return int(match.group(1))


def check_etag(etag: str, row_id: UUID) -> None:
    """Refuses an etag that was not issued for the row ``row_id``."""
    version = parse_etag(etag)
    if version is not None and etag != etag_for(row_id, version):
        raise _invalid("was not read from this connection")
