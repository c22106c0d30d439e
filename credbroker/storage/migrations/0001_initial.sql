-- credbroker initial schema. Every tenant-owned row carries environment_id, and every unique
-- constraint includes it, so neither lookups nor conflicts can reach across environments.

CREATE TABLE environments (
    id          uuid PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    create_time timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE secret_keys (
    key_id       text PRIMARY KEY,
    environment_id uuid NOT NULL REFERENCES environments (id) ON DELETE CASCADE,
    scopes       text[] NOT NULL,
    secret_hash  bytea NOT NULL CHECK (length(secret_hash) = 32),
    description  text NOT NULL DEFAULT '',
    create_time  timestamptz NOT NULL DEFAULT now(),
    expire_time  timestamptz,
    revoke_time  timestamptz
);
CREATE INDEX secret_keys_environment ON secret_keys (environment_id);

CREATE TABLE integrations (
    id             uuid PRIMARY KEY,
    environment_id uuid NOT NULL REFERENCES environments (id) ON DELETE CASCADE,
    integration_id text NOT NULL,
    provider       text NOT NULL,
    display_name   text NOT NULL,
    auth_mode      text NOT NULL CHECK (auth_mode IN ('api_key', 'basic')),
    create_time    timestamptz NOT NULL DEFAULT now(),
    update_time    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (environment_id, integration_id)
);

-- Secrets live only in the two *_blob columns: envelope-encrypted (credbroker.crypto), bound by
-- associated data to (environment_id, integration_id, id) and to the column's purpose. The master
-- key id in bytes 2-5 of each blob's header is mirrored into a generated column so key rotation
-- can find rows by key.
CREATE TABLE connections (
    id                     uuid PRIMARY KEY,
    environment_id         uuid NOT NULL,
    integration_id         text NOT NULL,
    connection_id          text NOT NULL,
    auth_mode              text NOT NULL CHECK (auth_mode IN ('api_key', 'basic')),
    credentials_blob       bytea NOT NULL,
    credentials_key_id     bigint NOT NULL GENERATED ALWAYS AS (
        (get_byte(credentials_blob, 2)::bigint << 24) | (get_byte(credentials_blob, 3)::bigint << 16)
        | (get_byte(credentials_blob, 4)::bigint << 8) | get_byte(credentials_blob, 5)::bigint) STORED,
    config_blob            bytea NOT NULL,
    config_key_id          bigint NOT NULL GENERATED ALWAYS AS (
        (get_byte(config_blob, 2)::bigint << 24) | (get_byte(config_blob, 3)::bigint << 16)
        | (get_byte(config_blob, 4)::bigint << 8) | get_byte(config_blob, 5)::bigint) STORED,
    connection_config_keys text[] NOT NULL DEFAULT '{}',
    metadata               jsonb NOT NULL DEFAULT '{}',
    tags                   jsonb NOT NULL DEFAULT '{}',
    version                bigint NOT NULL DEFAULT 1,
    create_time            timestamptz NOT NULL DEFAULT now(),
    update_time            timestamptz NOT NULL DEFAULT now(),
    UNIQUE (environment_id, integration_id, connection_id),
    FOREIGN KEY (environment_id, integration_id)
        REFERENCES integrations (environment_id, integration_id) ON DELETE RESTRICT
);
CREATE INDEX connections_tags ON connections USING gin (tags jsonb_path_ops);
CREATE INDEX connections_credentials_key ON connections (credentials_key_id);
CREATE INDEX connections_config_key ON connections (config_key_id);

-- One row per master key id ever used: a check value encrypted under that key, so a server
-- started with the right id but the wrong key bytes refuses to start.
CREATE TABLE master_keys (
    key_id      bigint PRIMARY KEY,
    check_blob  bytea NOT NULL,
    create_time timestamptz NOT NULL DEFAULT now()
);
