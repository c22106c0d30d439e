"""gRPC transport: servicers, interceptors, and the table mapping domain errors to status codes."""
