"""The code in docs/webhooks.md runs as written: the Python and Node signature checks accept a
real delivery (and refuse a wrong secret or a tampered body), and the Python Watch loop prints
events and resumes from its saved token after a restart."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from .conftest import create_endpoint, wait_until, webhook_environment

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "webhooks.md"
SDK_FOLDER = ROOT / "tests" / "reference_sdk"


def _block_after(marker: str, language: str) -> str:
    text = DOC.read_text("utf-8")
    section = text[text.index(marker) :]
    match = re.search(rf"```{language}\n(.*?)```", section, re.DOTALL)
    assert match, f"no {language} block after {marker!r}"
    return match.group(1)


async def _one_delivery(
    servers: Any, account: Any, receiver: Any, database_url: str, keyring: Any, pki: Any
) -> tuple[Any, str]:
    server = servers.start(webhook_environment(database_url, keyring, pki))
    await account.use(server)
    await account.integration()
    _, secret = await create_endpoint(account, receiver.url())
    await account.create("docs-1", end_user_id="42")

    async def arrived() -> bool:
        return bool(receiver.received)

    assert await wait_until(arrived, within=10)
    return receiver.received[0], secret


async def test_python_and_node_verification_snippets(
    servers: Any,
    account: Any,
    receiver: Any,
    events_database_url: str,
    keyring: Any,
    pki: Any,
    tmp_path: Path,
) -> None:
    delivery, secret = await _one_delivery(
        servers, account, receiver, events_database_url, keyring, pki
    )
    namespace: dict[str, Any] = {}
    exec(_block_after("Python (standard library only):", "python"), namespace)  # noqa: S102
    verify = namespace["verify_webhook"]
    assert verify(delivery.body, delivery.headers, [secret])
    assert verify(delivery.body, delivery.headers, ["cbwhsec_other", secret])
    assert not verify(delivery.body, delivery.headers, ["cbwhsec_other"])
    assert not verify(delivery.body.replace(b"docs-1", b"docs-2"), delivery.headers, [secret])

    node = shutil.which("node")
    if node is None or not (SDK_FOLDER / "node_modules" / "@nangohq" / "node").is_dir():
        if os.environ.get("CI"):
            pytest.fail("node or the reference SDK is missing (npm ci in tests/reference_sdk)")
        pytest.skip("node or the reference SDK is missing (npm ci in tests/reference_sdk)")
    (tmp_path / "node_modules").symlink_to(SDK_FOLDER / "node_modules")
    (tmp_path / "verify.mjs").write_text(_block_after("Node, with the reference SDK", "javascript"))
    (tmp_path / "run.mjs").write_text(
        "import { readFileSync } from 'node:fs';\n"
        "import { verifyWebhook } from './verify.mjs';\n"
        "const cases = JSON.parse(readFileSync(0, 'utf8'));\n"
        "const results = cases.map((c) => verifyWebhook(c.body, c.headers, c.secrets));\n"
        "console.log(JSON.stringify(results));\n"
    )
    body = delivery.body.decode()
    cases = [
        {"body": body, "headers": delivery.headers, "secrets": [secret]},
        {"body": body, "headers": delivery.headers, "secrets": ["cbwhsec_other"]},
        {
            "body": body.replace("docs-1", "docs-2"),
            "headers": delivery.headers,
            "secrets": [secret],
        },
    ]
    process = await asyncio.create_subprocess_exec(
        node, "run.mjs", cwd=tmp_path, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(json.dumps(cases).encode()), 30)
    assert process.returncode == 0, stderr.decode()
    assert json.loads(stdout) == [True, False, False]


async def test_python_watch_snippet_resumes_after_a_restart(
    servers: Any, account: Any, events_database_url: str, keyring: Any, pki: Any, tmp_path: Path
) -> None:
    server = servers.start(webhook_environment(events_database_url, keyring, pki))
    await account.use(server)
    await account.integration()
    script = tmp_path / "watch.py"
    script.write_text(_block_after("## WatchConnections", "python"))
    env = {**os.environ, "CREDBROKER_KEY": account.key, "CREDBROKER_TARGET": server.target}

    async def start() -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            sys.executable, str(script), cwd=tmp_path, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip

    async def next_line(process: asyncio.subprocess.Process) -> str:
        assert process.stdout is not None
        return (await asyncio.wait_for(process.stdout.readline(), 15)).decode().strip()

    async def token_written() -> bool:
        path = tmp_path / "last-resume-token"
        return path.exists() and path.read_text() != ""

    token_file = tmp_path / "last-resume-token"
    watcher = await start()
    try:
        assert await wait_until(token_written, within=15)
        heartbeat_token = token_file.read_text()
        await account.create("watched-1")
        assert await next_line(watcher) == "connection.created openai-prod watched-1"

        async def event_token_written() -> bool:
            # The snippet saves the token after handling the event (at-least-once): stopping
            # it before that would, correctly, show the event again on restart.
            return token_file.read_text() not in ("", heartbeat_token)

        assert await wait_until(event_token_written, within=15)
    finally:
        watcher.kill()
        await watcher.wait()
    await account.create("while-stopped")
    watcher = await start()
    try:
        assert await next_line(watcher) == "connection.created openai-prod while-stopped"
    finally:
        watcher.kill()
        await watcher.wait()
