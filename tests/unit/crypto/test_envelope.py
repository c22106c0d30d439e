"""Envelope cipher behaviour: round trips, tamper and swap resistance, key handling, rewrap."""

from __future__ import annotations

import dataclasses
import os
import uuid

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from credbroker.crypto import (
    EnvelopeCipher,
    IntegrityError,
    Keyring,
    MalformedBlobError,
    UnknownKeyError,
    encryption_context,
    make_key_check,
    verify_key_check,
)
from credbroker.crypto import envelope as envelope_module

KEY_1 = bytes(range(32))
KEY_2 = bytes(range(100, 132))
KEYRING = Keyring(primary_key_id=1, keys={1: KEY_1, 2: KEY_2})
TENANT, CREDENTIAL = uuid.UUID(int=1).bytes, uuid.UUID(int=2).bytes
CONTEXT = encryption_context("api_key", TENANT, CREDENTIAL)
OTHER_CONTEXT = encryption_context("api_key", TENANT, uuid.UUID(int=3).bytes)
SECRET = b'{"api_key":"sk_live_0123456789"}'


def cipher(primary_key_id: int = 1, min_decryption_key_id: int = 1) -> EnvelopeCipher:
    keyring = dataclasses.replace(
        KEYRING, primary_key_id=primary_key_id, min_decryption_key_id=min_decryption_key_id
    )
    return EnvelopeCipher(keyring)


def flip_bit(blob: bytes, bit: int) -> bytes:
    changed = bytearray(blob)
    changed[bit // 8] ^= 1 << (bit % 8)
    return bytes(changed)


@pytest.mark.parametrize("plaintext", [b"", b"x", SECRET, os.urandom(70_000)])
def test_round_trip(plaintext: bytes) -> None:
    blob = cipher().encrypt(plaintext, CONTEXT)

    assert len(blob) == len(plaintext) + 94
    assert blob[:6] == b"\x02\x01\x00\x00\x00\x01"
    assert cipher().decrypt(blob, CONTEXT) == plaintext
    assert EnvelopeCipher.key_id_of(blob) == 1


def test_same_plaintext_gives_distinct_deks_nonces_and_blobs() -> None:
    blobs = [cipher().encrypt(SECRET, CONTEXT) for _ in range(1000)]
    kek = AESGCM(KEY_1)
    deks = {kek.decrypt(blob[6:18], blob[18:66], blob[:6] + CONTEXT) for blob in blobs}

    assert len(deks) == 1000
    assert len({blob[6:18] for blob in blobs}) == 1000
    assert len({blob[66:78] for blob in blobs}) == 1000
    assert len(set(blobs)) == 1000


@pytest.mark.parametrize(
    "context",
    [OTHER_CONTEXT, b"", CONTEXT[:-1], CONTEXT + b"\0", encryption_context("password", TENANT)],
)
def test_wrong_context_fails(context: bytes) -> None:
    blob = cipher().encrypt(SECRET, CONTEXT)

    with pytest.raises(IntegrityError):
        cipher().decrypt(blob, context)


def test_every_single_bit_flip_fails() -> None:
    blob = cipher().encrypt(b"pw", CONTEXT)

    for bit in range(len(blob) * 8):
        with pytest.raises(IntegrityError):
            cipher().decrypt(flip_bit(blob, bit), CONTEXT)


@settings(max_examples=200, deadline=None)
@given(plaintext=st.binary(max_size=2048), data=st.data())
def test_bit_flip_anywhere_fails(plaintext: bytes, data: st.DataObject) -> None:
    blob = cipher().encrypt(plaintext, CONTEXT)
    bit = data.draw(st.integers(0, len(blob) * 8 - 1), label="bit")

    with pytest.raises(IntegrityError):
        cipher().decrypt(flip_bit(blob, bit), CONTEXT)


def refuse_crypto(*args: object) -> None:
    raise AssertionError("AESGCM used before the header was validated")


@pytest.mark.parametrize("length", [0, 1, 77, 93])
def test_truncated_blob_is_refused_before_crypto(
    length: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    blob = cipher().encrypt(b"", CONTEXT)
    monkeypatch.setattr(envelope_module, "AESGCM", refuse_crypto)

    with pytest.raises(IntegrityError, match="malformed"):
        cipher().decrypt(blob[:length], CONTEXT)
    with pytest.raises(IntegrityError, match="malformed"):
        cipher().rewrap(blob[:length], CONTEXT)


@pytest.mark.parametrize("offset", [0, 1])
@pytest.mark.parametrize("value", [0x00, 0x03, 0xFF])
def test_unknown_format_or_suite_is_refused_before_crypto(
    offset: int, value: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    blob = bytearray(cipher().encrypt(SECRET, CONTEXT))
    blob[offset] = value
    monkeypatch.setattr(envelope_module, "AESGCM", refuse_crypto)

    with pytest.raises(IntegrityError, match="malformed"):
        cipher().decrypt(bytes(blob), CONTEXT)
    with pytest.raises(IntegrityError, match="malformed"):
        EnvelopeCipher.key_id_of(bytes(blob))


@pytest.mark.parametrize("key_id", [0, 3, 0x88888888, 0xFFFFFFFF])
def test_unknown_key_id_is_refused_before_crypto(
    key_id: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    blob = cipher().encrypt(SECRET, CONTEXT)
    restamped = blob[:2] + key_id.to_bytes(4, "big") + blob[6:]
    monkeypatch.setattr(envelope_module, "AESGCM", refuse_crypto)

    with pytest.raises(UnknownKeyError) as excinfo:
        cipher().decrypt(restamped, CONTEXT)
    assert str(excinfo.value) == f"ciphertext key id {key_id} is not available for decryption"


@pytest.mark.parametrize("blob", [None, "text", bytearray(200), memoryview(bytes(200)), 12345])
def test_non_bytes_blob_is_refused(blob: object) -> None:
    with pytest.raises(IntegrityError, match="malformed"):
        cipher().decrypt(blob, CONTEXT)  # type: ignore[arg-type]


def test_restamped_with_another_valid_key_id_fails() -> None:
    blob = cipher().encrypt(SECRET, CONTEXT)
    restamped = blob[:2] + (2).to_bytes(4, "big") + blob[6:]

    with pytest.raises(IntegrityError) as excinfo:
        cipher().decrypt(restamped, CONTEXT)
    assert not isinstance(excinfo.value, UnknownKeyError)


@pytest.mark.parametrize(("start", "end"), [(6, 66), (18, 66), (66, None), (78, None)])
def test_swapping_a_region_between_blobs_fails(start: int, end: int | None) -> None:
    first = cipher().encrypt(SECRET, CONTEXT)
    second = cipher().encrypt(SECRET, CONTEXT)

    swapped = first[:start] + second[start:end] + (first[end:] if end else b"")

    with pytest.raises(IntegrityError):
        cipher().decrypt(swapped, CONTEXT)


def test_integrity_error_message_is_generic() -> None:
    blob = cipher().encrypt(SECRET, CONTEXT)

    with pytest.raises(IntegrityError) as excinfo:
        cipher().decrypt(blob, OTHER_CONTEXT)

    assert str(excinfo.value) == "ciphertext failed authentication"
    assert excinfo.value.__cause__ is None and excinfo.value.__suppress_context__


def test_rewrap_moves_the_dek_and_keeps_the_payload() -> None:
    old_blob = cipher(primary_key_id=1).encrypt(SECRET, CONTEXT)

    new_blob = cipher(primary_key_id=2).rewrap(old_blob, CONTEXT)

    assert EnvelopeCipher.key_id_of(new_blob) == 2
    assert new_blob[:2] == old_blob[:2]
    assert new_blob[6:18] != old_blob[6:18]
    assert new_blob[66:] == old_blob[66:]
    assert cipher(primary_key_id=2).decrypt(new_blob, CONTEXT) == SECRET
    assert cipher(primary_key_id=2).rewrap(new_blob, CONTEXT) is new_blob

    raised_min = cipher(primary_key_id=2, min_decryption_key_id=2)
    assert raised_min.decrypt(new_blob, CONTEXT) == SECRET
    with pytest.raises(UnknownKeyError, match="key id 1 "):
        raised_min.decrypt(old_blob, CONTEXT)
    with pytest.raises(UnknownKeyError, match="key id 1 "):
        raised_min.rewrap(old_blob, CONTEXT)


def test_rewrap_checks_the_wrapped_dek() -> None:
    blob = cipher(primary_key_id=1).encrypt(SECRET, CONTEXT)

    with pytest.raises(IntegrityError):
        cipher(primary_key_id=2).rewrap(blob, OTHER_CONTEXT)
    with pytest.raises(IntegrityError):
        cipher(primary_key_id=2).rewrap(flip_bit(blob, 8 * 40), CONTEXT)


@pytest.mark.parametrize("offset", [70, 80, -1], ids=["payload-nonce", "payload", "tag"])
def test_rewrap_checks_the_payload_too(offset: int) -> None:
    """A blob whose payload was altered is not moved (a later read would fail anyway)."""
    blob = bytearray(cipher(primary_key_id=1).encrypt(SECRET, CONTEXT))
    blob[offset] ^= 0x01

    with pytest.raises(IntegrityError, match="failed authentication"):
        cipher(primary_key_id=2).rewrap(bytes(blob), CONTEXT)


def test_malformed_blob_is_its_own_error() -> None:
    with pytest.raises(MalformedBlobError, match="ciphertext is malformed"):
        cipher().decrypt(b"\x01\x01" + bytes(10), CONTEXT)


def test_random_bytes_of_the_wrong_size_are_refused() -> None:
    short = EnvelopeCipher(KEYRING, random_bytes=lambda size: bytes(size - 1))

    with pytest.raises(ValueError, match="random_bytes returned 31 bytes instead of 32"):
        short.encrypt(SECRET, CONTEXT)


def test_encryption_context_encoding() -> None:
    for fmt in (1, 2):
        assert encryption_context("api_key", b"\x01\x02", "é", format=fmt) == (
            b"\x00\x14credbroker/secret/v" + str(fmt).encode()
            + b"\x00\x07api_key"
            + b"\x00\x02\x01\x02"
            + b"\x00\x02\xc3\xa9"
        )  # fmt: skip
    assert encryption_context("p", "x") == encryption_context("p", "x", format=2)
    with pytest.raises(ValueError, match="unknown blob format 3"):
        encryption_context("p", "x", format=3)
    assert encryption_context("p", "x") == encryption_context("p", b"x")
    assert len(encryption_context("p", bytes(65535))) == 22 + 3 + 65537
    with pytest.raises(ValueError, match="65536 bytes"):
        encryption_context("p", bytes(65536))
    with pytest.raises(ValueError, match="65536 bytes"):
        encryption_context("p" * 65536)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (("p", "ab", "c"), ("p", "a", "bc")),
        (("p", "a", ""), ("p", "", "a")),
        (("p", "a"), ("p", "a", "")),
        (("pa", "b"), ("p", "ab")),
        (("p", "\x00\x01a"), ("p", "", "a")),
        (("api_key",), ("password",)),
    ],
)
def test_encryption_context_is_injective_for_tricky_inputs(
    first: tuple[str, ...], second: tuple[str, ...]
) -> None:
    assert encryption_context(*first) != encryption_context(*second)


@settings(deadline=None)
@given(
    first=st.lists(st.binary(max_size=4), min_size=1, max_size=4),
    second=st.lists(st.binary(max_size=4), min_size=1, max_size=4),
)
def test_encryption_context_is_injective(first: list[bytes], second: list[bytes]) -> None:
    purpose_1, purpose_2 = first[0].hex(), second[0].hex()
    same = encryption_context(purpose_1, *first[1:]) == encryption_context(purpose_2, *second[1:])

    assert same == (first == second)


def test_key_check() -> None:
    check = make_key_check(1, KEY_1)

    assert len(check) == 48
    assert verify_key_check(1, KEY_1, check)
    assert make_key_check(1, KEY_1) != check
    assert not verify_key_check(1, KEY_2, check)
    assert not verify_key_check(2, KEY_1, check)
    assert not verify_key_check(1, KEY_1, check[:-1])
    assert not verify_key_check(1, KEY_1, flip_bit(check, 100))
