"""``GET /openapi.json``: the committed OpenAPI 3.1 description (``openapi.yaml`` beside this
module), parsed once and served as JSON without a credential. A test checks it against the
routes the server actually serves and validates real responses against its schemas."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

import yaml
from starlette.responses import Response
from starlette.routing import Route

from credbroker.admission import Credential
from credbroker.rest.endpoints import HttpCall, HttpRoutes, Reply


@cache
def document() -> dict[str, Any]:
    text = resources.files("credbroker.rest").joinpath("openapi.yaml").read_text("utf-8")
    loaded: dict[str, Any] = yaml.safe_load(text)
    return loaded


@cache
def _rendered() -> bytes:
    return json.dumps(document(), separators=(",", ":")).encode("utf-8")


def routes(http: HttpRoutes) -> list[Route]:
    async def openapi_json(call: HttpCall) -> Reply:
        return Reply(200, response=Response(_rendered(), media_type="application/json"))

    return [http.route("GET", "/openapi.json", openapi_json, credential=Credential.NONE)]
