"""PostgreSQL persistence through asyncpg: pool, migrations and one repository per aggregate."""
