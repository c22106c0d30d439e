"""Structured logging: one JSON object a line in production, readable lines in dev.

Log calls pass values as keyword fields, never secrets; :func:`redact` is a last line of defence
that masks anything shaped like a credbroker secret key and any field named like a secret.
"""

from __future__ import annotations

import contextvars
import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from credbroker import log_hygiene

_SECRET_FIELDS = {
    "api_key",
    "password",
    "secret",
    "token",
    "authorization",
    "keyring",
    "credentials",
}


def _mask(value: Any) -> Any:
    """Masks secret keys in strings, recursing into containers; secret-named keys hide values."""
    if isinstance(value, str):
        return log_hygiene.scrub(value)
    if isinstance(value, dict):
        return {k: "<redacted>" if k in _SECRET_FIELDS else _mask(v) for k, v in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a namedtuple
        return type(value)(*(_mask(item) for item in value))
    if isinstance(value, list | tuple):
        return type(value)(_mask(item) for item in value)
    return value


def redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in list(event):
        event[key] = "<redacted>" if key in _SECRET_FIELDS else _mask(event[key])
    return event


# The fields of the call being served (request id, method, key id, environment): one context
# variable holding one dict per call, set by credbroker.admission.start_request, instead of a
# context variable per field (structlog.contextvars costs a context copy to clear and a variable
# per field to bind, on every call).
call_fields: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("credbroker_call")


def merge_call_fields(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: adds the current call's request id, method, key id and environment
    to a log line (fields the line sets itself win)."""
    fields = call_fields.get(None)
    if fields:
        for key, value in fields.items():
            event.setdefault(key, value)
    return event


def configure_logging(log_format: str = "auto", level: str = "info") -> None:
    use_json = log_format == "json" or (log_format == "auto" and not sys.stderr.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        merge_call_fields,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,  # text, so redact sees tracebacks too
            redact,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    log_hygiene.install()
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
