"""Envelope encryption of credential secrets (``security.md`` §1.2, ciphertext layouts 1 and 2).

Every encryption makes a fresh 32-byte DEK, encrypts the plaintext with it and wraps the DEK
with the primary KEK, both with AES-256-GCM (``cryptography``'s ``AESGCM``). A blob has fixed
offsets and no length fields::

    offset  len   field
    0       1     format = 0x02 (0x01 in blobs written before binding v2)
    1       1     suite = 0x01 (payload AES-256-GCM, DEK wrap AES-256-GCM)
    2       4     kek_id, uint32 big-endian
    6       12    dek_wrap_nonce
    18      48    wrapped_dek = AESGCM(KEK).encrypt(dek_wrap_nonce, DEK, blob[0:6] ‖ context)
    66      12    payload_nonce
    78      n+16  AESGCM(DEK).encrypt(payload_nonce, plaintext, blob[0:2] ‖ context)

The payload AAD leaves out kek_id and the wrapped DEK, so rotating the KEK rewrites bytes 2..65
only. ``context`` (see ``encryption_context``) binds a blob to its row: a blob copied to another
row fails to decrypt.

The two formats have the same layout; the format says which binding the caller's context
follows, and it is authenticated (it is in both AADs, and the context's domain string names it
too), so a blob cannot be passed off as the other format. Format 1 contexts bind the row id
only; format 2 contexts bind every id the row is found by (see ``credbroker.bootstrap``). Blobs
are written in format 2; format 1 blobs are read, rewrapped, and moved to format 2 with
:meth:`EnvelopeCipher.rebind`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .keyring import Keyring

FORMAT_V1 = 0x01
FORMAT_V2 = 0x02
CURRENT_FORMAT = FORMAT_V2
FORMATS = frozenset({FORMAT_V1, FORMAT_V2})
SUITE_AES256GCM = 0x01
_PREFIXES = {fmt: bytes([fmt, SUITE_AES256GCM]) for fmt in FORMATS}
_PREFIX_LEN = 2
_DEK_SIZE = 32
_NONCE_SIZE = 12
_TAG_SIZE = 16
_KEY_ID_END = _PREFIX_LEN + 4
_WRAP_NONCE_END = _KEY_ID_END + _NONCE_SIZE
_WRAPPED_DEK_END = _WRAP_NONCE_END + _DEK_SIZE + _TAG_SIZE
_PAYLOAD_NONCE_END = _WRAPPED_DEK_END + _NONCE_SIZE
MIN_BLOB_SIZE = _PAYLOAD_NONCE_END + _TAG_SIZE

_CONTEXT_DOMAINS = {fmt: f"credbroker/secret/v{fmt}".encode() for fmt in FORMATS}
_MAX_CONTEXT_PART = 0xFFFF
_KEK_CHECK_PLAINTEXT = b"credbroker-kek-check"
_KEK_CHECK_AAD_DOMAIN = b"credbroker/kek-check/v1"


class IntegrityError(Exception):
    """A blob is malformed or failed authentication. The message never contains data."""

    def __init__(self, message: str = "ciphertext failed authentication") -> None:
        super().__init__(message)


class MalformedBlobError(IntegrityError):
    """A blob is not bytes, is too short, or has an unknown format or suite."""

    def __init__(self) -> None:
        super().__init__("ciphertext is malformed")


class UnknownKeyError(IntegrityError):
    """A blob's KEK id is not configured, or is below ``min_decryption_key_id``."""

    def __init__(self, key_id: int) -> None:
        super().__init__(f"ciphertext key id {key_id} is not available for decryption")
        self.key_id = key_id


def encryption_context(purpose: str, *parts: bytes | str, format: int = CURRENT_FORMAT) -> bytes:
    """Encode the AAD that binds a blob to its row, canonically and without delimiters.

    The encoding is ``lp(b"credbroker/secret/v<format>") ‖ lp(purpose) ‖ lp(part) ...`` where
    ``lp(x)`` is the 2-byte big-endian length of ``x`` followed by ``x``; text is UTF-8 encoded.
    Use immutable ids only (for example ``tenant_id.bytes``), never display names.

    Args:
        purpose: What the secret is, for example ``"api_key"`` or ``"basic_auth"``.
        *parts: The row's immutable ids, in a fixed order.
        format: The blob format the context is for (its domain string names it).

    Returns:
        The context bytes to pass to ``EnvelopeCipher``.

    Raises:
        ValueError: A part is longer than 65535 bytes once encoded, or the format is unknown.
    """
    encoded = [_purpose_prefix(format, purpose)]
    for part in parts:
        data = part.encode("utf-8") if isinstance(part, str) else part
        if len(data) > _MAX_CONTEXT_PART:
            raise ValueError(f"encryption context part is {len(data)} bytes; the limit is 65535")
        encoded.append(len(data).to_bytes(2, "big"))
        encoded.append(data)
    return b"".join(encoded)


@functools.lru_cache(maxsize=64)
def _purpose_prefix(format: int, purpose: str) -> bytes:
    """``lp(domain) ‖ lp(purpose)``: the same few purposes on every call, so encoded once."""
    if format not in _CONTEXT_DOMAINS:
        raise ValueError(f"unknown blob format {format}")
    return _length_prefixed(_CONTEXT_DOMAINS[format]) + _length_prefixed(purpose)


def _length_prefixed(part: bytes | str) -> bytes:
    data = part.encode("utf-8") if isinstance(part, str) else part
    if len(data) > _MAX_CONTEXT_PART:
        raise ValueError(f"encryption context part is {len(data)} bytes; the limit is 65535")
    return len(data).to_bytes(2, "big") + data


class EnvelopeCipher:
    """Encrypts, decrypts, rewraps and rebinds blobs with a keyring's KEKs."""

    def __init__(
        self, keyring: Keyring, *, random_bytes: Callable[[int], bytes] = os.urandom
    ) -> None:
        """Create a cipher.

        Args:
            keyring: The KEKs; new blobs use its primary key.
            random_bytes: Source of DEKs and nonces; only tests replace ``os.urandom``.
        """
        self._keyring = keyring
        self._random_bytes = random_bytes
        self._keks: dict[int, AESGCM] = {}  # built on first use of each KEK, then reused

    def _kek(self, key_id: int) -> AESGCM:
        kek = self._keks.get(key_id)
        if kek is None:
            kek = self._keks[key_id] = AESGCM(self._keyring.keys[key_id])
        return kek

    def encrypt(self, plaintext: bytes, context: bytes, *, format: int = CURRENT_FORMAT) -> bytes:
        """Encrypt under a fresh DEK wrapped by the primary KEK.

        Args:
            plaintext: The secret.
            context: The row binding from ``encryption_context`` (for the same format).
            format: The blob format; the current one unless a test needs an older blob.

        Returns:
            The blob, ``len(plaintext) + 94`` bytes.
        """
        prefix = _PREFIXES[format]
        dek = self._random(_DEK_SIZE)
        wrapped_dek = self._wrap_dek(prefix, dek, context)
        payload_nonce = self._random(_NONCE_SIZE)
        payload = AESGCM(dek).encrypt(payload_nonce, plaintext, prefix + context)
        return wrapped_dek + payload_nonce + payload

    def decrypt(self, blob: bytes, context: bytes) -> bytes:
        """Authenticate and decrypt a blob with the KEK its header names (no other key is tried).

        Args:
            blob: A blob of either format.
            context: The same context it was encrypted with (for the blob's format).

        Returns:
            The plaintext.

        Raises:
            UnknownKeyError: The blob's KEK is not configured or is below the minimum.
            IntegrityError: The blob is malformed, was altered, or belongs to another context.
        """
        return self._open_payload(self._unwrap_dek(blob, context), blob, context)

    def rewrap(self, blob: bytes, context: bytes) -> bytes:
        """Move a blob to the primary KEK without changing its format or payload bytes.

        The DEK is unwrapped (checking its AAD), the payload is authenticated with it (so a blob
        that would not decrypt is never moved and then mistaken for a good one; the plaintext
        stays inside this method), and the DEK is wrapped again under the primary key with a
        fresh nonce; bytes 66 onwards are copied unchanged. A blob already under the primary key
        is returned as is, unchecked.

        Args:
            blob: A blob of either format.
            context: The context it was encrypted with.

        Returns:
            The blob under the primary KEK.

        Raises:
            UnknownKeyError: The blob's KEK is not configured or is below the minimum.
            IntegrityError: The blob is malformed, or its wrapped DEK or payload fails
                authentication.
        """
        if self.key_id_of(blob) == self._keyring.primary_key_id:
            return blob
        dek = self._unwrap_dek(blob, context)
        self._open_payload(dek, blob, context)
        return self._wrap_dek(blob[:_PREFIX_LEN], dek, context) + blob[_WRAPPED_DEK_END:]

    def rebind(self, blob: bytes, context: bytes, new_context: bytes) -> bytes:
        """Move a blob to the current format and a new context: it is decrypted with
        ``context`` and its plaintext encrypted again (fresh DEK, primary KEK) with
        ``new_context``, within this method.

        Args:
            blob: A blob of either format.
            context: The context it was encrypted with (for its format).
            new_context: The context for the current format.

        Returns:
            A new blob of the current format under the primary KEK.

        Raises:
            UnknownKeyError: The blob's KEK is not configured or is below the minimum.
            IntegrityError: The blob is malformed or fails authentication under ``context``.
        """
        return self.encrypt(self.decrypt(blob, context), new_context)

    @staticmethod
    def format_of(blob: bytes) -> int:
        """The blob's format after checking its type, length, format and suite.

        Raises:
            MalformedBlobError: The blob is not bytes, is too short, or has an unknown
                format/suite.
        """
        if (
            not isinstance(blob, bytes)
            or len(blob) < MIN_BLOB_SIZE
            or _PREFIXES.get(blob[0]) != blob[:_PREFIX_LEN]
        ):
            raise MalformedBlobError
        return blob[0]

    @classmethod
    def key_id_of(cls, blob: bytes) -> int:
        """Read the KEK id from a blob's header after checking its type, length, format and suite.

        Args:
            blob: A blob of either format.

        Returns:
            The KEK id (not authenticated until the blob is decrypted).

        Raises:
            MalformedBlobError: The blob is not bytes, is too short, or has an unknown
                format/suite.
        """
        cls.format_of(blob)
        return int.from_bytes(blob[_PREFIX_LEN:_KEY_ID_END], "big")

    def _random(self, size: int) -> bytes:
        data = self._random_bytes(size)
        if len(data) != size:
            raise ValueError(f"random_bytes returned {len(data)} bytes instead of {size}")
        return data

    def _wrap_dek(self, prefix: bytes, dek: bytes, context: bytes) -> bytes:
        """Return blob[0:66] for ``dek`` under the primary KEK."""
        key_id = self._keyring.primary_key_id
        header = prefix + key_id.to_bytes(4, "big")
        nonce = self._random(_NONCE_SIZE)
        return header + nonce + self._kek(key_id).encrypt(nonce, dek, header + context)

    @staticmethod
    def _open_payload(dek: bytes, blob: bytes, context: bytes) -> bytes:
        try:
            return AESGCM(dek).decrypt(
                blob[_WRAPPED_DEK_END:_PAYLOAD_NONCE_END],
                blob[_PAYLOAD_NONCE_END:],
                blob[:_PREFIX_LEN] + context,
            )
        except InvalidTag:
            raise IntegrityError from None

    def _unwrap_dek(self, blob: bytes, context: bytes) -> bytes:
        key_id = self.key_id_of(blob)
        if key_id not in self._keyring.keys or key_id < self._keyring.min_decryption_key_id:
            raise UnknownKeyError(key_id)
        try:
            return self._kek(key_id).decrypt(
                blob[_KEY_ID_END:_WRAP_NONCE_END],
                blob[_WRAP_NONCE_END:_WRAPPED_DEK_END],
                blob[:_KEY_ID_END] + context,
            )
        except InvalidTag:
            raise IntegrityError from None


def make_key_check(key_id: int, key: bytes) -> bytes:
    """Make the ``kek_registry.check_blob`` that later proves a configured KEK is the right one.

    Args:
        key_id: The KEK's id.
        key: The KEK's 32 bytes.

    Returns:
        ``nonce ‖ AESGCM(key).encrypt(nonce, b"credbroker-kek-check",
        b"credbroker/kek-check/v1" ‖ key_id as uint32 BE)``, 48 bytes.
    """
    nonce = os.urandom(_NONCE_SIZE)
    return nonce + AESGCM(key).encrypt(nonce, _KEK_CHECK_PLAINTEXT, _key_check_aad(key_id))


def verify_key_check(key_id: int, key: bytes, check: bytes) -> bool:
    """Tell whether ``key`` is the KEK that made ``check`` for ``key_id`` (startup self-test).

    Args:
        key_id: The KEK's id.
        key: The configured KEK's 32 bytes.
        check: The stored check blob from ``make_key_check``.

    Returns:
        True if the check authenticates under this key and id; False otherwise (wrong key).
    """
    if len(check) != _NONCE_SIZE + len(_KEK_CHECK_PLAINTEXT) + _TAG_SIZE:
        return False
    try:
        plaintext = AESGCM(key).decrypt(
            check[:_NONCE_SIZE], check[_NONCE_SIZE:], _key_check_aad(key_id)
        )
    except InvalidTag:
        return False
    return plaintext == _KEK_CHECK_PLAINTEXT


def _key_check_aad(key_id: int) -> bytes:
    return _KEK_CHECK_AAD_DOMAIN + key_id.to_bytes(4, "big")
