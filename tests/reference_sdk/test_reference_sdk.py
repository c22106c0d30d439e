"""The reference Node SDK (``@nangohq/node`` 0.71.10, pinned in this folder's lock file) runs
its test scripts (``test/*.test.mjs``, node's own test runner) against the suite's live server.

``.ci/run`` installs the SDK with ``npm ci``; elsewhere, without node or without
``node_modules``, the test is skipped with the command that installs it (in CI it fails).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from credbroker.app import RunningServer
from credbroker.domain.models import Scope

HERE = Path(__file__).parent
INSTALL = f"cd {HERE} && npm ci --no-audit --no-fund --ignore-scripts"


def _node_or_skip() -> str:
    node = shutil.which("node")
    missing = None
    if node is None:
        missing = "node (>= 20) is not installed"
    elif not (HERE / "node_modules" / "@nangohq" / "node").is_dir():
        missing = f"the reference SDK is not installed: {INSTALL}"
    if missing is not None:
        if os.environ.get("CI"):
            pytest.fail(missing)
        pytest.skip(missing)
    assert node is not None
    return node


async def test_reference_node_sdk_against_a_live_server(server: RunningServer, tenant: Any) -> None:
    node = _node_or_skip()
    read_key, _ = await tenant.keys.create_key(
        tenant.environment, frozenset({Scope.CONNECTIONS_READ, Scope.INTEGRATIONS_READ})
    )
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", "/tmp"),
        "CREDBROKER_HTTP_URL": f"http://127.0.0.1:{server.http_port}",
        "CREDBROKER_KEY": tenant.key,
        "CREDBROKER_READ_KEY": read_key,
    }
    scripts = sorted(str(p.relative_to(HERE)) for p in (HERE / "test").glob("*.test.mjs"))
    assert scripts, "no SDK test scripts found"
    # Run as a child of this event loop, which keeps serving the SDK's requests meanwhile.
    process = await asyncio.create_subprocess_exec(
        node,
        "--test",
        "--test-reporter=spec",
        *scripts,
        cwd=HERE,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout=120)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    text = output.decode("utf-8", "replace")
    print(text)
    assert process.returncode == 0, text
    assert tenant.key not in text
