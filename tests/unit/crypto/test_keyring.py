"""Keyring parsing, validation, rotation helpers, and that no message or repr shows key material."""

from __future__ import annotations

import base64
import dataclasses
import json
import traceback

import pytest

from credbroker.crypto import Keyring, KeyringError, generate_keyring

KEY_1 = bytes(range(32))
KEY_2 = bytes(range(100, 132))
B64_1 = base64.b64encode(KEY_1).decode()
B64_2 = base64.b64encode(KEY_2).decode()


def assert_no_key_material(text: str, *keys: bytes) -> None:
    for key in keys:
        for form in (base64.b64encode(key).decode(), key.hex(), repr(key), str(list(key))):
            assert form not in text
        assert base64.b64encode(key).decode()[:16] not in text


def keyring_json(**fields: object) -> str:
    document: dict[str, object] = {"primary_key_id": 1, "keys": {"1": B64_1, "2": B64_2}}
    document.update(fields)
    return json.dumps(document)


def test_json_round_trip() -> None:
    keyring = Keyring(primary_key_id=2, keys={1: KEY_1, 2: KEY_2})

    parsed = Keyring.from_json(keyring.to_json())

    assert parsed == keyring
    assert parsed.keys == {1: KEY_1, 2: KEY_2}
    assert parsed.primary_key_id == 2
    assert parsed.min_decryption_key_id == 1


def test_json_documented_format() -> None:
    text = (
        '{"primary_key_id": 2, "min_decryption_key_id": 2, '
        '"keys": {"1": "' + B64_1 + '", "2": "' + B64_2 + '"}}'
    )

    keyring = Keyring.from_json(text)

    assert keyring == Keyring(primary_key_id=2, keys={1: KEY_1, 2: KEY_2}, min_decryption_key_id=2)
    assert json.loads(keyring.to_json()) == {
        "primary_key_id": 2,
        "min_decryption_key_id": 2,
        "keys": {"1": B64_1, "2": B64_2},
    }


def test_min_decryption_key_id_defaults_to_smallest_id() -> None:
    assert Keyring.from_json(keyring_json()).min_decryption_key_id == 1
    assert Keyring(primary_key_id=7, keys={9: KEY_1, 7: KEY_2}).min_decryption_key_id == 7


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"primary_key_id": 1, "keys": {"1": "' + B64_1, "not valid JSON"),
        (json.dumps([B64_1]), "not an object"),
        (json.dumps({"keys": {"1": B64_1}}), "missing field 'primary_key_id'"),
        (json.dumps({"primary_key_id": 1}), "missing field 'keys'"),
        (keyring_json(keys=[B64_1]), "'keys' is not an object"),
        (keyring_json(keys={}), "no keys"),
        (keyring_json(keys={"x": B64_1}), "key id 'x' is not an integer"),
        (keyring_json(keys={B64_2: B64_1}), "key id <44 characters> is not an integer"),
        (keyring_json(keys={"1": B64_1, "01": B64_2}), "key id '01' is not an integer"),
        (keyring_json(keys={"0": B64_1}), "key id '0' is not an integer"),
        (keyring_json(keys={"-1": B64_1}), "key id '-1' is not an integer"),
        (keyring_json(keys={"4294967296": B64_1}), "key id '4294967296' is not an integer"),
        (keyring_json(keys={"1": B64_1, " 2": B64_2}), "key id ' 2' is not an integer"),
        (keyring_json(keys={"1": B64_2[:-4]}), "key 1 is not 32 bytes of base64"),
        (keyring_json(keys={"1": B64_1 + "AAAA"}), "key 1 is not 32 bytes of base64"),
        (keyring_json(keys={"1": B64_1[:-2] + "!="}), "key 1 is not 32 bytes of base64"),
        (keyring_json(keys={"1": B64_1[:-2] + "é="}), "key 1 is not 32 bytes of base64"),
        (keyring_json(keys={"1": KEY_1.hex()}), "key 1 is not 32 bytes of base64"),
        (keyring_json(keys={"1": list(KEY_1)}), "key 1 is not 32 bytes of base64"),
        (keyring_json(primary_key_id="1"), "primary_key_id is not an integer"),
        (keyring_json(primary_key_id=True), "primary_key_id is not an integer"),
        (keyring_json(primary_key_id=3), "primary key 3 is not in the keyring"),
        (keyring_json(min_decryption_key_id=0), "min_decryption_key_id is not an integer"),
        (keyring_json(min_decryption_key_id=2), "primary key 1 is below min_decryption_key_id 2"),
        (keyring_json(min_decryption_kek_id=1), "unknown fields: 'min_decryption_kek_id'"),
        (keyring_json(**{B64_2: 1}), "unknown fields: <44 characters>"),
        (
            '{"primary_key_id": 1, "keys": {"1": "' + B64_1 + '", "1": "' + B64_2 + '"}}',
            "repeats names: '1'",
        ),
    ],
)
def test_malformed_json_is_refused_without_showing_keys(text: str, message: str) -> None:
    with pytest.raises(KeyringError) as excinfo:
        Keyring.from_json(text)

    assert message in str(excinfo.value)
    assert_no_key_material("".join(traceback.format_exception(excinfo.value)), KEY_1, KEY_2)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"primary_key_id": 1, "keys": {}}, "no keys"),
        ({"primary_key_id": 1, "keys": {1: KEY_1[:31]}}, "key 1 is not 32 bytes"),
        ({"primary_key_id": 1, "keys": {1: KEY_1 + b"\0"}}, "key 1 is not 32 bytes"),
        ({"primary_key_id": 1, "keys": {1: B64_1}}, "key 1 is not 32 bytes"),
        ({"primary_key_id": 1, "keys": {1: bytearray(KEY_1)}}, "key 1 is not 32 bytes"),
        ({"primary_key_id": 0, "keys": {0: KEY_1}}, "key id 0 is not an integer"),
        ({"primary_key_id": 1, "keys": {2**32: KEY_1}}, "key id 4294967296 is not an integer"),
        ({"primary_key_id": 1, "keys": {True: KEY_1}}, "key id of type bool"),
        ({"primary_key_id": 1, "keys": {KEY_2: KEY_1}}, "key id of type bytes"),
        ({"primary_key_id": 2, "keys": {1: KEY_1}}, "primary key 2 is not in the keyring"),
        ({"primary_key_id": -1, "keys": {1: KEY_1}}, "primary_key_id is not an integer"),
        (
            {"primary_key_id": 1, "keys": {1: KEY_1, 2: KEY_2}, "min_decryption_key_id": 2},
            "primary key 1 is below min_decryption_key_id 2",
        ),
        (
            {"primary_key_id": 1, "keys": {1: KEY_1}, "min_decryption_key_id": -5},
            "min_decryption_key_id is not an integer",
        ),
    ],
)
def test_constructor_validates(fields: dict[str, object], message: str) -> None:
    with pytest.raises(KeyringError, match=message) as excinfo:
        Keyring(**fields)  # type: ignore[arg-type]

    assert_no_key_material(str(excinfo.value), KEY_1, KEY_2)


def test_keys_are_a_read_only_copy() -> None:
    keys = {1: KEY_1}
    keyring = Keyring(primary_key_id=1, keys=keys)

    keys[1] = KEY_2

    assert keyring.keys[1] == KEY_1
    with pytest.raises(TypeError):
        keyring.keys[1] = KEY_2  # type: ignore[index]


def test_repr_and_str_show_ids_only() -> None:
    keyring = Keyring(primary_key_id=2, keys={1: KEY_1, 2: KEY_2})

    for text in (repr(keyring), str(keyring), f"{keyring}", repr([keyring])):
        assert "Keyring(primary_key_id=2, key_ids=[1, 2], min_decryption_key_id=1)" in text
        assert_no_key_material(text, KEY_1, KEY_2)


def test_generate_keyring() -> None:
    first, second = generate_keyring(), generate_keyring(5)

    assert first.primary_key_id == 1 and list(first.keys) == [1]
    assert second.primary_key_id == 5 and list(second.keys) == [5]
    assert len(first.keys[1]) == 32
    assert first.keys[1] != second.keys[5]


def test_with_new_key_adds_next_id_as_decrypt_only() -> None:
    keyring = Keyring(primary_key_id=1, keys={1: KEY_1, 3: KEY_2})

    rotated = keyring.with_new_key()

    assert sorted(rotated.keys) == [1, 3, 4]
    assert rotated.primary_key_id == 1
    assert len(rotated.keys[4]) == 32
    assert rotated.keys[4] not in (KEY_1, KEY_2)
    assert sorted(keyring.keys) == [1, 3]


def test_with_new_key_explicit_id_and_primary() -> None:
    rotated = Keyring(primary_key_id=1, keys={1: KEY_1}).with_new_key(10, primary=True)

    assert rotated.primary_key_id == 10
    assert sorted(rotated.keys) == [1, 10]


@pytest.mark.parametrize(("key_id", "message"), [(1, "already in"), (0, "not an integer")])
def test_with_new_key_refuses_bad_ids(key_id: int, message: str) -> None:
    with pytest.raises(KeyringError, match=message):
        Keyring(primary_key_id=1, keys={1: KEY_1}).with_new_key(key_id)


def test_promote() -> None:
    keyring = Keyring(primary_key_id=1, keys={1: KEY_1, 2: KEY_2})

    assert keyring.promote(2).primary_key_id == 2
    with pytest.raises(KeyringError, match="primary key 3 is not in the keyring"):
        keyring.promote(3)
    with pytest.raises(KeyringError, match="below min_decryption_key_id 2"):
        dataclasses.replace(keyring.promote(2), min_decryption_key_id=2).promote(1)


def test_retire() -> None:
    keyring = Keyring(primary_key_id=2, keys={1: KEY_1, 2: KEY_2})

    assert dict(keyring.retire(1).keys) == {2: KEY_2}
    with pytest.raises(KeyringError, match="key 2 is the primary key"):
        keyring.retire(2)
    with pytest.raises(KeyringError, match="key 3 is not in the keyring"):
        keyring.retire(3)
