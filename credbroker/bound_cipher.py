"""The domain's Cipher port on the envelope cipher: associated data from a column's purpose and
its row's binding, per blob format, and the policy for the legacy binding.

Blobs are written in format 2, whose context binds every id the row is found by
(:class:`credbroker.domain.ports.Binding` ``ids``). Format 1 blobs, written before, bind fewer
ids (``legacy_ids``: for a connection, not its connection id, so swapping two rows'
``connection_id`` in the database served one user's secret as the other's). They are read only
while ``accept_binding_v1`` is set (``CREDBROKER_ACCEPT_BINDING_V1``, off by default), for the
upgrade: ``credbroker keyring rewrap`` then moves each of them to format 2 under the row's
current ids. Off, a format 1 blob is refused like any blob that does not authenticate, so one
restored or written into the database later cannot be served (the setting lives outside the
database, which an attacker with write access to it could otherwise use to turn it back on).
"""

from __future__ import annotations

import structlog

from credbroker.crypto import (
    FORMAT_V1,
    EnvelopeCipher,
    IntegrityError,
    MalformedBlobError,
    UnknownKeyError,
    encryption_context,
)
from credbroker.domain.errors import DataIntegrityError
from credbroker.domain.ports import Binding

log = structlog.get_logger("credbroker")


class LegacyBindingRefused(IntegrityError):
    """A blob of format 1 (binding v1) while ``accept_binding_v1`` is off."""

    def __init__(self) -> None:
        super().__init__("ciphertext of the legacy binding (format 1) is refused")


class BoundCipher:
    """Adapts :class:`EnvelopeCipher` to the domain's Cipher port: builds the associated data
    from a purpose and the row binding, and reports failures as DataIntegrityError."""

    def __init__(self, cipher: EnvelopeCipher, *, accept_binding_v1: bool) -> None:
        self._cipher = cipher
        self._accept_v1 = accept_binding_v1

    def encrypt(self, plaintext: bytes, *, purpose: str, binding: Binding) -> bytes:
        return self._cipher.encrypt(plaintext, encryption_context(purpose, *binding.ids))

    def decrypt(self, blob: bytes, *, purpose: str, binding: Binding) -> bytes:
        try:
            return self._cipher.decrypt(blob, self._context(blob, purpose, binding))
        except IntegrityError as exc:
            log.error("ciphertext failed authentication", purpose=purpose, error=str(exc))
            raise DataIntegrityError("stored ciphertext failed authentication") from None

    def rewrap(self, blob: bytes, *, purpose: str, binding: Binding) -> bytes:
        """Raises DataIntegrityError whose message says why (no data): the rewrap reports it
        with the row, so nothing is logged here."""
        try:
            context = self._context(blob, purpose, binding)
            if EnvelopeCipher.format_of(blob) == FORMAT_V1:
                return self._cipher.rebind(blob, context, encryption_context(purpose, *binding.ids))
            return self._cipher.rewrap(blob, context)
        except IntegrityError as exc:
            raise DataIntegrityError(unreadable_reason(exc)) from None

    def _context(self, blob: bytes, purpose: str, binding: Binding) -> bytes:
        if EnvelopeCipher.format_of(blob) == FORMAT_V1:
            if not self._accept_v1:
                raise LegacyBindingRefused
            return encryption_context(purpose, *binding.legacy_ids, format=FORMAT_V1)
        return encryption_context(purpose, *binding.ids)


def unreadable_reason(error: IntegrityError) -> str:
    """Why a stored blob cannot be read, for an operator (ids only, never data)."""
    if isinstance(error, UnknownKeyError):
        return (
            f"names master key {error.key_id}, which this keyring cannot use "
            "(not in it, or below min_decryption_key_id)"
        )
    if isinstance(error, MalformedBlobError):
        return "malformed (too short, or an unknown format or suite)"
    if isinstance(error, LegacyBindingRefused):
        return (
            "legacy binding (format 1), refused while CREDBROKER_ACCEPT_BINDING_V1 is off "
            "(on, the rewrap moves it to the current binding)"
        )
    return "fails authentication for this row and column (altered, or copied or moved here)"
