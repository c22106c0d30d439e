-- Every change to a row that servers cache is announced on channel credbroker_changes once its
-- transaction commits, so each server drops its cached copy (caches hold ciphertexts only).
-- Payloads: k|<key_id>, c|<environment_id>|<integration_id>|<connection_id>,
-- i|<environment_id>|<integration_id> (ids never contain '|').
CREATE FUNCTION credbroker_announce_change() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    changed record := CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
BEGIN
    IF TG_TABLE_NAME = 'secret_keys' THEN
        PERFORM pg_notify('credbroker_changes', 'k|' || changed.key_id);
    ELSIF TG_TABLE_NAME = 'connections' THEN
        PERFORM pg_notify('credbroker_changes', 'c|' || changed.environment_id || '|'
                          || changed.integration_id || '|' || changed.connection_id);
    ELSIF TG_TABLE_NAME = 'integrations' THEN
        PERFORM pg_notify('credbroker_changes', 'i|' || changed.environment_id || '|'
                          || changed.integration_id);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER secret_keys_announce AFTER UPDATE OR DELETE ON secret_keys
    FOR EACH ROW EXECUTE FUNCTION credbroker_announce_change();
CREATE TRIGGER connections_announce AFTER UPDATE OR DELETE ON connections
    FOR EACH ROW EXECUTE FUNCTION credbroker_announce_change();
CREATE TRIGGER integrations_announce AFTER UPDATE OR DELETE ON integrations
    FOR EACH ROW EXECUTE FUNCTION credbroker_announce_change();
