"""The seed's REST line, copied verbatim with only the host and the key changed:

    curl '<host>/connection/<CONNECTION-ID>?provider_config_key=<INTEGRATION-ID>' \\
      -H 'Authorization: Bearer <SECRET-KEY>'

run with the real ``curl`` against the live server, returns the stored key."""

from __future__ import annotations

import asyncio
import json
import shutil
from typing import Any

import httpx
import pytest

from credbroker.app import RunningServer

STORED_KEY = "sk-seed-curl-5e1f"


async def test_the_seeds_curl_line_returns_the_stored_key(
    server: RunningServer, http: httpx.AsyncClient, tenant: Any
) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed (apt-get install curl)")
    headers = {"Authorization": f"Bearer {tenant.key}"}
    await http.post(
        "/integrations", json={"unique_key": "openai", "provider": "openai"}, headers=headers
    )
    await http.post(
        "/connections",
        headers=headers,
        json={
            "provider_config_key": "openai",
            "connection_id": "user-42",
            "credentials": {"type": "API_KEY", "apiKey": STORED_KEY},
            "skip_verification": True,
        },
    )
    host = f"http://127.0.0.1:{server.http_port}"
    line = (
        f"curl '{host}/connection/user-42?provider_config_key=openai' "
        f"-H 'Authorization: Bearer {tenant.key}'"
    )
    # The line itself, through a shell, as a user pastes it (plus -sS to keep stderr quiet).
    process = await asyncio.create_subprocess_shell(
        line.replace("curl ", f"{curl} -sS ", 1),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 0, err.decode()
    body = json.loads(out)
    assert body["credentials"] == {"type": "API_KEY", "apiKey": STORED_KEY}
    assert body["connection_id"] == "user-42"
