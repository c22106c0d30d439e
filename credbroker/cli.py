"""The ``credbroker`` command: serve, migrate, and manage keyrings, environments and keys."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import structlog
from pydantic import ValidationError

from credbroker import dev
from credbroker.app import key_service, serve
from credbroker.bootstrap import Backend, StartupError, open_backend
from credbroker.config import Settings
from credbroker.crypto import generate_keyring
from credbroker.domain.errors import DomainError
from credbroker.domain.keys import parse_scopes
from credbroker.domain.models import ALL_SCOPES
from credbroker.logs import configure_logging

log = structlog.get_logger("credbroker")


def _parse_duration(text: str) -> timedelta:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if len(text) < 2 or text[-1] not in units or not text[:-1].isdigit():
        raise argparse.ArgumentTypeError("use a number and a unit: 30m, 12h, 90d")
    return timedelta(seconds=int(text[:-1]) * units[text[-1]])


def _build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--dev",
        action="store_true",
        help="development mode: embedded PostgreSQL and a generated keyring in the data folder",
    )
    parser = argparse.ArgumentParser(prog="credbroker", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve_cmd = commands.add_parser("serve", parents=[common], help="run the gRPC server")
    serve_cmd.add_argument(
        "--listen", help="HOST:PORT (default 127.0.0.1:50051, CREDBROKER_LISTEN)"
    )
    serve_cmd.add_argument("--no-reflection", action="store_true", help="do not serve reflection")

    commands.add_parser("migrate", parents=[common], help="apply database migrations")

    keyring_cmd = commands.add_parser("keyring", help="master keyring tools")
    keyring_sub = keyring_cmd.add_subparsers(dest="keyring_command", required=True)
    keyring_sub.add_parser("generate", help="print a new keyring JSON")

    env_cmd = commands.add_parser("environments", help="manage environments")
    env_sub = env_cmd.add_subparsers(dest="environments_command", required=True)
    env_create = env_sub.add_parser("create", parents=[common], help="create an environment")
    env_create.add_argument("name")
    env_sub.add_parser("list", parents=[common], help="list environments")

    keys_cmd = commands.add_parser("keys", help="manage secret keys")
    keys_sub = keys_cmd.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser(
        "create", parents=[common], help="create a key; prints it alone on the last line"
    )
    create.add_argument("--environment", required=True)
    create.add_argument(
        "--scopes",
        default=",".join(sorted(s.value for s in ALL_SCOPES)),
        help="comma-separated scopes (default: all)",
    )
    create.add_argument("--expires-in", type=_parse_duration, help="e.g. 90d; default: never")
    create.add_argument("--description", default="")
    keys_list = keys_sub.add_parser("list", parents=[common], help="list an environment's keys")
    keys_list.add_argument("--environment", required=True)
    revoke = keys_sub.add_parser("revoke", parents=[common], help="revoke a key")
    revoke.add_argument("key_id")
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    settings = Settings()
    if getattr(args, "dev", False):
        settings = dev.prepare(settings)
    return settings


async def _with_backend(settings: Settings, action: Callable[[Backend], Awaitable[None]]) -> None:
    backend = await open_backend(settings, pool_min=1)
    try:
        await action(backend)
    finally:
        await backend.close()


async def _run(args: argparse.Namespace) -> None:
    settings = _settings(args)
    if args.command == "serve":
        if args.listen:
            settings = settings.model_copy(update={"listen": Settings(listen=args.listen).listen})
        if args.no_reflection:
            settings = settings.model_copy(update={"reflection": False})
        if args.dev:

            async def first_key(backend: Backend) -> None:
                token = await dev.ensure_dev_key(backend, settings, key_service(backend))
                if token is not None:
                    print("\ncredbroker dev key (saved in the data folder):", file=sys.stderr)
                    print("  " + dev.grpcurl_hint(token, settings.listen) + "\n", file=sys.stderr)
                else:
                    print(f"dev key: {settings.data_dir.resolve() / dev.KEY_FILE}", file=sys.stderr)

            await _with_backend(settings, first_key)
        await serve(settings)
    elif args.command == "migrate":
        await _with_backend(settings, lambda backend: asyncio.sleep(0))
        print("migrations applied")
    elif args.command == "environments":
        await _with_backend(settings, lambda backend: _environments(args, backend))
    elif args.command == "keys":
        await _with_backend(settings, lambda backend: _keys(args, backend))


async def _environments(args: argparse.Namespace, backend: Backend) -> None:
    keys = key_service(backend)
    if args.environments_command == "create":
        environment = await keys.create_environment(args.name)
        print(environment.name)
    else:
        for environment in await keys.list_environments():
            print(f"{environment.name}\t{environment.create_time.isoformat()}")


async def _keys(args: argparse.Namespace, backend: Backend) -> None:
    keys = key_service(backend)
    if args.keys_command == "create":
        scopes = parse_scopes(args.scopes)
        expire_time = datetime.now(UTC) + args.expires_in if args.expires_in else None
        token, record = await keys.create_key(
            args.environment, scopes, expire_time=expire_time, description=args.description
        )
        print(f"key_id: {record.key_id}")
        print(f"scopes: {','.join(sorted(s.value for s in record.scopes))}")
        print("secret key (shown once, store it now):")
        print(token)
    elif args.keys_command == "list":
        now = datetime.now(UTC)
        for record in await keys.list_keys(args.environment):
            state = (
                "active"
                if record.is_active(now)
                else "revoked"
                if record.revoke_time
                else "expired"
            )
            expires = record.expire_time.isoformat() if record.expire_time else "never"
            scope_list = ",".join(sorted(s.value for s in record.scopes))
            print(
                f"{record.key_id}\t{state}\t{scope_list}\texpires={expires}\t{record.description}"
            )
    else:
        await keys.revoke_key(args.key_id)
        print(f"revoked {args.key_id}")


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    try:
        base = Settings()
    except ValidationError as exc:
        for error in exc.errors():
            name = "CREDBROKER_" + str(error["loc"][0]).upper() if error["loc"] else "settings"
            print(f"credbroker: invalid configuration: {name}: {error['msg']}", file=sys.stderr)
        return 2
    dev_console = getattr(args, "dev", False) and "CREDBROKER_LOG_FORMAT" not in os.environ
    configure_logging("console" if dev_console else base.log_format, base.log_level)
    if args.command == "keyring":
        print(generate_keyring().to_json())
        return 0
    try:
        asyncio.run(_run(args))
    except (StartupError, DomainError, ValueError) as exc:
        print(f"credbroker: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
