-- Issue 9, finding 11: blobs of format 2 bind every id their row is found by (a connection's
-- environment, integration and connection ids and its row id); format 1 blobs, written before,
-- bind the row id only. The format is byte 0 of each blob; it is mirrored into a generated
-- column, like the master key id, so a rewrap finds the format 1 blobs left and the start-up
-- check can tell whether any remain (through the partial indexes, which stay empty once none
-- are left).
ALTER TABLE connections
    ADD COLUMN credentials_format smallint NOT NULL
        GENERATED ALWAYS AS (get_byte(credentials_blob, 0)) STORED,
    ADD COLUMN config_format smallint NOT NULL
        GENERATED ALWAYS AS (get_byte(config_blob, 0)) STORED;
CREATE INDEX connections_legacy_credentials ON connections (id) WHERE credentials_format = 1;
CREATE INDEX connections_legacy_config ON connections (id) WHERE config_format = 1;

ALTER TABLE webhook_endpoints
    ADD COLUMN secret_format smallint NOT NULL
        GENERATED ALWAYS AS (get_byte(secret_blob, 0)) STORED,
    ADD COLUMN previous_secret_format smallint
        GENERATED ALWAYS AS (get_byte(previous_secret_blob, 0)) STORED;
CREATE INDEX webhook_endpoints_legacy_secret ON webhook_endpoints (id) WHERE secret_format = 1;
CREATE INDEX webhook_endpoints_legacy_previous_secret ON webhook_endpoints (id)
    WHERE previous_secret_format = 1;
