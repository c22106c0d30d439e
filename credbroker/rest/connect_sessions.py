"""The backend's HTTP API for connect sessions, in the reference product's shape (a secret key
with ``connect_sessions:write`` as ``Authorization: Bearer``):

* ``POST /connect/sessions``: ``end_user {id, email, display_name}``, ``organization {id,
  display_name}``, ``tags``, ``allowed_integrations``, ``integrations_config_defaults {<id>:
  {connection_config}}``, and credbroker's ``allowed_origins`` and ``ttl`` (seconds);
* ``POST /connect/sessions/reconnect``: the same plus ``integration_id`` and ``connection_id``.

Both answer 201 ``{"data": {"token", "connect_link", "expires_at", "session_id"}}``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from starlette.routing import Route

from credbroker.admission import Audit, Credential, current_principal
from credbroker.admission.audit import recordable
from credbroker.domain.connect_sessions import ConnectSessionService, SessionDraft
from credbroker.domain.models import EndUser, Organization, ReconnectTarget, Scope
from credbroker.domain.validation import Violations
from credbroker.rest import bodies
from credbroker.rest.endpoints import HttpCall, HttpRoutes, Reply, json_object

_SESSION_FIELDS = {
    "end_user",
    "organization",
    "tags",
    "allowed_integrations",
    "integrations_config_defaults",
    "allowed_origins",
    "ttl",
}
_RECONNECT_FIELDS = _SESSION_FIELDS | {"integration_id", "connection_id"}


def iso(value: Any) -> str:
    return str(value.isoformat().replace("+00:00", "Z"))


def _people(v: Violations, body: dict[str, Any]) -> tuple[EndUser | None, Organization | None]:
    end_user = None
    document = bodies.obj(v, body, "end_user", "end_user")
    if document is not None:
        bodies.known_fields(v, document, {"id", "email", "display_name"}, "end_user")
        end_user = EndUser(
            bodies.text(v, document, "id", "end_user.id", required=True),
            bodies.text(v, document, "email", "end_user.email"),
            bodies.text(v, document, "display_name", "end_user.display_name"),
        )
    organization = None
    document = bodies.obj(v, body, "organization", "organization")
    if document is not None:
        bodies.known_fields(v, document, {"id", "display_name"}, "organization")
        organization = Organization(
            bodies.text(v, document, "id", "organization.id", required=True),
            bodies.text(v, document, "display_name", "organization.display_name"),
        )
    return end_user, organization


def _config_defaults(v: Violations, body: dict[str, Any]) -> dict[str, dict[str, str]]:
    defaults: dict[str, dict[str, str]] = {}
    document = bodies.obj(v, body, "integrations_config_defaults", "integrations_config_defaults")
    for key, entry in (document or {}).items():
        path = f"integrations_config_defaults[{key}]"
        if not isinstance(entry, dict):
            v.add(path, "must be an object")
            continue
        bodies.known_fields(v, entry, {"connection_config"}, path)
        defaults[key] = bodies.string_map(
            v, entry, "connection_config", f"{path}.connection_config"
        )
    return defaults


def session_draft(body: dict[str, Any], *, reconnect: bool) -> SessionDraft:
    v = Violations()
    bodies.known_fields(v, body, _RECONNECT_FIELDS if reconnect else _SESSION_FIELDS, "")
    end_user, organization = _people(v, body)
    ttl_seconds = bodies.integer(v, body, "ttl", "ttl")
    target = None
    if reconnect:
        target = ReconnectTarget(
            bodies.text(v, body, "integration_id", "integration_id", required=True),
            bodies.text(v, body, "connection_id", "connection_id", required=True),
        )
    draft = SessionDraft(
        end_user=end_user,
        organization=organization,
        tags=bodies.string_map(v, body, "tags", "tags"),
        allowed_integrations=bodies.string_list(
            v, body, "allowed_integrations", "allowed_integrations"
        ),
        allowed_origins=bodies.string_list(v, body, "allowed_origins", "allowed_origins"),
        integrations_config_defaults=_config_defaults(v, body),
        ttl=timedelta(seconds=ttl_seconds) if ttl_seconds is not None else None,
        reconnect=target,
    )
    v.raise_if_any()
    return draft


def routes(http: HttpRoutes, sessions: ConnectSessionService) -> list[Route]:
    async def create(call: HttpCall, *, reconnect: bool) -> Reply:
        draft = session_draft(call.json, reconnect=reconnect)
        session, token = await sessions.create(current_principal(), draft)
        return Reply(
            201,
            {
                "data": {
                    "token": token,
                    "connect_link": sessions.connect_url(token),
                    "expires_at": iso(session.expire_time),
                    "session_id": str(session.id),
                }
            },
        )

    async def create_session(call: HttpCall) -> Reply:
        return await create(call, reconnect=False)

    async def create_reconnect(call: HttpCall) -> Reply:
        return await create(call, reconnect=True)

    def reconnect_target(call: HttpCall) -> tuple[str, str]:
        body = call.json
        integration_id, connection_id = body.get("integration_id"), body.get("connection_id")
        return recordable(
            integration_id if isinstance(integration_id, str) else "",
            connection_id if isinstance(connection_id, str) else "",
        )

    common: dict[str, Any] = {
        "credential": Credential.SECRET_KEY,
        "scope": Scope.CONNECT_SESSIONS_WRITE,
        "audit": Audit.MUTATION,
        "decode": json_object,
    }
    return [
        http.route("POST", "/connect/sessions", create_session, **common),
        http.route(
            "POST",
            "/connect/sessions/reconnect",
            create_reconnect,
            resources=reconnect_target,
            **common,
        ),
    ]
