"""The documented settings and limits match ``credbroker.config.Settings`` (issue 9: README and
docs/operators.md must state the limits that protect the server, accurately): every setting has
a row in the README's configuration table with its default, and every limit that protects the
server is in the operators guide's table with its default."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from credbroker.config import Settings

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
OPERATORS = (ROOT / "docs" / "operators.md").read_text()

# Settings that protect the server, which docs/operators.md's limits table must state.
LIMITS = [
    "first_message_timeout",
    "max_concurrent_rpcs",
    "max_unauthenticated_per_peer",
    "max_watch_streams",
    "max_watch_streams_per_peer",
    "watch_streams_per_key",
    "watch_max_streams",
    "watch_streams_per_peer",
    "watch_max_age",
    "watch_heartbeat",
    "auth_failure_burst",
    "auth_failures_per_second",
    "max_open_rpcs",
    "max_message_bytes",
    "rpc_timeout",
]
UNITS = {"": 1, "s": 1, "/s": 1, "KiB": 1024}


def variable(field: str) -> str:
    return "CREDBROKER_" + field.upper()


def readme_defaults() -> dict[str, str]:
    """Variable -> the default shown for it in the README's configuration table."""
    found: dict[str, str] = {}
    for line in README.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) < 4 or not cells[0].startswith("`CREDBROKER_"):
            continue
        names = re.findall(r"`(CREDBROKER_\w+)`", cells[0])
        defaults = re.findall(r"`([^`]*)`", cells[2])
        if len(defaults) == len(names):
            found.update(zip(names, defaults, strict=True))
        else:
            found.update((name, cells[2]) for name in names)
    return found


def shown(value: object) -> set[str]:
    if isinstance(value, bool):
        return {str(value).lower()}
    if isinstance(value, float) and value.is_integer():
        return {str(value), str(int(value))}
    return {str(value)}


@pytest.mark.parametrize("field", sorted(Settings.model_fields))
def test_every_setting_is_in_the_readme_with_its_default(field: str) -> None:
    defaults = readme_defaults()
    assert variable(field) in defaults, f"{variable(field)} has no row in the README's table"
    default = Settings.model_fields[field].default
    if isinstance(default, bool | int | float) and default is not None:
        assert defaults[variable(field)] in shown(default), (variable(field), default)


def limits_section() -> str:
    start = OPERATORS.index("### Limits that protect the server")
    return OPERATORS[start : OPERATORS.index("\n## ", start)]


@pytest.mark.parametrize("field", LIMITS)
def test_every_limit_is_in_the_operators_table_with_its_default(field: str) -> None:
    match = re.search(rf"`{variable(field)}` = ([0-9.]+) ?(KiB|/s|s)?\b", limits_section())
    assert match, f"{variable(field)} = <default> is not in the limits table"
    value = float(match.group(1)) * UNITS[match.group(2) or ""]
    assert value == Settings.model_fields[field].default, (field, match.group(0))
