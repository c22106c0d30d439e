"""Known-answer vectors pinning envelope format 1, binding v1 (security.md T01); blobs are no longer
written in it, but every one stored must keep decrypting and rebinding (test_golden_v2.py).

``golden/envelope_v1.json`` holds fixed KEKs, DEKs, nonces and contexts with the exact blobs they
must give. Never regenerate it to make a test pass: a committed blob that stops decrypting means
stored credentials would stop decrypting too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from credbroker.crypto import (
    FORMAT_V1,
    EnvelopeCipher,
    Keyring,
    encryption_context,
    verify_key_check,
)

GOLDEN = json.loads((Path(__file__).parent / "golden" / "envelope_v1.json").read_text())
KEYS = {int(key_id): bytes.fromhex(key) for key_id, key in GOLDEN["keys"].items()}
CASES: list[dict[str, Any]] = GOLDEN["cases"]


class ScriptedRandom:
    """A ``random_bytes`` source handing out fixed chunks: DEK, wrap nonce, payload nonce."""

    def __init__(self, *chunks: bytes) -> None:
        self.chunks = list(chunks)

    def __call__(self, size: int) -> bytes:
        chunk = self.chunks.pop(0)
        assert len(chunk) == size
        return chunk


def field(case: dict[str, Any], name: str) -> bytes:
    return bytes.fromhex(case[name])


def by_name(name: str) -> dict[str, Any]:
    return next(case for case in CASES if case["name"] == name)


def test_vectors_cover_both_keys_and_both_purposes() -> None:
    assert sorted(KEYS) == [1, 2]
    assert {case["key_id"] for case in CASES} == {1, 2}
    assert {case["purpose"] for case in CASES} == {"api_key", "basic_auth"}


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_context_encoding_matches(case: dict[str, Any]) -> None:
    parts = [bytes.fromhex(part) for part in case["context_parts"]]

    assert encryption_context(case["purpose"], *parts, format=FORMAT_V1) == field(case, "context")


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_encrypt_gives_committed_blob(case: dict[str, Any]) -> None:
    random_bytes = ScriptedRandom(
        field(case, "dek"), field(case, "dek_wrap_nonce"), field(case, "payload_nonce")
    )
    cipher = EnvelopeCipher(
        Keyring(primary_key_id=case["key_id"], keys=KEYS), random_bytes=random_bytes
    )

    blob = cipher.encrypt(case["plaintext"].encode(), field(case, "context"), format=FORMAT_V1)

    assert blob.hex() == case["blob"]
    assert random_bytes.chunks == []


@pytest.mark.parametrize("primary_key_id", [1, 2])
@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_committed_blob_decrypts(case: dict[str, Any], primary_key_id: int) -> None:
    cipher = EnvelopeCipher(Keyring(primary_key_id=primary_key_id, keys=KEYS))

    plaintext = cipher.decrypt(field(case, "blob"), field(case, "context"))

    assert plaintext == case["plaintext"].encode()
    assert EnvelopeCipher.key_id_of(field(case, "blob")) == case["key_id"]


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_committed_blob_follows_the_documented_layout(case: dict[str, Any]) -> None:
    """Parse by the offsets in security.md with raw AESGCM, independently of EnvelopeCipher."""
    blob, context = field(case, "blob"), field(case, "context")

    assert blob[0:2] == b"\x01\x01"
    assert int.from_bytes(blob[2:6], "big") == case["key_id"]
    assert blob[6:18] == field(case, "dek_wrap_nonce")
    assert blob[66:78] == field(case, "payload_nonce")
    assert len(blob) == 94 + len(case["plaintext"].encode())
    dek = AESGCM(KEYS[case["key_id"]]).decrypt(blob[6:18], blob[18:66], blob[0:6] + context)
    assert dek == field(case, "dek")
    assert AESGCM(dek).decrypt(blob[66:78], blob[78:], blob[0:2] + context) == (
        case["plaintext"].encode()
    )


def test_rewrap_gives_committed_blob() -> None:
    vector = GOLDEN["rewrap"]
    source = by_name(vector["case"])
    keyring = Keyring(primary_key_id=vector["to_key_id"], keys=KEYS)
    cipher = EnvelopeCipher(keyring, random_bytes=ScriptedRandom(field(vector, "dek_wrap_nonce")))

    blob = cipher.rewrap(field(source, "blob"), field(source, "context"))

    assert blob.hex() == vector["blob"]
    assert blob[66:] == field(source, "blob")[66:]
    assert cipher.decrypt(blob, field(source, "context")) == source["plaintext"].encode()


@pytest.mark.parametrize("vector", GOLDEN["kek_checks"], ids=lambda vector: str(vector["key_id"]))
def test_committed_key_check_verifies(vector: dict[str, Any]) -> None:
    key_id = vector["key_id"]
    other_key = KEYS[3 - key_id]

    assert verify_key_check(key_id, KEYS[key_id], field(vector, "check"))
    assert not verify_key_check(key_id, other_key, field(vector, "check"))
