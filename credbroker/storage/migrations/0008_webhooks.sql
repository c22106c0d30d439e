-- Webhook endpoints per environment, their deliveries (one per endpoint and connection event,
-- created in the event's transaction by credbroker.storage.events) and every delivery attempt.
-- Signing secrets live only in the *_secret_blob columns: envelope-encrypted (credbroker.crypto),
-- bound to (environment_id, id) and the column's purpose; the master key id of each blob is
-- mirrored into a generated column for key rotation, like the connections' blobs.
CREATE TABLE webhook_endpoints (
    id                          uuid PRIMARY KEY,
    environment_id              uuid NOT NULL REFERENCES environments (id) ON DELETE CASCADE,
    url                         text NOT NULL,
    event_types                 text[] NOT NULL DEFAULT '{}',
    description                 text NOT NULL DEFAULT '',
    disabled                    boolean NOT NULL DEFAULT false,
    secret_blob                 bytea NOT NULL,
    secret_key_id               bigint NOT NULL GENERATED ALWAYS AS (
        (get_byte(secret_blob, 2)::bigint << 24) | (get_byte(secret_blob, 3)::bigint << 16)
        | (get_byte(secret_blob, 4)::bigint << 8) | get_byte(secret_blob, 5)::bigint) STORED,
    previous_secret_blob        bytea,
    previous_secret_key_id      bigint GENERATED ALWAYS AS (
        (get_byte(previous_secret_blob, 2)::bigint << 24)
        | (get_byte(previous_secret_blob, 3)::bigint << 16)
        | (get_byte(previous_secret_blob, 4)::bigint << 8)
        | get_byte(previous_secret_blob, 5)::bigint) STORED,
    previous_secret_expire_time timestamptz,
    consecutive_failures        integer NOT NULL DEFAULT 0,
    circuit_open_until          timestamptz,
    create_time                 timestamptz NOT NULL DEFAULT now(),
    update_time                 timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_endpoints_environment ON webhook_endpoints (environment_id, create_time);

-- state: pending (to send; leased while an attempt runs), delivered (a 2xx answer) or failed
-- (given up after the retry horizon). Pending deliveries of one endpoint and connection are sent
-- in event order; redeliveries are outside that order.
CREATE TABLE webhook_deliveries (
    id                bigserial PRIMARY KEY,
    endpoint_id       uuid NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    environment_id    uuid NOT NULL,
    event_position    bigint NOT NULL REFERENCES connection_events (position) ON DELETE CASCADE,
    integration_id    text NOT NULL,
    connection_id     text NOT NULL,
    redelivery        boolean NOT NULL DEFAULT false,
    state             text NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'delivered', 'failed')),
    attempt_count     integer NOT NULL DEFAULT 0,
    next_attempt_time timestamptz NOT NULL DEFAULT clock_timestamp(),
    lease_until       timestamptz,
    lease_token       uuid,
    last_http_status  integer NOT NULL DEFAULT 0,
    last_error        text NOT NULL DEFAULT '',
    create_time       timestamptz NOT NULL DEFAULT clock_timestamp(),
    finish_time       timestamptz
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_time)
    WHERE state = 'pending';
CREATE INDEX webhook_deliveries_order
    ON webhook_deliveries (endpoint_id, integration_id, connection_id, event_position)
    WHERE state = 'pending' AND NOT redelivery;
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (environment_id, id DESC);
CREATE INDEX webhook_deliveries_event ON webhook_deliveries (event_position);

-- outcome: in_progress (running, or its server died: then abandoned when retried), succeeded,
-- failed. error never holds a URL, header or body, only what went wrong.
CREATE TABLE webhook_attempts (
    delivery_id    bigint NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempt_number integer NOT NULL,
    start_time     timestamptz NOT NULL DEFAULT clock_timestamp(),
    duration_ms    integer NOT NULL DEFAULT 0,
    outcome        text NOT NULL
        CHECK (outcome IN ('in_progress', 'succeeded', 'failed', 'abandoned')),
    http_status    integer NOT NULL DEFAULT 0,
    error          text NOT NULL DEFAULT '',
    PRIMARY KEY (delivery_id, attempt_number)
);
