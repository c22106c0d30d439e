"""Lean, reproducible artifacts: the pinned constraints cover every dependency, the image gets
the server's runtime packages only (from those pins), its build context holds only what the
Dockerfile copies, and the SDK installs without the server's dependencies."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVER_ONLY = {"asyncpg", "cryptography", "pydantic-settings", "structlog", "uvloop", "httpx"}


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement.strip(), maxsplit=1)[0].lower()


def _project() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]  # type: ignore[no-any-return]


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith((" ", "#")):
            name, _, version = line.partition("==")
            assert version, f"not pinned: {line}"
            pins[name.lower()] = version
    return pins


def test_constraints_pin_every_dependency() -> None:
    project = _project()
    extras = project["optional-dependencies"]
    assert isinstance(extras, dict)
    declared = [*project["dependencies"], *extras["server"], *extras["dev"]]  # type: ignore[misc]
    pins = _pins()
    missing = sorted({_name(r) for r in declared} - set(pins))
    assert missing == [], f"run `make lock`: {missing} are not in constraints.txt"


def test_the_sdk_is_the_base_and_the_server_an_extra() -> None:
    project = _project()
    base = {_name(r) for r in project["dependencies"]}  # type: ignore[attr-defined]
    assert base == {"grpcio", "grpcio-status", "protobuf", "googleapis-common-protos"}
    extras = project["optional-dependencies"]
    assert isinstance(extras, dict)
    assert {_name(r) for r in extras["server"]} >= SERVER_ONLY
    assert "pgserver" not in {_name(r) for r in extras["server"]}  # dev-only (make run)
    assert "pgserver" in {_name(r) for r in extras["dev"]}


def test_the_image_installs_the_pinned_server_without_dev_packages() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    installs = [line for line in dockerfile.splitlines() if "pip " in line or "'" in line]
    assert any("-c constraints.txt" in line and "'.[server]'" in line for line in installs)
    assert "dev" not in " ".join(installs)
    runtime = dockerfile.rsplit("FROM ", 1)[1]  # the last stage: only the built virtualenv
    assert "COPY --from=build /opt/credbroker /opt/credbroker" in runtime
    assert "pip install" not in runtime


def _copied_sources(dockerfile: str) -> set[str]:
    sources: set[str] = set()
    for line in dockerfile.splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
            sources.update(word.rstrip("/").removeprefix("./") for word in words[1:-1])
    return sources


def test_the_build_context_is_only_what_the_dockerfile_copies() -> None:
    rules = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert rules[0] == "*", "exclude everything, then re-include what the build copies"
    included = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    assert included == _copied_sources((ROOT / "Dockerfile").read_text())
    for kept_out in (".venv", ".git", ".mypy_cache", "clients/node/node_modules", "keyring.json"):
        assert kept_out.split("/")[0] not in included


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_sdk_installs_and_works_without_the_server(tmp_path: Path) -> None:
    venv = tmp_path / "sdk"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "-c",
            str(ROOT / "constraints.txt"),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=500,
        check=False,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    modules = sorted(name.replace("-", "_") for name in SERVER_ONLY | {"pgserver"})
    probe = (
        "import importlib.util\n"
        "from credbroker.client import CredBroker, NotFound\n"
        "from credbroker.v1 import connection_service_pb2\n"
        f"print([m for m in {modules!r} if importlib.util.find_spec(m)])\n"
    )
    result = subprocess.run(
        [str(python), "-c", probe], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", "server packages came with the SDK"
    cli = subprocess.run(
        [str(venv / "bin" / "credbroker"), "migrate"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert cli.returncode == 2
    assert cli.stderr.strip().startswith("credbroker: the server is not installed")
    assert "pip install 'credbroker[server]'" in cli.stderr and "Traceback" not in cli.stderr
