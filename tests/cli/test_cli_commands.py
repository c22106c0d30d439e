"""The ``credbroker`` console script: migrate, keyring, environments and keys, run as a real
subprocess against a database of this module's own."""

from __future__ import annotations

import asyncio
import base64
import json
import re
from typing import Any

import asyncpg
import pytest

from credbroker.crypto import Keyring
from credbroker.domain.models import Scope
from credbroker.domain.secret_keys import hash_secret, parse_key

KEY_LINE = re.compile(r"^cbsk_[0-9A-Za-z]{16}_[0-9A-Za-z]{49}$")


def _no_traceback(text: str) -> None:
    assert "Traceback" not in text


@pytest.fixture(scope="module")
def prod_environment(run_cli: Any) -> str:
    result = run_cli("environments", "create", "prod")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "prod"
    return "prod"


def test_migrate_exits_zero_and_is_repeatable(run_cli: Any) -> None:
    for _ in range(2):
        result = run_cli("migrate")
        assert result.returncode == 0, result.stderr
        assert "migrations applied" in result.stdout
        _no_traceback(result.stderr)


def test_keyring_generate_prints_valid_json(cli_keyring_json: str, run_cli: Any) -> None:
    document = json.loads(cli_keyring_json)
    assert set(document) >= {"primary_key_id", "keys"}
    keyring = Keyring.from_json(cli_keyring_json)
    assert keyring.primary_key_id in keyring.keys
    assert all(len(key) == 32 for key in keyring.keys.values())

    again = run_cli("keyring", "generate", env={"CREDBROKER_DATABASE_URL": None})
    assert again.returncode == 0, again.stderr
    other = Keyring.from_json(again.stdout)
    assert other.keys != keyring.keys  # fresh random key material every time
    assert again.stderr == "" or "Traceback" not in again.stderr


def test_environments_create_and_list(run_cli: Any, prod_environment: str) -> None:
    result = run_cli("environments", "list")
    assert result.returncode == 0, result.stderr
    names = [line.split("\t")[0] for line in result.stdout.splitlines() if line]
    assert prod_environment in names


def test_environment_created_twice_fails_clearly(run_cli: Any, prod_environment: str) -> None:
    result = run_cli("environments", "create", prod_environment)
    assert result.returncode != 0
    assert "already exists" in result.stderr
    assert prod_environment in result.stderr
    assert result.stdout == ""
    _no_traceback(result.stderr)
    listed = run_cli("environments", "list")
    names = [line.split("\t")[0] for line in listed.stdout.splitlines() if line]
    assert names.count(prod_environment) == 1


@pytest.mark.parametrize("name", ["Prod", "1prod", "prod_x", "a" * 64])
def test_environment_invalid_name(run_cli: Any, name: str) -> None:
    result = run_cli("environments", "create", name)
    assert result.returncode == 1
    assert "name" in result.stderr
    _no_traceback(result.stderr)


async def test_keys_create_list_revoke(
    run_cli: Any, prod_environment: str, cli_database_url: str
) -> None:
    created = await asyncio.to_thread(
        run_cli,
        "keys",
        "create",
        "--environment",
        prod_environment,
        "--scopes",
        "connections:read",
        "--description",
        "reader",
    )
    assert created.returncode == 0, created.stderr
    lines = created.stdout.splitlines()
    token = lines[-1]
    assert KEY_LINE.fullmatch(token), lines
    assert created.stdout.endswith(token + "\n")
    assert created.stdout.count("cbsk_") == 1  # printed once, only on the last line
    assert token not in created.stderr  # never logged
    parsed = parse_key(token)
    assert parsed is not None
    key_id = parsed.key_id
    assert f"key_id: {key_id}" in lines
    assert "scopes: connections:read" in lines

    # The database holds the hash of this very key, with the requested scope, never the key.
    connection = await asyncpg.connect(cli_database_url)
    try:
        row = await connection.fetchrow(
            "SELECT scopes, secret_hash, revoke_time FROM secret_keys WHERE key_id = $1", key_id
        )
        dump = await connection.fetchval("SELECT string_agg(t::text, '') FROM secret_keys t")
    finally:
        await connection.close()
    assert row is not None
    assert list(row["scopes"]) == ["connections:read"]
    assert bytes(row["secret_hash"]) == hash_secret(parsed)
    assert row["revoke_time"] is None
    assert parsed.secret not in dump

    listed = await asyncio.to_thread(run_cli, "keys", "list", "--environment", prod_environment)
    assert listed.returncode == 0, listed.stderr
    line = next(li for li in listed.stdout.splitlines() if li.startswith(key_id))
    fields = line.split("\t")
    assert fields[0] == key_id
    assert fields[1] == "active"
    assert fields[2] == "connections:read"
    assert "expires=never" in line
    assert "reader" in line
    assert token not in listed.stdout + listed.stderr
    assert parsed.secret not in listed.stdout + listed.stderr

    revoked = await asyncio.to_thread(run_cli, "keys", "revoke", key_id)
    assert revoked.returncode == 0, revoked.stderr
    assert key_id in revoked.stdout

    after = await asyncio.to_thread(run_cli, "keys", "list", "--environment", prod_environment)
    assert after.returncode == 0, after.stderr
    line = next(li for li in after.stdout.splitlines() if li.startswith(key_id))
    assert line.split("\t")[1] == "revoked"


def test_keys_create_with_expiry(run_cli: Any, prod_environment: str) -> None:
    created = run_cli("keys", "create", "--environment", prod_environment, "--expires-in", "2d")
    assert created.returncode == 0, created.stderr
    token = created.stdout.splitlines()[-1]
    assert KEY_LINE.fullmatch(token)
    key_id = token[5:21]
    listed = run_cli("keys", "list", "--environment", prod_environment)
    line = next(li for li in listed.stdout.splitlines() if li.startswith(key_id))
    assert line.split("\t")[1] == "active"
    assert "expires=never" not in line
    # Default scopes: all of them.
    assert line.split("\t")[2] == ",".join(sorted(s.value for s in Scope))


@pytest.mark.parametrize("duration", ["2", "d", "2w", "-1d", "1.5h"])
def test_keys_create_bad_duration(run_cli: Any, prod_environment: str, duration: str) -> None:
    result = run_cli("keys", "create", "--environment", prod_environment, "--expires-in", duration)
    assert result.returncode == 2
    assert "cbsk_" not in result.stdout


def test_keys_create_unknown_scope_names_it(run_cli: Any, prod_environment: str) -> None:
    before = run_cli("keys", "list", "--environment", prod_environment).stdout
    result = run_cli(
        "keys",
        "create",
        "--environment",
        prod_environment,
        "--scopes",
        "connections:read,connections:delete",
    )
    assert result.returncode != 0
    assert "connections:delete" in result.stderr
    assert "cbsk_" not in result.stdout
    _no_traceback(result.stderr)
    after = run_cli("keys", "list", "--environment", prod_environment).stdout
    assert after == before  # no key was created


def test_keys_for_unknown_environment(run_cli: Any) -> None:
    for args in (
        ("keys", "create", "--environment", "nowhere"),
        ("keys", "list", "--environment", "nowhere"),
    ):
        result = run_cli(*args)
        assert result.returncode == 1
        assert "not found" in result.stderr
        assert "nowhere" in result.stderr
        assert "cbsk_" not in result.stdout
        _no_traceback(result.stderr)


@pytest.mark.parametrize("key_id", ["0000000000000000", "short", "x" * 40])
def test_keys_revoke_unknown(run_cli: Any, key_id: str) -> None:
    result = run_cli("keys", "revoke", key_id)
    assert result.returncode == 1
    assert "not found" in result.stderr
    _no_traceback(result.stderr)


@pytest.mark.parametrize(
    "args",
    [("migrate",), ("serve",), ("environments", "list"), ("keyring", "generate")],
)
def test_bad_listen_config_exits_2(run_cli: Any, args: tuple[str, ...]) -> None:
    result = run_cli(*args, env={"CREDBROKER_LISTEN": "bad"}, timeout=30)
    assert result.returncode == 2
    assert "CREDBROKER_LISTEN" in result.stderr
    assert result.stdout == ""
    _no_traceback(result.stderr)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CREDBROKER_LISTEN", "127.0.0.1:99999"),
        ("CREDBROKER_LISTEN", ":50051"),
        ("CREDBROKER_LOG_FORMAT", "xml"),
        ("CREDBROKER_DB_POOL_MAX", "0"),
        ("CREDBROKER_RPC_TIMEOUT", "soon"),
    ],
)
def test_other_bad_config_exits_2(run_cli: Any, name: str, value: str) -> None:
    result = run_cli("migrate", env={name: value}, timeout=30)
    assert result.returncode == 2
    assert name in result.stderr
    _no_traceback(result.stderr)


def test_keyring_value_never_printed_on_config_error(run_cli: Any, cli_keyring_json: str) -> None:
    keyring = Keyring.from_json(cli_keyring_json)
    result = run_cli("migrate", env={"CREDBROKER_LISTEN": "bad"}, timeout=30)
    for key in keyring.keys.values():
        assert base64.b64encode(key).decode() not in result.stdout + result.stderr


def test_missing_database_url(run_cli: Any) -> None:
    result = run_cli("migrate", env={"CREDBROKER_DATABASE_URL": None}, timeout=30)
    assert result.returncode == 2  # configuration (docs/operators.md, exit codes)
    assert "CREDBROKER_DATABASE_URL" in result.stderr
    _no_traceback(result.stderr)


def test_unreachable_database(run_cli: Any) -> None:
    result = run_cli(
        "environments",
        "list",
        env={"CREDBROKER_DATABASE_URL": "postgresql://postgres:pw-secret@127.0.0.1:1/none"},
        timeout=30,
    )
    assert result.returncode == 3  # database
    assert "PostgreSQL at 127.0.0.1:1" in result.stderr
    assert "pw-secret" not in result.stderr
    _no_traceback(result.stderr)
