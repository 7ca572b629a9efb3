-- Identity and access state. Every change a member or an auditor would call a
-- change happens in the same transaction as the event that records it
-- (EventStore.append's effect), so the tables and the log agree at every
-- instant. Three writes have no event of their own: a pending TOTP secret
-- (the event is member.mfa_enrolled, at confirmation), an MFA challenge
-- (the event is auth.login_succeeded, when the code completes it) and an
-- Argon2id rehash of an unchanged password. Secrets are stored only as hashes
-- (tokens, recovery codes), HMACs (API keys, e-mail lookup keys), a PHC
-- Argon2id string (passwords) or AES-256-GCM ciphertext (TOTP secrets).

-- Tenants by slug, with the settings authentication reads. Slugs are global by design (one namespace for logins), so
-- this is the one tenant table with a unique key that does not lead with
-- tenant_id. The app role resolves a slug through tenant_by_slug() only.
CREATE TABLE tenant_directory (
    tenant_id   uuid PRIMARY KEY,
    slug        text NOT NULL CHECK (slug ~ '^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$'),
    mfa_required            boolean NOT NULL DEFAULT false,
    session_idle_minutes    integer NOT NULL DEFAULT 30,
    session_absolute_hours  integer NOT NULL DEFAULT 12,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX tenant_directory_slug ON tenant_directory (slug);

-- A member's e-mail lookup key (HMAC of the lower-cased address under a key
-- derived from the tenant key): unique per tenant, and no plaintext address.
CREATE TABLE member_email (
    tenant_id   uuid NOT NULL,
    email_key   bytea NOT NULL CHECK (length(email_key) = 32),
    member_id   uuid NOT NULL,
    PRIMARY KEY (tenant_id, email_key)
);
CREATE UNIQUE INDEX member_email_member ON member_email (tenant_id, member_id);

-- One-time invitations: the token's SHA-256 only.
CREATE TABLE invite (
    tenant_id   uuid NOT NULL,
    member_id   uuid NOT NULL,
    token_hash  bytea NOT NULL CHECK (length(token_hash) = 32),
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz,
    PRIMARY KEY (tenant_id, member_id)
);
CREATE INDEX invite_token ON invite (token_hash);

-- Members who joined: what authentication and authorization read on every
-- request. role and active mirror the member's stream at all times.
CREATE TABLE account (
    tenant_id         uuid NOT NULL,
    member_id         uuid NOT NULL,
    role              text NOT NULL,
    active            boolean NOT NULL,
    password_phc      text NOT NULL,
    totp_sealed       bytea,
    totp_key_version  integer,
    totp_confirmed    boolean NOT NULL DEFAULT false,
    totp_last_step    bigint NOT NULL DEFAULT 0,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, member_id)
);

CREATE TABLE recovery_code (
    tenant_id   uuid NOT NULL,
    member_id   uuid NOT NULL,
    code_hash   bytea NOT NULL CHECK (length(code_hash) = 32),
    used_at     timestamptz,
    PRIMARY KEY (tenant_id, member_id, code_hash)
);

-- Sessions: stage 'mfa' is a password-verified login waiting for its second
-- factor; 'full' is a session. The token's SHA-256 only.
CREATE TABLE session (
    tenant_id          uuid NOT NULL,
    session_id         uuid NOT NULL,
    member_id          uuid NOT NULL,
    token_hash         bytea NOT NULL CHECK (length(token_hash) = 32),
    stage              text NOT NULL CHECK (stage IN ('mfa', 'full')),
    created_at         timestamptz NOT NULL,
    last_seen_at       timestamptz NOT NULL,
    authenticated_at   timestamptz NOT NULL,
    idle_timeout       interval NOT NULL,
    expires_at         timestamptz NOT NULL,
    ended_at           timestamptz,
    user_agent         text,
    PRIMARY KEY (tenant_id, session_id)
);
CREATE INDEX session_token ON session (token_hash);
CREATE INDEX session_member ON session (tenant_id, member_id) WHERE ended_at IS NULL;

-- API keys: the HMAC-SHA256 of the key under the platform's API-key secret.
CREATE TABLE api_key (
    tenant_id     uuid NOT NULL,
    key_id        uuid NOT NULL,
    member_id     uuid NOT NULL,
    token_hmac    bytea NOT NULL CHECK (length(token_hmac) = 32),
    name          text NOT NULL,
    prefix        text NOT NULL,
    scopes        text[] NOT NULL,
    created_at    timestamptz NOT NULL,
    expires_at    timestamptz,
    revoked_at    timestamptz,
    last_used_at  timestamptz,
    PRIMARY KEY (tenant_id, key_id)
);
CREATE INDEX api_key_token ON api_key (token_hmac);
CREATE INDEX api_key_member ON api_key (tenant_id, member_id);

-- Failed logins, MFA codes and recovery codes, per account key (the e-mail
-- lookup key, so unknown addresses count too), for the hourly limit.
CREATE TABLE auth_failure (
    tenant_id    uuid NOT NULL,
    failure_id   uuid NOT NULL DEFAULT gen_random_uuid(),
    account_key  bytea NOT NULL,
    failed_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    kind         text NOT NULL CHECK (kind IN ('password', 'mfa', 'recovery')),
    PRIMARY KEY (tenant_id, failure_id)
);
CREATE INDEX auth_failure_account ON auth_failure (tenant_id, account_key, failed_at);

-- Idempotency keys of command routes: the first response, sealed under the
-- tenant key (it may hold a one-time secret), kept 24 hours.
CREATE TABLE idempotency_key (
    tenant_id     uuid NOT NULL,
    principal     text NOT NULL,
    key           text NOT NULL,
    fingerprint   bytea NOT NULL CHECK (length(fingerprint) = 32),
    created_at    timestamptz NOT NULL DEFAULT now(),
    completed_at  timestamptz,
    response      bytea,
    key_version   integer,
    PRIMARY KEY (tenant_id, principal, key)
);

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['tenant_directory', 'member_email', 'invite', 'account',
                             'recovery_code', 'session', 'api_key', 'auth_failure',
                             'idempotency_key']
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

GRANT SELECT, INSERT, UPDATE ON tenant_directory TO strongroom_app;
GRANT SELECT, INSERT, DELETE ON member_email TO strongroom_app;
GRANT SELECT, INSERT, UPDATE ON invite TO strongroom_app;
GRANT SELECT, INSERT, UPDATE ON account TO strongroom_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON recovery_code TO strongroom_app;
GRANT SELECT, INSERT, UPDATE ON session TO strongroom_app;
GRANT SELECT, INSERT, UPDATE ON api_key TO strongroom_app;
GRANT SELECT, INSERT, DELETE ON auth_failure TO strongroom_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON idempotency_key TO strongroom_app;

-- Finding the tenant of a presented credential, before any tenant is set: the
-- owner reads these tables through the SECURITY DEFINER functions below, which
-- return a tenant id for an exact hash and nothing else.
CREATE POLICY platform_read ON tenant_directory FOR SELECT TO CURRENT_USER USING (true);
CREATE POLICY platform_read ON invite FOR SELECT TO CURRENT_USER USING (true);
CREATE POLICY platform_read ON session FOR SELECT TO CURRENT_USER USING (true);
CREATE POLICY platform_read ON api_key FOR SELECT TO CURRENT_USER USING (true);

CREATE FUNCTION tenant_by_slug(p_slug text) RETURNS uuid
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $$ SELECT tenant_id FROM tenant_directory WHERE slug = p_slug $$;

CREATE FUNCTION credential_tenant(p_kind text, p_hash bytea) RETURNS uuid
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $$
    SELECT CASE p_kind
        WHEN 'session' THEN (SELECT tenant_id FROM session WHERE token_hash = p_hash LIMIT 1)
        WHEN 'apikey' THEN (SELECT tenant_id FROM api_key WHERE token_hmac = p_hash LIMIT 1)
        WHEN 'invite' THEN (SELECT tenant_id FROM invite WHERE token_hash = p_hash LIMIT 1)
    END
$$;

REVOKE ALL ON FUNCTION tenant_by_slug(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION credential_tenant(text, bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tenant_by_slug(text) TO strongroom_app;
GRANT EXECUTE ON FUNCTION credential_tenant(text, bytea) TO strongroom_app;

-- The platform administrator's token (creates tenants, nothing else): SHA-256.
CREATE TABLE platform_token (
    token_hash  bytea PRIMARY KEY CHECK (length(token_hash) = 32),
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
GRANT SELECT ON platform_token TO strongroom_app;

-- Idempotency of platform commands (tenant creation), sealed under a key
-- derived from the master key.
CREATE TABLE platform_idempotency_key (
    key           text PRIMARY KEY,
    fingerprint   bytea NOT NULL CHECK (length(fingerprint) = 32),
    created_at    timestamptz NOT NULL DEFAULT now(),
    completed_at  timestamptz,
    response      bytea
);
GRANT SELECT, INSERT, UPDATE, DELETE ON platform_idempotency_key TO strongroom_app;
