"""credbroker: stores end users' third-party API credentials and hands them back over gRPC."""
