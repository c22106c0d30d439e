"""Secret key format: generation, parsing, checksum, hashing and the constant-work comparison."""

from __future__ import annotations

import re
import string
from collections.abc import Callable

import pytest

from credbroker.domain import secret_keys
from credbroker.domain.secret_keys import (
    MAX_KEY_LENGTH,
    PREFIX,
    ParsedKey,
    generate_key,
    hash_secret,
    parse_key,
    secret_matches,
)

BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase
KEY_SHAPE = re.compile(r"cbsk_[0-9A-Za-z]{16}_[0-9A-Za-z]{49}")


def test_generated_key_has_documented_shape() -> None:
    token, parsed = generate_key()

    assert token.startswith(PREFIX)
    assert PREFIX == "cbsk_"
    assert KEY_SHAPE.fullmatch(token)
    assert len(token) == MAX_KEY_LENGTH == 71
    assert token[5:21] == parsed.key_id
    assert token[22:65] == parsed.secret
    assert len(parsed.key_id) == 16
    assert len(parsed.secret) == 43


def test_generate_parse_round_trip() -> None:
    for _ in range(200):
        token, parsed = generate_key()
        assert parse_key(token) == parsed


def test_generated_keys_are_unique() -> None:
    tokens = {generate_key()[0] for _ in range(500)}
    key_ids = {token[5:21] for token in tokens}
    assert len(tokens) == 500
    assert len(key_ids) == 500


def test_secret_uses_whole_alphabet() -> None:
    """The secret is random base62, not e.g. hex or a fixed-prefix encoding."""
    seen: set[str] = set()
    for _ in range(200):
        seen.update(generate_key()[1].secret)
    assert seen == set(BASE62)


@pytest.mark.parametrize("crc", [0, 1, 61, 62, 3843, 3844, 62**4, 2**31, 2**32 - 1])
def test_checksum_is_the_documented_base62_crc32(crc: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The table-driven checksum equals base62(CRC32, 6) at every digit boundary."""
    monkeypatch.setattr("credbroker.domain.secret_keys.zlib.crc32", lambda _: crc)
    assert secret_keys.checksum("anything") == secret_keys.base62(crc, 6)
    assert secret_keys.checksum("anything", 8) == secret_keys.base62(crc, 8)


def test_checksum_catches_every_single_character_substitution() -> None:
    for _ in range(8):
        token, _parsed = generate_key()
        for position in range(len(token)):
            for replacement in BASE62 + "_":
                if replacement == token[position]:
                    continue
                mutated = token[:position] + replacement + token[position + 1 :]
                assert parse_key(mutated) is None, (position, replacement)


def test_checksum_catches_adjacent_transpositions() -> None:
    token, _ = generate_key()
    for position in range(len(PREFIX), len(token) - 1):
        a, b = token[position], token[position + 1]
        if a == b:
            continue
        swapped = token[:position] + b + a + token[position + 2 :]
        assert parse_key(swapped) is None, position


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t[:-1],
        lambda t: t + "a",
        lambda t: t[1:],
        lambda t: "x" + t,
        lambda t: "",
        lambda t: PREFIX,
        lambda t: t.replace("_", "-", 1),
        lambda t: t.upper(),
        lambda t: "CBSK_" + t[5:],
        lambda t: t[:30] + "é" + t[31:],  # same length, non-ascii
        lambda t: t[:30] + "٣" + t[31:],  # a non-ASCII Unicode digit
        lambda t: t[:30] + "０" + t[31:],  # fullwidth digit zero
        lambda t: t[:-1] + "\n",
        lambda t: t + "\n",
        lambda t: " " + t,
        lambda t: t + " ",
        lambda t: t[:30] + " " + t[31:],
        lambda t: t[:30] + "\t" + t[31:],
        lambda t: t[:30] + "\x00" + t[31:],
        lambda t: t * 2,
        lambda t: t + "x" * (7 * 1024),
        lambda t: "x" * (7 * 1024),
    ],
)
def test_malformed_keys_are_refused(mangle: Callable[[str], str]) -> None:
    token, _ = generate_key()
    mangled = mangle(token)
    assert mangled != token
    assert parse_key(mangled) is None


def test_long_and_odd_inputs_are_refused_without_error() -> None:
    for text in ["x" * 7168, "cbsk_" * 1434, "é" * 7168, "\udcff" * 71, "\x00" * 71]:
        assert parse_key(text) is None


def test_correct_shape_with_wrong_checksum_is_refused() -> None:
    token, _ = generate_key()
    body = token[:-6]
    for checksum in ["000000", "zzzzzz", token[-6:][::-1]]:
        if checksum != token[-6:]:
            assert parse_key(body + checksum) is None


def test_hash_secret_is_sha256_sized_and_deterministic() -> None:
    _, parsed = generate_key()
    digest = hash_secret(parsed)
    assert len(digest) == 32
    assert hash_secret(ParsedKey(parsed.key_id, parsed.secret)) == digest


def test_hash_secret_depends_on_key_id_and_secret() -> None:
    _, a = generate_key()
    _, b = generate_key()
    assert hash_secret(a) != hash_secret(ParsedKey(b.key_id, a.secret))
    assert hash_secret(a) != hash_secret(ParsedKey(a.key_id, b.secret))
    # One changed character in either part changes the hash.
    flipped = "A" if a.secret[0] != "A" else "B"
    assert hash_secret(a) != hash_secret(ParsedKey(a.key_id, flipped + a.secret[1:]))
    flipped = "A" if a.key_id[-1] != "A" else "B"
    assert hash_secret(a) != hash_secret(ParsedKey(a.key_id[:-1] + flipped, a.secret))


def test_hash_secret_separates_key_id_from_secret() -> None:
    """Moving characters across the key id / secret boundary changes the hash."""
    assert hash_secret(ParsedKey("ab", "c")) != hash_secret(ParsedKey("a", "bc"))


def test_secret_matches_only_the_right_hash() -> None:
    _, parsed = generate_key()
    _, other = generate_key()
    assert secret_matches(parsed, hash_secret(parsed))
    assert not secret_matches(parsed, hash_secret(other))
    assert not secret_matches(parsed, b"\x00" * 32)
    assert not secret_matches(parsed, secret_keys.DUMMY_HASH)
    assert not secret_matches(parsed, b"")


def test_secret_matches_none_is_false_and_still_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    _, parsed = generate_key()
    calls: list[ParsedKey] = []
    real = secret_keys.hash_secret

    def counting(key: ParsedKey) -> bytes:
        calls.append(key)
        return real(key)

    monkeypatch.setattr(secret_keys, "hash_secret", counting)

    assert secret_keys.secret_matches(parsed, None) is False
    assert calls == [parsed]


def test_secret_matches_none_is_false_even_for_a_key_hashing_to_the_dummy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An unknown key id never authenticates, whatever the presented key hashes to."""
    _, parsed = generate_key()
    monkeypatch.setattr(secret_keys, "hash_secret", lambda key: secret_keys.DUMMY_HASH)
    assert secret_keys.secret_matches(parsed, None) is False


def test_parsed_key_repr_hides_secret() -> None:
    token, parsed = generate_key()
    text = repr(parsed) + str(parsed)
    assert parsed.key_id in text
    assert parsed.secret not in text
    assert token not in text
