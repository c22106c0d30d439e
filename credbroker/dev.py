"""Development mode (``credbroker serve --dev``, what ``make run`` runs): an embedded PostgreSQL,
a generated keyring and a ready secret key, all kept in the data folder and reused on restart."""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import structlog
from pydantic import SecretStr

from credbroker.app import default_public_url
from credbroker.config import Settings
from credbroker.crypto import generate_keyring
from credbroker.domain.errors import AlreadyExistsError
from credbroker.domain.keys import KeyService
from credbroker.preflight import ConfigurationError
from credbroker.rest.server import split_address

log = structlog.get_logger("credbroker.dev")

DEV_ENVIRONMENT = "dev"
KEY_FILE = "dev-secret-key"
KEYRING_FILE = "keyring.json"

# The embedded server handle must outlive prepare(): it stops the server when collected.
_embedded: list[Any] = []


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


def prepare(settings: Settings) -> Settings:
    """Fills in what dev mode provides: database (embedded unless configured) and keyring."""
    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    updates: dict[str, Any] = {}
    if settings.database_url is None:
        with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
            warnings.simplefilter("ignore")
            try:
                from pgserver import get_server  # type: ignore[attr-defined]  # dev mode only
            except ModuleNotFoundError:
                raise ConfigurationError(
                    "--dev without CREDBROKER_DATABASE_URL needs the embedded PostgreSQL of the "
                    "dev install (pip install pgserver, or make run); or set "
                    "CREDBROKER_DATABASE_URL"
                ) from None
        logging.getLogger("pgserver").setLevel(logging.WARNING)

        server = get_server(data_dir / "pgdata", cleanup_mode="stop")
        _embedded.append(server)
        updates["database_url"] = SecretStr(server.get_uri())
        log.info("embedded PostgreSQL running", data_dir=str(data_dir / "pgdata"))
    if settings.keyring is None and settings.keyring_file is None:
        keyring_path = data_dir / KEYRING_FILE
        if not keyring_path.exists():
            _write_private(keyring_path, generate_keyring().to_json())
            log.warning(
                "DEVELOPMENT KEYRING CREATED: for local development only; production servers "
                "need CREDBROKER_KEYRING or CREDBROKER_KEYRING_FILE from a secret store",
                path=str(keyring_path),
            )
        updates["keyring_file"] = keyring_path
    return settings.model_copy(update=updates)


async def ensure_dev_key(settings: Settings, keys: KeyService) -> str | None:
    """Creates environment ``dev`` and an all-scopes key on first start; returns the new key
    (None when an earlier start already made one, which stays in the data folder)."""
    with contextlib.suppress(AlreadyExistsError):
        await keys.create_environment(DEV_ENVIRONMENT)
    key_path = settings.data_dir.resolve() / KEY_FILE
    if key_path.exists():
        return None
    token, _ = await keys.create_key(DEV_ENVIRONMENT, description="dev mode key")
    _write_private(key_path, token + "\n")
    return token


def grpcurl_hint(token: str, listen: str) -> str:
    return (
        f"grpcurl -plaintext -H 'authorization: Bearer {token}' {listen} "
        "credbroker.v1.IntegrationService/ListIntegrations"
    )


def http_hint(settings: Settings) -> str:
    """Where the HTTP listener answers (empty when it is off or on an ephemeral port)."""
    if not settings.http_listen or settings.http_listen.endswith(":0"):
        return ""
    port = split_address(settings.http_listen)[1]
    base = settings.public_url or default_public_url(settings, port)
    return (
        f"HTTP: {base} (health: {base}/healthz)\n"
        f"connect page: {base}/connect (a link for an integration: "
        "credbroker connect link --dev --environment dev --integration ID)"
    )
