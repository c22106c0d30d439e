"""``credbroker connect link``: a connect link an operator opens to store an end user's key by
hand (a connect session made from a shell with database access, audited under key id ``cli``)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from credbroker.app import default_public_url
from credbroker.bootstrap import Backend, StartupError, bound_cipher, verify_master_keys
from credbroker.config import Settings
from credbroker.crypto import Keyring
from credbroker.domain.audit import AuditRecord
from credbroker.domain.connect_sessions import ConnectSessionService, SessionDraft
from credbroker.domain.connections import ConnectionService
from credbroker.domain.integrations import IntegrationService
from credbroker.domain.keys import KeyService
from credbroker.domain.models import EndUser, Principal, Scope
from credbroker.domain.providers import default_catalog
from credbroker.domain.verification import CredentialVerifier
from credbroker.rest.server import split_address
from credbroker.storage.audit import PostgresAuditLog
from credbroker.storage.connect_sessions import PostgresConnectSessionRepository
from credbroker.storage.connections import PostgresConnectionRepository
from credbroker.storage.environments import (
    PostgresEnvironmentRepository,
    PostgresSecretKeyRepository,
)
from credbroker.storage.integrations import PostgresIntegrationRepository

AUDIT_METHOD = "cli: connect link"


def add_parser(
    commands: Any, common: argparse.ArgumentParser, duration: Callable[[str], timedelta]
) -> None:
    connect = commands.add_parser("connect", help="connect sessions from the shell")
    sub = connect.add_subparsers(dest="connect_command", required=True)
    link = sub.add_parser(
        "link",
        parents=[common],
        help="print a connect link (open it in a browser to store a key); the link is a secret",
    )
    link.add_argument("--environment", required=True, help="the environment to connect in")
    link.add_argument(
        "--integration",
        action="append",
        required=True,
        help="integration id the link may connect (repeat for several)",
    )
    link.add_argument("--end-user", help="the end user's id (stored on the connection)")
    link.add_argument(
        "--ttl", type=duration, default=timedelta(minutes=30), help="lifetime, e.g. 30m, 2h"
    )


def public_url(settings: Settings) -> str:
    if settings.public_url:
        return settings.public_url
    if not settings.http_listen or settings.http_listen.endswith(":0"):
        raise StartupError(
            "no public URL for links: set CREDBROKER_PUBLIC_URL (or a fixed CREDBROKER_HTTP_LISTEN)"
        )
    return default_public_url(settings, split_address(settings.http_listen)[1])


async def run(
    args: argparse.Namespace, settings: Settings, backend: Backend, keyring: Keyring
) -> None:
    await verify_master_keys(backend.db, keyring, accept_binding_v1=settings.accept_binding_v1)
    catalog = default_catalog()
    integrations = IntegrationService(PostgresIntegrationRepository(backend.db), catalog)
    connections = ConnectionService(
        PostgresConnectionRepository(backend.db),
        integrations,
        bound_cipher(settings, keyring),
        catalog,
        CredentialVerifier(None),  # the link only makes a session; the server verifies later
    )
    sessions = ConnectSessionService(
        PostgresConnectSessionRepository(backend.db),
        integrations,
        connections,
        catalog,
        public_url=public_url(settings),
        allowed_origins=settings.connect_origins(),
        max_attempts=settings.connect_max_attempts,
    )
    keys = KeyService(
        PostgresEnvironmentRepository(backend.db), PostgresSecretKeyRepository(backend.db)
    )
    environment = await keys.environment(args.environment)
    principal = Principal(
        "cli", environment.id, environment.name, frozenset({Scope.CONNECT_SESSIONS_WRITE})
    )
    draft = SessionDraft(
        end_user=EndUser(args.end_user) if args.end_user else None,
        allowed_integrations=list(args.integration),
        ttl=args.ttl,
    )
    session, token = await sessions.create(principal, draft)
    await PostgresAuditLog(backend.db).append(
        AuditRecord(
            os.urandom(8).hex(), principal, AUDIT_METHOD, draft.allowed_integrations[0], "", "OK"
        )
    )
    print(
        f"connect link for {', '.join(session.allowed_integrations)} in {environment.name}, "
        f"valid until {session.expire_time.isoformat()} (single use; treat it as a secret):",
        file=sys.stderr,
    )
    print(sessions.connect_url(token))
