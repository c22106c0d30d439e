"""Known-answer vectors pinning envelope format 2, binding v2 (issue 9, finding 11).

``golden/envelope_v2.json`` holds fixed KEKs, DEKs, nonces and contexts with the exact blobs they
must give, computed with raw AESGCM over the documented layout. Never regenerate it to make a
test pass: a committed blob that stops decrypting means stored credentials would stop decrypting
too. Besides encryption, decryption and rewrap, it pins the rebinding of a v1 blob and checks
that a blob is refused under the context of a row with any one id changed (the row swaps of
finding 11) and under the other format.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from credbroker.bound_cipher import BoundCipher
from credbroker.crypto import (
    FORMAT_V1,
    FORMAT_V2,
    EnvelopeCipher,
    IntegrityError,
    Keyring,
    encryption_context,
)
from credbroker.domain.connections import CREDENTIALS_PURPOSE, binding
from credbroker.domain.errors import DataIntegrityError
from credbroker.domain.ports import Binding

GOLDEN_DIR = Path(__file__).parent / "golden"
GOLDEN = json.loads((GOLDEN_DIR / "envelope_v2.json").read_text())
V1 = json.loads((GOLDEN_DIR / "envelope_v1.json").read_text())
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


def parts(case: dict[str, Any]) -> list[bytes]:
    return [bytes.fromhex(part) for part in case["context_parts"]]


def by_name(name: str) -> dict[str, Any]:
    return next(case for case in CASES if case["name"] == name)


def test_same_keys_as_v1_and_every_column_purpose() -> None:
    assert GOLDEN["keys"] == V1["keys"]
    assert {case["key_id"] for case in CASES} == {1, 2}
    assert {case["purpose"] for case in CASES} == {
        "connection.credentials",
        "connection.connection_config",
        "webhook_endpoint.signing_secret",
    }


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_context_encoding_matches(case: dict[str, Any]) -> None:
    assert encryption_context(case["purpose"], *parts(case)) == field(case, "context")
    assert encryption_context(case["purpose"], *parts(case), format=FORMAT_V2) == field(
        case, "context"
    )


def test_domain_binding_gives_the_committed_connection_context() -> None:
    """The ids a connection's blobs are bound to, in the order the vectors commit."""
    case = by_name("credentials_kek1")
    environment, integration, connection, row = parts(case)
    bound = binding(uuid.UUID(bytes=environment), integration.decode(), connection.decode(),
                    uuid.UUID(bytes=row))  # fmt: skip
    assert case["purpose"] == CREDENTIALS_PURPOSE
    assert encryption_context(CREDENTIALS_PURPOSE, *bound.ids) == field(case, "context")


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_encrypt_gives_committed_blob(case: dict[str, Any]) -> None:
    random_bytes = ScriptedRandom(
        field(case, "dek"), field(case, "dek_wrap_nonce"), field(case, "payload_nonce")
    )
    cipher = EnvelopeCipher(
        Keyring(primary_key_id=case["key_id"], keys=KEYS), random_bytes=random_bytes
    )

    blob = cipher.encrypt(case["plaintext"].encode(), field(case, "context"))

    assert blob.hex() == case["blob"]
    assert random_bytes.chunks == []


@pytest.mark.parametrize("primary_key_id", [1, 2])
@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_committed_blob_decrypts(case: dict[str, Any], primary_key_id: int) -> None:
    cipher = EnvelopeCipher(Keyring(primary_key_id=primary_key_id, keys=KEYS))

    assert cipher.decrypt(field(case, "blob"), field(case, "context")) == case["plaintext"].encode()
    assert EnvelopeCipher.format_of(field(case, "blob")) == FORMAT_V2
    assert EnvelopeCipher.key_id_of(field(case, "blob")) == case["key_id"]


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_committed_blob_follows_the_documented_layout(case: dict[str, Any]) -> None:
    """Parse by the documented offsets with raw AESGCM, independently of EnvelopeCipher."""
    blob, context = field(case, "blob"), field(case, "context")

    assert blob[0:2] == b"\x02\x01"
    assert context.startswith(b"\x00\x14credbroker/secret/v2")
    assert int.from_bytes(blob[2:6], "big") == case["key_id"]
    assert len(blob) == 94 + len(case["plaintext"].encode())
    dek = AESGCM(KEYS[case["key_id"]]).decrypt(blob[6:18], blob[18:66], blob[0:6] + context)
    assert dek == field(case, "dek")
    assert AESGCM(dek).decrypt(blob[66:78], blob[78:], blob[0:2] + context) == (
        case["plaintext"].encode()
    )


@pytest.mark.parametrize(
    "changed", range(4), ids=["environment", "integration", "connection", "row"]
)
def test_committed_connection_blob_refused_with_any_id_changed(changed: int) -> None:
    """The swaps of finding 11: the same blob presented as another row's, one id at a time."""
    case = by_name("credentials_kek1")
    other = parts(case)
    other[changed] = other[changed][:-1] + bytes([other[changed][-1] ^ 0x01])
    cipher = EnvelopeCipher(Keyring(primary_key_id=1, keys=KEYS))

    with pytest.raises(IntegrityError):
        cipher.decrypt(field(case, "blob"), encryption_context(case["purpose"], *other))


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_committed_blob_is_no_format_1_blob(case: dict[str, Any]) -> None:
    """Neither the format byte nor the context can be downgraded to binding v1."""
    blob = field(case, "blob")
    cipher = EnvelopeCipher(Keyring(primary_key_id=1, keys=KEYS))
    v1_context = encryption_context(case["purpose"], *parts(case), format=FORMAT_V1)

    for candidate in (blob, b"\x01" + blob[1:]):
        with pytest.raises(IntegrityError):
            cipher.decrypt(candidate, v1_context)
    with pytest.raises(IntegrityError):
        cipher.decrypt(b"\x01" + blob[1:], field(case, "context"))


def test_rewrap_gives_committed_blob() -> None:
    vector = GOLDEN["rewrap"]
    source = by_name(vector["case"])
    keyring = Keyring(primary_key_id=vector["to_key_id"], keys=KEYS)
    cipher = EnvelopeCipher(keyring, random_bytes=ScriptedRandom(field(vector, "dek_wrap_nonce")))

    blob = cipher.rewrap(field(source, "blob"), field(source, "context"))

    assert blob.hex() == vector["blob"]
    assert blob[:2] == b"\x02\x01" and blob[66:] == field(source, "blob")[66:]
    assert cipher.decrypt(blob, field(source, "context")) == source["plaintext"].encode()


def test_rebind_of_a_v1_blob_gives_committed_blob() -> None:
    vector = GOLDEN["rebind"]
    source = next(case for case in V1["cases"] if case["name"] == vector["v1_case"])
    new_context = encryption_context(vector["purpose"], *parts(vector))
    assert new_context == field(vector, "context")
    cipher = EnvelopeCipher(
        Keyring(primary_key_id=vector["to_key_id"], keys=KEYS),
        random_bytes=ScriptedRandom(
            field(vector, "dek"), field(vector, "dek_wrap_nonce"), field(vector, "payload_nonce")
        ),
    )

    blob = cipher.rebind(field(source, "blob"), field(source, "context"), new_context)

    assert blob.hex() == vector["blob"]
    assert cipher.decrypt(blob, new_context) == source["plaintext"].encode()
    with pytest.raises(IntegrityError):
        cipher.decrypt(blob, field(source, "context"))


def test_bound_cipher_reads_v1_only_when_accepted_and_rewrap_rebinds() -> None:
    """The policy on the golden blobs: a v1 blob is read (and rebound by a rewrap) only with
    accept_binding_v1; a v2 blob whatever the setting."""
    v1_case = next(case for case in V1["cases"] if case["name"] == "api_key_kek1")
    environment, integration, row = (bytes.fromhex(p) for p in v1_case["context_parts"][:3])
    # A Binding whose legacy ids are the v1 vector's context parts.
    bound = Binding((environment, integration, b"user-42", row), tuple(parts(v1_case)))
    keyring = Keyring(primary_key_id=2, keys=KEYS)
    accepting = BoundCipher(EnvelopeCipher(keyring), accept_binding_v1=True)
    refusing = BoundCipher(EnvelopeCipher(keyring), accept_binding_v1=False)
    v1_blob = field(v1_case, "blob")

    assert accepting.decrypt(v1_blob, purpose="api_key", binding=bound) == (
        v1_case["plaintext"].encode()
    )
    with pytest.raises(DataIntegrityError):
        refusing.decrypt(v1_blob, purpose="api_key", binding=bound)
    with pytest.raises(DataIntegrityError, match="legacy binding"):
        refusing.rewrap(v1_blob, purpose="api_key", binding=bound)
    moved = accepting.rewrap(v1_blob, purpose="api_key", binding=bound)
    assert moved[:6] == b"\x02\x01\x00\x00\x00\x02"
    assert refusing.decrypt(moved, purpose="api_key", binding=bound) == (
        v1_case["plaintext"].encode()
    )
    other_connection = bound._replace(ids=(environment, integration, b"user-43", row))
    with pytest.raises(DataIntegrityError):
        refusing.decrypt(moved, purpose="api_key", binding=other_connection)
