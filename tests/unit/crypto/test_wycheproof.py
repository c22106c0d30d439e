"""Wycheproof AES-GCM vectors (security.md T02), read from the shared vectors folder.

The file is third-party test data kept outside the repository, at
``../shared/vectors/wycheproof/aes_gcm_test.json`` from the repository root, or under the
folder named by ``CREDBROKER_VECTORS_DIR``. The tests skip when it is absent.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from credbroker.crypto import EnvelopeCipher, IntegrityError, Keyring, encryption_context

CONTEXT = encryption_context("api_key", b"tenant", b"credential")


def vectors_file() -> Path:
    configured = os.environ.get("CREDBROKER_VECTORS_DIR")
    vectors = (
        Path(configured)
        if configured
        else Path(__file__).resolve().parents[3].parent / "shared" / "vectors"
    )
    return vectors / "wycheproof" / "aes_gcm_test.json"


def scripted_random(*chunks: bytes) -> Callable[[int], bytes]:
    remaining = list(chunks)
    return lambda size: remaining.pop(0)


@pytest.fixture(scope="module")
def aes256_tests() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(group, test) pairs for 256-bit keys and 128-bit tags, the only sizes our format uses."""
    path = vectors_file()
    if not path.is_file():
        pytest.skip(f"Wycheproof vectors not found at {path}")
    document = json.loads(path.read_text())
    assert document["algorithm"] == "AES-GCM"
    return [
        (group, test)
        for group in document["testGroups"]
        if group["keySize"] == 256 and group["tagSize"] == 128
        for test in group["tests"]
    ]


def test_aes256_gcm_with_96_bit_iv(
    aes256_tests: list[tuple[dict[str, Any], dict[str, Any]]],
) -> None:
    ran = 0
    for group, test in aes256_tests:
        if group["ivSize"] != 96:
            continue
        key, iv, aad, msg, ct, tag = (
            bytes.fromhex(test[name]) for name in ("key", "iv", "aad", "msg", "ct", "tag")
        )
        aead = AESGCM(key)
        if test["result"] == "valid":
            assert aead.encrypt(iv, msg, aad) == ct + tag, test["tcId"]
            assert aead.decrypt(iv, ct + tag, aad) == msg, test["tcId"]
        else:
            assert test["result"] == "invalid", test["tcId"]
            with pytest.raises(InvalidTag):
                aead.decrypt(iv, ct + tag, aad)
        ran += 1

    assert ran > 0


def test_envelope_refuses_payloads_under_other_iv_sizes(
    aes256_tests: list[tuple[dict[str, Any], dict[str, Any]]],
) -> None:
    """Our layout fixes a 12-byte payload nonce, so a payload made with any other IV is refused.

    Each vector's key serves as the DEK; where ``AESGCM`` accepts the IV size (8 to 128 bytes), the
    payload is a genuine encryption under that IV with our AAD, so only the layout refuses it.
    """
    ran = 0
    for group, test in aes256_tests:
        if group["ivSize"] == 96:
            continue
        dek, iv, msg, ct, tag = (
            bytes.fromhex(test[name]) for name in ("key", "iv", "msg", "ct", "tag")
        )
        cipher = EnvelopeCipher(
            Keyring(primary_key_id=1, keys={1: bytes(range(32))}),
            random_bytes=scripted_random(dek, bytes(12), bytes(12)),
        )
        header = cipher.encrypt(msg, CONTEXT)[:66]
        payload = ct + tag
        if 8 <= len(iv) <= 128:
            payload = AESGCM(dek).encrypt(iv, msg, header[:2] + CONTEXT)
            assert AESGCM(dek).decrypt(iv, payload, header[:2] + CONTEXT) == msg

        with pytest.raises(IntegrityError):
            cipher.decrypt(header + iv + payload, CONTEXT)
        ran += 1

    assert ran > 0
