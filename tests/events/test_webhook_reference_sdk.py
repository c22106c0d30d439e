"""The reference Node SDK (``@nangohq/node`` 0.71.10, unchanged, pinned in tests/reference_sdk)
verifies credbroker's ``X-Nango-Hmac-Sha256`` signatures in a real HTTPS receiver, a tampered
request is refused, and a secret rotation keeps receivers working through its overlap."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import shutil
import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.protobuf import duration_pb2

from credbroker.v1 import webhook_service_pb2 as wpb

from .conftest import READ_TIMEOUT, create_endpoint, webhook_environment, webhooks_stub

SDK_FOLDER = Path(__file__).resolve().parents[1] / "reference_sdk"
INSTALL = f"cd {SDK_FOLDER} && npm ci --no-audit --no-fund --ignore-scripts"


def _node_or_skip() -> str:
    node = shutil.which("node")
    missing = None
    if node is None:
        missing = "node (>= 20) is not installed"
    elif not (SDK_FOLDER / "node_modules" / "@nangohq" / "node").is_dir():
        missing = f"the reference SDK is not installed: {INSTALL}"
    if missing is not None:
        if os.environ.get("CI"):
            pytest.fail(missing)
        pytest.skip(missing)
    assert node is not None
    return node


class NodeReceiver:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.port = 0

    async def line(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        raw = await asyncio.wait_for(self.process.stdout.readline(), READ_TIMEOUT)
        assert raw, "the Node receiver exited"
        return json.loads(raw)  # type: ignore[no-any-return]

    async def use_keys(self, *keys: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"keys": list(keys)}).encode() + b"\n")
        await self.process.stdin.drain()
        assert (await self.line()) == {"keys": len(keys)}

    async def stop(self) -> None:
        if self.process.returncode is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


async def test_the_reference_sdk_verifies_every_delivery(
    servers: Any, account: Any, events_database_url: str, keyring: Any, pki: Any
) -> None:
    node = _node_or_skip()
    process = await asyncio.create_subprocess_exec(
        node,
        "webhook_receiver.mjs",
        str(pki.cert_file),
        str(pki.key_file),
        cwd=SDK_FOLDER,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env={"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp")},
    )
    receiver = NodeReceiver(process)
    try:
        receiver.port = (await receiver.line())["port"]
        server = servers.start(webhook_environment(events_database_url, keyring, pki))
        await account.use(server)
        await account.integration()
        url = f"https://127.0.0.1:{receiver.port}/webhooks/credbroker"
        endpoint_id, secret = await create_endpoint(account, url)
        await receiver.use_keys(secret, "cbwhsec_not-the-key")
        for name in ("sdk-1", "sdk-2"):
            await account.create(name, end_user_id=name)
        checks = [await receiver.line(), await receiver.line()]
        assert [c["verified"] for c in checks] == [[True, False], [True, False]]

        # A tampered body (signature of the original) is refused by the SDK.
        original = b'{"connectionId":"sdk-1"}'
        signature = hmac.new(secret.encode(), original, hashlib.sha256).hexdigest()
        async with httpx.AsyncClient(
            verify=ssl.create_default_context(cafile=str(pki.ca_file))
        ) as client:
            good = await client.post(
                url, content=original, headers={"X-Nango-Hmac-Sha256": signature}
            )
            bad = await client.post(
                url, content=original.replace(b"sdk-1", b"sdk-9"),
                headers={"X-Nango-Hmac-Sha256": signature},
            )  # fmt: skip
        assert (good.status_code, bad.status_code) == (200, 401)
        assert [(await receiver.line())["verified"] for _ in range(2)] == [
            [True, False],
            [False, False],
        ]

        # Rotation: during the overlap the reference header is still signed with the old
        # secret (receivers not yet updated keep working); without overlap the new one signs.
        stub = webhooks_stub(account)
        rotated = await stub.RotateWebhookSecret(
            wpb.RotateWebhookSecretRequest(
                endpoint_id=endpoint_id, overlap=duration_pb2.Duration(seconds=3600)
            ),
            metadata=account.metadata,
        )
        new_secret = rotated.signing_secret
        assert new_secret != secret and rotated.endpoint.HasField("previous_secret_expire_time")
        await receiver.use_keys(secret, new_secret)
        await account.create("sdk-3")
        assert (await receiver.line())["verified"] == [True, False]
        finished = await stub.RotateWebhookSecret(
            wpb.RotateWebhookSecretRequest(
                endpoint_id=endpoint_id, overlap=duration_pb2.Duration(seconds=0)
            ),
            metadata=account.metadata,
        )
        await receiver.use_keys(new_secret, finished.signing_secret)
        await account.create("sdk-4")
        assert (await receiver.line())["verified"] == [False, True]
    finally:
        await receiver.stop()
