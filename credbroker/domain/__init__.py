"""Pure business rules: models, validation and use cases. Imports neither grpc nor asyncpg."""
