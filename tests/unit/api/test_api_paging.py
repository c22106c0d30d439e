"""Opaque page tokens: round trip, and refusal of anything this server did not issue for the
same filters."""

from __future__ import annotations

import base64
import json

import pytest

from credbroker.api.paging import decode_page_token, encode_page_token
from credbroker.domain.errors import InvalidArgumentError

FILTERS = {"integration_id": "openai", "tags": {"env": "prod"}}


def _raw_token(document: object) -> str:
    raw = json.dumps(document, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _assert_invalid(token: str, filters: object = FILTERS, size: int = 2) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        decode_page_token(token, filters, size)
    assert [v.field for v in caught.value.violations] == ["page_token"]
    # The message never echoes the token.
    if len(token) > 8:
        assert token not in caught.value.message


def test_round_trip_two_part_cursor() -> None:
    token = encode_page_token(("openai", "user-42"), FILTERS)
    assert token
    assert decode_page_token(token, FILTERS, 2) == ("openai", "user-42")


def test_round_trip_one_part_cursor() -> None:
    token = encode_page_token(("integration-9",), None)
    assert decode_page_token(token, None, 1) == ("integration-9",)


def test_round_trip_longest_ids_and_unusual_characters() -> None:
    cursor = ("i" * 128, "c" * 254 + "+")
    token = encode_page_token(cursor, FILTERS)
    assert decode_page_token(token, FILTERS, 2) == cursor
    odd = ('a"b\\c', "é~:@+")
    assert decode_page_token(encode_page_token(odd, FILTERS), FILTERS, 2) == odd


def test_token_is_url_safe_without_padding() -> None:
    for length in range(1, 12):
        token = encode_page_token(("x" * length, "y"), FILTERS)
        assert "=" not in token
        assert "+" not in token and "/" not in token
        assert decode_page_token(token, FILTERS, 2) == ("x" * length, "y")


def test_no_cursor_means_no_token() -> None:
    assert encode_page_token(None, FILTERS) == ""
    assert decode_page_token("", FILTERS, 2) is None


def test_filter_key_order_does_not_matter() -> None:
    token = encode_page_token(("a", "b"), {"x": 1, "y": {"p": 1, "q": 2}})
    assert decode_page_token(token, {"y": {"q": 2, "p": 1}, "x": 1}, 2) == ("a", "b")


@pytest.mark.parametrize(
    "other_filters",
    [
        {"integration_id": "anthropic", "tags": {"env": "prod"}},
        {"integration_id": "openai", "tags": {"env": "dev"}},
        {"integration_id": "openai", "tags": {}},
        {"integration_id": "openai"},
        None,
    ],
)
def test_filter_mismatch_refused(other_filters: object) -> None:
    token = encode_page_token(("openai", "user-42"), FILTERS)
    _assert_invalid(token, other_filters)


def test_wrong_cursor_size_refused() -> None:
    _assert_invalid(encode_page_token(("a", "b"), FILTERS), FILTERS, 1)
    _assert_invalid(encode_page_token(("a",), FILTERS), FILTERS, 2)
    _assert_invalid(encode_page_token(("a", "b", "c"), FILTERS), FILTERS, 2)


@pytest.mark.parametrize(
    "token",
    [
        "garbage",
        "!!!!",
        "a",
        "====",
        "é",
        "\x00",
        "bm90IGpzb24",  # base64 of "not json"
        base64.urlsafe_b64encode(b"\xff\xfe\xfd").decode(),
        _raw_token([1, 2]),
        _raw_token("text"),
        _raw_token(None),
        _raw_token({}),
    ],
)
def test_garbage_refused(token: str) -> None:
    _assert_invalid(token)


def test_forged_documents_refused() -> None:
    good = json.loads(base64.urlsafe_b64decode(encode_page_token(("a", "b"), FILTERS) + "=="))
    assert set(good) == {"v", "k", "f"}
    _assert_invalid(_raw_token({**good, "v": 2}))
    _assert_invalid(_raw_token({**good, "v": "1"}))
    _assert_invalid(_raw_token({**good, "f": "0" * 16}))
    _assert_invalid(_raw_token({**good, "k": ["a", 1]}))
    _assert_invalid(_raw_token({**good, "k": ["a", None]}))
    _assert_invalid(_raw_token({**good, "k": "ab"}))
    _assert_invalid(_raw_token({**good, "k": {"0": "a", "1": "b"}}))
    _assert_invalid(_raw_token({k: v for k, v in good.items() if k != "f"}))
    _assert_invalid(_raw_token({k: v for k, v in good.items() if k != "v"}))
    # The untouched document still decodes.
    assert decode_page_token(_raw_token(good), FILTERS, 2) == ("a", "b")


def test_too_long_token_refused() -> None:
    long_cursor = ("a" * 1500, "b" * 1500)
    token = encode_page_token(long_cursor, FILTERS)
    assert len(token) > 2048
    _assert_invalid(token)
    _assert_invalid("A" * 2049)
    _assert_invalid("A" * 100_000)


def test_deeply_nested_json_refused_as_invalid_argument() -> None:
    """A token under the length limit that nests deeper than the interpreter recursion limit
    must be INVALID_ARGUMENT, not an unexpected RecursionError (INTERNAL)."""
    document = b"[" * 1536
    token = base64.urlsafe_b64encode(document).decode().rstrip("=")
    assert len(token) <= 2048
    _assert_invalid(token)
