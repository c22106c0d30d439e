"""The hosted connect page: ``GET /connect`` (and ``/connect/``, where the reference SDK's
``openConnectUI`` points its iframe), its two static assets, and the headers that keep it safe:

* a strict Content-Security-Policy with a fresh nonce per response: only this server's own
  script and stylesheet run, no inline code, no third-party origin, Trusted Types required, no
  form posts, ``connect-src 'self'``;
* ``frame-ancestors`` limited to this server, ``CREDBROKER_CONNECT_ALLOWED_ORIGINS`` and, when the
  link names its session, that session's ``allowed_origins`` (framing is decided before an
  embedded page learns its token, so embedding apps list their origins in the setting);
* ``Cache-Control: no-store`` and ``Referrer-Policy: no-referrer`` (the address holds the token
  until the page drops it), set for every response by :mod:`credbroker.rest.app`.

The page itself holds no data: it reads the session from ``GET /connect/session`` with the token
and renders everything with ``textContent``.
"""

from __future__ import annotations

import secrets
from importlib import resources
from string import Template

from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from credbroker.admission import Credential
from credbroker.domain.connect_sessions import ConnectSessionService, token_hash
from credbroker.rest.endpoints import HttpCall, HttpRoutes, Reply

_ASSETS = {
    "connect.js": "text/javascript; charset=utf-8",
    "connect.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}


def _read(folder: str, name: str) -> str:
    return resources.files("credbroker.web").joinpath(folder, name).read_text("utf-8")


def content_security_policy(nonce: str, frame_ancestors: list[str]) -> str:
    ancestors = " ".join(["'self'", *frame_ancestors])
    return "; ".join(
        [
            "default-src 'none'",
            f"script-src 'nonce-{nonce}'",
            f"style-src 'nonce-{nonce}'",
            "connect-src 'self'",
            "img-src 'self'",
            "form-action 'none'",
            "base-uri 'none'",
            "require-trusted-types-for 'script'",
            "trusted-types 'none'",
            f"frame-ancestors {ancestors}",
        ]
    )


def routes(http: HttpRoutes, sessions: ConnectSessionService) -> list[Route]:
    page = Template(_read("templates", "connect.html"))
    assets = {name: (_read("static", name).encode("utf-8"), kind) for name, kind in _ASSETS.items()}

    async def framing_origins(call: HttpCall) -> list[str]:
        token = call.query.get("session_token")
        hashed = token_hash(token) if token else None
        session = await sessions.session_by_hash(hashed) if hashed is not None else None
        own = sessions.own_origin()
        return [o for o in sessions.framing_origins(session) if o != own]

    async def connect_page(call: HttpCall) -> Reply:
        nonce = secrets.token_urlsafe(18)
        html = page.substitute(nonce=nonce)
        csp = content_security_policy(nonce, await framing_origins(call))
        return Reply(
            200,
            response=HTMLResponse(html, headers={"content-security-policy": csp}),
        )

    async def asset(call: HttpCall) -> Reply:
        found = assets.get(str(call.path_params["name"]))
        if found is None:
            return Reply(404, {"error": {"code": "unknown_route", "message": "no such asset"}})
        body, kind = found
        headers = {"content-security-policy": "default-src 'none'"}
        return Reply(200, response=Response(body, media_type=kind, headers=headers))

    return [
        http.route("GET", "/connect", connect_page, credential=Credential.NONE),
        http.route("GET", "/connect/", connect_page, credential=Credential.NONE),
        http.route("GET", "/connect/static/{name}", asset, credential=Credential.NONE),
    ]
