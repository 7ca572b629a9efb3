-- The connector secrets vault (infra/vault.py).
--
-- vault_key: each tenant's keyset of vault data keys, each wrapped (AES-256-GCM)
-- by a tenant key, AAD `tenant|vault-key:<version>|<tenant key version>`. One
-- primary seals new credentials; older versions only open what they sealed.
-- Tenant key rotation re-wraps these rows (wrapped, tenant_key_version) and
-- never touches a credential's ciphertext.
CREATE TABLE vault_key (
    tenant_id           uuid NOT NULL,
    version             integer NOT NULL CHECK (version >= 1),
    tenant_key_version  integer NOT NULL CHECK (tenant_key_version >= 1),
    wrapped             bytea NOT NULL,
    is_primary          boolean NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, version)
);
CREATE UNIQUE INDEX vault_key_one_primary ON vault_key (tenant_id) WHERE is_primary;

-- connector_credential: one row per live credential version of a connector,
-- sealed (AES-256-GCM) under a vault data key, AAD
-- `tenant|connector:<id>:credential:<version>|<vault key version>`. 'active' is
-- the credential in use, 'staged' the one a rotation is validating. Purging a
-- version DELETEs its row: that version is gone (crypto-erasure). Rows change
-- only in the transaction of the connector event that records the change.
CREATE TABLE connector_credential (
    tenant_id          uuid NOT NULL,
    connector_id       uuid NOT NULL,
    version            integer NOT NULL CHECK (version >= 1),
    vault_key_version  integer NOT NULL,
    sealed             bytea NOT NULL,
    state              text NOT NULL CHECK (state IN ('staged', 'active')),
    created_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, connector_id, version),
    FOREIGN KEY (tenant_id, vault_key_version) REFERENCES vault_key (tenant_id, version)
);
CREATE UNIQUE INDEX connector_credential_one_active
    ON connector_credential (tenant_id, connector_id) WHERE state = 'active';
CREATE UNIQUE INDEX connector_credential_one_staged
    ON connector_credential (tenant_id, connector_id) WHERE state = 'staged';
CREATE INDEX connector_credential_vault_key
    ON connector_credential (tenant_id, vault_key_version);

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['vault_key', 'connector_credential']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I '
            'USING (tenant_id = NULLIF(current_setting(''app.tenant_id'', true), '''')::uuid) '
            'WITH CHECK (tenant_id = NULLIF(current_setting(''app.tenant_id'', true), '''')::uuid)',
            t);
    END LOOP;
END $$;

-- The app role only. The investigation role (strongroom_cli) gets nothing here:
-- reading a credential is the vault's one audited function, not a query.
GRANT SELECT, INSERT ON vault_key TO strongroom_app;
GRANT UPDATE (is_primary, wrapped, tenant_key_version) ON vault_key TO strongroom_app;
GRANT SELECT, INSERT, DELETE ON connector_credential TO strongroom_app;
GRANT UPDATE (state) ON connector_credential TO strongroom_app;
