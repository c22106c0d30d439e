"""The framework ceiling for `make bench`: a grpc.aio server with credbroker's own server
configuration (the same grpc options from ``credbroker.app._server_options``, the same
``maximum_concurrent_rpcs``, the same event loop, the same number of processes) serving one
method, ``/credbroker.bench.Noop/Ping``, that parses an empty protobuf message and returns one.
No interceptors, no database, no logging: what a credbroker RPC costs above this is credbroker's.

    python bench/noop.py --listen 127.0.0.1:PORT [--workers N] [--loop asyncio|uvloop]

Settings come from the same ``CREDBROKER_*`` environment as the real server. With ``--workers N``
(N > 1) the parent only supervises N child processes that each bind the port with SO_REUSEPORT,
the usual way to run one Python gRPC server per core.
"""

# ruff: noqa: S603 - the benchmark starts its own servers and tools by design

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
from typing import Any

import grpc
from google.protobuf import empty_pb2

METHOD = "/credbroker.bench.Noop/Ping"


async def _ping(request: empty_pb2.Empty, context: Any) -> empty_pb2.Empty:
    return empty_pb2.Empty()


class _Handler(grpc.GenericRpcHandler):
    def __init__(self) -> None:
        self._handler = grpc.unary_unary_rpc_method_handler(
            _ping,
            request_deserializer=empty_pb2.Empty.FromString,
            response_serializer=empty_pb2.Empty.SerializeToString,
        )

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        if handler_call_details.method == METHOD:
            return self._handler
        return None


def _options(reuseport: bool) -> tuple[list[tuple[str, Any]], int]:
    """credbroker's own server options and concurrency limit, from the CREDBROKER_* environment."""
    from credbroker.app import _server_options
    from credbroker.config import Settings

    settings = Settings()
    options = [(k, v) for k, v in _server_options(settings) if k != "grpc.so_reuseport"]
    options.append(("grpc.so_reuseport", 1 if reuseport else 0))
    return options, settings.max_concurrent_rpcs


async def _serve(listen: str, reuseport: bool) -> None:
    options, max_rpcs = _options(reuseport)
    server = grpc.aio.server(options=options, maximum_concurrent_rpcs=max_rpcs)
    server.add_generic_rpc_handlers((_Handler(),))
    if server.add_insecure_port(listen) == 0:
        raise SystemExit(f"noop: cannot listen on {listen}")
    await server.start()
    print(f"noop serving {METHOD} on {listen} pid={os.getpid()}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)


def _run(listen: str, loop_kind: str, reuseport: bool) -> None:
    if loop_kind == "uvloop":
        import uvloop

        uvloop.install()
    asyncio.run(_serve(listen, reuseport))


def _supervise(args: argparse.Namespace) -> None:
    command = [sys.executable, os.path.abspath(__file__), "--listen", args.listen]
    command += ["--loop", args.loop, "--child"]
    children = [subprocess.Popen(command) for _ in range(args.workers)]

    def forward(signum: int, frame: Any) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    codes = [child.wait() for child in children]
    sys.exit(max(codes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.workers > 1 and not args.child:
        _supervise(args)
    else:
        _run(args.listen, args.loop, reuseport=args.child)


if __name__ == "__main__":
    main()
