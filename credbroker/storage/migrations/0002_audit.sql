-- The audit trail: one row per audited call. Never holds secret values. Rows are only inserted,
-- and updated once to record the outcome of a call recorded before it ran.
CREATE TABLE audit_events (
    id             bigserial PRIMARY KEY,
    event_time     timestamptz NOT NULL DEFAULT now(),
    request_id     text NOT NULL,
    environment_id uuid NOT NULL,
    environment    text NOT NULL,
    key_id         text NOT NULL,
    method         text NOT NULL,
    integration_id text NOT NULL DEFAULT '',
    connection_id  text NOT NULL DEFAULT '',
    outcome        text NOT NULL
);
CREATE INDEX audit_events_environment ON audit_events (environment_id, id DESC);
