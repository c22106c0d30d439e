"""docs/sdk-python.md runs as written: its complete examples (the blocks that open a client on
``TARGET``/``SECRET_KEY``) run in a fresh interpreter against the test server, twice (they are
meant to be repeatable), with only the target and key lines substituted; every other Python block
at least compiles."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path
from typing import Any

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "sdk-python.md"
TARGET_LINE = 'TARGET = "localhost:50051"'
KEY_LINE = 'SECRET_KEY = Path(".credbroker/dev-secret-key").read_text().strip()'


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", DOC.read_text(), flags=re.DOTALL | re.MULTILINE)


def examples() -> list[str]:
    return [block for block in python_blocks() if TARGET_LINE in block]


def test_every_python_block_compiles() -> None:
    blocks = python_blocks()
    assert len(blocks) >= 4
    for block in blocks:
        compile(block, str(DOC), "exec")


async def run(code: str, cwd: Path) -> str:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode()
    return stdout.decode()


def substituted(block: str, target: str, key: str) -> str:
    assert block.count(TARGET_LINE) == 1 and block.count(KEY_LINE) == 1
    return block.replace(TARGET_LINE, f"TARGET = {target!r}").replace(
        KEY_LINE, f"SECRET_KEY = {key!r}"
    )


EXPECTED = [
    # the synchronous example
    [
        "user-43 True UNVERIFIED",
        "https://api.openai.com ['authorization']",
        "AccessedCredentials(auth_mode='API_KEY', base_url='https://api.openai.com', "
        "api_key='<hidden>', username=None, password=None, "
        "headers={'authorization': '<hidden>'}, query_params={}, connection_config={})",
        "openai-prod user-43 {'plan': 'pro'}",
        "NOT_FOUND CONNECTION_NOT_FOUND",
    ],
    # the asyncio example
    [
        "https://acme.atlassian.net ['authorization']",
        "user-7 ('subdomain',)",
        "AccessCredentials OK",
    ],
]


@pytest.mark.parametrize("index", range(len(EXPECTED)))
async def test_examples_run_as_written(
    index: int, target: str, tenant: Any, tmp_path: Path
) -> None:
    blocks = examples()
    assert len(blocks) == len(EXPECTED)
    code = substituted(blocks[index], target, tenant.key)
    for _ in range(2):
        output = await run(code, tmp_path)
        assert output.splitlines() == EXPECTED[index]
        assert "sk-live-example" not in output and "atlassian-api-token" not in output
