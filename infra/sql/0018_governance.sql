-- Governance: the keys that sign approval decisions, and the grants' expiry schedule.
--
-- approval_key: each tenant's Ed25519 keys for signing approval manifests. The
-- private half is sealed with the tenant key (AES-256-GCM, AAD
-- `tenant|approval-key:<key id>|<tenant key version>`); the public half is also
-- in the tenant's log (`approval_key.created`), so a verifier needs no table.
-- One key is in use at a time; a retired key only ever verifies.
CREATE TABLE approval_key (
    tenant_id          uuid NOT NULL,
    key_id             text NOT NULL,
    public_key         bytea NOT NULL CHECK (length(public_key) = 32),
    sealed_private     bytea NOT NULL,
    tenant_key_version integer NOT NULL,
    created_at         timestamptz NOT NULL,
    retired_at         timestamptz,
    PRIMARY KEY (tenant_id, key_id)
);
CREATE UNIQUE INDEX approval_key_one_in_use ON approval_key (tenant_id) WHERE retired_at IS NULL;
ALTER TABLE approval_key ENABLE ROW LEVEL SECURITY;
ALTER TABLE approval_key FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON approval_key
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);
GRANT SELECT, INSERT ON approval_key TO strongroom_app;
GRANT UPDATE (retired_at) ON approval_key TO strongroom_app;

-- grant_schedule: the grants still open and when they run out, written in the
-- same transaction as `grant.issued` and deleted with `grant.expired` or
-- `grant.revoked`, so the expiry worker's work list never disagrees with the log.
CREATE TABLE grant_schedule (
    tenant_id   uuid NOT NULL,
    grant_id    uuid NOT NULL,
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, grant_id)
);
CREATE INDEX grant_schedule_due ON grant_schedule (expires_at);
ALTER TABLE grant_schedule ENABLE ROW LEVEL SECURITY;
ALTER TABLE grant_schedule FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON grant_schedule
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);
GRANT SELECT, INSERT, DELETE ON grant_schedule TO strongroom_app;

-- The expiry worker's work list across tenants: ids and times, no content.
CREATE POLICY platform_read ON grant_schedule FOR SELECT TO CURRENT_USER USING (true);

CREATE FUNCTION grants_due(p_now timestamptz, p_limit integer)
RETURNS TABLE (tenant_id uuid, grant_id uuid, expires_at timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = public, pg_temp
AS $$
    SELECT s.tenant_id, s.grant_id, s.expires_at FROM grant_schedule s
    WHERE s.expires_at <= p_now ORDER BY s.expires_at, s.tenant_id, s.grant_id
    LIMIT p_limit
$$;
REVOKE ALL ON FUNCTION grants_due(timestamptz, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION grants_due(timestamptz, integer) TO strongroom_app;

-- When the next grant runs out (NULL: none open), so the worker sleeps until then.
CREATE FUNCTION next_grant_expiry()
RETURNS timestamptz
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = public, pg_temp
AS $$
    SELECT min(s.expires_at) FROM grant_schedule s
$$;
REVOKE ALL ON FUNCTION next_grant_expiry() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION next_grant_expiry() TO strongroom_app;
