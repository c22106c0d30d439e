-- When each connection was last read by a backend (GET /connections/{id}, AccessCredentials):
-- written in batches, not on every read, and kept apart from the connections table so that
-- recording a read neither rewrites the wide row nor announces a change that drops caches.
CREATE TABLE connection_fetches (
    id              uuid PRIMARY KEY REFERENCES connections (id) ON DELETE CASCADE,
    last_fetch_time timestamptz NOT NULL
);
