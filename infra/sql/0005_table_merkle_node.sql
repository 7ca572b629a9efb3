-- Complete Merkle subtrees (level >= 1; level 0 is event_log.leaf_hash):
-- node (level, idx) covers leaves [idx * 2^level, (idx + 1) * 2^level).
CREATE TABLE merkle_node (
    tenant_id  uuid NOT NULL,
    level      smallint NOT NULL CHECK (level BETWEEN 1 AND 62),
    idx        bigint NOT NULL CHECK (idx >= 0),
    hash       bytea NOT NULL CHECK (length(hash) = 32),
    PRIMARY KEY (tenant_id, level, idx)
);
ALTER TABLE merkle_node ENABLE ROW LEVEL SECURITY;
ALTER TABLE merkle_node FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON merkle_node
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);
CREATE TRIGGER merkle_node_append_only BEFORE UPDATE OR DELETE ON merkle_node
    FOR EACH ROW EXECUTE FUNCTION refuse_log_mutation();
CREATE TRIGGER merkle_node_no_truncate BEFORE TRUNCATE ON merkle_node
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_log_mutation();
GRANT SELECT, INSERT ON merkle_node TO strongroom_app;
