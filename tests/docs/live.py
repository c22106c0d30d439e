"""A reader's machine for the docs: a working folder laid out like the repository root after
``make run`` (its folders linked, so recipes' own files stay out of the repository), a real
``credbroker serve --dev`` on a free port with a database of its own, and the substitutions
that point the documented addresses and placeholders at live ones."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from .session import DocSession, Substitutions

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
NOT_LINKED = {".git", ".credbroker", ".doc-test", ".mypy_cache", ".ruff_cache", ".pytest_cache"}
START_TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.2)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def reader_env(workdir: Path, client_bin: Path | None = None) -> dict[str, str]:
    """The reader's shell: no CREDBROKER_* settings, the venv's tools first on PATH (as after
    ``source .venv/bin/activate``), temporary files inside the working folder; ``client_bin``
    holds PostgreSQL client tools (pg_dump) of the test server's version."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CREDBROKER_", "PYTEST_"))}
    path = [str(VENV_BIN), *([str(client_bin)] if client_bin else []), env.get("PATH", "")]
    env["PATH"] = os.pathsep.join(path)
    env["VIRTUAL_ENV"] = str(VENV_BIN.parent)
    tmp = workdir / ".doc-test" / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    env["TMPDIR"] = str(tmp)
    return env


class Databases:
    """Fresh databases on the test PostgreSQL, dropped at the end."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.names: list[str] = []

    async def _execute(self, statement: str) -> None:
        admin = await asyncpg.connect(self.admin_url)
        try:
            await admin.execute(statement)
        finally:
            await admin.close()

    async def _major(self) -> int:
        admin = await asyncpg.connect(self.admin_url)
        try:
            return int(await admin.fetchval("SHOW server_version_num")) // 10000
        finally:
            await admin.close()

    def client_bin(self) -> Path | None:
        """A folder with a pg_dump of the server's major version (the reader's pg_dump talks to
        their server; the test server may be the embedded one, of another version)."""
        major = asyncio.run(self._major())
        candidates = [Path(p).parent for p in [shutil.which("pg_dump")] if p]
        candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"))
        with contextlib.suppress(ImportError):
            import pgserver

            candidates.append(Path(pgserver.__file__).parent / "pginstall" / "bin")
        for folder in candidates:
            tool = folder / "pg_dump"
            if not tool.exists():
                continue
            version = subprocess.run(
                [str(tool), "--version"], capture_output=True, text=True, check=False, timeout=30
            ).stdout
            match = re.search(r"(\d+)\.\d+", version)
            if match and int(match.group(1)) == major:
                return folder
        return None

    def create(self, label: str) -> str:
        name = f"credbroker_docs_{label}_{uuid.uuid4().hex[:10]}"
        asyncio.run(self._execute(f'CREATE DATABASE "{name}"'))
        self.names.append(name)
        return urlunsplit(urlsplit(self.admin_url)._replace(path="/" + name))

    def drop_all(self) -> None:
        for name in self.names:
            asyncio.run(self._execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        self.names.clear()


@dataclass
class LiveDocs:
    """One document's reader machine: the working folder and the dev server answering at the
    documented ``localhost:50051``."""

    workdir: Path
    port: int
    server: subprocess.Popen[bytes]
    log: Path
    substitutions: Substitutions = field(default_factory=Substitutions)
    client_bin: Path | None = None

    def session(self) -> DocSession:
        env = reader_env(self.workdir, self.client_bin)
        return DocSession(self.workdir, env, self.substitutions, VENV_BIN / "python")

    def stop(self) -> None:
        if self.server.poll() is None:
            self.server.send_signal(signal.SIGTERM)
            try:
                self.server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait(timeout=10)


def lay_out(workdir: Path) -> None:
    """Links the repository's top-level entries into ``workdir`` (recipes write to ``workdir``)."""
    workdir.mkdir(parents=True, exist_ok=True)
    for entry in ROOT.iterdir():
        if entry.name not in NOT_LINKED and not (workdir / entry.name).exists():
            (workdir / entry.name).symlink_to(entry)


def ensure_node_modules() -> None:
    """The Node client's dependencies, from its lock file, as its README's reader installs them."""
    node = ROOT / "clients" / "node"
    if (node / "node_modules" / "@grpc" / "grpc-js").exists():
        return
    npm = shutil.which("npm")
    assert npm, "npm is needed for clients/node/README.md"
    subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts"],
        cwd=node,
        check=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
        capture_output=True,
    )


def start(workdir: Path, databases: Databases) -> LiveDocs:
    """``credbroker serve --dev`` (what ``make run`` runs) in ``workdir``, on a free port, with
    a fresh database instead of the embedded one (the rest of dev mode is as documented: a
    generated keyring and a key for environment ``dev`` in ``.credbroker/``)."""
    lay_out(workdir)
    port, http_port = free_port(), free_port()
    env = reader_env(workdir)
    env["CREDBROKER_DATABASE_URL"] = databases.create("dev")
    env["CREDBROKER_LOG_FORMAT"] = "json"
    log = workdir / ".doc-test" / "dev-server.log"
    with log.open("wb") as handle:
        server = subprocess.Popen(
            [
                *(str(VENV_BIN / "credbroker"), "serve", "--dev"),
                *("--listen", f"127.0.0.1:{port}", "--http-listen", f"127.0.0.1:{http_port}"),
            ],
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    live = LiveDocs(workdir, port, server, log, client_bin=databases.client_bin())
    deadline = time.monotonic() + START_TIMEOUT
    key = workdir / ".credbroker" / "dev-secret-key"
    while not (key.exists() and _port_open(port)):
        if server.poll() is not None or time.monotonic() > deadline:
            live.stop()
            raise AssertionError(f"the dev server did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)
    second, second_http, metrics = free_port(), free_port(), free_port()
    subs = live.substitutions
    subs.add("localhost:50051", f"localhost:{port}")
    subs.add("127.0.0.1:50051", f"127.0.0.1:{port}")
    subs.add("localhost:8080", f"localhost:{http_port}")
    subs.add("127.0.0.1:8080", f"127.0.0.1:{http_port}")
    # A server the document starts itself (binds all interfaces in production): loopback here.
    subs.add("0.0.0.0:50051", f"127.0.0.1:{second}")
    subs.add("0.0.0.0:8080", f"127.0.0.1:{second_http}")
    subs.add("127.0.0.1:9090", f"127.0.0.1:{metrics}")
    subs.add("0.0.0.0:9090", f"127.0.0.1:{metrics}")
    subs.add("postgresql://user@db/credbroker", databases.create("operator"))
    subs.ports.update({second, second_http, metrics})
    return live
