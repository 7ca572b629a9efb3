-- Personal field values, outside the leaf. The leaf carries value_hash =
-- SHA-256(ciphertext); erasure sets ciphertext to NULL (and shreds the key).
CREATE TABLE pii_value (
    tenant_id   uuid NOT NULL,
    value_hash  bytea NOT NULL CHECK (length(value_hash) = 32),
    subject_id  text NOT NULL,
    ciphertext  bytea,
    PRIMARY KEY (tenant_id, value_hash)
);
CREATE INDEX pii_value_subject ON pii_value (tenant_id, subject_id);
ALTER TABLE pii_value ENABLE ROW LEVEL SECURITY;
ALTER TABLE pii_value FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON pii_value
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);
GRANT SELECT, INSERT, UPDATE ON pii_value TO strongroom_app;
