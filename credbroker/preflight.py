"""Start-up failures and the checks that find them before gRPC, asyncpg or the metrics server do.

Every failure is a :class:`StartupError` whose message is one line naming what is at fault as the
user gave it (a flag or variable, a file, ``host:port``, a role, a database) and what to do, and
whose ``exit_code`` comes from the table in docs/operators.md ("Exit codes"). Messages never carry
key material or a password. Checking TLS files and ports here, before they reach gRPC, keeps gRPC
core's own log lines out of the output and gives the real cause (a missing file is not a busy port).
"""

from __future__ import annotations

import errno
import getpass
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

EXIT_REFUSED = 1
EXIT_CONFIGURATION = 2
EXIT_DATABASE = 3
EXIT_LISTEN = 4


class StartupError(RuntimeError):
    """The service must not start; the message is safe to print (no key material)."""

    exit_code = EXIT_REFUSED


class ConfigurationError(StartupError):
    """A flag, variable or file the user gave is missing or invalid."""

    exit_code = EXIT_CONFIGURATION


class DatabaseConnectError(StartupError):
    """PostgreSQL could not be reached or refused the connection."""

    exit_code = EXIT_DATABASE


class ListenError(StartupError):
    """An address could not be bound."""

    exit_code = EXIT_LISTEN


# Settings fields and the flag that sets each (``serve``): messages name what the user used.
FLAGS = {
    "listen": "--listen",
    "http_listen": "--http-listen",
    "public_url": "--public-url",
    "metrics_listen": "--metrics-listen",
    "tls_cert": "--tls-cert",
    "tls_key": "--tls-key",
    "tls_client_ca": "--tls-client-ca",
    "workers": "--workers",
}


def variable(field: str) -> str:
    return "CREDBROKER_" + field.upper()


def given_name(field: str, names: Mapping[str, str] | None) -> str:
    """How the user set ``field``: the flag when given on the command line, else the variable."""
    return (names or {}).get(field) or variable(field)


# --- addresses ------------------------------------------------------------------------------


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def check_can_listen(address: str, name: str) -> None:
    """Binds ``address`` once (as gRPC does: SO_REUSEADDR, so TIME_WAIT leftovers are no
    conflict) and releases it; raises ListenError naming ``name`` and the address otherwise."""
    host, port = split_address(address)
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise ListenError(
            f"cannot listen on {address} ({name}): host {host!r} does not resolve; "
            "use an address of this machine, e.g. 127.0.0.1 or 0.0.0.0"
        ) from None
    family, kind, proto, _, sockaddr = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(sockaddr)
            probe.listen()
        except OSError as exc:
            raise ListenError(f"cannot listen on {address} ({name}): {_bind_hint(exc)}") from None


def _bind_hint(exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return "the port is in use by another process; stop it or choose another port"
    if exc.errno == errno.EACCES:
        return "permission denied; ports below 1024 need privileges, choose a higher port"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "not an address of this machine; use one it has, e.g. 127.0.0.1 or 0.0.0.0"
    return f"{exc.strerror or exc}; choose another address"


# --- TLS files ------------------------------------------------------------------------------


def _read(path: Path, name: str, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigurationError(
            f"{name} {path}: no such file; give the path of the {what}"
        ) from None
    except IsADirectoryError:
        raise ConfigurationError(
            f"{name} {path}: is a folder; give the path of the {what}"
        ) from None
    except PermissionError:
        raise ConfigurationError(
            f"{name} {path}: permission denied; make it readable by uid {os.getuid()}"
        ) from None
    except OSError as exc:
        raise ConfigurationError(f"{name} {path}: cannot read it ({exc.strerror})") from None


def check_tls_files(
    cert: Path | None,
    key: Path | None,
    client_ca: Path | None,
    names: Mapping[str, str] | None = None,
) -> None:
    """Reads and parses the TLS files: present, readable, PEM, and the key fits the
    certificate. The key's bytes never reach a message."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    if cert is None or key is None:
        return
    cert_name, key_name = given_name("tls_cert", names), given_name("tls_key", names)
    try:
        chain = x509.load_pem_x509_certificates(_read(cert, cert_name, "PEM certificate chain"))
    except ValueError:
        raise ConfigurationError(
            f"{cert_name} {cert}: not a PEM certificate (no valid BEGIN CERTIFICATE block)"
        ) from None
    try:
        private_key = serialization.load_pem_private_key(
            _read(key, key_name, "PEM private key"), password=None
        )
    except (ValueError, TypeError):
        raise ConfigurationError(
            f"{key_name} {key}: not an unencrypted PEM private key (BEGIN PRIVATE KEY)"
        ) from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if private_key.public_key().public_bytes(serialization.Encoding.DER, public) != chain[
        0
    ].public_key().public_bytes(serialization.Encoding.DER, public):
        raise ConfigurationError(
            f"{key_name} {key} is not the private key of the first certificate in "
            f"{cert_name} {cert}; give the matching pair"
        )
    if client_ca is not None:
        ca_name = given_name("tls_client_ca", names)
        try:
            x509.load_pem_x509_certificates(_read(client_ca, ca_name, "PEM CA bundle"))
        except ValueError:
            raise ConfigurationError(
                f"{ca_name} {client_ca}: not a PEM certificate bundle "
                "(no valid BEGIN CERTIFICATE block)"
            ) from None


# --- the database ---------------------------------------------------------------------------


def database_target(dsn: str) -> tuple[str, str, str]:
    """(``host:port``, role, database) that asyncpg will use for ``dsn``, for messages; the
    password is never part of it. Raises ConfigurationError when ``dsn`` is not a URL."""
    parts = urlsplit(dsn)
    if parts.scheme not in {"postgresql", "postgres"}:
        raise ConfigurationError(
            "CREDBROKER_DATABASE_URL is not a PostgreSQL URL; use "
            "postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE"
        )
    query = parse_qs(parts.query)
    try:
        port = parts.port
    except ValueError:
        raise ConfigurationError(
            "CREDBROKER_DATABASE_URL has an invalid port; use postgresql://USER@HOST:5432/DATABASE"
        ) from None
    host = parts.hostname or (query.get("host") or [os.environ.get("PGHOST", "localhost")])[0]
    port_text = str(port or (query.get("port") or [os.environ.get("PGPORT", "5432")])[0])
    role = unquote(parts.username or "") or os.environ.get("PGUSER") or getpass.getuser()
    database = unquote(parts.path.lstrip("/")) or os.environ.get("PGDATABASE") or role
    address = f"{host}:{port_text}" if not host.startswith("/") else f"{host} (port {port_text})"
    return address, role, database


def describe_connect_failure(dsn: str, exc: BaseException) -> StartupError:
    """One line for a failed first connection: which server, role or database, and the fix."""
    import asyncpg

    address, role, database = database_target(dsn)
    where = f"PostgreSQL at {address}"
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return DatabaseConnectError(
            f"database {database!r} does not exist on {where}; create it "
            f"(createdb {database}) or fix the database in CREDBROKER_DATABASE_URL"
        )
    if isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError):
        return DatabaseConnectError(
            f"{where} refused role {role!r} (no such role, or not allowed by pg_hba.conf); "
            "fix the user in CREDBROKER_DATABASE_URL or create the role"
        )
    if isinstance(exc, asyncpg.InvalidPasswordError):
        return DatabaseConnectError(
            f"{where} rejected the password of role {role!r}; "
            "fix the password in CREDBROKER_DATABASE_URL"
        )
    if isinstance(exc, asyncpg.ClientConfigurationError):
        return ConfigurationError(f"CREDBROKER_DATABASE_URL is not usable ({exc})")
    if isinstance(exc, ConnectionRefusedError):
        reason = "connection refused: nothing listens there"
    elif isinstance(exc, socket.gaierror):
        reason = "the host name does not resolve"
    elif isinstance(exc, TimeoutError):
        reason = "no answer in time"
    elif isinstance(exc, asyncpg.PostgresError):
        reason = f"the server said: {exc}"
    else:
        reason = f"{type(exc).__name__}"
    return DatabaseConnectError(
        f"cannot connect to {where} ({reason}); check that PostgreSQL runs there and the "
        "host and port in CREDBROKER_DATABASE_URL"
    )
