-- One row per command that appended: makes append idempotent by command id.
-- A command's events are contiguous: seq first_seq .. first_seq + event_count - 1.
CREATE TABLE command_log (
    tenant_id    uuid NOT NULL,
    command_id   uuid NOT NULL,
    fingerprint  bytea NOT NULL CHECK (length(fingerprint) = 32),
    first_seq    bigint NOT NULL CHECK (first_seq >= 1),
    event_count  integer NOT NULL CHECK (event_count >= 1),
    PRIMARY KEY (tenant_id, command_id)
);
ALTER TABLE command_log ENABLE ROW LEVEL SECURITY;
ALTER TABLE command_log FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON command_log
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);
CREATE TRIGGER command_log_append_only BEFORE UPDATE OR DELETE ON command_log
    FOR EACH ROW EXECUTE FUNCTION refuse_log_mutation();
CREATE TRIGGER command_log_no_truncate BEFORE TRUNCATE ON command_log
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_log_mutation();
GRANT SELECT, INSERT ON command_log TO strongroom_app;
