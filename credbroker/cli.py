"""The ``credbroker`` command: serve, migrate, and manage keyrings, environments and keys."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import structlog
from pydantic import ValidationError

from credbroker import cli_connect, cli_webhooks, dev, workers
from credbroker.app import key_service
from credbroker.bootstrap import (
    Backend,
    StartupError,
    bound_cipher,
    load_keyring,
    open_backend,
    verify_master_keys,
)
from credbroker.config import Settings, tls_pairing_problem
from credbroker.crypto import FORMAT_V1, FORMAT_V2, Keyring, KeyringError, generate_keyring
from credbroker.domain.audit import AuditEvent
from credbroker.domain.errors import DomainError
from credbroker.domain.keys import parse_scopes
from credbroker.domain.models import ALL_SCOPES
from credbroker.domain.rotation import KeyRotationService
from credbroker.logs import configure_logging
from credbroker.preflight import (
    FLAGS,
    ConfigurationError,
    ListenError,
    check_can_listen,
    check_tls_files,
    given_name,
    variable,
)
from credbroker.storage.audit import PostgresAuditLog
from credbroker.storage.master_keys import PostgresMasterKeyRepository

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
    parser = argparse.ArgumentParser(
        prog="credbroker",
        description=__doc__,
        epilog="Exit codes: 0 done, 1 refused, 2 usage or configuration, 3 database, "
        "4 cannot listen (docs/operators.md, section 8).",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve_cmd = commands.add_parser("serve", parents=[common], help="run the gRPC and HTTP servers")
    serve_cmd.add_argument(
        "--listen", help="HOST:PORT (default 127.0.0.1:50051, CREDBROKER_LISTEN)"
    )
    serve_cmd.add_argument(
        "--http-listen",
        help="HOST:PORT of the HTTP server (default 127.0.0.1:8080, CREDBROKER_HTTP_LISTEN; "
        "'' turns it off)",
    )
    serve_cmd.add_argument(
        "--public-url",
        help="base URL of the HTTP server in links it hands out (CREDBROKER_PUBLIC_URL; "
        "default: from the HTTP listen address)",
    )
    serve_cmd.add_argument("--no-reflection", action="store_true", help="do not serve reflection")
    serve_cmd.add_argument(
        "--workers",
        type=int,
        default=None,
        help="server processes sharing the port "
        "(default: CREDBROKER_WORKERS, else the CPU count; 1 on port 0)",
    )
    serve_cmd.add_argument(
        "--metrics-listen", help="HOST:PORT for Prometheus metrics (CREDBROKER_METRICS_LISTEN)"
    )
    serve_cmd.add_argument("--tls-cert", type=Path, help="PEM certificate chain (enables TLS)")
    serve_cmd.add_argument("--tls-key", type=Path, help="PEM private key for --tls-cert")
    serve_cmd.add_argument(
        "--tls-client-ca", type=Path, help="PEM CA bundle; clients must present a cert it signed"
    )

    commands.add_parser("migrate", parents=[common], help="apply database migrations")

    keyring_cmd = commands.add_parser("keyring", help="master keyring tools and key rotation")
    keyring_sub = keyring_cmd.add_subparsers(dest="keyring_command", required=True)
    keyring_sub.add_parser("generate", help="print a new keyring JSON")
    edit = argparse.ArgumentParser(add_help=False)
    edit.add_argument(
        "--file",
        type=argparse.FileType("r"),
        default=sys.stdin,
        help="keyring JSON to edit (default: standard input); the result goes to standard output",
    )
    keyring_sub.add_parser(
        "add-key", parents=[edit], help="add a new decrypt-only key (rotation step 1)"
    )
    promote = keyring_sub.add_parser(
        "promote", parents=[edit], help="make a key primary for new writes (rotation step 2)"
    )
    promote.add_argument("key_id", type=int, help="the key id to make primary")
    retire = keyring_sub.add_parser(
        "retire",
        parents=[edit],
        help="remove a key no data uses any more (rotation step 4; refused while stored blobs "
        "name it, checked when CREDBROKER_DATABASE_URL is set)",
    )
    retire.add_argument("key_id", type=int, help="the key id to remove")
    keyring_sub.add_parser(
        "status", parents=[common], help="the configured keyring and stored rows per key id"
    )
    rewrap = keyring_sub.add_parser(
        "rewrap",
        parents=[common],
        help="rewrap every data key under the primary key (rotation step 3; online, resumable)",
    )
    rewrap.add_argument(
        "--batch-size", type=int, default=500, help="rows per transaction (default 500)"
    )

    env_cmd = commands.add_parser("environments", help="manage environments")
    env_sub = env_cmd.add_subparsers(dest="environments_command", required=True)
    env_create = env_sub.add_parser("create", parents=[common], help="create an environment")
    env_create.add_argument("name", help="the new environment's name: [a-z][a-z0-9-]{0,62}")
    env_sub.add_parser("list", parents=[common], help="list environments")

    keys_cmd = commands.add_parser("keys", help="manage secret keys")
    keys_sub = keys_cmd.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser(
        "create", parents=[common], help="create a key; prints it alone on the last line"
    )
    create.add_argument("--environment", required=True, help="the environment the key belongs to")
    create.add_argument(
        "--scopes",
        default=",".join(sorted(s.value for s in ALL_SCOPES)),
        help="comma-separated scopes (default: all)",
    )
    create.add_argument("--expires-in", type=_parse_duration, help="e.g. 90d; default: never")
    create.add_argument("--description", default="", help="a note shown by `keys list`")
    keys_list = keys_sub.add_parser("list", parents=[common], help="list an environment's keys")
    keys_list.add_argument("--environment", required=True, help="whose keys to list")
    revoke = keys_sub.add_parser("revoke", parents=[common], help="revoke a key")
    revoke.add_argument("key_id", help="the key id (first column of `keys list`)")
    roll = keys_sub.add_parser(
        "roll",
        parents=[common],
        help="replace a key: prints the successor; the old key works for --grace more",
    )
    roll.add_argument("key_id", help="the key id to replace")
    roll.add_argument(
        "--grace",
        type=_parse_duration,
        default=timedelta(hours=1),
        help="how long the old key keeps working, e.g. 30m, 24h (default 1h)",
    )

    audit_cmd = commands.add_parser("audit", help="read the audit trail")
    audit_sub = audit_cmd.add_subparsers(dest="audit_command", required=True)
    tail = audit_sub.add_parser(
        "tail", parents=[common], help="print recent audit events, oldest first, as JSON lines"
    )
    tail.add_argument("--environment", help="only this environment")
    tail.add_argument(
        "-n", "--limit", type=int, default=20, help="how many recent events (default 20)"
    )
    tail.add_argument("-f", "--follow", action="store_true", help="keep printing new events")
    cli_webhooks.add_parser(commands, common, _parse_duration)
    cli_connect.add_parser(commands, common, _parse_duration)
    _remember_parsers(parser)
    return parser


def _remember_parsers(parser: argparse.ArgumentParser) -> None:
    """Each command's parser keeps itself in the namespace, so that a usage error (an unknown
    flag) shows that command's usage rather than the top-level one."""
    parser.set_defaults(command_parser=parser)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _remember_parsers(sub)


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
    if args.command == "migrate":
        await _with_backend(settings, lambda backend: asyncio.sleep(0))
        print("migrations applied")
    elif args.command == "environments":
        await _with_backend(settings, lambda backend: _environments(args, backend))
    elif args.command == "keys":
        await _with_backend(settings, lambda backend: _keys(args, backend))
    elif args.command == "keyring":
        keyring = load_keyring(settings)
        await _with_backend(settings, lambda backend: _keyring(args, settings, backend, keyring))
    elif args.command == "audit":
        await _with_backend(settings, lambda backend: _audit_tail(args, backend))
    elif args.command == "webhooks":
        keyring = load_keyring(settings)
        await _with_backend(
            settings, lambda backend: cli_webhooks.run(args, settings, backend, keyring)
        )
    elif args.command == "connect":
        keyring = load_keyring(settings)
        await _with_backend(
            settings, lambda backend: cli_connect.run(args, settings, backend, keyring)
        )


def _serve(args: argparse.Namespace) -> int:
    settings = Settings()
    listen = args.listen or settings.listen
    http_listen = settings.http_listen if args.http_listen is None else args.http_listen
    # Port 0 (any free port) cannot be shared by several processes: one worker unless asked.
    any_port = listen.endswith(":0") or http_listen.endswith(":0")
    default_workers = 1 if any_port else os.cpu_count() or 1
    overrides = {
        "listen": listen,
        "http_listen": http_listen,
        "public_url": args.public_url or settings.public_url,
        "reflection": False if args.no_reflection else settings.reflection,
        "tls_cert": args.tls_cert or settings.tls_cert,
        "tls_key": args.tls_key or settings.tls_key,
        "tls_client_ca": args.tls_client_ca or settings.tls_client_ca,
        "workers": args.workers
        if args.workers is not None
        else settings.workers or default_workers,
        "metrics_listen": args.metrics_listen or settings.metrics_listen,
        # Readable logs in dev (workers included) unless a format was chosen explicitly.
        "log_format": "console" if _dev_console(args) else settings.log_format,
    }
    names = _serve_flag_names(args)
    tls_fields = ("tls_cert", "tls_key", "tls_client_ca")
    # A missing counterpart is named both ways; one that is set, as the user set it.
    pairing_names = {
        field: names.get(field)
        or (variable(field) if overrides[field] else f"{FLAGS[field]} (or {variable(field)})")
        for field in tls_fields
    }
    problem = tls_pairing_problem(
        overrides["tls_cert"], overrides["tls_key"], overrides["tls_client_ca"], pairing_names
    )
    if problem:
        raise ConfigurationError(f"invalid configuration: {problem}")
    settings = Settings.model_validate({**settings.model_dump(), **overrides})
    _check_before_serving(settings, names)
    if args.dev:
        settings = dev.prepare(settings)

        async def first_key(backend: Backend) -> None:
            token = await dev.ensure_dev_key(settings, key_service(backend))
            if token is not None:
                print("\ncredbroker dev key (saved in the data folder):", file=sys.stderr)
                print("  " + dev.grpcurl_hint(token, settings.listen) + "\n", file=sys.stderr)
            else:
                print(f"dev key: {settings.data_dir.resolve() / dev.KEY_FILE}", file=sys.stderr)
            hint = dev.http_hint(settings)
            if hint:
                print(hint, file=sys.stderr)

        workers.run(_with_backend(settings, first_key))
    assert settings.workers is not None
    return workers.run_server(
        settings, workers=settings.workers, metrics_listen=settings.metrics_listen
    )


def _check_before_serving(settings: Settings, names: dict[str, str]) -> None:
    """TLS files and both ports, before the database is touched and before gRPC sees them."""
    check_tls_files(settings.tls_cert, settings.tls_key, settings.tls_client_ca, names)
    check_can_listen(settings.listen, given_name("listen", names))
    if settings.http_listen:
        check_can_listen(settings.http_listen, given_name("http_listen", names))
    if settings.metrics_listen:
        metrics_name = given_name("metrics_listen", names)
        if settings.metrics_listen == settings.listen:
            raise ListenError(
                f"cannot listen on {settings.metrics_listen} ({metrics_name}): it is the gRPC "
                "address too; choose another port for metrics"
            )
        check_can_listen(settings.metrics_listen, metrics_name)


async def _keyring(
    args: argparse.Namespace, settings: Settings, backend: Backend, keyring: Keyring
) -> None:
    # Blobs this keyring cannot read are reported one by one, not refused whole.
    await verify_master_keys(
        backend.db, keyring, accept_binding_v1=settings.accept_binding_v1, strict=False
    )
    repository = PostgresMasterKeyRepository(backend.db)
    rotation = KeyRotationService(
        repository, bound_cipher(settings, keyring), keyring.primary_key_id
    )
    if args.keyring_command == "rewrap":
        started = time.monotonic()
        report = await rotation.rewrap_all(
            batch_size=args.batch_size,
            on_batch=lambda n: print(f"rewrapped {n} rows", file=sys.stderr),
        )
        log.info(
            "rewrap finished",
            rows=report.rewrapped,
            skipped_rows=report.skipped_rows,
            seconds=round(time.monotonic() - started, 3),
        )
        for blob in report.unreadable:
            print(f"skipped {blob.describe()}")
        if report.unreadable:
            raise StartupError(
                f"rewrap incomplete: {report.rewrapped} rows rewrapped, "
                f"{_count(report.skipped_rows, 'row')} skipped with "
                f"{_count(len(report.unreadable), 'unreadable blob')} (listed above); repair or "
                "delete those rows, then run it again (docs/operators.md, section 4)"
            )
        print(
            f"rewrap complete: {report.rewrapped} rows now under master key "
            f"{keyring.primary_key_id} and binding v2"
        )
        return
    rows = await repository.rows_per_key()
    unreadable = await rotation.check_all()
    print(f"primary key id: {keyring.primary_key_id}")
    print(f"min decryption key id: {keyring.min_decryption_key_id}")
    print(f"configured key ids: {', '.join(str(k) for k in sorted(keyring.keys))}")
    print("stored blobs per key id:")
    for key_id in sorted(set(rows) | set(keyring.keys)):
        note = "" if key_id in keyring.keys else "  (NOT CONFIGURED)"
        print(f"  {key_id}\t{rows.get(key_id, 0)}{note}")
    formats = await repository.blobs_per_format()
    print("stored blobs per binding:")
    for fmt in sorted(set(formats) | {FORMAT_V1, FORMAT_V2}):
        note = (
            "  (legacy: accepted for the upgrade)"
            if fmt == FORMAT_V1 and settings.accept_binding_v1
            else "  (legacy: refused)"
            if fmt == FORMAT_V1
            else ""
        )
        print(f"  v{fmt}\t{formats.get(fmt, 0)}{note}")
    print(f"unreadable blobs: {len(unreadable)}")
    for blob in unreadable:
        print(f"  {blob.describe()}")


async def _check_retirement(settings: Settings, key_id: int) -> None:
    """Refuses to retire a master key that stored blobs still name (readable or not)."""

    async def check(backend: Backend) -> None:
        remaining = (await PostgresMasterKeyRepository(backend.db).rows_per_key()).get(key_id, 0)
        if remaining:
            raise StartupError(
                f"master key {key_id} still encrypts {_count(remaining, 'stored blob')}; run "
                "`credbroker keyring rewrap` (`keyring status` lists blobs it cannot move) and "
                "retire the key once none remain"
            )

    await _with_backend(settings, check)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


async def _audit_tail(args: argparse.Namespace, backend: Backend) -> None:
    environment_id = None
    if args.environment:
        environment_id = (await key_service(backend).environment(args.environment)).id
    audit_log = PostgresAuditLog(backend.db)
    newest = await audit_log.list(
        environment_id, integration_id="", connection_id="", before=None, limit=args.limit
    )
    last_seen = newest[0].event_id if newest else 0
    for event in reversed(newest):
        print(_event_json(event), flush=True)
    while args.follow:
        await asyncio.sleep(1.0)
        fresh = await audit_log.list_after(environment_id, last_seen, limit=1000)
        for event in fresh:
            print(_event_json(event), flush=True)
            last_seen = event.event_id


def _event_json(event: AuditEvent) -> str:
    document = dataclasses.asdict(event)
    document["event_time"] = event.event_time.isoformat()
    return json.dumps(document, separators=(",", ":"))


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
            used = record.last_used_time.isoformat() if record.last_used_time else "never"
            print(
                f"{record.key_id}\t{state}\t{scope_list}\texpires={expires}\tlast_used={used}"
                f"\t{record.description}"
            )
    elif args.keys_command == "roll":
        token, record = await keys.roll_key(args.key_id, args.grace)
        print(
            f"key_id: {record.key_id} (replaces {args.key_id}, which stops working in {args.grace})"
        )
        print("secret key (shown once, store it now):")
        print(token)
    else:
        await keys.revoke_key(args.key_id)
        print(f"revoked {args.key_id}")


def _dev_console(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "dev", False)) and "CREDBROKER_LOG_FORMAT" not in os.environ


def _print_invalid_configuration(exc: ValidationError, names: dict[str, str] | None = None) -> None:
    """One line naming each invalid setting as the user gave it (flag or variable); never
    values."""
    problems = []
    for error in exc.errors():
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["loc"]:
            message = f"{given_name(str(error['loc'][0]), names)}: {message}"
        problems.append(message)
    print(f"credbroker: invalid configuration: {'; '.join(problems)}", file=sys.stderr)


def _serve_flag_names(args: argparse.Namespace) -> dict[str, str]:
    return {field: flag for field, flag in FLAGS.items() if getattr(args, field, None) is not None}


def _edit_keyring(args: argparse.Namespace) -> Keyring:
    if args.keyring_command == "generate":
        return generate_keyring()
    keyring = Keyring.from_json(args.file.read())
    if args.keyring_command == "add-key":
        return keyring.with_new_key()
    if args.keyring_command == "promote":
        return keyring.promote(args.key_id)
    return keyring.retire(args.key_id)


def main(argv: list[str] | None = None) -> int:
    try:
        code = _main(argv)
        sys.stdout.flush()  # a closed pipe shows up here rather than at interpreter exit
    except BrokenPipeError:
        # Whoever reads the output stopped reading (`credbroker keys list | head -n1`): that is
        # their choice, not a failure of the command.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return code


def _main(argv: list[str] | None) -> int:
    args, unknown = _build_parser().parse_known_args(argv)
    if unknown:
        args.command_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        base = Settings()
    except ValidationError as exc:
        _print_invalid_configuration(exc)
        return 2
    configure_logging("console" if _dev_console(args) else base.log_format, base.log_level)
    if args.command == "keyring" and args.keyring_command not in {"status", "rewrap"}:
        try:
            edited = _edit_keyring(args)
        except KeyringError as exc:
            print(f"credbroker: {exc}", file=sys.stderr)
            return 1
        if args.keyring_command == "retire":
            if base.database_url is None:
                print(
                    "credbroker: not checked against stored data (CREDBROKER_DATABASE_URL is "
                    "not set); servers refuse to start while data uses the key",
                    file=sys.stderr,
                )
            else:
                try:
                    workers.run(_check_retirement(base, args.key_id))
                except StartupError as exc:
                    print(f"credbroker: {exc}", file=sys.stderr)
                    return exc.exit_code
        print(edited.to_json())
        return 0
    try:
        if args.command == "serve":
            return _serve(args)
        workers.run(_run(args))
    except ValidationError as exc:  # flags combined with the environment
        _print_invalid_configuration(exc, _serve_flag_names(args))
        return 2
    except StartupError as exc:
        print(f"credbroker: {exc}", file=sys.stderr)
        return exc.exit_code
    except (DomainError, ValueError) as exc:
        print(f"credbroker: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        raise
    except Exception as exc:
        log.debug("unexpected failure", exc_info=True)
        print(
            f"credbroker: unexpected failure ({type(exc).__name__}); rerun with "
            "CREDBROKER_LOG_LEVEL=debug to see where, and report it",
            file=sys.stderr,
        )
        return 70
    return 0


if __name__ == "__main__":
    sys.exit(main())
