-- The events. `leaf` holds the exact hashed bytes; every other column is an index
-- derived from it. Unique keys lead with tenant_id (they bypass RLS, and a
-- tenant-sharded deployment needs the distribution column in them).
CREATE TABLE event_log (
    tenant_id       uuid NOT NULL,
    seq             bigint NOT NULL CHECK (seq >= 1),
    stream_id       text NOT NULL,
    stream_version  integer NOT NULL CHECK (stream_version >= 1),
    event_id        uuid NOT NULL,
    event_type      text NOT NULL,
    recorded_at     timestamptz NOT NULL,
    leaf            bytea NOT NULL,
    leaf_hash       bytea NOT NULL CHECK (length(leaf_hash) = 32),
    chain_hash      bytea NOT NULL CHECK (length(chain_hash) = 32),
    PRIMARY KEY (tenant_id, seq),
    UNIQUE (tenant_id, stream_id, stream_version),
    UNIQUE (tenant_id, event_id)
);
ALTER TABLE event_log ENABLE ROW LEVEL SECURITY;
ALTER TABLE event_log FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON event_log
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);
CREATE TRIGGER event_log_append_only BEFORE UPDATE OR DELETE ON event_log
    FOR EACH ROW EXECUTE FUNCTION refuse_log_mutation();
CREATE TRIGGER event_log_no_truncate BEFORE TRUNCATE ON event_log
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_log_mutation();
GRANT SELECT, INSERT ON event_log TO strongroom_app;
