-- The read models of this database. Each lives in its own schema, created from
-- the projection's DDL by the owner role (infra/readmodels.py); ddl_sha256 tells
-- when the code's DDL no longer matches what was built (rebuild it).
CREATE TABLE projection_registry (
    name         text PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9_]{0,40}$'),
    schema_name  text NOT NULL UNIQUE,
    ddl_sha256   text NOT NULL CHECK (length(ddl_sha256) = 64),
    built_at     timestamptz NOT NULL DEFAULT now()
);
GRANT SELECT ON projection_registry TO strongroom_app;

-- Every time a projection gave up on an event and parked the tenant's partition.
-- Kept across rebuilds. `error` is the exception class and where it was raised,
-- never its message (which could quote personal data).
CREATE TABLE projection_failure (
    tenant_id    uuid NOT NULL,
    projection   text NOT NULL,
    seq          bigint NOT NULL CHECK (seq >= 1),
    event_type   text NOT NULL,
    error        text NOT NULL,
    attempts     integer NOT NULL CHECK (attempts >= 1),
    failed_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (tenant_id, projection, seq, failed_at)
);
ALTER TABLE projection_failure ENABLE ROW LEVEL SECURITY;
ALTER TABLE projection_failure FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON projection_failure
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);
GRANT SELECT, INSERT ON projection_failure TO strongroom_app;

-- Per tenant: the log head and how far a projection has got (all tenants, or
-- only those behind or parked). Positions only: no content of any tenant.
CREATE FUNCTION projection_partitions(p_projection text, p_behind_only boolean)
RETURNS TABLE (
    tenant_id uuid, head bigint, "position" bigint,
    parked_seq bigint, parked_error text, parked_at timestamptz, updated_at timestamptz
)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = public, pg_temp
AS $$
DECLARE
    v_schema text;
BEGIN
    SELECT r.schema_name INTO v_schema FROM projection_registry r WHERE r.name = p_projection;
    IF v_schema IS NULL THEN
        RAISE EXCEPTION 'no projection named %', p_projection USING ERRCODE = 'no_data_found';
    END IF;
    RETURN QUERY EXECUTE format(
        'SELECT t.tenant_id, t.size, COALESCE(p.last_seq, 0), p.parked_seq, p.parked_error, '
        'p.parked_at, p.updated_at FROM tenant_log t '
        'LEFT JOIN %I.position p ON p.tenant_id = t.tenant_id '
        'WHERE NOT $1 OR t.size > COALESCE(p.last_seq, 0) OR p.parked_seq IS NOT NULL '
        'ORDER BY t.tenant_id', v_schema)
    USING p_behind_only;
END
$$;
REVOKE ALL ON FUNCTION projection_partitions(text, boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION projection_partitions(text, boolean) TO strongroom_app;
