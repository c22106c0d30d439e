"""The browser's API, authorized by a connect-session token only (never a secret key), sent as
``Authorization: Bearer <token>`` or as the ``connect_session_token`` query parameter (what the
reference frontend SDK sends):

* ``GET /connect/session``: what a connect page needs (end user, the integrations it may connect
  with their provider's form, the reconnect target);
* ``DELETE /connect/session``: ends the session (204);
* ``POST /api-auth/api-key/{integration_id}`` with ``{"apiKey"}`` and
  ``POST /api-auth/basic/{integration_id}`` with ``{"username", "password"}``; connection config
  as ``params[NAME]=VALUE`` query parameters, merged under the session's
  ``integrations_config_defaults``. Success: 200 ``{"connectionId", "providerConfigKey"}``.

CORS answers only the session's origins (and ``CREDBROKER_CONNECT_ALLOWED_ORIGINS``); a request
whose ``Origin`` is not among them is refused (403 ``origin_not_allowed``) whatever CORS says.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from credbroker.admission import Audit, Credential, ErrorCode, Failure, current_principal
from credbroker.admission.audit import recordable
from credbroker.domain.connect_sessions import ConnectSessionService, IntegrationChoice, token_hash
from credbroker.domain.errors import FieldViolation, InvalidArgumentError, PermissionDeniedError
from credbroker.domain.models import (
    ApiKeyCredentials,
    AuthMode,
    BasicCredentials,
    ConnectSession,
    Credentials,
)
from credbroker.domain.providers import ConfigField
from credbroker.domain.validation import Violations
from credbroker.rest import bodies
from credbroker.rest.connect_sessions import iso
from credbroker.rest.endpoints import (
    SESSION_TOKEN_PARAM,
    HttpCall,
    HttpRoutes,
    Reply,
    json_object,
    session_token,
)
from credbroker.rest.errors import error_response

_PARAM = re.compile(r"params\[([^\[\]]*)\]")
AUTH_MODE_NAMES = {AuthMode.API_KEY: "API_KEY", AuthMode.BASIC: "BASIC"}
CREDENTIAL_FIELDS: dict[AuthMode, list[dict[str, Any]]] = {
    AuthMode.API_KEY: [{"name": "apiKey", "title": "API key", "secret": True}],
    AuthMode.BASIC: [
        {"name": "username", "title": "Username", "secret": False},
        {"name": "password", "title": "Password", "secret": True},
    ],
}
# Request paths of the domain's violations, as the reference API names them.
_FIELD_NAMES = (
    ("connection.connection_config", "params"),
    ("connection.credentials.api_key.api_key", "apiKey"),
    ("connection.credentials.basic.username", "username"),
    ("connection.credentials.basic.password", "password"),
    ("connection.credentials.basic", "body"),
    ("connection.credentials", "body"),
)
_PREFLIGHT_HEADERS = "authorization, content-type"
_PREFLIGHT_MAX_AGE = "600"


def _field_config(config_field: ConfigField) -> dict[str, Any]:
    return {
        "name": config_field.name,
        "title": config_field.title,
        "description": config_field.description,
        "pattern": config_field.pattern.pattern if config_field.pattern else "",
        "example": config_field.example or "",
        "optional": config_field.optional or config_field.default is not None,
        "default": config_field.default or "",
        "secret": config_field.secret,
    }


def integration_form(choice: IntegrationChoice) -> dict[str, Any]:
    """An integration as the connect page renders it (display text is data, never markup)."""
    integration, provider = choice.integration, choice.provider
    return {
        "integration_id": integration.integration_id,
        "display_name": integration.display_name,
        "provider": provider.name,
        "provider_display_name": provider.display_name,
        "auth_mode": AUTH_MODE_NAMES[integration.auth_mode],
        "docs": provider.docs,
        "credentials": CREDENTIAL_FIELDS[integration.auth_mode],
        "connection_config": [
            _field_config(f)
            for f in provider.connection_config
            if f.name not in choice.preset_config
        ],
    }


def _people(session: ConnectSession) -> dict[str, Any]:
    end_user = None
    if session.end_user is not None:
        end_user = {
            "id": session.end_user.id,
            "email": session.end_user.email,
            "display_name": session.end_user.display_name,
        }
    organization = None
    if session.organization is not None:
        organization = {
            "id": session.organization.id,
            "display_name": session.organization.display_name,
        }
    return {"end_user": end_user, "endUser": end_user, "organization": organization}


def _params(call: HttpCall) -> dict[str, str]:
    """``params[NAME]=VALUE`` query parameters; any other parameter but the token is refused,
    a client-chosen ``connection_id`` above all (connection ids come from the server)."""
    v = Violations()
    params: dict[str, str] = {}
    for key, value in call.query.multi_items():
        if key == SESSION_TOKEN_PARAM:
            continue
        match = _PARAM.fullmatch(key)
        if key == "connection_id":
            raise InvalidArgumentError.single(
                "connection_id",
                "is chosen by the server for connect sessions",
                reason="CONNECTION_ID_NOT_ALLOWED",
            )
        if match is None:
            v.add(key[:64], "is not a known query parameter")
        elif match.group(1) in params:
            v.add(f"params[{match.group(1)}]", "is given twice")
        else:
            params[match.group(1)] = value
    if v.items:
        raise InvalidArgumentError(v.items, reason="INVALID_QUERY_PARAMS")
    return params


def _credentials(call: HttpCall, auth_mode: AuthMode) -> Credentials:
    v = Violations()
    body = call.json
    if auth_mode is AuthMode.API_KEY:
        bodies.known_fields(v, body, {"apiKey"}, "")
        api_key = bodies.text(v, body, "apiKey", "apiKey", required=True)
        v.raise_if_any()
        return ApiKeyCredentials(api_key)
    bodies.known_fields(v, body, {"username", "password"}, "")
    username = bodies.text(v, body, "username", "username")
    password = bodies.text(v, body, "password", "password")
    v.raise_if_any()
    return BasicCredentials(username, password)


def _renamed(error: InvalidArgumentError) -> InvalidArgumentError:
    """The domain's violations with request paths as the browser API names them."""
    renamed: list[FieldViolation] = []
    for violation in error.violations:
        path = violation.field
        for domain_name, api_name in _FIELD_NAMES:
            if path.startswith(domain_name):
                path = api_name + path[len(domain_name) :]
                break
        renamed.append(FieldViolation(path, violation.description))
    only_params = all(v.field.startswith("params") for v in renamed)
    reason = "INVALID_QUERY_PARAMS" if only_params and error.reason == "INVALID_ARGUMENT" else None
    return InvalidArgumentError(renamed, reason=reason or error.reason)


class BrowserApi:
    def __init__(self, sessions: ConnectSessionService) -> None:
        self._sessions = sessions

    def _session(self, call: HttpCall) -> ConnectSession:
        session = current_principal().connect_session
        assert session is not None  # a SESSION_TOKEN route
        if call.origin is not None and not self._sessions.origin_allowed(session, call.origin):
            raise PermissionDeniedError(
                "this page's origin may not use this connect session", reason="ORIGIN_NOT_ALLOWED"
            )
        return session

    def cors_headers(self, session: ConnectSession | None, origin: str | None) -> dict[str, str]:
        headers = {"vary": "Origin"}
        if origin is not None and self._sessions.origin_allowed(session, origin):
            headers["access-control-allow-origin"] = origin
        return headers

    async def _session_of_token(self, request: Request) -> ConnectSession | None:
        """The session a token names, whatever its state (for CORS only: never admits)."""
        token, _ = session_token(request)
        hashed = token_hash(token) if token is not None else None
        return await self._sessions.session_by_hash(hashed) if hashed is not None else None

    async def error_headers(self, call: HttpCall) -> Mapping[str, str]:
        """CORS on errors too, so a page on an allowed origin can read why it was refused."""
        try:
            session = current_principal().connect_session
        except LookupError:
            session = await self._session_of_token(call.request)
        return self.cors_headers(session, call.origin)

    async def preflight(self, request: Request) -> Response:
        origin = request.headers.get("origin")
        method = request.headers.get("access-control-request-method", "")
        session = await self._session_of_token(request)
        headers = self.cors_headers(session, origin)
        if "access-control-allow-origin" not in headers:
            failure = Failure(
                ErrorCode.PERMISSION_DENIED,
                "this origin may not use the connect API",
                "ORIGIN_NOT_ALLOWED",
            )
            return error_response(failure, headers)
        headers.update(
            {
                "access-control-allow-methods": method or "GET, POST, DELETE",
                "access-control-allow-headers": _PREFLIGHT_HEADERS,
                "access-control-max-age": _PREFLIGHT_MAX_AGE,
            }
        )
        return Response(status_code=204, headers=headers)

    async def get_session(self, call: HttpCall) -> Reply:
        session = self._session(call)
        view = await self._sessions.view(current_principal())
        reconnect = None
        if session.reconnect is not None:
            reconnect = {
                "integration_id": session.reconnect.integration_id,
                "connection_id": session.reconnect.connection_id,
            }
        data = {
            **_people(session),
            "allowed_integrations": [c.integration.integration_id for c in view.integrations],
            "integrations": [integration_form(c) for c in view.integrations],
            "isReconnecting": reconnect is not None,
            "reconnect": reconnect,
            "expires_at": iso(session.expire_time),
            "allowed_origins": list(view.allowed_origins),
        }
        return Reply(200, {"data": data}, self.cors_headers(session, call.origin))

    async def delete_session(self, call: HttpCall) -> Reply:
        session = self._session(call)
        await self._sessions.end(current_principal())
        return Reply(204, None, self.cors_headers(session, call.origin))

    async def _submit(self, call: HttpCall, auth_mode: AuthMode) -> Reply:
        session = self._session(call)
        integration_id = str(call.path_params["integration_id"])
        params = _params(call)
        credentials = _credentials(call, auth_mode)
        try:
            connection = await self._sessions.submit(
                current_principal(), integration_id, credentials, params, origin=call.origin
            )
        except InvalidArgumentError as error:
            raise _renamed(error) from None
        body = {"connectionId": connection.connection_id, "providerConfigKey": integration_id}
        return Reply(200, body, self.cors_headers(session, call.origin))

    async def api_key(self, call: HttpCall) -> Reply:
        return await self._submit(call, AuthMode.API_KEY)

    async def basic(self, call: HttpCall) -> Reply:
        return await self._submit(call, AuthMode.BASIC)


def _submission_ids(call: HttpCall) -> tuple[str, str]:
    return recordable(str(call.path_params.get("integration_id", "")), "")


def _created_id(reply: Reply) -> str:
    return str(reply.body["connectionId"]) if isinstance(reply.body, dict) else ""


def routes(http: HttpRoutes, sessions: ConnectSessionService) -> list[Route]:
    api = BrowserApi(sessions)
    common: dict[str, Any] = {
        "credential": Credential.SESSION_TOKEN,
        "any_scope": True,
        "error_headers": api.error_headers,
    }
    submission: dict[str, Any] = {
        **common,
        "audit": Audit.MUTATION,
        "decode": json_object,
        "resources": _submission_ids,
        "created": _created_id,
    }
    paths = (
        "/connect/session",
        "/api-auth/api-key/{integration_id}",
        "/api-auth/basic/{integration_id}",
    )
    return [
        http.route("GET", "/connect/session", api.get_session, **common),
        http.route(
            "DELETE", "/connect/session", api.delete_session, audit=Audit.MUTATION, **common
        ),
        http.route("POST", "/api-auth/api-key/{integration_id}", api.api_key, **submission),
        http.route("POST", "/api-auth/basic/{integration_id}", api.basic, **submission),
        *(http.unadmitted("OPTIONS", path, api.preflight) for path in paths),
    ]
