"""Issue 9, finding 2: no log record of any library carries a secret or a URL query string."""

from __future__ import annotations

import logging

import pytest

from credbroker import log_hygiene
from credbroker.domain.secret_keys import generate_key


@pytest.fixture(autouse=True)
def _installed() -> None:
    log_hygiene.install()


def test_key_with_a_bad_byte_is_masked_whole(caplog: pytest.LogCaptureFixture) -> None:
    token, _parsed = generate_key()
    broken = (f"Bearer {token[:30]}").encode() + b"\xff" + token[31:].encode()
    caplog.set_level(logging.DEBUG)
    logging.getLogger("grpc._cython.cygrpc").error("Invalid encoding on %s", broken)
    logging.getLogger("somelib").error("value %r", broken)
    logging.getLogger("somelib").error("prefix glued %s", "x" + token[:40] + "\\xff" + token[41:])
    for record in caplog.records:
        text = record.getMessage() + repr(record.__dict__)
        assert token[20:30] not in text and token[-12:] not in text, text
    assert "bytes withheld" in caplog.records[0].getMessage()


def test_url_query_strings_are_masked(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    logging.getLogger("httpx").warning(
        'HTTP Request: GET %s "HTTP/1.1 200 OK"', "https://api.example/v1/x?key=SECRET123&a=b"
    )
    logging.getLogger("uvicorn.access").info('"GET /v1/x?token=SECRET456 HTTP/1.1" 200')
    messages = [r.getMessage() for r in caplog.records]
    assert all("SECRET" not in m for m in messages), messages
    assert "https://api.example/v1/x?<redacted>" in messages[0]


def test_tracebacks_are_scrubbed_and_exceptions_dropped(caplog: pytest.LogCaptureFixture) -> None:
    token, _ = generate_key()
    caplog.set_level(logging.DEBUG)
    try:
        token.encode("ascii").decode("utf-16")
    except UnicodeDecodeError:
        logging.getLogger("lib").exception("failed on %s", token)
    record = caplog.records[0]
    assert record.exc_info is None
    assert "Traceback" in record.getMessage()
    assert token not in repr(record.__dict__)


def test_chatty_libraries_are_quiet() -> None:
    assert logging.getLogger("httpx").getEffectiveLevel() >= logging.WARNING
    assert logging.getLogger("httpcore").getEffectiveLevel() >= logging.WARNING


def test_webhook_signing_secrets_are_masked() -> None:
    from credbroker.log_hygiene import scrub

    secret = "cbwhsec_" + "Ab1-_" * 8
    assert scrub(f"oops {secret} and '{secret}'") == (
        "oops cbwhsec_<redacted> and 'cbwhsec_<redacted>'"
    )
