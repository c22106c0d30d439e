"""The HTTP ceiling for `make bench`: credbroker's own HTTP stack (uvicorn with httptools in
the same kind of event loop, started by ``credbroker.rest.server.HttpServer`` with the same
settings, behind ``credbroker.rest.app.build_app``'s headers middleware) serving one route,
``GET /noop``, that answers ``{}``. No admission, no database, no logging: what a credbroker
HTTP call costs above this is credbroker's.

    python bench/http_noop.py --listen 127.0.0.1:PORT [--loop asyncio|uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

PATH = "/noop"


async def _noop(request: Request) -> Response:
    return JSONResponse({})


async def _serve(listen: str) -> None:
    from credbroker.config import Settings
    from credbroker.rest.app import build_app
    from credbroker.rest.server import HttpServer

    settings = Settings()
    server = HttpServer(
        build_app([Route(PATH, _noop, methods=["GET"])]),
        listen,
        reuse_port=False,
        tls=None,
        header_timeout=settings.first_message_timeout,
    )
    port = await server.start()
    print(f"http noop serving GET {PATH} on port {port} pid={os.getpid()}", file=sys.stderr)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    args = parser.parse_args()
    if args.loop == "uvloop":
        import uvloop

        uvloop.install()
    asyncio.run(_serve(args.listen))


if __name__ == "__main__":
    main()
