-- One row per tenant: the head of its log. Appends lock it (SELECT ... FOR UPDATE),
-- which makes seq gapless and commits ordered per tenant.
CREATE TABLE tenant_log (
    tenant_id   uuid PRIMARY KEY,
    origin      text NOT NULL,
    size        bigint NOT NULL DEFAULT 0 CHECK (size >= 0),
    chain_hash  bytea NOT NULL CHECK (length(chain_hash) = 32),
    frontier    bytea NOT NULL,
    last_ts     timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE tenant_log ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant_log FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenant_log
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);
CREATE TRIGGER tenant_log_guard BEFORE UPDATE OR DELETE ON tenant_log
    FOR EACH ROW EXECUTE FUNCTION guard_tenant_head();
CREATE TRIGGER tenant_log_no_truncate BEFORE TRUNCATE ON tenant_log
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_log_mutation();
GRANT SELECT, INSERT, UPDATE ON tenant_log TO strongroom_app;
