"""Envelope encryption of stored credentials: the KEK keyring and the blob formats (1 and 2).

IntegrityError         blob malformed or failed authentication  (envelope)
├── MalformedBlobError blob too short, or of an unknown format or suite
└── UnknownKeyError    blob's KEK not configured or below the minimum
KeyringError        keyring configuration invalid             (keyring)
"""

from __future__ import annotations

from .envelope import (
    CURRENT_FORMAT,
    FORMAT_V1,
    FORMAT_V2,
    EnvelopeCipher,
    IntegrityError,
    MalformedBlobError,
    UnknownKeyError,
    encryption_context,
    make_key_check,
    verify_key_check,
)
from .keyring import Keyring, KeyringError, generate_keyring

__all__ = [
    "CURRENT_FORMAT",
    "FORMAT_V1",
    "FORMAT_V2",
    "EnvelopeCipher",
    "IntegrityError",
    "Keyring",
    "KeyringError",
    "MalformedBlobError",
    "UnknownKeyError",
    "encryption_context",
    "generate_keyring",
    "make_key_check",
    "verify_key_check",
]
