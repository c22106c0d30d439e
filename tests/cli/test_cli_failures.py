"""Every start-up and CLI failure is one line on stderr that names what is at fault as the user
gave it, and exits with a code from docs/operators.md's table; never a traceback, never a line
of gRPC core's own logging. One test per case found in issue 10, run as a real process."""

from __future__ import annotations

import argparse
import datetime
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from credbroker import cli
from credbroker.preflight import database_target

GRPC_CORE_LINE = re.compile(r"^[EWIDF]\d{4} \d\d:\d\d:\d\d", re.MULTILINE)  # E1201 21:17:50.3 ...


def one_line(result: Any, code: int) -> str:
    """The single stderr line of a failed run with exit ``code``."""
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert not GRPC_CORE_LINE.search(result.stderr), result.stderr
    # Structured log lines (JSON objects, e.g. "applied migrations") are not failure output.
    lines = [line for line in result.stderr.splitlines() if not line.startswith("{")]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("credbroker: "), lines[0]
    line: str = lines[0]
    return line


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        yield busy.getsockname()[1]


def _url(admin_url: str, **changes: str) -> str:
    parts = urlsplit(admin_url)
    netloc = parts.netloc
    if "user" in changes:
        netloc = changes["user"] + "@" + netloc.rpartition("@")[2]
    if "port" in changes:
        netloc = netloc.rpartition(":")[0] + ":" + changes["port"]
    path = "/" + changes["database"] if "database" in changes else parts.path
    return urlunsplit(parts._replace(netloc=netloc, path=path))


def _self_signed(folder: Path, name: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / f"{name}.pem", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


# --- TLS files ---------------------------------------------------------------------------------


def test_missing_tls_files_name_the_file_not_the_port(run_cli: Any, free_port: int) -> None:
    result = run_cli(
        "serve",
        "--listen",
        f"127.0.0.1:{free_port}",
        "--tls-cert",
        "/nonexistent.pem",
        "--tls-key",
        "/nonexistent.key",
    )
    line = one_line(result, 2)
    assert "--tls-cert /nonexistent.pem: no such file" in line
    assert "cannot listen" not in line


def test_missing_tls_key_file_given_by_variable(
    run_cli: Any, free_port: int, tmp_path: Path
) -> None:
    cert, _ = _self_signed(tmp_path, "server")
    result = run_cli(
        "serve",
        "--listen",
        f"127.0.0.1:{free_port}",
        env={"CREDBROKER_TLS_CERT": str(cert), "CREDBROKER_TLS_KEY": "/nonexistent.key"},
    )
    assert "CREDBROKER_TLS_KEY /nonexistent.key: no such file" in one_line(result, 2)


def test_invalid_pem_certificate(run_cli: Any, free_port: int, tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    _, key = _self_signed(tmp_path, "server")
    result = run_cli(
        "serve",
        "--listen",
        f"127.0.0.1:{free_port}",
        "--tls-cert",
        str(junk),
        "--tls-key",
        str(key),
    )
    assert f"--tls-cert {junk}: not a PEM certificate" in one_line(result, 2)


def test_invalid_pem_key_never_prints_it(run_cli: Any, free_port: int, tmp_path: Path) -> None:
    cert, _ = _self_signed(tmp_path, "server")
    junk = tmp_path / "junk.key"
    junk.write_text("-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWJ5dGVz\n-----END PRIVATE KEY-----\n")
    result = run_cli(
        "serve",
        "--listen",
        f"127.0.0.1:{free_port}",
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(junk),
    )
    line = one_line(result, 2)
    assert f"--tls-key {junk}: not an unencrypted PEM private key" in line
    assert "c2VjcmV0" not in line


def test_key_of_another_certificate(run_cli: Any, free_port: int, tmp_path: Path) -> None:
    cert, _ = _self_signed(tmp_path, "server")
    _, other_key = _self_signed(tmp_path, "other")
    result = run_cli(
        "serve",
        "--listen",
        f"127.0.0.1:{free_port}",
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(other_key),
    )
    line = one_line(result, 2)
    assert f"--tls-key {other_key} is not the private key" in line and str(cert) in line


def test_unreadable_tls_file_names_the_folder(run_cli: Any, free_port: int, tmp_path: Path) -> None:
    cert, _ = _self_signed(tmp_path, "server")
    result = run_cli(
        "serve",
        "--listen",
        f"127.0.0.1:{free_port}",
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(tmp_path),
    )
    assert f"--tls-key {tmp_path}: is a folder" in one_line(result, 2)


def test_valid_tls_files_pass_the_checks(tmp_path: Path) -> None:
    from credbroker.preflight import check_tls_files

    cert, key = _self_signed(tmp_path, "server")
    ca, _ = _self_signed(tmp_path, "ca")
    check_tls_files(cert, key, ca)  # no exception


# --- flags and variables -------------------------------------------------------------------------


def test_tls_cert_flag_alone_names_the_flags(run_cli: Any) -> None:
    line = one_line(run_cli("serve", "--tls-cert", "x"), 2)
    assert "--tls-cert needs --tls-key" in line
    assert "CREDBROKER_TLS_CERT " not in line


def test_tls_variable_alone_names_the_variable(run_cli: Any) -> None:
    line = one_line(run_cli("serve", env={"CREDBROKER_TLS_CERT": "x"}), 2)
    assert "CREDBROKER_TLS_CERT needs CREDBROKER_TLS_KEY" in line


def test_client_ca_flag_without_certificate(run_cli: Any) -> None:
    line = one_line(run_cli("serve", "--tls-client-ca", "ca.pem"), 2)
    assert "--tls-client-ca needs --tls-cert" in line


def test_invalid_listen_flag_names_the_flag(run_cli: Any) -> None:
    line = one_line(run_cli("serve", "--listen", "nonsense"), 2)
    assert "--listen: must be HOST:PORT" in line
    assert "CREDBROKER_LISTEN" not in line


def test_invalid_listen_variable_names_the_variable(run_cli: Any) -> None:
    line = one_line(run_cli("serve", env={"CREDBROKER_LISTEN": "nonsense"}), 2)
    assert "CREDBROKER_LISTEN: must be HOST:PORT" in line


def test_workers_zero_names_the_flag(run_cli: Any) -> None:
    assert "--workers:" in one_line(run_cli("serve", "--workers", "0"), 2)


def test_workers_on_port_zero(run_cli: Any) -> None:
    line = one_line(run_cli("serve", "--workers", "2", "--listen", "127.0.0.1:0"), 2)
    assert "--workers 2 needs fixed ports, not 127.0.0.1:0 (--listen" in line


def test_unknown_flag_shows_the_commands_usage(run_cli: Any) -> None:
    result = run_cli("serve", "--bogus")
    assert result.returncode == 2
    assert result.stderr.startswith("usage: credbroker serve ")
    assert result.stderr.splitlines()[-1] == (
        "credbroker serve: error: unrecognized arguments: --bogus"
    )
    nested = run_cli("keys", "create", "--environment", "x", "--bogus")
    assert nested.stderr.startswith("usage: credbroker keys create ")


def _all_parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _all_parsers(sub)


def test_every_option_and_argument_has_help() -> None:
    missing = [
        f"{parser.prog} {action.dest}"
        for parser in _all_parsers(cli._build_parser())
        for action in parser._actions
        if not isinstance(action, argparse._HelpAction | argparse._SubParsersAction)
        and not action.help
    ]
    assert missing == []


def test_help_of_every_command_runs(run_cli: Any) -> None:
    for parser in _all_parsers(cli._build_parser()):
        words = parser.prog.split()[1:]
        result = run_cli(*words, "--help")
        assert result.returncode == 0, (words, result.stderr)
        assert result.stdout.startswith(f"usage: {parser.prog}")


# --- the database ------------------------------------------------------------------------------


def test_wrong_role(run_cli: Any, admin_database_url: str) -> None:
    url = _url(admin_database_url, user="no_such_role_x")
    line = one_line(run_cli("migrate", env={"CREDBROKER_DATABASE_URL": url}), 3)
    address, _, _ = database_target(url)
    assert "role 'no_such_role_x'" in line and f"PostgreSQL at {address}" in line


def test_missing_database(run_cli: Any, admin_database_url: str) -> None:
    url = _url(admin_database_url, database="no_such_database_x")
    line = one_line(
        run_cli("keys", "list", "--environment", "x", env={"CREDBROKER_DATABASE_URL": url}), 3
    )
    assert "database 'no_such_database_x' does not exist" in line
    assert "createdb no_such_database_x" in line


def test_not_a_url(run_cli: Any) -> None:
    line = one_line(run_cli("migrate", env={"CREDBROKER_DATABASE_URL": "not-a-url"}), 2)
    assert "CREDBROKER_DATABASE_URL is not a PostgreSQL URL" in line
    assert "ClientConfigurationError" not in line


def test_refused_connection_names_host_and_port_never_the_password(
    run_cli: Any, free_port: int
) -> None:
    url = f"postgresql://someone:pw-do-not-print@127.0.0.1:{free_port}/db"
    line = one_line(run_cli("migrate", env={"CREDBROKER_DATABASE_URL": url}), 3)
    assert f"127.0.0.1:{free_port}" in line and "connection refused" in line
    assert "pw-do-not-print" not in line


def test_serve_with_wrong_role_is_one_line(
    run_cli: Any, admin_database_url: str, free_port: int
) -> None:
    url = _url(admin_database_url, user="no_such_role_x")
    result = run_cli(
        "serve", "--listen", f"127.0.0.1:{free_port}", env={"CREDBROKER_DATABASE_URL": url}
    )
    # The structured log may precede it; the failure itself is the last line, no traceback.
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    assert "role 'no_such_role_x'" in result.stderr.splitlines()[-1]


def test_no_database_url(run_cli: Any) -> None:
    line = one_line(run_cli("migrate", env={"CREDBROKER_DATABASE_URL": None}), 2)
    assert "CREDBROKER_DATABASE_URL is not set" in line


# --- ports -------------------------------------------------------------------------------------


def test_busy_grpc_port_is_one_line(run_cli: Any, busy_port: int) -> None:
    line = one_line(run_cli("serve", "--listen", f"127.0.0.1:{busy_port}"), 4)
    assert f"cannot listen on 127.0.0.1:{busy_port} (--listen)" in line
    assert "in use" in line


def test_busy_grpc_port_given_by_variable(run_cli: Any, busy_port: int) -> None:
    line = one_line(run_cli("serve", env={"CREDBROKER_LISTEN": f"127.0.0.1:{busy_port}"}), 4)
    assert f"127.0.0.1:{busy_port} (CREDBROKER_LISTEN)" in line


def test_busy_metrics_port_is_one_line(run_cli: Any, busy_port: int, free_port: int) -> None:
    result = run_cli(
        "serve", "--listen", f"127.0.0.1:{free_port}", "--metrics-listen", f"127.0.0.1:{busy_port}"
    )
    line = one_line(result, 4)
    assert f"cannot listen on 127.0.0.1:{busy_port} (--metrics-listen)" in line


def test_busy_port_with_workers(run_cli: Any, busy_port: int) -> None:
    line = one_line(run_cli("serve", "--workers", "2", "--listen", f"127.0.0.1:{busy_port}"), 4)
    assert f"127.0.0.1:{busy_port}" in line


def test_address_not_of_this_machine(run_cli: Any) -> None:
    line = one_line(run_cli("serve", "--listen", "192.0.2.1:50999"), 4)  # TEST-NET-1, never bound
    assert "not an address of this machine" in line


# --- refusals keep exit code 1 -----------------------------------------------------------------


def test_unknown_environment_is_a_refusal(run_cli: Any) -> None:
    line = one_line(run_cli("keys", "list", "--environment", "no-such-env"), 1)
    assert "no-such-env" in line


def test_output_piped_into_a_reader_that_stops_early(
    credbroker_executable: Path, cli_env: dict[str, str]
) -> None:
    """`keys list | head -n1` under `set -o pipefail`: the CLI ends quietly with 0. (`true`
    reads nothing and is gone long before the CLI has started, so the write always fails.)"""
    import subprocess

    script = (
        "set -euo pipefail\n"
        'for _ in 1 2 3; do "$CB" keys create --environment pipes >/dev/null; done\n'
        '"$CB" keys list --environment pipes | true\n'
        """"$CB" keys list --environment pipes | awk '{print $1; exit}'\n"""
    )
    env = {**cli_env, "CB": str(credbroker_executable)}
    subprocess.run(
        [str(credbroker_executable), "environments", "create", "pipes"],
        env=env,
        capture_output=True,
        check=False,
        timeout=60,
    )
    result = subprocess.run(
        ["bash", "-c", script], env=env, capture_output=True, text=True, check=False, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr
    assert len(result.stdout.split()) == 1
