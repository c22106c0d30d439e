"""`credbroker serve --dev` (what `make run` runs): embedded PostgreSQL, generated keyring and a
ready key in the data folder on first start, all reused on the next start."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from credbroker.v1 import integration_service_pb2 as ipb
from credbroker.v1 import integration_service_pb2_grpc as igrpc

CREDBROKER = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "credbroker"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _start(data_dir: Path, port: int) -> subprocess.Popen[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CREDBROKER_") or k.endswith("_TEST_DATABASE_URL")
    }
    env["CREDBROKER_DATA_DIR"] = str(data_dir)
    env["CREDBROKER_VERIFY_CREDENTIALS"] = "false"
    return subprocess.Popen(
        [
            str(CREDBROKER),
            "serve",
            "--dev",
            "--listen",
            f"127.0.0.1:{port}",
            "--http-listen",
            "127.0.0.1:0",
            "--workers",
            "1",
        ],
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )


def _wait_serving(port: int, key: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                igrpc.IntegrationServiceStub(channel).ListIntegrations(
                    ipb.ListIntegrationsRequest(),
                    metadata=(("authorization", f"Bearer {key}"),),
                    timeout=2,
                )
                return
        except grpc.RpcError:
            time.sleep(0.3)
    raise AssertionError("the dev server did not answer within 60 s")


def _stop(process: subprocess.Popen[str]) -> str:
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    return stderr


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A data folder outside ``tmp_path``: as root, the embedded PostgreSQL runs as an
    unprivileged user, and pytest resets its base folder to mode 0700 whenever another pytest
    session starts, which would lock that user out of a folder below it."""
    folder = Path(tempfile.mkdtemp(prefix="credbroker-dev-mode-"))
    yield folder / "data"
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
def test_dev_mode_first_start_then_reuse(data_dir: Path) -> None:
    port = _free_port()
    first = _start(data_dir, port)
    try:
        deadline = time.monotonic() + 60
        key_file = data_dir / "dev-secret-key"
        while not key_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        key = key_file.read_text().strip()
        _wait_serving(port, key)
    finally:
        stderr = _stop(first)
    assert f"Bearer {key}" in stderr  # the ready-to-paste grpcurl line
    assert "DEVELOPMENT KEYRING CREATED" in stderr
    keyring = (data_dir / "keyring.json").read_text()
    assert oct((data_dir / "keyring.json").stat().st_mode & 0o777) == "0o600"

    second = _start(data_dir, port)
    try:
        _wait_serving(port, key)  # the same key still works: same database
    finally:
        stderr = _stop(second)
    assert f"Bearer {key}" not in stderr and "DEVELOPMENT KEYRING CREATED" not in stderr
    assert (data_dir / "keyring.json").read_text() == keyring
