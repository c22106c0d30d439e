"""The KEK keyring: numbered 32-byte AES-256 key-encryption keys, one of them primary.

New ciphertexts are wrapped under ``primary_key_id``; any configured key with an id of at least
``min_decryption_key_id`` can unwrap (see ``security.md`` §1.2, Vault's ``min_decryption_version``).

JSON format (what ``Keyring.from_json`` reads and ``Keyring.to_json`` writes)::

    {
      "primary_key_id": 2,
      "min_decryption_key_id": 1,
      "keys": {"1": "<standard base64 of 32 bytes>", "2": "<standard base64 of 32 bytes>"}
    }

- ``keys`` maps decimal key ids (1 to 2**32-1, no sign or leading zeros) to the standard
  base64 (with padding) of exactly 32 random bytes. Duplicate ids are refused.
- ``min_decryption_key_id`` is optional; it defaults to the smallest configured id.
- Unknown fields are refused, so a misspelt field cannot be silently ignored.

Error messages name key ids and field names only, never key bytes or their base64.
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

KEY_SIZE = 32
MAX_KEY_ID = 2**32 - 1
_FIELDS = frozenset({"primary_key_id", "min_decryption_key_id", "keys"})
_CANONICAL_KEY_ID = re.compile(r"[1-9][0-9]{0,9}")
_FIELD_NAME = re.compile(r"[a-z_]{1,64}")  # field-like names; base64 of random bytes is mixed-case


class KeyringError(Exception):
    """The keyring configuration is invalid. The message names key ids only, never key material."""


def _is_key_id(value: object) -> bool:
    return type(value) is int and 1 <= value <= MAX_KEY_ID


def _describe(name: str) -> str:
    """Quote a JSON name in a message unless it could be a misplaced base64 key."""
    if len(name) <= len(str(MAX_KEY_ID)) or _FIELD_NAME.fullmatch(name):
        return repr(name)
    return f"<{len(name)} characters>"


@dataclass(frozen=True, repr=False)
class Keyring:
    """An immutable set of KEKs.

    Attributes:
        primary_key_id: The id of the key that wraps new DEKs.
        keys: Key id to exactly 32 key bytes. Stored as a read-only copy.
        min_decryption_key_id: Blobs under a key id below this are refused. ``0`` (the default)
            means the smallest configured id.
    """

    primary_key_id: int
    keys: Mapping[int, bytes]
    min_decryption_key_id: int = 0

    def __post_init__(self) -> None:
        if not self.keys:
            raise KeyringError("keyring has no keys")
        for key_id, key in self.keys.items():
            if not _is_key_id(key_id):
                shown = key_id if type(key_id) is int else f"of type {type(key_id).__name__}"
                raise KeyringError(f"key id {shown} is not an integer from 1 to {MAX_KEY_ID}")
            if type(key) is not bytes or len(key) != KEY_SIZE:
                raise KeyringError(f"key {key_id} is not {KEY_SIZE} bytes")
        object.__setattr__(self, "keys", MappingProxyType(dict(self.keys)))
        if self.min_decryption_key_id == 0:
            object.__setattr__(self, "min_decryption_key_id", min(self.keys))
        if not _is_key_id(self.min_decryption_key_id):
            raise KeyringError(f"min_decryption_key_id is not an integer from 1 to {MAX_KEY_ID}")
        if not _is_key_id(self.primary_key_id):
            raise KeyringError(f"primary_key_id is not an integer from 1 to {MAX_KEY_ID}")
        if self.primary_key_id not in self.keys:
            raise KeyringError(f"primary key {self.primary_key_id} is not in the keyring")
        if self.primary_key_id < self.min_decryption_key_id:
            raise KeyringError(
                f"primary key {self.primary_key_id} is below "
                f"min_decryption_key_id {self.min_decryption_key_id}"
            )

    def __repr__(self) -> str:
        return (
            f"Keyring(primary_key_id={self.primary_key_id}, key_ids={sorted(self.keys)}, "
            f"min_decryption_key_id={self.min_decryption_key_id})"
        )

    @classmethod
    def from_json(cls, text: str) -> Keyring:
        """Parse a keyring from the JSON format in the module docstring.

        Args:
            text: The JSON document.

        Returns:
            The validated keyring.

        Raises:
            KeyringError: The document is malformed; the message names the problem and key ids only.
        """
        try:
            document = json.loads(text, object_pairs_hook=_refuse_duplicate_names)
        except json.JSONDecodeError as exc:
            # ``from None``: the decode error carries the whole document, keys included.
            raise KeyringError(
                f"keyring is not valid JSON (line {exc.lineno}, column {exc.colno})"
            ) from None
        if not isinstance(document, dict):
            raise KeyringError("keyring JSON is not an object")
        unknown = sorted(_describe(name) for name in document.keys() - _FIELDS)
        if unknown:
            raise KeyringError(f"keyring JSON has unknown fields: {', '.join(unknown)}")
        for name in ("primary_key_id", "keys"):
            if name not in document:
                raise KeyringError(f"keyring JSON is missing field {name!r}")
        for name in ("primary_key_id", "min_decryption_key_id"):
            if name in document and not _is_key_id(document[name]):
                raise KeyringError(f"{name} is not an integer from 1 to {MAX_KEY_ID}")
        if not isinstance(document["keys"], dict):
            raise KeyringError("keyring field 'keys' is not an object")
        keys: dict[int, bytes] = {}
        for name, value in document["keys"].items():
            key_id = _parse_key_id(name)
            keys[key_id] = _parse_key(key_id, value)
        return cls(
            primary_key_id=document["primary_key_id"],
            keys=keys,
            min_decryption_key_id=document.get("min_decryption_key_id", 0),
        )

    def to_json(self) -> str:
        """Serialize to the JSON format in the module docstring (contains key material).

        Returns:
            The JSON document, keys in ascending id order.
        """
        keys = {
            str(key_id): base64.b64encode(self.keys[key_id]).decode()
            for key_id in sorted(self.keys)
        }
        document = {
            "primary_key_id": self.primary_key_id,
            "min_decryption_key_id": self.min_decryption_key_id,
            "keys": keys,
        }
        return json.dumps(document, indent=2)

    def with_new_key(self, key_id: int | None = None, *, primary: bool = False) -> Keyring:
        """Add a fresh random key (rotation step 0, or steps 0 and 1 together).

        Args:
            key_id: The new key's id; defaults to the largest configured id plus one.
            primary: Make the new key primary at once. Leave False when replicas must first be
                able to decrypt under the new key before any of them writes with it.

        Returns:
            A new keyring with the key added.

        Raises:
            KeyringError: The id is already configured or out of range.
        """
        new_id = max(self.keys) + 1 if key_id is None else key_id
        if new_id in self.keys:
            raise KeyringError(f"key {new_id} is already in the keyring")
        return replace(
            self,
            keys={**self.keys, new_id: os.urandom(KEY_SIZE)},
            primary_key_id=new_id if primary else self.primary_key_id,
        )

    def promote(self, key_id: int) -> Keyring:
        """Make a configured key the primary (rotation step 1).

        Args:
            key_id: The id of the key to wrap new DEKs with.

        Returns:
            A new keyring with that primary.

        Raises:
            KeyringError: The key is not configured or is below ``min_decryption_key_id``.
        """
        return replace(self, primary_key_id=key_id)

    def retire(self, key_id: int) -> Keyring:
        """Remove a non-primary key (rotation step 4); blobs under it become undecryptable.

        Args:
            key_id: The id of the key to remove.

        Returns:
            A new keyring without that key.

        Raises:
            KeyringError: The key is not configured or is the primary.
        """
        if key_id not in self.keys:
            raise KeyringError(f"key {key_id} is not in the keyring")
        if key_id == self.primary_key_id:
            raise KeyringError(f"key {key_id} is the primary key and cannot be retired")
        return replace(self, keys={i: k for i, k in self.keys.items() if i != key_id})


def generate_keyring(key_id: int = 1) -> Keyring:
    """Create a keyring holding one fresh random primary key (development and tests only).

    Args:
        key_id: The id of the generated key.

    Returns:
        The new keyring.

    Raises:
        KeyringError: The id is out of range.
    """
    return Keyring(primary_key_id=key_id, keys={key_id: os.urandom(KEY_SIZE)})


def _refuse_duplicate_names(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    names = [name for name, _ in pairs]
    duplicates = sorted({_describe(name) for name in names if names.count(name) > 1})
    if duplicates:
        raise KeyringError(f"keyring JSON repeats names: {', '.join(duplicates)}")
    return dict(pairs)


def _parse_key_id(name: str) -> int:
    if not _CANONICAL_KEY_ID.fullmatch(name) or not _is_key_id(int(name)):
        raise KeyringError(f"key id {_describe(name)} is not an integer from 1 to {MAX_KEY_ID}")
    return int(name)


def _parse_key(key_id: int, value: object) -> bytes:
    try:
        key = base64.b64decode(value, validate=True) if isinstance(value, str) else b""
    except ValueError:  # binascii.Error, or non-ASCII text
        key = b""
    if len(key) != KEY_SIZE:
        raise KeyringError(f"key {key_id} is not {KEY_SIZE} bytes of base64")
    return key
