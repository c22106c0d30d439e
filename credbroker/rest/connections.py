"""Connections over HTTP in the reference product's shapes (``@nangohq/node`` 0.71.10 sends
these requests unchanged), served by the same use cases as the gRPC ConnectionService.

Scopes: reads need ``connections:read``; a single-connection read by a key that also has
``credentials:read`` includes the credentials and is audited as a reveal *before* the response
leaves (no audit record, no secret: UNAVAILABLE). Writes need ``connections:write`` and are
audited as mutations. Listing never returns credentials.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.routing import Route

from credbroker.admission import (
    Audit,
    Auditor,
    Credential,
    current_principal,
    current_request_id,
)
from credbroker.admission.errors import code_for
from credbroker.api.paging import decode_page_token, encode_page_token
from credbroker.domain.audit import AuditRecord
from credbroker.domain.connections import ConnectionDraft, ConnectionService, FetchedConnection
from credbroker.domain.errors import DomainError, InvalidArgumentError, NotFoundError
from credbroker.domain.integrations import IntegrationService
from credbroker.domain.models import Principal, Scope
from credbroker.domain.validation import MAX_PAGE_SIZE
from credbroker.rest.endpoints import HttpCall, HttpRoutes, Reply, json_object
from credbroker.rest.params import (
    body_fields,
    boolean,
    invalid_query,
    normalized_tags,
    query,
    recordable_ids,
    reference_fields,
    required,
    string_map,
    tag_filter,
)
from credbroker.rest.shapes import connection_full, connection_item, credentials_from_json

GET_QUERY = frozenset(
    {"provider_config_key", "force_refresh", "refresh_token", "refresh_github_app_jwt_token"}
)
LIST_QUERY = frozenset(
    {
        "connectionId",
        "search",
        "integrationId",
        "limit",
        "cursor",
        "page",
        "endUserId",
        "endUserOrganizationId",
    }
)
IMPORT_FIELDS = frozenset(
    {
        "provider_config_key",
        "connection_id",
        "credentials",
        "connection_config",
        "metadata",
        "tags",
        "skip_verification",
    }
)
UNSUPPORTED_FIELDS = {
    "end_user": "is not supported on import (connect sessions set the end user)",
    "webhook_url_override": "is not supported",
}
METADATA_FIELDS = frozenset({"connection_id", "provider_config_key", "metadata"})
DEFAULT_LIST_LIMIT = MAX_PAGE_SIZE


def _refuse_unsupported(document: dict[str, Any]) -> None:
    for name, description in UNSUPPORTED_FIELDS.items():
        if name in document:
            raise InvalidArgumentError.single(name, description)


def _connection_key(call: HttpCall) -> tuple[str, str]:
    """(integration id, connection id) of ``/connections/{connection_id}?provider_config_key=``."""
    values = query(call, GET_QUERY)
    return required(values, "provider_config_key"), call.path_params["connection_id"]


def _path_ids(call: HttpCall) -> tuple[str, str]:
    return recordable_ids(call.query.get("provider_config_key"), call.path_params["connection_id"])


def _body_ids(call: HttpCall) -> tuple[str, str]:
    document = call.json if isinstance(call.json, dict) else {}
    connection_id = document.get("connection_id")
    if isinstance(connection_id, list):
        connection_id = connection_id[0] if len(connection_id) == 1 else ""
    return recordable_ids(document.get("provider_config_key"), connection_id)


def _created_id(reply: Reply) -> str:
    body = reply.body if isinstance(reply.body, dict) else {}
    return recordable_ids("", body.get("connection_id"))[1]


def _request_id() -> str:
    """The id admission gave this call."""
    return current_request_id()


def _limit(values: dict[str, str]) -> int:
    text = values.get("limit")
    if text is None:
        return DEFAULT_LIST_LIMIT
    if not (text.isascii() and text.isdigit()) or len(text) > 9 or int(text) < 1:
        raise invalid_query("limit", "must be a whole number from 1")
    return min(int(text), MAX_PAGE_SIZE)


class ConnectionRoutes:
    def __init__(
        self, connections: ConnectionService, integrations: IntegrationService, auditor: Auditor
    ) -> None:
        self._connections = connections
        self._integrations = integrations
        self._auditor = auditor

    async def _reveal(
        self, principal: Principal, name: str, integration_id: str, connection_id: str
    ) -> FetchedConnection:
        """Reads with credentials; the reveal is recorded before it is returned, and a failed
        one is recorded on a best-effort basis (as AccessCredentials is over gRPC)."""
        ids = recordable_ids(integration_id, connection_id)
        request_id = _request_id()
        try:
            fetched = await self._connections.fetch(
                principal, integration_id, connection_id, reveal=True
            )
        except DomainError as error:
            await self._auditor.failed(
                Audit.REVEAL, None, request_id, principal, name, ids, code_for(error).label
            )
            raise
        await self._auditor.record(AuditRecord(request_id, principal, name, *ids, "OK"))
        return fetched

    def get_handler(self, name: str) -> Callable[[HttpCall], Awaitable[Reply]]:
        async def get_connection(call: HttpCall) -> Reply:
            integration_id, connection_id = _connection_key(call)
            values = dict(call.query.items())
            for flag in ("force_refresh", "refresh_token", "refresh_github_app_jwt_token"):
                boolean(values, flag)  # accepted for compatibility: API keys never refresh
            principal = current_principal()
            with reference_fields():
                if Scope.CREDENTIALS_READ in principal.scopes:
                    fetched = await self._reveal(principal, name, integration_id, connection_id)
                else:
                    fetched = await self._connections.fetch(
                        principal, integration_id, connection_id, reveal=False
                    )
            return Reply(200, connection_full(fetched))

        return get_connection

    async def _providers(self, principal: Principal, integration_ids: set[str]) -> dict[str, str]:
        providers: dict[str, str] = {}
        for integration_id in sorted(integration_ids):
            try:
                integration = await self._integrations.get(principal, integration_id)
                providers[integration_id] = integration.provider
            except NotFoundError:  # deleted while listing
                providers[integration_id] = ""
        return providers

    async def list_connections(self, call: HttpCall) -> Reply:
        values = query(call, LIST_QUERY, tags=True)
        if values.get("page", "0") != "0":
            raise invalid_query("page", "offset pages are not supported; pass cursor=next_cursor")
        integration_ids = [i for i in values.get("integrationId", "").split(",") if i]
        tags = tag_filter(values)
        filters = {
            "route": "GET /connections",
            "integration_ids": integration_ids,
            "connection_id": values.get("connectionId", ""),
            "search": values.get("search", ""),
            "end_user_id": values.get("endUserId", ""),
            "organization_id": values.get("endUserOrganizationId", ""),
            "tags": tags,
        }
        cursor = None
        if values.get("cursor"):
            try:
                cursor = decode_page_token(values["cursor"], filters, size=2)
            except InvalidArgumentError:
                raise invalid_query("cursor", "is not a next_cursor of this listing") from None
        principal = current_principal()
        with reference_fields(
            (
                ("integration_ids", "integrationId"),
                ("connection_id", "connectionId"),
                ("end_user_id", "endUserId"),
                ("organization_id", "endUserOrganizationId"),
            )
        ):
            page = await self._connections.list(
                principal,
                integration_id="",
                tags=tags,
                page_size=_limit(values),
                after=(cursor[0], cursor[1]) if cursor else None,
                integration_ids=integration_ids,
                connection_id=values.get("connectionId", ""),
                search=values.get("search", ""),
                end_user_id=values.get("endUserId", ""),
                organization_id=values.get("endUserOrganizationId", ""),
            )
        providers = await self._providers(principal, {c.integration_id for c in page.items})
        return Reply(
            200,
            {
                "connections": [
                    connection_item(c, providers[c.integration_id]) for c in page.items
                ],
                "next_cursor": encode_page_token(page.next_cursor, filters) or None,
            },
        )

    async def import_connection(self, call: HttpCall) -> Reply:
        """Creates, or with a known ``connection_id`` replaces (the reference's upsert), a
        connection from credentials the caller holds; verified first unless
        ``skip_verification``. The answer never echoes the credentials."""
        document: dict[str, Any] = call.json
        _refuse_unsupported(document)
        body_fields(document, IMPORT_FIELDS)
        integration_id = document.get("provider_config_key")
        if not isinstance(integration_id, str) or not integration_id:
            raise InvalidArgumentError.single("provider_config_key", "is required")
        connection_id = document.get("connection_id", "")
        if not isinstance(connection_id, str):
            raise InvalidArgumentError.single("connection_id", "must be a string")
        if "credentials" not in document:
            raise InvalidArgumentError.single("credentials", "is required")
        credentials = credentials_from_json(document["credentials"])
        metadata = document.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):
            raise InvalidArgumentError.single("metadata", "must be an object")
        config = string_map(document.get("connection_config", {}), "connection_config")
        tags = normalized_tags(document["tags"]) if "tags" in document else None
        skip = document.get("skip_verification", False)
        if not isinstance(skip, bool):
            raise InvalidArgumentError.single("skip_verification", "must be true or false")
        draft = ConnectionDraft(integration_id, connection_id, credentials, metadata, config, tags)
        principal = current_principal()
        with reference_fields():
            if not connection_id:
                connection = await self._connections.create(
                    principal, draft, skip_verification=skip
                )
            else:
                paths = {"credentials", "connection_config"}
                paths |= {"metadata"} if metadata is not None else set()
                paths |= {"tags"} if tags is not None else set()
                connection = await self._connections.update(
                    principal,
                    draft,
                    frozenset(paths),
                    etag="",
                    allow_missing=True,
                    skip_verification=skip,
                )
            integration = await self._integrations.get(principal, integration_id)
        return Reply(201, connection_full(FetchedConnection(connection, integration.provider)))

    async def patch_connection(self, call: HttpCall) -> Reply:
        integration_id, connection_id = _connection_key(call)
        document: dict[str, Any] = call.json
        _refuse_unsupported(document)
        body_fields(document, frozenset({"tags"}))
        principal = current_principal()
        with reference_fields():
            if "tags" not in document:
                await self._connections.get(principal, integration_id, connection_id)
            else:
                draft = ConnectionDraft(
                    integration_id,
                    connection_id,
                    None,
                    None,
                    None,
                    normalized_tags(document["tags"]),
                )
                await self._connections.update(
                    principal, draft, frozenset({"tags"}), etag="", allow_missing=False
                )
        return Reply(200, {"success": True})

    async def delete_connection(self, call: HttpCall) -> Reply:
        integration_id, connection_id = _connection_key(call)
        with reference_fields():
            await self._connections.delete(current_principal(), integration_id, connection_id)
        return Reply(200, {"success": True})

    def metadata_handler(self, *, merge: bool) -> Callable[[HttpCall], Awaitable[Reply]]:
        async def set_metadata(call: HttpCall) -> Reply:
            document: dict[str, Any] = call.json
            body_fields(document, METADATA_FIELDS)
            raw_ids = document.get("connection_id")
            ids = [raw_ids] if isinstance(raw_ids, str) else raw_ids
            if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                raise InvalidArgumentError.single(
                    "connection_id", "must be a string or a list of strings"
                )
            integration_id = document.get("provider_config_key")
            if not isinstance(integration_id, str):
                raise InvalidArgumentError.single("provider_config_key", "is required")
            metadata = document.get("metadata")
            if not isinstance(metadata, dict):
                raise InvalidArgumentError.single("metadata", "must be an object")
            await self._connections.set_metadata(
                current_principal(), integration_id, ids, metadata, merge=merge
            )
            echoed = {
                "connection_id": raw_ids,
                "provider_config_key": integration_id,
                "metadata": metadata,
            }
            return Reply(200 if merge else 201, echoed)

        return set_metadata


def routes(
    http: HttpRoutes,
    connections: ConnectionService,
    integrations: IntegrationService,
    auditor: Auditor,
) -> list[Route]:
    """The connection routes; ``/connections/metadata`` comes before ``/connections/{id}``
    (PATCH). The hot read, ``GET /connections/{id}``, comes first: the router tries routes in
    order, and no other GET route matches its paths (``GET /connections/metadata`` is that
    route's either way)."""
    handlers = ConnectionRoutes(connections, integrations, auditor)
    secret = Credential.SECRET_KEY
    read, write = Scope.CONNECTIONS_READ, Scope.CONNECTIONS_WRITE
    get_name = "GET /connections/{connection_id}"
    legacy_name = "GET /connection/{connection_id}"
    return [
        http.route(
            "GET",
            "/connections/{connection_id}",
            handlers.get_handler(get_name),
            credential=secret,
            scope=read,
        ),
        http.route(
            "POST",
            "/connections/metadata",
            handlers.metadata_handler(merge=False),
            credential=secret,
            scope=write,
            audit=Audit.MUTATION,
            decode=json_object,
            resources=_body_ids,
        ),
        http.route(
            "PATCH",
            "/connections/metadata",
            handlers.metadata_handler(merge=True),
            credential=secret,
            scope=write,
            audit=Audit.MUTATION,
            decode=json_object,
            resources=_body_ids,
        ),
        http.route("GET", "/connections", handlers.list_connections, credential=secret, scope=read),
        http.route(
            "POST",
            "/connections",
            handlers.import_connection,
            credential=secret,
            scope=write,
            audit=Audit.MUTATION,
            decode=json_object,
            resources=_body_ids,
            created=_created_id,
        ),
        http.route(
            "GET",
            "/connection/{connection_id}",
            handlers.get_handler(legacy_name),
            credential=secret,
            scope=read,
        ),
        http.route(
            "PATCH",
            "/connections/{connection_id}",
            handlers.patch_connection,
            credential=secret,
            scope=write,
            audit=Audit.MUTATION,
            decode=json_object,
            resources=_path_ids,
        ),
        http.route(
            "DELETE",
            "/connections/{connection_id}",
            handlers.delete_connection,
            credential=secret,
            scope=write,
            audit=Audit.MUTATION,
            resources=_path_ids,
        ),
    ]
