"""HTTP transport: Starlette routes served by uvicorn in the gRPC server's process and event
loop. Every route is admitted through :mod:`credbroker.admission` (see :mod:`.endpoints`)."""
