"""Secret keys that callers present as ``authorization: Bearer <key>``.

Format: ``cbsk_<key_id>_<secret><checksum>``

* ``key_id``: 16 base62 characters (~95 bits), public: shown in listings and logs.
* ``secret``: 43 base62 characters encoding 256 random bits.
* ``checksum``: CRC32 of everything before it, base62, 6 characters (like GitHub's tokens), so
  secret scanners recognise leaked keys and typos are refused without a database query.

Only ``SHA-256(domain ‖ key_id ‖ secret)`` is stored. The secret carries 256 bits of entropy, so a
fast hash is enough (no dictionary or brute-force attack applies; OWASP reserves slow hashes for
low-entropy passwords), and the key id inside the hashed input stops hash swaps between rows.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import zlib
from dataclasses import dataclass

PREFIX = "cbsk_"
KEY_ID_LENGTH = 16
SECRET_LENGTH = 43
CHECKSUM_LENGTH = 6
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_KEY_PATTERN = re.compile(
    rf"cbsk_([0-9A-Za-z]{{{KEY_ID_LENGTH}}})_([0-9A-Za-z]{{{SECRET_LENGTH}}})"
    rf"([0-9A-Za-z]{{{CHECKSUM_LENGTH}}})"
)
KEY_ID_PATTERN = re.compile(rf"[0-9A-Za-z]{{{KEY_ID_LENGTH}}}")
MAX_KEY_LENGTH = len(PREFIX) + KEY_ID_LENGTH + 1 + SECRET_LENGTH + CHECKSUM_LENGTH
_HASH_DOMAIN = b"credbroker/secret-key/v1\x00"
# Hashed in place of a stored hash when the key id is unknown, so both failures cost the same.
DUMMY_HASH = hashlib.sha256(b"credbroker/dummy").digest()


def base62(number: int, width: int) -> str:
    """``number`` in base62, left-padded with zeros to ``width`` characters."""
    digits = []
    while number:
        number, rem = divmod(number, 62)
        digits.append(_BASE62[rem])
    encoded = "".join(reversed(digits)).rjust(width, "0")
    if len(encoded) > width:
        raise ValueError("number too large for width")
    return encoded


# Every two-digit base62 string, in order: a CRC32 (< 62**6) is three of them.
_BASE62_PAIRS = tuple(a + b for a in _BASE62 for b in _BASE62)
_PAIR = len(_BASE62_PAIRS)


def checksum(body: str, width: int = CHECKSUM_LENGTH) -> str:
    """CRC32 of ``body`` in base62 (GitHub-style token checksum)."""
    crc = zlib.crc32(body.encode("ascii"))
    if width != CHECKSUM_LENGTH:
        return base62(crc, width)
    # What base62(crc, 6) returns, in three table lookups instead of six divisions (every
    # presented key is checked).
    high, low = divmod(crc, _PAIR)
    high, middle = divmod(high, _PAIR)
    return _BASE62_PAIRS[high] + _BASE62_PAIRS[middle] + _BASE62_PAIRS[low]


@dataclass(frozen=True)
class ParsedKey:
    key_id: str
    secret: str = ""

    def __repr__(self) -> str:
        return f"ParsedKey(key_id={self.key_id!r}, secret=<redacted>)"


def generate_key() -> tuple[str, ParsedKey]:
    """Returns a new secret key (shown once) and its parsed form."""
    key_id = "".join(secrets.choice(_BASE62) for _ in range(KEY_ID_LENGTH))
    secret = base62(int.from_bytes(secrets.token_bytes(32), "big"), SECRET_LENGTH)
    body = f"{PREFIX}{key_id}_{secret}"
    return body + checksum(body), ParsedKey(key_id, secret)


def parse_key(token: str) -> ParsedKey | None:
    """Parses a presented key; None when malformed (no database needed to refuse it)."""
    if len(token) != MAX_KEY_LENGTH:
        return None
    match = _KEY_PATTERN.fullmatch(token)
    if match is None:
        return None
    expected = checksum(token[:-CHECKSUM_LENGTH])
    if not hmac.compare_digest(expected, match.group(3)):
        return None
    return ParsedKey(match.group(1), match.group(2))


def hash_secret(key: ParsedKey) -> bytes:
    """The value stored for a key: SHA-256 over a domain tag, the key id and the secret."""
    return hashlib.sha256(
        _HASH_DOMAIN + key.key_id.encode("ascii") + b"\x00" + key.secret.encode("ascii")
    ).digest()


def secret_matches(key: ParsedKey, stored_hash: bytes | None) -> bool:
    """Constant-time check; hashes against a dummy when the key id is unknown."""
    expected = stored_hash if stored_hash is not None else DUMMY_HASH
    return hmac.compare_digest(hash_secret(key), expected) and stored_hash is not None


_base62 = base62  # earlier private names, kept for callers written against them
_checksum = checksum
