"""Parsing ``authorization: Bearer <key>`` out of gRPC invocation metadata."""

from __future__ import annotations

from typing import Any

import pytest

from credbroker.api.handlers import bearer_token

TOKEN = "cbsk_0123456789abcdef_" + "x" * 49


def test_single_bearer_entry() -> None:
    assert bearer_token((("authorization", f"Bearer {TOKEN}"),)) == TOKEN


def test_scheme_is_case_insensitive() -> None:
    assert bearer_token((("authorization", f"bearer {TOKEN}"),)) == TOKEN
    assert bearer_token((("authorization", f"BEARER {TOKEN}"),)) == TOKEN


def test_other_metadata_is_ignored() -> None:
    metadata = (
        ("user-agent", "grpc-python"),
        ("authorization", f"Bearer {TOKEN}"),
        ("x-authorization", "Bearer other"),
        ("authorization-bin", b"Bearer other"),
    )
    assert bearer_token(metadata) == TOKEN


def test_accepts_lists_and_grpc_metadatum_like_pairs() -> None:
    assert bearer_token([("authorization", f"Bearer {TOKEN}")]) == TOKEN


@pytest.mark.parametrize(
    "metadata",
    [
        None,
        (),
        [],
        (("user-agent", "x"),),
        (("authorization", ""),),
        (("authorization", "Bearer"),),
        (("authorization", "Bearer "),),
        (("authorization", f"Bearer  {TOKEN}"),),
        (("authorization", f"Bearer {TOKEN} "),),
        (("authorization", f" Bearer {TOKEN}"),),
        (("authorization", f"Bearer {TOKEN} extra"),),
        (("authorization", f"Bearer\t{TOKEN}"),),
        (("authorization", f"Basic {TOKEN}"),),
        (("authorization", f"Token {TOKEN}"),),
        (("authorization", f"Bearer: {TOKEN}"),),
        (("authorization", TOKEN),),
        (("authorization", f"Bearer {TOKEN}".encode()),),
        # Duplicates: refused even when identical, so no "last one wins" confusion.
        (("authorization", f"Bearer {TOKEN}"), ("authorization", f"Bearer {TOKEN}")),
        (("authorization", f"Bearer {TOKEN}"), ("authorization", "Bearer other")),
        (("authorization", "Bearer other"), ("authorization", f"Bearer {TOKEN}")),
        (("authorization", f"Bearer {TOKEN}"), ("authorization", "")),
    ],
)
def test_refused(metadata: Any) -> None:
    assert bearer_token(metadata) is None
