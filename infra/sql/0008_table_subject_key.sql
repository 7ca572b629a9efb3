-- One key per data subject, wrapped by a tenant key. Crypto-shredding sets
-- `wrapped` to NULL and stamps `erased_at`: the subject stays erased.
CREATE TABLE subject_key (
    tenant_id           uuid NOT NULL,
    subject_id          text NOT NULL,
    tenant_key_version  integer,
    wrapped             bytea,
    created_at          timestamptz NOT NULL DEFAULT now(),
    erased_at           timestamptz,
    PRIMARY KEY (tenant_id, subject_id),
    CHECK ((wrapped IS NULL) = (erased_at IS NOT NULL))
);
ALTER TABLE subject_key ENABLE ROW LEVEL SECURITY;
ALTER TABLE subject_key FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON subject_key
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);
GRANT SELECT, INSERT, UPDATE ON subject_key TO strongroom_app;
