"""Start-up shared by the server and the CLI: keyring, database, migrations and the fail-closed
master-key check. Nothing here listens on a port."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
import structlog

from credbroker.bound_cipher import BoundCipher as BoundCipher  # re-exported: its old home
from credbroker.bound_cipher import LegacyBindingRefused as LegacyBindingRefused
from credbroker.config import Settings
from credbroker.crypto import (
    EnvelopeCipher,
    Keyring,
    KeyringError,
    make_key_check,
    verify_key_check,
)
from credbroker.domain.errors import UnavailableError
from credbroker.preflight import (
    ConfigurationError,
    DatabaseConnectError,
    database_target,
    describe_connect_failure,
)
from credbroker.preflight import StartupError as StartupError  # re-exported: its old home
from credbroker.storage.db import Database, PoolSettings, create_pool
from credbroker.storage.master_keys import PostgresMasterKeyRepository
from credbroker.storage.migrate import migrate

log = structlog.get_logger("credbroker")


def bound_cipher(settings: Settings, keyring: Keyring) -> BoundCipher:
    """The cipher every service uses, with the legacy-binding policy of ``settings``."""
    return BoundCipher(EnvelopeCipher(keyring), accept_binding_v1=settings.accept_binding_v1)


def load_keyring(settings: Settings) -> Keyring:
    try:
        text = settings.keyring_json()
    except (ValueError, OSError) as exc:
        raise ConfigurationError(f"cannot read the keyring: {exc}") from None
    if text is None:
        raise ConfigurationError(
            "no master keyring: set CREDBROKER_KEYRING or CREDBROKER_KEYRING_FILE "
            "(create one with `credbroker keyring generate`)"
        )
    try:
        return Keyring.from_json(text)
    except KeyringError as exc:
        raise ConfigurationError(f"invalid keyring: {exc}") from None


async def verify_master_keys(
    db: Database, keyring: Keyring, *, accept_binding_v1: bool, strict: bool = True
) -> None:
    """Fails closed: a configured key whose bytes differ from the ones first used under its id,
    stored data under a key id the keyring lacks, or blobs of the legacy binding while it is not
    accepted, stop the start (messages name ids only).

    ``strict`` False (``keyring status`` and ``keyring rewrap``) checks the key bytes only: blobs
    under a key id the keyring cannot decrypt (or of a refused binding) are then reported one by
    one as unreadable rather than stopping the command, and no new key id is registered."""
    repository = PostgresMasterKeyRepository(db)
    checks = await repository.check_blobs()
    for key_id, key in sorted(keyring.keys.items()):
        check = checks.get(key_id)
        if check is not None and not verify_key_check(key_id, key, check):
            raise StartupError(
                f"master key {key_id} does not match the key first used under that id"
            )
    in_use = await repository.key_ids_in_use()
    missing = sorted(in_use - set(keyring.keys))
    too_old = sorted(k for k in in_use if k < keyring.min_decryption_key_id)
    if not strict:
        if not missing and not too_old:
            await _register_new_keys(repository, keyring, checks)
        return
    if missing:
        raise StartupError(
            f"stored data is encrypted under master key(s) {missing} missing from the keyring "
            "(`credbroker keyring status` names the rows)"
        )
    if too_old:
        raise StartupError(
            f"stored data uses master key(s) {too_old} below min_decryption_key_id "
            f"{keyring.min_decryption_key_id}; finish `credbroker keyring rewrap` first"
        )
    if not accept_binding_v1 and await repository.legacy_blobs_remain():
        raise StartupError(
            "stored data holds blobs of the legacy binding (format 1), which are refused: set "
            "CREDBROKER_ACCEPT_BINDING_V1=true, run `credbroker keyring rewrap`, then unset it "
            "(docs/operators.md, section 4)"
        )
    await _register_new_keys(repository, keyring, checks)


async def _register_new_keys(
    repository: PostgresMasterKeyRepository, keyring: Keyring, checks: dict[int, bytes]
) -> None:
    """Only a keyring that passed every check registers its new key ids."""
    for key_id, key in sorted(keyring.keys.items()):
        if key_id not in checks:
            await repository.add_check_blob(key_id, make_key_check(key_id, key))


@dataclass
class Backend:
    """An open database with migrations applied."""

    db: Database

    async def close(self) -> None:
        await self.db.pool.close()


async def open_backend(settings: Settings, *, pool_min: int | None = None) -> Backend:
    if settings.database_url is None:
        raise ConfigurationError(
            "CREDBROKER_DATABASE_URL is not set; set it to postgresql://USER@HOST:PORT/DATABASE "
            "(or run `credbroker serve --dev` for an embedded one)"
        )
    dsn = settings.database_url.get_secret_value()
    address, role, database = database_target(dsn)
    pool_settings = PoolSettings(
        min_size=settings.db_pool_min if pool_min is None else pool_min,
        max_size=settings.db_pool_max,
        acquire_timeout=settings.db_acquire_timeout,
        command_timeout=settings.db_statement_timeout,
    )
    try:
        pool = await create_pool(dsn, pool_settings)
    except UnavailableError as exc:
        raise describe_connect_failure(dsn, exc.__cause__ or exc) from None
    except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise describe_connect_failure(dsn, exc) from None
    db = Database(pool, settings.db_acquire_timeout)
    try:
        async with db.connection() as connection:
            applied = await migrate(connection)
    except asyncpg.PostgresError as exc:
        await pool.close()
        raise DatabaseConnectError(
            f"cannot apply migrations to database {database!r} on PostgreSQL at {address} as "
            f"role {role!r} ({type(exc).__name__}: {exc}); grant the role CREATE on it"
        ) from None
    if applied:
        log.info("applied migrations", versions=applied)
    return Backend(db)
