-- The investigation commands (`strongroom events|state|timeline|verify|export|
-- replay dry-run|tenants`) connect as strongroom_cli: NOSUPERUSER, NOBYPASSRLS,
-- owns nothing, and row-level security shows it one tenant at a time, set by
-- the same tenant-transaction function as the app. It reads the log, its
-- Merkle nodes, checkpoints, keys (to decrypt personal fields) and the sealed
-- personal values; it appends, through append_batch, only its own
-- `investigation.performed` events. It has no grant on any credential table
-- (account, session, api_key, invite, recovery_code, platform_token...) and
-- cannot create a tenant log (no INSERT on tenant_log).
GRANT SELECT, UPDATE ON tenant_log TO strongroom_cli;
GRANT SELECT, INSERT ON event_log TO strongroom_cli;
GRANT SELECT, INSERT ON merkle_node TO strongroom_cli;
GRANT SELECT, INSERT ON command_log TO strongroom_cli;
GRANT SELECT ON tenant_key, subject_key, pii_value TO strongroom_cli;
GRANT SELECT ON checkpoint, ledger_key TO strongroom_cli;
GRANT SELECT ON tenant_directory TO strongroom_cli;
GRANT SELECT ON projection_registry TO strongroom_cli;
GRANT SELECT ON projection_failure TO strongroom_cli;
GRANT EXECUTE ON FUNCTION append_batch TO strongroom_cli;
GRANT EXECUTE ON FUNCTION projection_partitions(text, boolean) TO strongroom_cli;

-- `strongroom tenants list`: every tenant's id, slug and log size, across
-- row-level security, through this function only (no event, no member, no
-- personal value).
CREATE FUNCTION tenant_catalogue()
RETURNS TABLE (tenant_id uuid, slug text, created_at timestamptz, size bigint,
               checkpoint_size bigint)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = public, pg_temp
AS $$
    SELECT COALESCE(d.tenant_id, l.tenant_id), d.slug, d.created_at,
           COALESCE(l.size, 0), COALESCE(c.size, 0)
    FROM tenant_directory d
    FULL JOIN tenant_log l ON l.tenant_id = d.tenant_id
    LEFT JOIN LATERAL (
        SELECT max(k.size) AS size FROM checkpoint k
        WHERE k.tenant_id = COALESCE(d.tenant_id, l.tenant_id)
    ) c ON true
    ORDER BY d.slug NULLS LAST, 1
$$;
REVOKE ALL ON FUNCTION tenant_catalogue() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tenant_catalogue() TO strongroom_cli;
