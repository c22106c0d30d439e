-- The outbox of connection changes. Each row is written in the same transaction as the change it
-- describes (credbroker.storage.events), never holds a secret, and is deleted after the retention
-- period (CREDBROKER_EVENT_RETENTION). `position` orders the events of one environment in commit
-- order: the insert takes a per-environment transaction lock first, so a lower position of the
-- same environment can never commit later. Announced on credbroker_changes as
-- e|<environment_id>|<position> once committed.
CREATE TABLE connection_events (
    position          bigserial PRIMARY KEY,
    event_id          uuid NOT NULL UNIQUE,
    environment_id    uuid NOT NULL REFERENCES environments (id) ON DELETE CASCADE,
    environment       text NOT NULL,
    event_type        text NOT NULL CHECK (event_type IN (
        'connection.created', 'connection.credentials_replaced', 'connection.deleted',
        'connection.verification_failed', 'connection.verification_recovered')),
    event_time        timestamptz NOT NULL DEFAULT clock_timestamp(),
    connection_row_id uuid NOT NULL,
    integration_id    text NOT NULL,
    connection_id     text NOT NULL,
    provider          text NOT NULL,
    auth_mode         text NOT NULL,
    tags              jsonb NOT NULL DEFAULT '{}',
    end_user          jsonb,
    error_type        text NOT NULL DEFAULT '',
    error_description text NOT NULL DEFAULT ''
);
CREATE INDEX connection_events_environment ON connection_events (environment_id, position);
CREATE INDEX connection_events_time ON connection_events (event_time);

-- The highest position retention deleted per environment: a resume token below it may have
-- missed events, so Watch refuses it instead of silently skipping them.
CREATE TABLE connection_event_purges (
    environment_id uuid PRIMARY KEY REFERENCES environments (id) ON DELETE CASCADE,
    purged_through bigint NOT NULL
);
