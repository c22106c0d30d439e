"""``GET /healthz``: 200 ``{"status": "SERVING"}`` while the server serves (the same state as
gRPC health), 503 ``{"status": "NOT_SERVING"}`` while the database is unreachable or the
server drains. No credential needed."""

from __future__ import annotations

from starlette.routing import Route

from credbroker.admission import Credential
from credbroker.rest.endpoints import HttpCall, HttpRoutes, Reply


class ServingState:
    """Whether the server serves; set with gRPC health by the composition root."""

    def __init__(self) -> None:
        self.serving = False


def routes(http: HttpRoutes, state: ServingState) -> list[Route]:
    serving = Reply(200, {"status": "SERVING"})
    not_serving = Reply(503, {"status": "NOT_SERVING"})

    async def healthz(call: HttpCall) -> Reply:
        return serving if state.serving else not_serving

    return [http.route("GET", "/healthz", healthz, credential=Credential.NONE)]
