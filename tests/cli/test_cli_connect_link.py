"""``credbroker connect link`` as a real process: it prints a working connect link for an
integration (audited under key id ``cli``), and says clearly what is missing otherwise."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import asyncpg

from credbroker.domain.connect_sessions import token_hash


async def _environment_with_integration(url: str, run_cli: Any) -> tuple[str, str]:
    environment = f"ops-{uuid.uuid4().hex[:8]}"
    assert run_cli("environments", "create", environment).returncode == 0
    connection = await asyncpg.connect(url)
    try:
        env_id = await connection.fetchval(
            "SELECT id FROM environments WHERE name = $1", environment
        )
        await connection.execute(
            """INSERT INTO integrations (id, environment_id, integration_id, provider,
                   display_name, auth_mode)
               VALUES ($1, $2, 'byok', 'api-key', 'BYOK', 'api_key')""",
            uuid.uuid4(),
            env_id,
        )
    finally:
        await connection.close()
    return environment, "byok"


async def test_connect_link_prints_a_link(run_cli: Any, cli_database_url: str) -> None:
    environment, integration = await _environment_with_integration(cli_database_url, run_cli)
    result = run_cli(
        "connect", "link", "--environment", environment, "--integration", integration,
        "--end-user", "u-ops", "--ttl", "2h",
        env={"CREDBROKER_PUBLIC_URL": "https://broker.example"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    link = result.stdout.strip().splitlines()[-1]
    match = re.fullmatch(r"https://broker\.example/connect\?session_token=(cbcs_\w+)", link)
    assert match, link
    assert "single use" in result.stderr and match.group(1) not in result.stderr
    connection = await asyncpg.connect(cli_database_url)
    try:
        row = await connection.fetchrow(
            "SELECT allowed_integrations, end_user, expire_time - create_time AS ttl, created_by"
            " FROM connect_sessions WHERE token_hash = $1",
            token_hash(match.group(1)),
        )
        audited = await connection.fetchval(
            "SELECT count(*) FROM audit_events WHERE environment = $1 AND method = $2"
            " AND key_id = 'cli' AND integration_id = 'byok' AND outcome = 'OK'",
            environment,
            "cli: connect link",
        )
    finally:
        await connection.close()
    assert row is not None
    assert row["allowed_integrations"] == ["byok"] and json.loads(row["end_user"])["id"] == "u-ops"
    assert row["ttl"].total_seconds() == 7200 and row["created_by"] == "cli"
    assert audited == 1


async def test_connect_link_defaults_to_the_http_listen_address(
    run_cli: Any, cli_database_url: str, cli_env: dict[str, str]
) -> None:
    environment, integration = await _environment_with_integration(cli_database_url, run_cli)
    result = run_cli("connect", "link", "--environment", environment, "--integration", integration)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"http://{cli_env['CREDBROKER_HTTP_LISTEN']}/connect?")


def test_connect_link_refusals_are_one_line(run_cli: Any) -> None:
    missing = run_cli("connect", "link", "--environment", "nope", "--integration", "x")
    assert missing.returncode == 1 and "environment 'nope' not found" in missing.stderr
    no_url = run_cli(
        "connect", "link", "--environment", "nope", "--integration", "x",
        env={"CREDBROKER_HTTP_LISTEN": "127.0.0.1:0"},
    )  # fmt: skip
    assert no_url.returncode == 1 and "CREDBROKER_PUBLIC_URL" in no_url.stderr
    for result in (missing, no_url):
        assert "Traceback" not in result.stderr
