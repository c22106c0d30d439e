"""``credbroker serve`` as a real process: start-up refusals, health, and graceful SIGTERM."""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from credbroker.crypto import Keyring, generate_keyring

START_TIMEOUT = 60.0  # a loaded 2-core machine took more than 15 s to start serve


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _start(
    executable: Path, env: dict[str, str], port: int, log_dir: Path
) -> tuple[subprocess.Popen[bytes], Path]:
    log = log_dir / f"serve-{port}-{time.monotonic_ns()}.log"
    with log.open("wb") as handle:
        process = subprocess.Popen(
            [str(executable), "serve", "--listen", f"127.0.0.1:{port}"],
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=env,
        )
    return process, log


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
        process.wait(timeout=10)


def _wait_serving(process: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            assert process.poll() is None, f"server exited early:\n{log.read_text()}"
            try:
                response = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                if response.status == health_pb2.HealthCheckResponse.SERVING:
                    named = stub.Check(
                        health_pb2.HealthCheckRequest(service="credbroker.v1.ConnectionService"),
                        timeout=1,
                    )
                    assert named.status == health_pb2.HealthCheckResponse.SERVING
                    return
            except grpc.RpcError:
                pass
            assert time.monotonic() < deadline, f"not serving in time:\n{log.read_text()}"
            time.sleep(0.1)


def _serve_then_sigterm(
    executable: Path, env: dict[str, str], port: int, log_dir: Path
) -> tuple[int, float, str]:
    """Starts the server, waits for SERVING, sends SIGTERM; returns exit code, seconds to exit
    after the signal, and the output."""
    process, log = _start(executable, env, port, log_dir)
    try:
        _wait_serving(process, port, log)
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"no exit within 10 s of SIGTERM:\n{log.read_text()}") from None
        return code, time.monotonic() - signalled, log.read_text()
    finally:
        _stop(process)


def test_serve_health_then_sigterm_exits_zero(
    credbroker_executable: Path, cli_env: dict[str, str], free_port: int, tmp_path: Path
) -> None:
    code, seconds, output = _serve_then_sigterm(credbroker_executable, cli_env, free_port, tmp_path)
    assert code == 0, output
    assert seconds < 10
    assert not _port_open(free_port)
    assert "Traceback" not in output


def test_serve_without_keyring_fails_fast(run_cli: Any, free_port: int) -> None:
    started = time.monotonic()
    result = run_cli(
        "serve",
        "--listen",
        f"127.0.0.1:{free_port}",
        env={"CREDBROKER_KEYRING": None, "CREDBROKER_KEYRING_FILE": None},
        timeout=30,
    )
    assert result.returncode != 0
    assert time.monotonic() - started < 20
    assert "CREDBROKER_KEYRING" in result.stderr
    assert "Traceback" not in result.stderr
    assert not _port_open(free_port)


def test_serve_with_invalid_keyring_fails(run_cli: Any, free_port: int) -> None:
    result = run_cli(
        "serve",
        "--listen",
        f"127.0.0.1:{free_port}",
        env={"CREDBROKER_KEYRING": '{"primary_key_id": 1, "keys": {"1": "c2hvcnQ="}}'},
        timeout=30,
    )
    assert result.returncode != 0
    assert "keyring" in result.stderr
    assert "c2hvcnQ=" not in result.stderr
    assert not _port_open(free_port)


def test_serve_refuses_changed_master_key_without_listening(
    credbroker_executable: Path,
    cli_env: dict[str, str],
    cli_keyring_json: str,
    free_port: int,
    tmp_path: Path,
) -> None:
    # First use of key 1 against this database registers its check value.
    code, _, output = _serve_then_sigterm(credbroker_executable, cli_env, free_port, tmp_path)
    assert code == 0, output

    good = Keyring.from_json(cli_keyring_json)
    wrong = generate_keyring(1)
    assert wrong.keys[1] != good.keys[1]
    env = {**cli_env, "CREDBROKER_KEYRING": wrong.to_json()}

    process, log = _start(credbroker_executable, env, free_port, tmp_path)
    listened = False
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while process.poll() is None:
            listened = listened or _port_open(free_port)
            assert time.monotonic() < deadline, "server did not refuse to start"
            time.sleep(0.02)
    finally:
        _stop(process)
    output = log.read_text()

    assert process.returncode != 0, output
    assert not listened, "the server listened before refusing"
    assert not _port_open(free_port)
    assert "master key 1" in output
    assert "Traceback" not in output
    for keyring in (good, wrong):
        for key in keyring.keys.values():
            encoded = base64.b64encode(key).decode()
            assert encoded not in output
            assert encoded[:12] not in output
            assert key.hex()[:24] not in output

    # The right keyring still starts afterwards (the refusal changed nothing).
    code, _, output = _serve_then_sigterm(credbroker_executable, cli_env, free_port, tmp_path)
    assert code == 0, output


def test_serve_on_a_port_in_use_fails_with_a_clear_message(run_cli: Any) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("serve", "--listen", f"127.0.0.1:{port}", timeout=30)
    assert result.returncode != 0
    assert f"127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr, result.stderr[-2000:]


def test_serve_workers_share_the_http_port_and_never_log_query_strings(
    credbroker_executable: Path, cli_env: dict[str, str], free_port: int, tmp_path: Path
) -> None:
    """Two workers serve /healthz on one HTTP port (SO_REUSEPORT, like gRPC); at log level
    debug, a token in a query string appears in no log line, then SIGTERM drains both."""
    http_address = cli_env["CREDBROKER_HTTP_LISTEN"]
    env = {**cli_env, "CREDBROKER_LOG_LEVEL": "debug", "CREDBROKER_WORKERS": "2"}
    secret = "cbcs_" + "QueryStringCanary" * 3
    process, log = _start(credbroker_executable, env, free_port, tmp_path)
    try:
        _wait_serving(process, free_port, log)
        with httpx.Client(base_url=f"http://{http_address}", timeout=5) as client:
            for path in ("/healthz", "/no-such-route", "/connect/session"):
                response = client.get(f"{path}?connect_session_token={secret}&x={secret}")
                assert response.status_code in {200, 401, 404}, response.text
                assert response.headers["cache-control"] == "no-store"
            assert client.get("/healthz").json() == {"status": "SERVING"}
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        _stop(process)
    output = log.read_text()
    assert '"workers": 2' in output or "workers=2" in output, output[-2000:]
    assert output.count('"serving"') >= 2 or output.count("serving ") >= 2, output[-2000:]
    assert secret not in output
    assert "QueryStringCanary" not in output
    assert not _port_open(int(http_address.rpartition(":")[2]))


ORPHAN_BOUND_SECONDS = 15.0  # the workers' graceful drain (CREDBROKER_SHUTDOWN_GRACE=5) and exit


def test_workers_exit_when_the_supervisor_is_killed(
    credbroker_executable: Path,
    cli_env: dict[str, str],
    free_port: int,
    tmp_path: Path,
    process_tree: Any,
) -> None:
    """``serve --workers 2`` killed with SIGKILL (no signal forwarded, no clean-up): its
    workers notice their supervisor died and exit by themselves, freeing both ports."""
    http_port = int(cli_env["CREDBROKER_HTTP_LISTEN"].rpartition(":")[2])
    env = {**cli_env, "CREDBROKER_WORKERS": "2"}
    process, log = _start(credbroker_executable, env, free_port, tmp_path)
    workers: dict[int, str] = {}
    try:
        _wait_serving(process, free_port, log)
        deadline = time.monotonic() + START_TIMEOUT
        while log.read_text().count('"serving"') < 2:  # each worker logs it once it listens
            assert time.monotonic() < deadline, f"two workers not serving:\n{log.read_text()}"
            time.sleep(0.1)
        workers = {
            pid: command
            for pid, command in process_tree(process.pid).items()
            if "multiprocessing" in command and "resource_tracker" not in command
        }
        assert len(workers) == 2, process_tree(process.pid)
        process.kill()
        process.wait(timeout=10)
        killed = time.monotonic()
        while time.monotonic() - killed < ORPHAN_BOUND_SECONDS:
            if not any(process_alive(pid) for pid in workers):
                break
            time.sleep(0.1)
        left = [pid for pid in workers if process_alive(pid)]
        assert left == [], (
            f"workers {left} still alive {ORPHAN_BOUND_SECONDS} s after the supervisor was "
            f"killed:\n{log.read_text()[-3000:]}"
        )
        print(f"workers exited {time.monotonic() - killed:.2f} s after the supervisor's SIGKILL")
    finally:
        _stop(process)
        for pid in workers:  # only if the assertion above failed
            if process_alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert not _port_open(free_port)
    assert not _port_open(http_port)
    assert "Traceback" not in log.read_text()


def process_alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting to be reaped by whoever adopted it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"
