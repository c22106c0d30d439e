-- Provider settings per integration, and the last verification of each connection.
ALTER TABLE integrations ADD COLUMN integration_config jsonb NOT NULL DEFAULT '{}';

ALTER TABLE connections
    ADD COLUMN verification_state text NOT NULL DEFAULT 'unverified'
        CHECK (verification_state IN ('unverified', 'verified', 'rejected', 'error')),
    ADD COLUMN verify_time timestamptz,
    ADD COLUMN verify_http_status integer NOT NULL DEFAULT 0,
    ADD COLUMN verify_failures integer NOT NULL DEFAULT 0;
CREATE INDEX connections_verify_time ON connections (verify_time NULLS FIRST, id);
