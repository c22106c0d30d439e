"""Keeps secrets and URL query strings out of every log line, whichever library writes it.

Installed once per process (:func:`install`), before any server runs:

* a log-record factory cleans each stdlib record as it is created, for every logger and level
  and before any handler (ours, pytest's or an embedder's) sees it: the message is formatted
  and scrubbed (:func:`scrub`), a traceback is formatted, scrubbed and folded into the message
  (so no exception object holding raw input travels on), and byte strings passed to ``grpc``
  loggers are withheld whole: grpc's string decoding logs ``Invalid encoding on b'...'`` with the
  raw metadata value (an ``authorization`` header with one bad byte) at ERROR;
* httpx and httpcore log at WARNING and above only (their INFO line is the full request URL,
  which carries the API key for providers that take it as a query parameter).

structlog events (our own logs) are dicts and are redacted by ``credbroker.logs.redact``, which
applies the same :func:`scrub` to every string.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

# Anything that starts like a credbroker key is masked to its end, not only well-formed keys: a key
# with one odd byte (or escaped as \xff in a repr) must not leave all but one character behind.
# The key id is public and kept when it is intact.
_KEY_SHAPED = re.compile(r"cbsk_(?:([0-9A-Za-z]{16})_)?(?:<redacted>|[^\s'\"`,;<>(){}\[\]]*)")
# Connect-session tokens (credbroker.domain.connect_sessions) are masked whole.
_SESSION_SHAPED = re.compile(r"cbcs_[^\s'\"`,;<>(){}\[\]&]*")
# A URL's query string (scheme://host/path?query), and a request target's (/path?query).
_URL_QUERY = re.compile(
    r"((?:[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s?#'\"<>]*|(?<![^\s'\"(=])/[^\s?#'\"<>]*)\?)(?!<redacted>)[^\s#'\"<>]+"
)
_AUTH_VALUE = re.compile(
    r"(?i)\b(bearer|basic|token|genie[a-z]*|api-?key)(\s+)(?!<redacted>)[^\s'\",;]{6,}"
)
# Webhook signing secrets (credbroker.domain.webhooks): never logged by us; masked if anything does.
_WEBHOOK_SECRET = re.compile(r"cbwhsec_[^\s'\"`,;<>(){}\[\]]*")
QUIET_LIBRARIES = {"httpx": logging.WARNING, "httpcore": logging.WARNING}

_installed = False


def _mask_key(match: re.Match[str]) -> str:
    key_id = match.group(1)
    return f"cbsk_{key_id}_<redacted>" if key_id else "cbsk_<redacted>"


def scrub(text: str) -> str:
    """``text`` with key-shaped strings, URL query strings and credential-looking
    ``authorization`` values masked."""
    if "cbsk_" in text:
        text = _KEY_SHAPED.sub(_mask_key, text)
    if "cbwhsec_" in text:
        text = _WEBHOOK_SECRET.sub("cbwhsec_<redacted>", text)
    if "cbcs_" in text:
        text = _SESSION_SHAPED.sub("cbcs_<redacted>", text)
    if "?" in text:
        text = _URL_QUERY.sub(r"\1<redacted>", text)
    return _AUTH_VALUE.sub(r"\1\2<redacted>", text)


def _withheld(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} bytes withheld>"
    return value


def clean(record: logging.LogRecord) -> None:
    """Scrubs ``record`` in place (see the module docstring); structlog dicts are left alone."""
    if isinstance(record.msg, dict) or record.name is None:
        return  # structlog event dicts; logging.makeLogRecord's blank record (filled in later)
    if record.name.startswith("grpc") and record.args:
        args = record.args
        record.args = (
            tuple(_withheld(a) for a in args)
            if isinstance(args, tuple)
            else {k: _withheld(v) for k, v in args.items()}
        )
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a bad format string must not break logging
        message = str(record.msg)
    if record.exc_info:
        message += "\n" + logging.Formatter().formatException(record.exc_info)
        record.exc_info = None
        record.exc_text = None
    if record.stack_info:
        record.stack_info = scrub(record.stack_info)
    record.msg = scrub(message)
    record.args = ()


def install() -> None:
    """Idempotent: wraps the current record factory and quiets the chatty libraries."""
    global _installed
    for name, level in QUIET_LIBRARIES.items():
        library = logging.getLogger(name)
        if library.level < level:
            library.setLevel(level)
    if _installed:
        return
    base: Callable[..., logging.LogRecord] = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = base(*args, **kwargs)
        clean(record)
        return record

    logging.setLogRecordFactory(factory)
    _installed = True
