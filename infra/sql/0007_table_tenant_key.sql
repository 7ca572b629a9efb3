-- Per-tenant data keys, wrapped (AES-256-GCM) by the master key, which is never
-- in the database. One primary version; older versions only decrypt.
CREATE TABLE tenant_key (
    tenant_id   uuid NOT NULL,
    version     integer NOT NULL CHECK (version >= 1),
    wrapped     bytea NOT NULL,
    is_primary  boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, version)
);
CREATE UNIQUE INDEX tenant_key_one_primary ON tenant_key (tenant_id) WHERE is_primary;
ALTER TABLE tenant_key ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant_key FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenant_key
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);
GRANT SELECT, INSERT, UPDATE ON tenant_key TO strongroom_app;
