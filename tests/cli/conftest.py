"""Fixtures for running the installed ``credbroker`` console script against a fresh database."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import pytest_asyncio

_CANDIDATES = [
    Path(sys.executable).parent / "credbroker",
    Path(__file__).resolve().parents[2] / ".venv" / "bin" / "credbroker",
]
CLI_TIMEOUT = 60.0


def base_env() -> dict[str, str]:
    """The current environment without any CREDBROKER_* settings (tests add their own)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CREDBROKER_")}
    env["CREDBROKER_LOG_FORMAT"] = "json"
    # Never the default 127.0.0.1:8080: other test runs share the machine.
    env["CREDBROKER_HTTP_LISTEN"] = f"127.0.0.1:{_unused_port()}"
    return env


def _unused_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def credbroker_executable() -> Path:
    for candidate in _CANDIDATES:
        if candidate.exists():
            return candidate
    raise AssertionError(f"credbroker console script not found in {_CANDIDATES}")


@pytest_asyncio.fixture(scope="module")
async def cli_database_url(admin_database_url: str) -> AsyncIterator[str]:
    name = f"credbroker_cli_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(admin_database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield urlunsplit(urlsplit(admin_database_url)._replace(path="/" + name))
    finally:
        admin = await asyncpg.connect(admin_database_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture(scope="module")
def cli_keyring_json(credbroker_executable: Path) -> str:
    result = subprocess.run(
        [str(credbroker_executable), "keyring", "generate"],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        env=base_env(),
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def cli_env(cli_database_url: str, cli_keyring_json: str) -> dict[str, str]:
    env = base_env()
    env["CREDBROKER_DATABASE_URL"] = cli_database_url
    env["CREDBROKER_KEYRING"] = cli_keyring_json
    return env


@pytest.fixture(scope="module")
def run_cli(
    credbroker_executable: Path, cli_env: dict[str, str]
) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Runs ``credbroker ARGS...`` with the module's database and keyring; ``env`` overrides
    (a value of None removes the variable)."""

    def run(
        *args: str, env: Mapping[str, str | None] | None = None, timeout: float = CLI_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        merged = dict(cli_env)
        for key, value in (env or {}).items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = value
        return subprocess.run(
            [str(credbroker_executable), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=merged,
            stdin=subprocess.DEVNULL,
            check=False,
        )

    return run


@pytest.fixture
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
