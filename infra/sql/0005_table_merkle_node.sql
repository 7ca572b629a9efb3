-- Complete Merkle subtrees of 16 leaves or more (level >= 4): node (level, idx)
-- covers leaves [idx * 2^level, (idx + 1) * 2^level). Smaller subtrees are
-- recomputed from at most 16 leaf hashes (event_log.leaf_hash is level 0).
CREATE TABLE merkle_node (
    tenant_id  uuid NOT NULL,
    level      smallint NOT NULL CHECK (level BETWEEN 4 AND 62),
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
