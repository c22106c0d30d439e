-- Issue 9 (review of finding 7): servers cache unknown key ids negatively, so a key created by
-- another server or by the CLI must be announced like a changed or deleted one; otherwise a key
-- id presented before the key existed would stay refused on every server that saw it, for the
-- negative cache's lifetime.
DROP TRIGGER secret_keys_announce ON secret_keys;
CREATE TRIGGER secret_keys_announce AFTER INSERT OR UPDATE OR DELETE ON secret_keys
    FOR EACH ROW EXECUTE FUNCTION credbroker_announce_change();
