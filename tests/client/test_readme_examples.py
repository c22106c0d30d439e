"""The README's Python examples run as written, against a real server: the SDK example and the
generated-stub example, each after the grpcurl walkthrough's integration and connection exist."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from credbroker.v1 import connection_service_pb2 as cpb
from credbroker.v1 import integration_service_pb2 as ipb
from credbroker.v1 import resources_pb2 as rpb

README = Path(__file__).resolve().parents[2] / "README.md"


def _python_block_after(heading: str) -> str:
    text = README.read_text("utf-8")
    section = text[text.index(heading) :]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, f"no python block after {heading!r}"
    return match.group(1)


async def _walkthrough(tenant: Any) -> None:
    await tenant.integrations.CreateIntegration(
        ipb.CreateIntegrationRequest(
            integration=rpb.Integration(integration_id="openai-prod", provider="openai")
        ),
        metadata=tenant.metadata,
    )
    await tenant.connections.CreateConnection(
        cpb.CreateConnectionRequest(
            connection=rpb.Connection(
                integration_id="openai-prod",
                connection_id="user-42",
                credentials=rpb.Credentials(
                    api_key=rpb.ApiKeyCredentials(api_key="sk-live-example")
                ),
            ),
            skip_verification=True,
        ),
        metadata=tenant.metadata,
    )


@pytest.mark.parametrize(
    ("heading", "expected"),
    [
        ("## From Python (SDK)", "headers={'authorization': '<hidden>'}"),
        ("## From Python (generated stubs)", "sk-live-example"),
    ],
)
async def test_readme_python_example_runs(
    tenant: Any, server: Any, tmp_path: Path, heading: str, expected: str
) -> None:
    await _walkthrough(tenant)
    (tmp_path / ".credbroker").mkdir()
    (tmp_path / ".credbroker" / "dev-secret-key").write_text(tenant.key + "\n")
    code = _python_block_after(heading).replace("localhost:50051", f"127.0.0.1:{server.port}")
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert expected in result.stdout
