-- Connect sessions: short-lived grants for a browser to store one end user's credentials.
-- The token is never stored, only SHA-256 over a domain tag and the token (256 random bits, so a
-- fast hash suffices). connection_id is fixed at creation (generated, or the reconnect target),
-- so a session can make at most one connection even if two submissions race.
CREATE TABLE connect_sessions (
    id                           uuid PRIMARY KEY,
    environment_id               uuid NOT NULL REFERENCES environments (id) ON DELETE CASCADE,
    token_hash                   bytea NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    end_user                     jsonb,
    organization                 jsonb,
    tags                         jsonb NOT NULL DEFAULT '{}',
    allowed_integrations         text[] NOT NULL DEFAULT '{}',
    allowed_origins              text[] NOT NULL DEFAULT '{}',
    integrations_config_defaults jsonb NOT NULL DEFAULT '{}',
    reconnect_integration_id     text,
    connection_id                text NOT NULL,
    created_by                   text NOT NULL,
    create_time                  timestamptz NOT NULL DEFAULT now(),
    expire_time                  timestamptz NOT NULL,
    consume_time                 timestamptz,
    consumed_integration_id      text NOT NULL DEFAULT '',
    failed_attempts              integer NOT NULL DEFAULT 0,
    -- One submission at a time per session: set while one runs (with an expiry, so a crashed
    -- server does not lock the session forever).
    attempt_until                timestamptz
);
CREATE INDEX connect_sessions_environment ON connect_sessions (environment_id, create_time DESC, id);
CREATE INDEX connect_sessions_expire_time ON connect_sessions (expire_time);

-- Who connected: set on connections made through a connect session (non-secret, unencrypted
-- like tags). {"id", "email", "display_name"} and {"id", "display_name"}.
ALTER TABLE connections
    ADD COLUMN end_user jsonb,
    ADD COLUMN organization jsonb;
