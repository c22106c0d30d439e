"""Log redaction: secret keys are masked down to their key id; secret-named fields are hidden."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any, NamedTuple

from credbroker.domain.secret_keys import generate_key
from credbroker.logs import redact


class Peer(NamedTuple):
    host: str
    note: str


def _redact(event: dict[str, Any]) -> dict[str, Any]:
    return dict(redact(None, "info", dict(event)))


def test_full_secret_key_is_masked_keeping_key_id() -> None:
    token, parsed = generate_key()
    out = _redact({"event": f"presented {token} today", "detail": token})
    assert out["event"] == f"presented cbsk_{parsed.key_id}_<redacted> today"
    assert out["detail"] == f"cbsk_{parsed.key_id}_<redacted>"
    for value in out.values():
        assert token not in value
        assert parsed.secret not in value
        assert token[-6:] not in value  # checksum goes too


def test_connect_session_tokens_are_masked_whole() -> None:
    from credbroker.domain.connect_sessions import generate_token

    token = generate_token()
    out = _redact({"event": f"GET /connect/session?connect_session_token={token}&x=1"})
    assert token[5:] not in out["event"]
    out = _redact({"event": f"session {token}, then more", "detail": [f"({token})"]})
    assert out == {"event": "session cbcs_<redacted>, then more", "detail": ["(cbcs_<redacted>)"]}


def test_several_keys_in_one_value_are_all_masked() -> None:
    (a, pa), (b, pb) = generate_key(), generate_key()
    out = _redact({"event": f"{a},{b}"})
    assert out["event"] == f"cbsk_{pa.key_id}_<redacted>,cbsk_{pb.key_id}_<redacted>"


def test_key_glued_to_other_text_is_masked() -> None:
    token, parsed = generate_key()
    out = _redact({"event": f"authorization=Bearer{token}."})
    assert parsed.secret not in out["event"]
    assert f"cbsk_{parsed.key_id}_<redacted>" in out["event"]


def test_secret_named_fields_are_hidden() -> None:
    event = {
        "event": "request",
        "api_key": "sk-live-123",
        "password": "hunter2",
        "secret": "s3cr3t",
        "token": "tok",
        "authorization": "Bearer abc",
        "keyring": '{"keys": {}}',
        "credentials": {"api_key": "sk"},
    }
    out = _redact(event)
    for name in ("api_key", "password", "secret", "token", "authorization", "keyring"):
        assert out[name] == "<redacted>", name
    assert out["credentials"] == "<redacted>"
    assert out["event"] == "request"


def test_secret_named_fields_hidden_whatever_their_type() -> None:
    out = _redact({"password": 12345, "token": None, "secret": b"bytes", "api_key": ["a"]})
    assert set(out.values()) == {"<redacted>"}


def test_other_fields_untouched() -> None:
    event = {
        "event": "served",
        "key_id": "0123456789abcdef",
        "count": 3,
        "ratio": 0.5,
        "flag": True,
        "nothing": None,
        "text": "a plain sentence, with punctuation: ok?",
    }
    assert _redact(event) == event
    # Anything shaped like a key is masked whole, even when it is not a valid key (issue 9).
    assert _redact({"text": "cbsk_short_not_a_key"})["text"] == "cbsk_<redacted>"


def test_key_inside_nested_values_is_masked() -> None:
    """The docstring promises to mask anything shaped like a key; nested values render too."""
    token, parsed = generate_key()
    out = _redact({"event": "x", "headers": {"x-key": token}, "args": [token]})
    assert token not in json.dumps(out)
    assert parsed.secret not in json.dumps(out)


def test_configured_json_logging_redacts_end_to_end() -> None:
    """In a fresh interpreter (logging configuration is process-global)."""
    token, parsed = generate_key()
    script = (
        "import structlog, logging, sys\n"
        "from credbroker.logs import configure_logging\n"
        "configure_logging('json', 'info')\n"
        "log = structlog.get_logger('t')\n"
        f"log.info('saw {token}', api_key='sk-live-999', password='hunter2', key_id='abc')\n"
        f"logging.getLogger('std').warning('stdlib saw %s', '{token}')\n"
        "try:\n"
        f"    raise ValueError('boom {token}')\n"
        "except ValueError:\n"
        "    log.exception('failed')\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("CREDBROKER_")}
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 3
    first, second, third = lines
    assert first["event"] == f"saw cbsk_{parsed.key_id}_<redacted>"
    assert first["api_key"] == "<redacted>"
    assert first["password"] == "<redacted>"
    assert first["key_id"] == "abc"
    assert first["level"] == "info"
    assert second["event"] == f"stdlib saw cbsk_{parsed.key_id}_<redacted>"
    assert "ValueError" in third["exception"]
    assert parsed.secret not in result.stderr
    assert "sk-live-999" not in result.stderr
    assert "hunter2" not in result.stderr


def test_secret_named_keys_inside_nested_dicts_are_hidden() -> None:
    out = _redact({"event": "x", "request": {"password": "hunter2", "user": "bob"}})
    assert out["request"] == {"password": "<redacted>", "user": "bob"}


def test_tuples_and_namedtuples_are_masked_without_error() -> None:
    """A processor that raises loses the whole log line; namedtuples (grpc's call details, for
    one) are ordinary log values."""
    token, parsed = generate_key()
    peer = Peer("127.0.0.1", f"key {token}")
    out = _redact({"event": "x", "pair": ("a", token), "peer": peer})
    assert out["pair"] == ("a", f"cbsk_{parsed.key_id}_<redacted>")
    assert parsed.secret not in repr(out)
    assert "127.0.0.1" in repr(out["peer"])
