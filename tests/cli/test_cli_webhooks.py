"""``credbroker webhooks ...`` against a real database: the CLI equivalents of WebhookService."""

from __future__ import annotations

import json
from typing import Any

ALLOW = {"CREDBROKER_OUTBOUND_ALLOW": "127.0.0.0/8"}


def test_webhooks_cli_round_trip(run_cli: Any) -> None:
    assert run_cli("environments", "create", "hooks").returncode == 0
    created = run_cli(
        "webhooks", "create", "--environment", "hooks", "--url", "https://127.0.0.1:9/hook",
        "--events", "connection.created,connection.deleted", env=ALLOW,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    lines = created.stdout.strip().splitlines()
    secret = lines[-1]
    assert secret.startswith("cbwhsec_")
    endpoint_id = lines[0].removeprefix("endpoint_id: ")
    listed = run_cli("webhooks", "list", "--environment", "hooks")
    assert listed.returncode == 0, listed.stderr
    endpoint = json.loads(listed.stdout)
    assert endpoint["id"] == endpoint_id
    assert endpoint["event_types"] == ["connection.created", "connection.deleted"]
    assert secret not in listed.stdout and secret not in created.stderr
    updated = run_cli("webhooks", "update", endpoint_id, "--environment", "hooks", "--disable")
    assert updated.returncode == 0 and json.loads(updated.stdout)["disabled"] is True
    rotated = run_cli(
        "webhooks", "rotate-secret", endpoint_id, "--environment", "hooks", "--overlap", "10m"
    )
    assert rotated.returncode == 0, rotated.stderr
    assert rotated.stdout.strip().splitlines()[-1].startswith("cbwhsec_")
    assert rotated.stdout.strip().splitlines()[-1] != secret
    deliveries = run_cli("webhooks", "deliveries", "--environment", "hooks")
    assert deliveries.returncode == 0 and deliveries.stdout == ""
    missing = run_cli(
        "webhooks", "redeliver", endpoint_id, "00000000-0000-4000-8000-000000000000",
        "--environment", "hooks",
    )  # fmt: skip
    assert missing.returncode == 1 and "not found" in missing.stderr
    refused = run_cli(
        "webhooks", "create", "--environment", "hooks", "--url", "https://127.0.0.1/hook"
    )
    assert refused.returncode == 1 and "outbound policy" in refused.stderr
    bad = run_cli("webhooks", "create", "--environment", "hooks", "--url", "ftp://x/y")
    assert bad.returncode == 1 and "url" in bad.stderr
    assert run_cli("webhooks", "delete", endpoint_id, "--environment", "hooks").returncode == 0
    assert run_cli("webhooks", "list", "--environment", "hooks").stdout == ""
