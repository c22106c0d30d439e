"""Integrations and the provider catalog over HTTP in the reference product's shapes, served by
the same use cases as the gRPC IntegrationService. Reads need ``integrations:read``; writes
``integrations:write`` and are audited as mutations."""

from __future__ import annotations

from typing import Any

from starlette.routing import Route

from credbroker.admission import Audit, Credential, current_principal
from credbroker.domain.errors import InvalidArgumentError
from credbroker.domain.integrations import IntegrationDraft, IntegrationService
from credbroker.domain.models import Integration, Principal, Scope
from credbroker.domain.validation import MAX_PAGE_SIZE, MAX_SEARCH
from credbroker.rest.endpoints import HttpCall, HttpRoutes, Reply, json_object
from credbroker.rest.params import (
    body_fields,
    boolean,
    invalid_query,
    query,
    recordable_ids,
    reference_fields,
    string_map,
)
from credbroker.rest.shapes import integration_json, provider_json

CREATE_FIELDS = frozenset({"unique_key", "provider", "display_name", "integration_config"})
PATCH_FIELDS = frozenset({"unique_key", "display_name", "integration_config"})
# Fields of the reference's bodies that API-key and Basic integrations have no use for.
NOT_FOR_KEY_INTEGRATIONS = {
    "credentials": "API_KEY and BASIC integrations take no credentials of their own",
    "custom": "API_KEY and BASIC integrations take no credentials of their own",
}
INCLUDE_VALUES = frozenset({"webhook", "credentials"})


def _check_body(document: dict[str, Any], allowed: frozenset[str]) -> None:
    for name, description in NOT_FOR_KEY_INTEGRATIONS.items():
        if name in document:
            raise InvalidArgumentError.single(name, description)
    if document.get("forward_webhooks", False) is not False:
        raise InvalidArgumentError.single("forward_webhooks", "is not supported")
    body_fields(document, allowed | {"forward_webhooks"})


def _text(document: dict[str, Any], name: str, *, default: str = "") -> str:
    value = document.get(name, default)
    if not isinstance(value, str):
        raise InvalidArgumentError.single(name, "must be a string")
    return value


def _integration_ids(call: HttpCall) -> tuple[str, str]:
    if "unique_key" in call.path_params:
        return recordable_ids(call.path_params["unique_key"], "")
    document = call.json if isinstance(call.json, dict) else {}
    return recordable_ids(document.get("unique_key"), "")


async def _all_integrations(service: IntegrationService, principal: Principal) -> list[Integration]:
    """Every integration of the environment, read page by page."""
    found: list[Integration] = []
    after = None
    while True:
        page = await service.list(principal, page_size=MAX_PAGE_SIZE, after=after)
        found.extend(page.items)
        if page.next_cursor is None:
            return found
        after = page.next_cursor[0]


def routes(http: HttpRoutes, integrations: IntegrationService) -> list[Route]:
    secret = Credential.SECRET_KEY
    read, write = Scope.INTEGRATIONS_READ, Scope.INTEGRATIONS_WRITE

    async def list_integrations(call: HttpCall) -> Reply:
        query(call, frozenset())
        found = await _all_integrations(integrations, current_principal())
        return Reply(200, {"data": [integration_json(i) for i in found]})

    async def create_integration(call: HttpCall) -> Reply:
        document: dict[str, Any] = call.json
        _check_body(document, CREATE_FIELDS)
        draft = IntegrationDraft(
            integration_id=_text(document, "unique_key"),
            provider=_text(document, "provider"),
            display_name=_text(document, "display_name"),
            integration_config=string_map(
                document.get("integration_config", {}), "integration_config"
            ),
        )
        with reference_fields():
            created = await integrations.create(current_principal(), draft)
        return Reply(200, {"data": integration_json(created)})

    async def get_integration(call: HttpCall) -> Reply:
        values = query(call, frozenset({"include"}))
        include = {item for item in values.get("include", "").split(",") if item}
        if include - INCLUDE_VALUES:
            raise invalid_query("include", "may list only webhook and credentials")
        with reference_fields():
            found = await integrations.get(current_principal(), call.path_params["unique_key"])
        body = integration_json(found)
        if "webhook" in include:
            body["webhook_url"] = None
        if "credentials" in include:
            body["credentials"] = None
        return Reply(200, {"data": body})

    async def update_integration(call: HttpCall) -> Reply:
        integration_id = call.path_params["unique_key"]
        document: dict[str, Any] = call.json
        _check_body(document, PATCH_FIELDS)
        if _text(document, "unique_key", default=integration_id) != integration_id:
            raise InvalidArgumentError.single("unique_key", "cannot be changed (no renames)")
        paths = frozenset(document) & {"display_name", "integration_config"}
        config = None
        if "integration_config" in document:
            config = string_map(document["integration_config"], "integration_config")
        with reference_fields():
            updated = await integrations.update(
                current_principal(),
                integration_id,
                paths,
                _text(document, "display_name"),
                integration_config=config,
            )
        return Reply(200, {"data": integration_json(updated)})

    async def delete_integration(call: HttpCall) -> Reply:
        values = query(call, frozenset({"force"}))
        with reference_fields():
            await integrations.delete(
                current_principal(), call.path_params["unique_key"], force=boolean(values, "force")
            )
        return Reply(200, {"success": True})

    async def list_providers(call: HttpCall) -> Reply:
        values = query(call, frozenset({"search"}))
        search = values.get("search", "").lower()
        if len(search) > MAX_SEARCH:
            raise invalid_query("search", f"must be at most {MAX_SEARCH} characters")
        found = []
        after = None
        while True:
            page = integrations.list_providers(None, page_size=MAX_PAGE_SIZE, after=after)
            found.extend(page.items)
            if page.next_cursor is None:
                break
            after = page.next_cursor[0]
        matching = [
            p for p in found if search in p.name.lower() or search in p.display_name.lower()
        ]
        return Reply(200, {"data": [provider_json(p) for p in matching]})

    async def get_provider(call: HttpCall) -> Reply:
        query(call, frozenset())
        return Reply(
            200, {"data": provider_json(integrations.provider(call.path_params["provider"]))}
        )

    return [
        http.route("GET", "/integrations", list_integrations, credential=secret, scope=read),
        http.route(
            "POST",
            "/integrations",
            create_integration,
            credential=secret,
            scope=write,
            audit=Audit.MUTATION,
            decode=json_object,
            resources=_integration_ids,
        ),
        http.route(
            "GET", "/integrations/{unique_key}", get_integration, credential=secret, scope=read
        ),
        http.route(
            "PATCH",
            "/integrations/{unique_key}",
            update_integration,
            credential=secret,
            scope=write,
            audit=Audit.MUTATION,
            decode=json_object,
            resources=_integration_ids,
        ),
        http.route(
            "DELETE",
            "/integrations/{unique_key}",
            delete_integration,
            credential=secret,
            scope=write,
            audit=Audit.MUTATION,
            resources=_integration_ids,
        ),
        http.route("GET", "/providers", list_providers, credential=secret, scope=read),
        http.route("GET", "/providers/{provider}", get_provider, credential=secret, scope=read),
    ]
